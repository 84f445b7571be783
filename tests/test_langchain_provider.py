"""Any LangChain chat model (and Embeddings) through the gateway: langchain-core's fake chat
models, and the real ``ChatOpenAI`` over real HTTP against the local test server."""

from __future__ import annotations

import asyncio
import json
import pickle
from typing import Any

import httpx
import numpy as np
import pytest
import yaml
from langchain_core.embeddings.fake import DeterministicFakeEmbedding
from langchain_core.language_models.fake_chat_models import FakeListChatModel, GenericFakeChatModel
from langchain_core.messages import AIMessage
from pydantic import BaseModel, Field

from personae._langchain import call_error
from personae.embeddings import Embedder, build_embedder
from personae.embeddings.langchain import LangChainEmbedder
from personae.errors import ConfigError, ModelCallError, UnsupportedFeature
from personae.experiment import build_gateway_for, describe_models, load_experiment, settings_for
from personae.llm import Gateway, LangChainLLM, LLMRequest, Message, ResponseCache, ResponseFormat
from test_gateway import retries_of  # the one helper that counts a gateway's retries
from personae.settings import Settings
from personae.testing.pytest_plugin import TEST_MODEL
from personae.testing.server import OpenAITestServer, TestServerConfig

pytestmark = pytest.mark.timeout(300)

USER = [{"role": "user", "content": "Introduce yourself in one sentence."}]
FAKES = "langchain_core.language_models.fake_chat_models"


class Profile(BaseModel):
    name: str
    age: int = Field(ge=0, le=120)


PROFILE_JSON = '{"name": "Ada", "age": 36}'


class CountingFake(FakeListChatModel):
    """FakeListChatModel that counts the calls it answers."""

    calls: int = 0

    def _call(self, *args: Any, **kwargs: Any) -> str:
        self.calls += 1
        return super()._call(*args, **kwargs)


class RateLimited(Exception):
    """Shaped like an SDK's HTTP error: a status code and a response with headers."""

    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status} from the provider")
        self.status_code = status
        self.response = httpx.Response(status, headers={"retry-after": "0"})


class FlakyFake(CountingFake):
    """Raises ``error`` on its first ``failures`` calls, then answers."""

    failures: int = 1
    error: Any = None

    def _call(self, *args: Any, **kwargs: Any) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return FakeListChatModel._call(self, *args, **kwargs)


class ToolCallingFake(GenericFakeChatModel):
    """A fake that can bind tools and answers with a tool call, like a real tool-calling model."""

    bound: list[dict[str, Any]] = Field(default_factory=list)

    def bind_tools(self, tools: Any, *, tool_choice: Any = None, **kwargs: Any) -> Any:
        self.bound.append({"tools": tools, "tool_choice": tool_choice})
        return self.bind(tools=tools, tool_choice=tool_choice, **kwargs)




# ---- langchain-core fake chat models through the gateway ----------------------------
async def test_text_reply_through_the_gateway():
    gateway = Gateway({"default": LangChainLLM(FakeListChatModel(responses=["Hello, I am Ada."]))})
    reply = await gateway.text(USER)
    assert reply.text == "Hello, I am Ada."
    assert reply.provider == "langchain" and reply.model == "fake-list-chat-model"
    assert reply.usage.prompt_tokens > 0 and reply.usage.completion_tokens > 0  # estimated: the fake reports none
    assert gateway.describe() == {"default": "langchain:fake-list-chat-model"}


async def test_identical_call_is_replayed_from_the_cache(tmp_path):
    fake = CountingFake(responses=["first", "second"])
    cache = ResponseCache(tmp_path / "llm.sqlite")
    gateway = Gateway(LangChainLLM(fake), cache=cache)
    first = await gateway.text(USER, seed=1)
    again = await gateway.text(USER, seed=1)
    other = await gateway.text(USER, seed=2)  # a different request: a model call
    assert (first.text, again.text, other.text) == ("first", "first", "second")
    assert again.cached and not first.cached
    assert fake.calls == 2
    usage = gateway.usage.snapshot()
    assert usage["total.calls"] == 3 and usage["total.cached_calls"] == 1 and usage["total.model_calls"] == 2
    await gateway.aclose()


