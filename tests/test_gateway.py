"""The gateway over the REAL openai client and real HTTP, against the local test server."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
from pydantic import BaseModel, Field

from personae.embeddings import HashingEmbedder
from personae.errors import ConfigError, ModelCallError, ModelOutputError
from personae.llm import Gateway, ResponseCache, estimate_tokens
from personae.llm.wrappers import RetryingLLM, WrapperLLM
from personae.testing.pytest_plugin import openai_llm, server_gateway
from personae.testing.server import OpenAITestServer, TestServerConfig

pytestmark = pytest.mark.timeout(300)  # a guard against a hang: a call may wait out several 10 s client timeouts

USER = [{"role": "user", "content": "Introduce yourself in one sentence."}]
# the client timeout of tests with injected 'timeout' faults (the server hangs until the client
# gives up): long enough that a normal reply never reaches it on a loaded machine
CLIENT_TIMEOUT_S = 10.0


class Profile(BaseModel):
    name: str
    age: int = Field(ge=0, le=120)
    tags: list[str]
    verified: bool


def formats(server: OpenAITestServer) -> list[str]:
    """Which structured-output mode each recorded chat request used."""
    out = []
    for body in server.requests:
        if body.get("tools"):
            out.append("tool")
        else:
            out.append((body.get("response_format") or {}).get("type", "text"))
    return out


def retries_of(gateway: Gateway) -> int:
    total = 0
    for model in gateway._models.values():
        node = model
        while isinstance(node, WrapperLLM):
            if isinstance(node, RetryingLLM):
                total += node.retries
            node = node.inner
    return total


# ---- plain and structured calls ------------------------------------------------------------


async def test_text_completion_is_openai_shaped_and_deterministic(openai_server):
    async with server_gateway(openai_server) as gateway:
        first = await gateway.text(USER, role="persona", seed=7, max_tokens=64)
        again = await gateway.text(USER, role="persona", seed=7, max_tokens=64)
    assert first.text and first.text == again.text
    assert first.provider == "openai" and first.model == "personae-test-chat"
    assert first.finish_reason == "stop"
    assert first.usage.prompt_tokens == estimate_tokens(USER[0]["content"])
    assert first.usage.completion_tokens == estimate_tokens(first.text)
    body = openai_server.requests[0]
    assert body["messages"] == USER and body["seed"] == 7 and body["max_tokens"] == 64
    assert openai_server.endpoint_counts == {"chat.completions": 2}


async def test_text_respects_max_tokens(openai_server):
    async with server_gateway(openai_server) as gateway:
        reply = await gateway.text(USER, max_tokens=3)
    assert reply.finish_reason == "length" and len(reply.text) <= 12


async def test_structured_output_via_json_schema(openai_server):
    async with server_gateway(openai_server) as gateway:
        profile = await gateway.structured(USER, Profile, seed=1)
    assert isinstance(profile, Profile)
    assert formats(openai_server) == ["json_schema"]
    sent = openai_server.requests[0]["response_format"]["json_schema"]
    assert sent["name"] == "Profile" and sent["schema"] == Profile.model_json_schema()


@pytest.mark.openai_server(reject_json_schema=True)
async def test_falls_back_to_a_tool_call_when_json_schema_is_rejected(openai_server):
    async with server_gateway(openai_server) as gateway:
        first = await gateway.structured(USER, Profile, seed=1)
        assert formats(openai_server) == ["json_schema", "tool"]
        second = await gateway.structured(USER, Profile, seed=2)
    assert isinstance(first, Profile) and isinstance(second, Profile)
    # the gateway remembers the rejection and goes straight to the tool call
    assert formats(openai_server) == ["json_schema", "tool", "tool"]
    tool_body = openai_server.requests[1]
    assert tool_body["tool_choice"] == {"type": "function", "function": {"name": "Profile"}}
    assert tool_body["tools"][0]["function"]["parameters"] == Profile.model_json_schema()


async def test_falls_back_to_json_object_with_schema_hint_then_repairs():
    def reply(body):
        # the first JSON-mode answer lacks fields; the repair round (after our reply) gets a good one
        if body.get("response_format", {}).get("type") == "json_object" and not any(m["role"] == "assistant" for m in body["messages"]):
            return 'Sure! [draft] {"name": "Ada", "age": 36}'
        return None

    config = TestServerConfig(reject_json_schema=True, reject_tools=True)
    with OpenAITestServer(config, reply=reply) as server:
        async with server_gateway(server) as gateway:
            profile = await gateway.structured(USER, Profile, seed=3)
    assert isinstance(profile, Profile)
    assert formats(server) == ["json_schema", "tool", "json_object", "json_object"]
    hinted, repaired = server.requests[2], server.requests[3]
    assert hinted["messages"][0]["role"] == "system" and '"verified"' in hinted["messages"][0]["content"]
    assert repaired["messages"][-2] == {"role": "assistant", "content": 'Sure! [draft] {"name": "Ada", "age": 36}'}
    assert "tags" in repaired["messages"][-1]["content"]  # the repair prompt names the missing field


@pytest.mark.openai_server(reject_json_schema=True, reject_tools=True)
async def test_json_object_mode_reads_the_schema_from_the_prompt(openai_server):
    async with server_gateway(openai_server) as gateway:
        profile = await gateway.structured(USER, Profile, seed=4)
    assert isinstance(profile, Profile)
    assert formats(openai_server) == ["json_schema", "tool", "json_object"]


# ---- cache -----------------------------------------------------------------------------------


async def test_identical_rerun_is_served_from_the_persistent_cache(openai_server, tmp_path):
    async def run() -> tuple[list[str], list[Profile], dict]:
        async with server_gateway(openai_server, cache=ResponseCache(tmp_path / "cache.sqlite")) as gateway:
            texts = [(await gateway.text(USER, role="persona", seed=i)).text for i in range(5)]
            profiles = [await gateway.structured(USER, Profile, role="judge", seed=i) for i in range(2)]
            return texts, profiles, gateway.usage.snapshot()

    texts, profiles, usage = await run()
    assert openai_server.request_count == 7 and usage["total.model_calls"] == 7
    openai_server.reset_counts()
    texts2, profiles2, usage2 = await run()
    assert openai_server.request_count == 0
    assert (texts2, profiles2) == (texts, profiles)
    assert usage2["total.cached_calls"] == 7 and usage2["total.model_calls"] == 0


async def test_a_reply_that_fails_validation_is_not_cached_so_a_rerun_asks_the_model_again(tmp_path):
    cache_path = tmp_path / "cache.sqlite"
    with OpenAITestServer(TestServerConfig(fault_rate=1.0, faults=["schema_invalid"])) as server:
        async with server_gateway(server, cache=ResponseCache(cache_path)) as gateway:
            with pytest.raises(ModelOutputError):
                await gateway.structured(USER, Profile, seed=1)
        failed_calls = server.request_count
        assert failed_calls == 4  # JSON schema, tool call, JSON mode + one repair round
        assert len(ResponseCache(cache_path)) == 0  # valid JSON, but not a Profile: nothing stored

        server.reset_counts()
        async with server_gateway(server, cache=ResponseCache(cache_path)) as gateway:  # the same failing rerun
            with pytest.raises(ModelOutputError):
                await gateway.structured(USER, Profile, seed=1)
        assert server.request_count == failed_calls  # the failure was not replayed: the model was asked again

        server.configure(fault_rate=0.0)  # the model behaves now: its reply is stored...
        server.reset_counts()
        async with server_gateway(server, cache=ResponseCache(cache_path)) as gateway:
            profile = await gateway.structured(USER, Profile, seed=1)
        assert server.request_count == 1
        server.reset_counts()
        async with server_gateway(server, cache=ResponseCache(cache_path)) as gateway:  # ...and replayed
            assert await gateway.structured(USER, Profile, seed=1) == profile
        assert server.request_count == 0


async def test_a_reply_the_caller_refuses_is_not_cached_and_a_stale_cached_one_is_evicted(openai_server, tmp_path):
    cache = tmp_path / "cache.sqlite"
    async with server_gateway(openai_server, cache=ResponseCache(cache)) as gateway:
        accepted = await gateway.text(USER, seed=2)  # no check: accepted and stored
    assert openai_server.request_count == 1

    def refuse(reply):
        raise ModelOutputError("not what the caller needs", raw=reply.text)

    async with server_gateway(openai_server, cache=ResponseCache(cache)) as gateway:
        with pytest.raises(ModelOutputError, match="not what the caller needs"):
            await gateway.text(USER, seed=2, check=refuse)  # the cached reply is refused now: evicted, asked again
        assert openai_server.request_count == 2
        with pytest.raises(ModelOutputError):
            await gateway.text(USER, seed=2, check=refuse)  # and the refused fresh reply was not stored
        assert openai_server.request_count == 3
        assert (await gateway.text(USER, seed=2)).text == accepted.text  # asked again, stored again
        assert openai_server.request_count == 4
        assert (await gateway.text(USER, seed=2)).cached


async def test_replicates_are_independent_samples_and_each_replays_from_the_cache(openai_server, tmp_path):
    async def run() -> tuple[list[str], list[Profile]]:
        async with server_gateway(openai_server, cache=ResponseCache(tmp_path / "cache.sqlite")) as gateway:
            texts = [(await gateway.text(USER, seed=5, temperature=1.0, replicate=r)).text for r in (0, 1)]
            profiles = [await gateway.structured(USER, Profile, seed=5, replicate=r) for r in (0, 1)]
            return texts, profiles

    texts, profiles = await run()
    assert openai_server.request_count == 4  # two replicates each: two calls each
    seeds = [body["seed"] for body in openai_server.requests]
    assert seeds[0] == seeds[2] == 5 and seeds[1] == seeds[3] != 5  # replicate 0 keeps the seed; 1 samples with its own
    assert texts[0] != texts[1]
    openai_server.reset_counts()
    assert await run() == (texts, profiles)  # an identical rerun replays every replicate
    assert openai_server.request_count == 0


def test_replicate_zero_keeps_the_cache_key_of_a_request_without_replicates():
    from personae.llm.base import LLMRequest, Message

    plain = LLMRequest(messages=(Message(role="user", content="hi"),), seed=3)
    assert "replicate" not in plain.cache_payload() and plain.sampling_seed == 3
    second = plain.model_copy(update={"replicate": 1})
    assert second.cache_payload()["replicate"] == 1 and second.sampling_seed not in (None, 3)
    assert plain.model_copy(update={"seed": None, "replicate": 1}).sampling_seed is None


# ---- faults and retries ------------------------------------------------------------------------


async def test_retries_survive_injected_faults():
    # a 'timeout' fault hangs until the client gives up; a normal reply comes at once, far inside
    # the client's 10 s timeout even on a loaded machine, so every timeout and every retry is an injected fault
    config = TestServerConfig(fault_rate=0.4, faults=["429", "500", "malformed", "timeout"], seed=3, hang_s=120.0)
    with OpenAITestServer(config) as server:
        async with server_gateway(server, timeout_s=CLIENT_TIMEOUT_S, max_retries=12, retry_base_delay_s=0.01) as gateway:
            replies = await asyncio.gather(*(gateway.text(USER, seed=i) for i in range(24)))
            retries = retries_of(gateway)
    assert all(r.text for r in replies)
    injected = sum(server.fault_counts.values())
    assert injected >= 5 and set(server.fault_counts) == {"429", "500", "malformed", "timeout"}
    assert server.request_count == 24 + injected
    assert retries == injected
    assert gateway.usage.snapshot()["total.failures"] == 0


async def test_retry_after_is_honoured():
    config = TestServerConfig(fault_rate=1.0, faults=["429"], retry_after_s=0.6)
    with OpenAITestServer(config) as server:
        async with server_gateway(server, max_retries=3, retry_base_delay_s=0.01) as gateway:
            started = time.perf_counter()
            call = asyncio.create_task(gateway.text(USER))
            while server.request_count == 0:
                await asyncio.sleep(0.005)
            server.configure(fault_rate=0.0)
            reply = await call
            waited = time.perf_counter() - started
    assert reply.text
    assert server.fault_counts == {"429": 1} and server.request_count == 2
    assert waited >= 0.6


async def test_persistent_failure_raises_after_max_retries():
    with OpenAITestServer(TestServerConfig(fault_rate=1.0, faults=["500"])) as server:
        async with server_gateway(server, max_retries=3, retry_base_delay_s=0.01) as gateway:
            with pytest.raises(ModelCallError) as info:
                await gateway.text(USER, role="persona")
            assert gateway.usage.snapshot()["persona.failures"] == 1
            assert retries_of(gateway) == 3
    assert info.value.status == 500 and info.value.retryable
    assert server.request_count == 4  # first try + 3 retries, then it stops


async def test_malformed_body_is_a_clear_call_error_with_the_body():
    with OpenAITestServer(TestServerConfig(fault_rate=1.0, faults=["malformed"])) as server:
        async with server_gateway(server, max_retries=1, retry_base_delay_s=0.01) as gateway:
            with pytest.raises(ModelCallError) as info:
                await gateway.text(USER)
    assert "malformed response body" in str(info.value) and "chat.completion" in str(info.value)
    assert server.request_count == 2



def _closed_port_url() -> str:
    """A loopback URL nothing listens on: a port the OS just handed out and taken back."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