async def test_differently_named_models_do_not_share_cached_replies(tmp_path):
    cache = ResponseCache(tmp_path / "llm.sqlite")
    a = Gateway(LangChainLLM(FakeListChatModel(responses=["from a"]), name="fake-a"), cache=cache)
    b = Gateway(LangChainLLM(FakeListChatModel(responses=["from b"]), name="fake-b"), cache=cache)
    assert (await a.text(USER)).text == "from a"
    reply = await b.text(USER)
    assert reply.text == "from b" and not reply.cached
    cache.close()


async def test_usage_from_usage_metadata_is_accounted_per_role():
    def reply(n: int) -> AIMessage:
        return AIMessage(content=f"reply {n}", usage_metadata={"input_tokens": 11, "output_tokens": 3, "total_tokens": 14, "input_token_details": {"cache_read": 4}})

    fake = GenericFakeChatModel(messages=iter([reply(n) for n in range(3)]))
    gateway = Gateway({"default": LangChainLLM(fake)}, roles={"critic": "default"})
    await gateway.text(USER, role="persona")
    await gateway.text(USER, role="persona", seed=2)
    await gateway.text(USER, role="critic")
    usage = gateway.usage.snapshot()
    assert usage["persona.calls"] == 2 and usage["persona.prompt_tokens"] == 22 and usage["persona.completion_tokens"] == 6
    assert usage["critic.calls"] == 1 and usage["critic.prompt_tokens"] == 11 and usage["critic.completion_tokens"] == 3


async def test_a_429_is_retried_and_then_answered():
    fake = FlakyFake(responses=["made it"], failures=1, error=RateLimited(429))
    gateway = Gateway(LangChainLLM(fake), max_retries=3, retry_base_delay_s=0.01)
    reply = await gateway.text(USER)
    assert reply.text == "made it"
    assert fake.calls == 2 and retries_of(gateway) == 1
    assert gateway.usage.snapshot()["total.failures"] == 0


async def test_a_timeout_is_retried():
    fake = FlakyFake(responses=["made it"], failures=2, error=TimeoutError("read timed out"))
    gateway = Gateway(LangChainLLM(fake), max_retries=3, retry_base_delay_s=0.01)
    assert (await gateway.text(USER)).text == "made it"
    assert fake.calls == 3 and retries_of(gateway) == 2


async def test_a_client_error_is_not_retried_and_names_the_class():
    fake = FlakyFake(responses=["never"], failures=5, error=RateLimited(401))
    gateway = Gateway(LangChainLLM(fake), max_retries=3, retry_base_delay_s=0.01)
    with pytest.raises(ModelCallError) as info:
        await gateway.text(USER)
    assert info.value.status == 401 and not info.value.retryable and "RateLimited" in str(info.value)
    assert fake.calls == 1 and retries_of(gateway) == 0
    assert gateway.usage.snapshot()["total.failures"] == 1


async def test_an_unknown_exception_is_a_non_retryable_call_error():
    fake = FlakyFake(responses=["never"], failures=5, error=KeyError("boom"))
    gateway = Gateway(LangChainLLM(fake), max_retries=3, retry_base_delay_s=0.01)
    with pytest.raises(ModelCallError, match="KeyError") as info:
        await gateway.text(USER)
    assert not info.value.retryable and fake.calls == 1
    assert pickle.loads(pickle.dumps(info.value)).message == info.value.message


async def test_structured_output_falls_back_when_the_fake_cannot_do_tools_or_json_schema():
    # FakeListChatModel has no bind_tools: JSON schema and tool modes are unsupported, JSON mode answers
    fake = CountingFake(responses=["Sure! " + PROFILE_JSON])
    gateway = Gateway(LangChainLLM(fake))
    profile = await gateway.structured(USER, Profile)
    assert profile == Profile(name="Ada", age=36)
    assert fake.calls == 1  # the unsupported modes failed before any call
    # the fallback is remembered: the next structured call goes straight to JSON mode
    await gateway.structured(USER, Profile, seed=3)
    assert fake.calls == 2


async def test_unsupported_modes_raise_unsupported_feature():
    llm = LangChainLLM(FakeListChatModel(responses=["x"]))
    for fmt in (ResponseFormat.JSON_SCHEMA, ResponseFormat.TOOL):
        request = LLMRequest(messages=(Message(role="user", content="hi"),), response_format=fmt, json_schema=Profile.model_json_schema(), schema_name="Profile")
        with pytest.raises(UnsupportedFeature):
            await llm.complete(request)


async def test_a_tool_calling_model_answers_structured_output_through_its_tool_call():
    def tool_reply() -> AIMessage:
        return AIMessage(content="", tool_calls=[{"name": "Profile", "args": {"name": "Ada", "age": 36}, "id": "call_1"}])

    fake = ToolCallingFake(messages=iter([tool_reply(), tool_reply()]))
    llm = LangChainLLM(fake)
    gateway = Gateway(llm)
    assert await gateway.structured(USER, Profile) == Profile(name="Ada", age=36)  # json_schema → with_structured_output
    request = LLMRequest(messages=(Message(role="user", content="hi"),), response_format=ResponseFormat.TOOL, json_schema=Profile.model_json_schema(), schema_name="Profile")
    reply = await llm.complete(request)
    assert json.loads(reply.text) == {"name": "Ada", "age": 36}
    assert fake.bound[-1]["tool_choice"] == "Profile"
    assert fake.bound[-1]["tools"][0]["function"]["name"] == "Profile"


async def test_sampling_is_set_where_the_model_has_the_fields_and_left_alone_with_sampling_model():
    class Sampled(CountingFake):
        temperature: float = 1.0
        max_tokens: int | None = None
        seen: list[tuple[float, int | None]] = Field(default_factory=list)

        def _call(self, *args: Any, **kwargs: Any) -> str:
            self.seen.append((self.temperature, self.max_tokens))
            return super()._call(*args, **kwargs)

    fake = Sampled(responses=["ok"])
    request = LLMRequest(messages=(Message(role="user", content="hi"),), temperature=0.2, max_tokens=17, seed=5)
    await LangChainLLM(fake).complete(request)
    await LangChainLLM(fake, sampling="model").complete(request)
    # the first call saw the request's values on a copy; the model itself was not changed
    assert fake.seen == [(0.2, 17), (1.0, None)]
    assert fake.temperature == 1.0


def test_the_wrapper_refuses_what_is_not_a_chat_model():
    with pytest.raises(ConfigError, match="BaseChatModel"):
        LangChainLLM(object())  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("error", "retryable", "kind"),
    [
        (RateLimited(429), True, ModelCallError),
        (RateLimited(503), True, ModelCallError),
        (RateLimited(400), False, ModelCallError),
        (httpx.ConnectError("refused"), True, ModelCallError),
        (httpx.ReadTimeout("slow"), True, ModelCallError),
        (asyncio.TimeoutError(), True, ModelCallError),
        (ValueError("bad"), False, ModelCallError),
    ],
)
def test_errors_are_mapped_by_status_and_kind(error, retryable, kind):
    mapped = call_error(error, model="m")
    assert type(mapped) is kind and mapped.retryable is retryable


def test_a_400_on_a_structured_request_is_unsupported_feature():
    assert isinstance(call_error(RateLimited(400), model="m", structured=True), UnsupportedFeature)
    assert isinstance(call_error(RateLimited(422), model="m", structured=True), UnsupportedFeature)


# ---- the real ChatOpenAI over HTTP against the test server ---------------------------
@pytest.fixture(autouse=True)
def no_tiktoken(monkeypatch):
    """tiktoken downloads its encodings on first use: any use of it fails the test."""
    import tiktoken

    def refuse(*args: Any, **kwargs: Any):
        raise AssertionError("tiktoken was used: it downloads its encodings")

    monkeypatch.setattr(tiktoken, "get_encoding", refuse)
    monkeypatch.setattr(tiktoken, "encoding_for_model", refuse)


def chat_openai(server: OpenAITestServer, **kwargs: Any):
    from langchain_openai import ChatOpenAI

    return ChatOpenAI(base_url=server.base_url, api_key="test", model=TEST_MODEL, max_retries=0, timeout=30, **kwargs)


def formats(server: OpenAITestServer) -> list[str]:
    return ["tool" if body.get("tools") else (body.get("response_format") or {}).get("type", "text") for body in server.requests]