async def test_a_refused_connection_is_reported_as_unreachable_naming_the_url_not_as_a_timeout():
    from personae.embeddings.openai import OpenAIEmbedder
    from personae.llm.openai_provider import OpenAICompatibleLLM

    url = _closed_port_url()
    gateway = Gateway(OpenAICompatibleLLM("m", base_url=url, api_key="k", timeout_s=30), cache=None, max_retries=0)
    try:
        with pytest.raises(ModelCallError) as info:
            await gateway.text(USER)
    finally:
        await gateway.aclose()
    message = str(info.value)
    assert "endpoint unreachable: connection refused" in message and url in message, message
    assert "timed out" not in message
    assert info.value.retryable  # a server that is still starting may answer the retry
    embedder = OpenAIEmbedder("e", base_url=url, max_retries=0)
    with pytest.raises(ModelCallError) as info:
        embedder.embed(["hello"])
    assert "unreachable: connection refused" in str(info.value) and url in str(info.value)


def test_endpoint_urls_in_errors_carry_no_credentials():
    from personae.endpoint import public_url

    assert public_url("https://someone:hunter2@llm.example.com:8443/v1?key=abc#x") == "https://llm.example.com:8443/v1"
    assert public_url("http://[::1]:8000/v1/") == "http://[::1]:8000/v1/"