async def test_chat_openai_text_and_structured_through_the_gateway(openai_server, tmp_path):
    gateway = Gateway(LangChainLLM(chat_openai(openai_server)), cache=ResponseCache(tmp_path / "llm.sqlite"))
    reply = await gateway.text(USER, temperature=0.3, max_tokens=40, seed=7, stop=["\n\n"])
    assert reply.text and reply.provider == "langchain" and reply.model == TEST_MODEL
    body = openai_server.requests[-1]
    assert body["temperature"] == 0.3 and body["max_completion_tokens"] == 40 and body["seed"] == 7 and body["stop"] == ["\n\n"]
    profile = await gateway.structured(USER, Profile)
    assert isinstance(profile, Profile)
    assert formats(openai_server) == ["text", "json_schema"]
    usage = gateway.usage.snapshot()
    assert usage["total.model_calls"] == 2 and usage["total.prompt_tokens"] > 0 and usage["total.completion_tokens"] > 0
    # a rerun replays both from the cache without reaching the server
    await gateway.text(USER, temperature=0.3, max_tokens=40, seed=7, stop=["\n\n"])
    await gateway.structured(USER, Profile)
    assert openai_server.request_count == 2
    await gateway.aclose()


@pytest.mark.openai_server(reject_json_schema=True)
async def test_chat_openai_falls_back_to_a_tool_call_when_json_schema_is_rejected(openai_server):
    gateway = Gateway(LangChainLLM(chat_openai(openai_server)))
    assert isinstance(await gateway.structured(USER, Profile), Profile)
    assert formats(openai_server) == ["json_schema", "tool"]


async def test_chat_openai_falls_back_to_json_mode_when_tools_are_rejected_too():
    # JSON mode is a plain call with the schema in the prompt (no provider-specific json_object
    # flag), so the server is scripted to answer such a prompt as a model following the hint would
    def reply(body: dict[str, Any]) -> str | None:
        return PROFILE_JSON if "properties" in json.dumps(body["messages"]) else None

    config = TestServerConfig(reject_json_schema=True, reject_tools=True)
    with OpenAITestServer(config, reply=reply) as server:
        gateway = Gateway(LangChainLLM(chat_openai(server)))
        assert await gateway.structured(USER, Profile) == Profile(name="Ada", age=36)
        assert formats(server) == ["json_schema", "tool", "text"]


@pytest.mark.openai_server(fault_rate=1.0, faults=["429"], retry_after_s=0.0)
async def test_chat_openai_429s_are_retried_by_the_gateway(openai_server):
    gateway = Gateway(LangChainLLM(chat_openai(openai_server)), max_retries=2, retry_base_delay_s=0.01)
    with pytest.raises(ModelCallError) as info:
        await gateway.text(USER)
    assert info.value.status == 429 and info.value.retryable
    assert openai_server.request_count == 3 and retries_of(gateway) == 2


# ---- the experiment file -------------------------------------------------------------
def write_experiment(tmp_path, models: dict[str, Any], embeddings: dict[str, Any] | None = None):
    data: dict[str, Any] = {
        "name": "lc",
        "models": models,
        "population": {"size": 2},
        "scenarios": [{"name": "chat", "roles": [{"name": "a"}, {"name": "b"}]}],
        "graph": {"kind": "dyad"},
    }
    if embeddings is not None:
        data["embeddings"] = embeddings
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


async def test_experiment_file_runs_chat_openai_with_its_key_from_the_environment(openai_server, tmp_path, monkeypatch):
    monkeypatch.setenv("LC_TEST_KEY", "sk-test-secret")
    path = write_experiment(tmp_path, {
        "default": {
            "provider": "langchain",
            "class": "langchain_openai:ChatOpenAI",
            "model": TEST_MODEL,
            "api_key_env": "LC_TEST_KEY",
            "kwargs": {"base_url": openai_server.base_url, "max_retries": 0},
        },
        "judge": {"provider": "langchain", "class": f"{FAKES}:FakeListChatModel", "kwargs": {"responses": ["I judge."]}},
    })
    experiment = load_experiment(path)
    settings = settings_for(experiment, Settings(data_dir=tmp_path / "data", cache_enabled=False))
    assert describe_models(experiment, settings)["default"] == f"langchain:langchain_openai:ChatOpenAI/{TEST_MODEL}"
    gateway = build_gateway_for(experiment, settings)
    try:
        reply = await gateway.text(USER)
        assert reply.text and openai_server.request_count == 1
        assert (await gateway.text(USER, role="judge")).text == "I judge."
        assert "sk-test-secret" not in repr(gateway._providers["default"])
    finally:
        await gateway.aclose()


def test_a_bad_class_path_names_the_field(tmp_path, settings):
    path = write_experiment(tmp_path, {"default": {"provider": "langchain", "class": "no_such_package.chat:Model"}})
    experiment = load_experiment(path)
    with pytest.raises(ConfigError) as info:
        build_gateway_for(experiment, settings)
    assert info.value.field == "models.default.class" and "no_such_package" in str(info.value)


def test_a_class_that_is_not_a_chat_model_names_the_field(tmp_path, settings):
    path = write_experiment(tmp_path, {"default": {"provider": "langchain", "class": "langchain_core.embeddings.fake:DeterministicFakeEmbedding"}})
    with pytest.raises(ConfigError) as info:
        build_gateway_for(load_experiment(path), settings)
    assert info.value.field == "models.default.class"


def test_arguments_the_class_refuses_name_the_kwargs_field_without_the_key(tmp_path, settings, monkeypatch):
    monkeypatch.setenv("LC_TEST_KEY", "sk-do-not-print")
    path = write_experiment(tmp_path, {"default": {"provider": "langchain", "class": f"{FAKES}:FakeListChatModel", "api_key_env": "LC_TEST_KEY", "kwargs": {}}})
    with pytest.raises(ConfigError) as info:
        build_gateway_for(load_experiment(path), settings)
    assert info.value.field == "models.default.kwargs" and "sk-do-not-print" not in str(info.value)


@pytest.mark.parametrize(
    "model",
    [
        {"provider": "langchain"},  # no class
        {"provider": "langchain", "class": f"{FAKES}:FakeListChatModel", "kwargs": {"api_key": "sk-inline"}},
        {"provider": "langchain", "class": f"{FAKES}:FakeListChatModel", "kwargs": {"default_headers": {"Authorization": "Bearer sk-inline"}}},
        {"provider": "langchain", "class": f"{FAKES}:FakeListChatModel", "model": "a", "kwargs": {"model": "b"}},
        {"provider": "openai", "model": "m", "class": f"{FAKES}:FakeListChatModel"},
    ],
)
def test_bad_langchain_model_specs_are_refused_at_load(tmp_path, model):
    path = write_experiment(tmp_path, {"default": model})
    with pytest.raises(ConfigError) as info:
        load_experiment(path)
    assert info.value.field.startswith("models.default") and "sk-inline" not in str(info.value)


# ---- LangChain Embeddings ---------------------------------------------------------------
async def test_langchain_embeddings_through_the_embedder():
    embedder = LangChainEmbedder(DeterministicFakeEmbedding(size=24))
    assert isinstance(embedder, Embedder) and embedder.name == "langchain:DeterministicFakeEmbedding"
    assert embedder.dim == 24
    vectors = embedder.embed(["a cat", "a dog", "a cat"])
    assert vectors.shape == (3, 24) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(vectors[0], vectors[2]) and not np.array_equal(vectors[0], vectors[1])
    assert np.allclose(await embedder.aembed(["a cat", "a dog", "a cat"]), vectors)
    assert embedder.embed([]).shape == (0, 24)


def test_langchain_embeddings_from_the_experiment_file(tmp_path):
    path = write_experiment(
        tmp_path,
        {"default": {"provider": "fake"}},
        embeddings={"provider": "langchain", "class": "langchain_core.embeddings.fake:DeterministicFakeEmbedding", "kwargs": {"size": 16}},
    )
    settings = settings_for(load_experiment(path), Settings(data_dir=tmp_path / "data"))
    embedder = build_embedder(settings)
    assert isinstance(embedder, LangChainEmbedder) and embedder.dim == 16
    bad = settings.model_copy(update={"embeddings_class": "langchain_core.embeddings.fake:Nope"})
    with pytest.raises(ConfigError) as info:
        build_embedder(bad)
    assert info.value.field == "embeddings.class"