async def test_a_hung_call_is_reported_as_a_timeout_naming_the_limit():
    with OpenAITestServer(TestServerConfig(fault_rate=1.0, faults=["timeout"])) as server:
        async with server_gateway(server, timeout_s=0.3, max_retries=0) as gateway:
            with pytest.raises(ModelCallError) as info:
                await gateway.text(USER)
    assert "request timed out after 0.3s" in str(info.value) and "PERSONAE_LLM_TIMEOUT_S" in str(info.value)
    assert "unreachable" not in str(info.value)


@pytest.mark.parametrize(
    ("body", "names"),
    [
        ({"object": "chat.completion", "choices": []}, "no choices"),
        ({"choices": "text"}, "malformed response body"),
        ({"choices": [{"message": {"content": 42}}]}, "content is int"),
        ({"choices": [{"message": None}], "usage": "n/a"}, None),  # an empty reply, usage estimated
        (["not", "an", "object"], "malformed response body"),
    ],
)
def test_an_odd_completion_body_is_a_retryable_error_naming_the_problem(body, names):
    """personae reads the completion's JSON itself (no ChatCompletion model): every shape it cannot use is a clear error."""
    from personae.llm.openai_provider import _read_completion

    if names is None:
        assert _read_completion(body, tool=False, model="m") == ("", None, "m", None)
        return
    with pytest.raises(ModelCallError) as info:
        _read_completion(body, tool=False, model="m")
    assert names in str(info.value) and info.value.retryable


def test_a_tool_call_reply_is_read_as_its_arguments():
    from personae.llm.openai_provider import _read_completion

    body = {
        "model": "served-name",
        "choices": [{"finish_reason": "tool_calls", "message": {"content": None, "tool_calls": [{"function": {"name": "out", "arguments": '{"a": 1}'}}]}}],
        "usage": {"prompt_tokens": 7, "completion_tokens": 3},
    }
    text, finish, model, usage = _read_completion(body, tool=True, model="m")
    assert (text, finish, model) == ('{"a": 1}', "tool_calls", "served-name")
    assert (usage.prompt_tokens, usage.completion_tokens) == (7, 3)


def test_the_providers_cached_prompt_tokens_are_read_and_accounted_per_role():
    from personae.llm.base import LLMResponse, Usage
    from personae.llm.gateway import UsageTracker
    from personae.llm.openai_provider import _read_completion

    body = {"choices": [{"message": {"content": "hi"}}],
            "usage": {"prompt_tokens": 2000, "completion_tokens": 3, "prompt_tokens_details": {"cached_tokens": 1792}}}
    assert _read_completion(body, tool=False, model="m")[3].cached_tokens == 1792
    plain = {"choices": [{"message": {"content": "hi"}}], "usage": {"prompt_tokens": 5, "completion_tokens": 1, "prompt_tokens_details": None}}
    assert _read_completion(plain, tool=False, model="m")[3].cached_tokens == 0
    tracker = UsageTracker()
    reply = LLMResponse(text="hi", usage=Usage(prompt_tokens=2000, completion_tokens=3, cached_tokens=1792))
    tracker.record("persona", reply)
    tracker.record("persona", reply.model_copy(update={"cached": True}))  # replayed by our cache: no provider saw it
    snap = tracker.snapshot()
    assert snap["persona.cached_tokens"] == snap["total.cached_tokens"] == 1792

async def test_cached_prompt_tokens_are_accounted_end_to_end_over_http_with_the_servers_simulated_prompt_cache():
    system = {"role": "system", "content": "You are Ann, a retired engineer who keeps her answers short. " * 8}
    turns = [{"role": "user", "content": f"Turn {i}: the router dropped the line again this evening."} for i in range(3)]
    with OpenAITestServer(TestServerConfig(simulate_prompt_cache=True)) as server:
        async with server_gateway(server) as gateway:
            first = await gateway.text([system, turns[0]], role="persona", seed=1)
            second = await gateway.text([system, turns[0], turns[1]], role="persona", seed=2)  # the same speaker, one turn on
            other = await gateway.text([{"role": "system", "content": "You are Bob."}, turns[0]], role="critic", seed=3)
            snap = gateway.usage.snapshot()
    shared = estimate_tokens(system["content"]) + estimate_tokens(turns[0]["content"])
    assert first.usage.cached_tokens == 0 and other.usage.cached_tokens == 0  # nothing earlier began with the same first message
    assert second.usage.cached_tokens == shared < second.usage.prompt_tokens
    assert snap["persona.cached_tokens"] == snap["total.cached_tokens"] == shared
    with OpenAITestServer() as server:  # off by default: no prompt_tokens_details, nothing counted
        async with server_gateway(server) as gateway:
            await gateway.text([system, turns[0]], role="persona", seed=1)
            again = await gateway.text([system, turns[0], turns[1]], role="persona", seed=2)
    assert again.usage.cached_tokens == 0


async def test_schema_invalid_replies_end_in_model_output_error_with_raw_reply():
    with OpenAITestServer(TestServerConfig(fault_rate=1.0, faults=["schema_invalid"])) as server:
        async with server_gateway(server) as gateway:
            with pytest.raises(ModelOutputError) as info:
                await gateway.structured(USER, Profile)
    error = info.value
    raw = json.loads(error.raw)  # valid JSON, but not a Profile
    assert isinstance(raw, dict) and "name" not in raw
    assert "Profile" in error.message and "field" in error.message
    assert formats(server) == ["json_schema", "tool", "json_object", "json_object"]


async def test_truncated_replies_end_in_model_output_error_with_raw_reply():
    with OpenAITestServer(TestServerConfig(fault_rate=1.0, faults=["truncated"])) as server:
        async with server_gateway(server) as gateway:
            with pytest.raises(ModelOutputError) as info:
                await gateway.structured(USER, Profile)
    raw = info.value.raw
    assert raw and raw.startswith("{")
    with pytest.raises(json.JSONDecodeError):
        json.loads(raw)
    assert server.requests[-1]["response_format"] == {"type": "json_object"}


# ---- concurrency and accounting -------------------------------------------------------------------


@pytest.mark.parametrize("limit", [32, 8])
async def test_concurrency_limit_overlaps_calls(limit):
    # the server answers nothing until `limit` requests are in flight at once: the calls must overlap
    # up to the limit (whatever the machine's speed), and never beyond it
    config = TestServerConfig(latency_s=0.2, hold_until_in_flight=limit, hold_s=30.0)
    with OpenAITestServer(config) as server:
        async with server_gateway(server, max_concurrency=limit) as gateway:
            started = time.perf_counter()
            await asyncio.gather(*(gateway.text(USER, seed=i) for i in range(32)))
            elapsed = time.perf_counter() - started
            assert gateway.peak_in_flight == limit
    assert server.gate_opened and server.peak_in_flight == limit
    assert server.request_count == 32
    assert elapsed >= (32 // limit) * 0.2  # the limit holds the rest back: 32 / limit rounds of 0.2 s


async def test_server_sustains_256_concurrent_requests():
    config = TestServerConfig(latency_s=0.2, hold_until_in_flight=256, hold_s=60.0)
    with OpenAITestServer(config) as server:
        async with server_gateway(server, max_concurrency=256, timeout_s=120.0) as gateway:
            replies = await asyncio.gather(*(gateway.text(USER, seed=i) for i in range(256)))
    assert len({r.text for r in replies}) > 200  # seeds give distinct replies
    assert server.gate_opened and server.peak_in_flight == 256  # all 256 were held open at once
    assert gateway.usage.snapshot()["total.failures"] == 0 and retries_of(gateway) == 0


async def test_usage_is_accounted_per_role(openai_server):
    models = {"default": openai_llm(openai_server), "judge": openai_llm(openai_server, model="judge-model")}
    gateway = Gateway(models, roles={"critic": "judge"})
    try:
        for i in range(3):
            await gateway.text(USER, role="persona", seed=i)
        for i in range(2):
            await gateway.structured(USER, Profile, role="critic", seed=i)
    finally:
        await gateway.aclose()
    usage = gateway.usage.snapshot()
    assert usage["persona.calls"] == 3 and usage["critic.calls"] == 2 and usage["total.calls"] == 5
    assert usage["persona.prompt_tokens"] == 3 * estimate_tokens(USER[0]["content"])
    assert [b["model"] for b in openai_server.requests] == ["personae-test-chat"] * 3 + ["judge-model"] * 2
    assert usage["total.completion_tokens"] == usage["persona.completion_tokens"] + usage["critic.completion_tokens"] > 0
    assert gateway.describe() == {"default": "openai:personae-test-chat", "judge": "openai:judge-model"}


# ---- embeddings, models, server control -----------------------------------------------------------


@pytest.mark.openai_server(embedding_dim=64)
async def test_embeddings_float_and_base64(openai_server):
    client = openai.AsyncOpenAI(base_url=openai_server.base_url, api_key="test", max_retries=0)
    try:
        as_float = await client.embeddings.create(model="e", input=["red apple", "green pear"], encoding_format="float")
        raw = await client.with_raw_response.embeddings.create(model="e", input=["red apple", "green pear"], encoding_format="base64")
        sized = await client.embeddings.create(model="e", input="red apple", encoding_format="float", dimensions=16)
    finally:
        await client.close()
    expected = HashingEmbedder(dim=64).embed(["red apple", "green pear"])
    got = np.array([d.embedding for d in as_float.data], dtype=np.float32)
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    decoded = [np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in json.loads(raw.content)["data"]]
    np.testing.assert_array_equal(np.stack(decoded), expected)
    assert len(sized.data[0].embedding) == 16
    assert as_float.usage.prompt_tokens == sum(estimate_tokens(t) for t in ["red apple", "green pear"])
    assert openai_server.endpoint_counts == {"embeddings": 3}


async def test_models_unknown_paths_and_bad_bodies(openai_server):
    async with httpx.AsyncClient(base_url=openai_server.base_url) as client:
        models = (await client.get("/models")).json()
        missing = await client.get("/nope")
        bad = await client.post("/chat/completions", content=b"{not json")
        empty = await client.post("/chat/completions", json={"model": "m", "messages": []})
    assert [m["id"] for m in models["data"]] == ["personae-test-chat", "personae-test-embed"]
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    assert bad.status_code == 400 and "not valid JSON" in bad.json()["error"]["message"]
    assert empty.status_code == 400 and empty.json()["error"]["param"] == "messages"


async def test_reply_callable_and_rejections_are_openai_shaped():
    with OpenAITestServer(TestServerConfig(reject_json_schema=True), reply=lambda body: f"echo: {body['messages'][-1]['content']}") as server:
        async with server_gateway(server) as gateway:
            reply = await gateway.text(USER)
        async with httpx.AsyncClient(base_url=server.base_url) as client:
            rejected = await client.post(
                "/chat/completions",
                json={"model": "m", "messages": USER, "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}},
            )
    assert reply.text == f"echo: {USER[0]['content']}"
    assert rejected.status_code == 400
    assert rejected.json()["error"] == {
        "message": "response_format of type 'json_schema' is not supported by this model",
        "type": "invalid_request_error",
        "param": "response_format",
        "code": "unsupported_parameter",
    }


async def test_gate_holds_replies_until_enough_requests_are_in_flight():
    config = TestServerConfig(hold_until_in_flight=3, hold_s=0.3)
    with OpenAITestServer(config) as server:
        async with server_gateway(server) as gateway:
            started = time.perf_counter()
            await gateway.text(USER, seed=0)  # alone: held the whole hold_s, then answered anyway
            assert time.perf_counter() - started >= 0.3
            assert not server.gate_opened and server.peak_in_flight == 1
            server.configure(hold_s=60.0)  # now nothing is answered before three arrive, however slowly
            await asyncio.gather(*(gateway.text(USER, seed=i) for i in range(1, 4)))
            assert server.gate_opened and server.peak_in_flight == 3
            await gateway.text(USER, seed=9)  # the gate stays open
    assert server.request_count == 5


def test_configure_validates_and_names_the_field(openai_server):
    openai_server.configure(latency_s=0.01)
    assert openai_server.config.latency_s == 0.01
    with pytest.raises(ConfigError) as info:
        openai_server.configure(fault_rat=0.5)
    assert info.value.field == "fault_rat"
    with pytest.raises(ConfigError) as info:
        openai_server.configure(faults=["404"])
    assert info.value.field == "faults.0"


@pytest.mark.openai_server(latency_s=0.05, reject_tools=True)
def test_fixture_reads_the_marker(openai_server):
    assert openai_server.config.reject_tools and openai_server.config.latency_s == 0.05
    assert openai_server.base_url.startswith("http://127.0.0.1:")


def test_stopped_server_has_no_url():
    server = OpenAITestServer().start()
    url = server.base_url
    server.stop()
    with pytest.raises(RuntimeError):
        server.base_url  # noqa: B018
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "/models", timeout=1)


@pytest.mark.parametrize(
    "command",
    [
        [str(Path(sys.executable).parent / "personae"), "testserver", "--port", "0", "--latency", "0.01"],
        [sys.executable, "-m", "personae.testing.server", "--port", "0", "--fault-rate", "0"],
    ],
    ids=["cli", "python-m"],
)
def test_standalone_server_prints_its_url_and_stops_on_ctrl_c(command):
    env = {**os.environ, "PYTHONWARNINGS": "error::RuntimeWarning"}
    # a shell starts background jobs with SIGINT ignored and a child inherits that, so the Ctrl-C
    # below would never arrive: start the server with SIGINT at its default, as in a terminal
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    finally:
        signal.signal(signal.SIGINT, inherited)
    with proc:
        try:
            url = proc.stdout.readline().strip()
            assert url.startswith("http://127.0.0.1:") and url.endswith("/v1")
            assert httpx.get(url + "/models", timeout=60).status_code == 200
        finally:
            proc.send_signal(signal.SIGINT)
            code = proc.wait(timeout=120)  # a guard against a hang, not a measure of speed
        assert code == 0, proc.stderr.read()
