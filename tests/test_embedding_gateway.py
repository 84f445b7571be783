"""Embeddings requests go through the gateway: one endpoint's limits, retries, usage, cost and budget.

Real HTTP throughout: the openai client against the local test server, whose quota mode counts
chat and embeddings requests against one quota and answers 429 with headers past it. The
embedder and the gateway are wired as the flows and CLI wire them (``build_gateway`` and
``build_embedder`` from one :class:`Settings`), so the endpoint identity is derived as in a run.
Assertions are on counts (the server's peak of requests in flight, 429s, tokens), never on time.
"""

from __future__ import annotations

import asyncio

import pytest

from _flows_support import PERSONAS, SCENARIO, prefect_api_session  # noqa: F401
from personae.costs import BudgetMeter, ModelPrice, RunBudget
from personae.embeddings import build_embedder
from personae.errors import BudgetExceeded, ConfigError
from personae.experiment import EmbeddingsSpec, Experiment, price_table
from personae.llm import build_gateway
from personae.llm.gateway import EMBEDDINGS_ROLE
from personae.settings import Settings
from personae.testing.server import OpenAITestServer, TestServerConfig
from personae.tracking import usage_metrics

USER = [{"role": "user", "content": "Introduce yourself in one sentence."}]
EMBEDDING_MODEL = "test-embedding"


def settings_for_server(server: OpenAITestServer, tmp_path, **values) -> Settings:
    """Chat and embeddings at the test server with one key: one endpoint."""
    return Settings(
        data_dir=tmp_path, llm_base_url=server.base_url, llm_api_key="test-key", llm_model="test-chat",
        embeddings_base_url=server.base_url, embeddings_model=EMBEDDING_MODEL, embeddings_max_batch=0,
        cache_enabled=False, **values,
    )


async def test_chat_and_embeddings_share_the_endpoints_calls_in_flight(tmp_path):
    # the server holds its replies until 3 requests are in flight at once: the limit is reached, and never passed
    limit = 3
    config = TestServerConfig(latency_s=0.05, hold_until_in_flight=limit, hold_s=10.0)
    with OpenAITestServer(config) as server:
        settings = settings_for_server(server, tmp_path, llm_max_concurrency=limit, llm_max_retries=0)
        gateway = build_gateway(settings)
        embedder = build_embedder(settings, gateway=gateway)
        try:
            chats = [gateway.text(USER, seed=i) for i in range(12)]
            embeds = [embedder.aembed([f"text number {i}"]) for i in range(12)]
            await asyncio.gather(*chats, *embeds)
        finally:
            await embedder.aclose()
            await gateway.aclose()
        (limiter,) = gateway.endpoint_limiters().values()
    assert server.endpoint_counts["embeddings"] == 12 and server.endpoint_counts["chat.completions"] == 12
    assert server.gate_opened
    assert server.peak_in_flight == limit  # chat and embeddings together, at the server
    assert limiter.peak_in_flight == limit and limiter.calls == 24  # one limiter for both kinds


async def test_without_the_gateway_embeddings_pass_the_limit(tmp_path):
    # the control: the same calls with an embedder outside the gateway exceed the chat limit
    limit = 3
    config = TestServerConfig(latency_s=0.05, hold_until_in_flight=limit + 2, hold_s=10.0)
    with OpenAITestServer(config) as server:
        settings = settings_for_server(server, tmp_path, llm_max_concurrency=limit, llm_max_retries=0)
        gateway = build_gateway(settings)
        embedder = build_embedder(settings)
        try:
            await asyncio.gather(*(gateway.text(USER, seed=i) for i in range(6)), *(embedder.aembed([f"t {i}"]) for i in range(6)))
        finally:
            await embedder.aclose()
            await gateway.aclose()
    assert server.peak_in_flight > limit
    assert EMBEDDINGS_ROLE not in gateway.usage.roles


async def test_an_rpm_quota_shared_by_chat_and_embeddings_gets_no_429_at_the_limiter(tmp_path):
    rpm, n = 1200, 24  # a 2 s server bucket of 40 requests; the client's limiter at the same quota (a 1 s bucket)
    config = TestServerConfig(latency_s=0.02, quota_rpm=rpm, quota_window_s=2.0)
    with OpenAITestServer(config) as server:
        settings = settings_for_server(server, tmp_path, llm_max_concurrency=8, llm_rpm=rpm, llm_max_retries=0)
        gateway = build_gateway(settings)
        embedder = build_embedder(settings, gateway=gateway)
        try:
            await asyncio.gather(*(gateway.text(USER, seed=i) for i in range(n)), *(embedder.aembed([f"text {i}"]) for i in range(n)))
        finally:
            await embedder.aclose()
            await gateway.aclose()
        (limiter,) = gateway.endpoint_limiters().values()
    assert server.endpoint_counts["embeddings"] == n  # the quota counted them ...
    assert server.quota.admitted == 2 * n and server.quota.rejected == 0  # ... and none was refused
    assert limiter.throttled == 0 and limiter.calls == 2 * n


async def test_embeddings_429s_are_retried_by_the_gateway_and_feed_the_limiter(tmp_path):
    # no rate set on the client: the quota (a bucket of 2 requests per second) answers 429 with
    # Retry-After; the gateway retries (the SDK's own retries are off) and the limiter learns the quota
    config = TestServerConfig(quota_rpm=120, quota_window_s=1.0)
    with OpenAITestServer(config) as server:
        settings = settings_for_server(server, tmp_path, llm_max_concurrency=8, llm_max_retries=5)
        gateway = build_gateway(settings)
        embedder = build_embedder(settings, gateway=gateway)
        try:
            rows = await asyncio.gather(*(embedder.aembed([f"text {i}"]) for i in range(6)))
        finally:
            await embedder.aclose()
            await gateway.aclose()
        (limiter,) = gateway.endpoint_limiters().values()
    assert all(r.shape[0] == 1 for r in rows)
    assert server.quota.rejected >= 1 and limiter.throttled == server.quota.rejected
    assert limiter.retries == server.quota.rejected  # every 429 retried once by the gateway's policy, none by the SDK
    assert server.endpoint_counts["embeddings"] == embedder.stats.requests == 6 + server.quota.rejected
    assert limiter.rpm == 120  # adopted from the x-ratelimit-* headers of the embeddings replies
    usage = gateway.usage.roles[EMBEDDINGS_ROLE]
    assert usage.calls == 6 and usage.inputs == 6  # requests that were answered


async def test_embedding_tokens_appear_in_usage_and_cost_not_in_chat_calls(tmp_path):
    with OpenAITestServer() as server:
        settings = settings_for_server(server, tmp_path, prices={EMBEDDING_MODEL: ModelPrice(input_per_1m=20_000.0, output_per_1m=0)})
        gateway = build_gateway(settings)
        embedder = build_embedder(settings, gateway=gateway)
        texts = ["a first text to embed", "a second, somewhat longer text to embed"]
        try:
            await gateway.text(USER)
            await embedder.aembed(texts)
            await embedder.aembed(texts[:1])
        finally:
            await embedder.aclose()
            await gateway.aclose()
    usage = gateway.usage
    emb = usage.roles[EMBEDDINGS_ROLE]
    expected = embedder.stats.prompt_tokens  # what the endpoint reported in usage.prompt_tokens
    assert expected > 0 and (emb.calls, emb.inputs, emb.prompt_tokens) == (2, 3, expected)
    assert usage.total().calls == 1  # chat calls only: calls per utterance are unchanged
    experiment = Experiment.model_validate({
        "name": "emb", "graph": {"kind": "dyad"}, "personas_file": str(tmp_path / "personas.jsonl"),
        "scenarios": [{"name": "cafe", "setting": "a cafe", "roles": [{"name": "a"}, {"name": "b"}]}],
    })
    prices = price_table(experiment, settings)
    assert prices[EMBEDDINGS_ROLE] == ModelPrice(input_per_1m=20_000.0, output_per_1m=0)  # the settings' table, by model name
    own = experiment.model_copy(update={"embeddings": EmbeddingsSpec(price={"input_per_1m": 5.0})})
    assert price_table(own, settings)[EMBEDDINGS_ROLE] == ModelPrice(input_per_1m=5.0, output_per_1m=0)  # the experiment's wins
    metrics = usage_metrics(usage, model_for_role=experiment.model_for_role, prices_per_1k=prices)
    assert metrics["usage.embeddings.calls"] == 2 and metrics["usage.embeddings.inputs"] == 3
    assert metrics["usage.embeddings.tokens"] == expected
    assert metrics["usage.embeddings.cost"] == pytest.approx(expected * 20_000.0 / 1e6, abs=1e-6)
    assert metrics["usage.calls"] == 1
    assert metrics["usage.cost"] == pytest.approx(metrics["usage.embeddings.cost"] + metrics["usage.default.cost"], abs=1e-6)


async def test_a_token_budget_counts_embeddings_and_stops_them_before_they_are_sent(tmp_path):
    with OpenAITestServer() as server:
        settings = settings_for_server(server, tmp_path)
        gateway = build_gateway(settings)
        meter = BudgetMeter.start(RunBudget(max_tokens=30), {EMBEDDINGS_ROLE: ModelPrice(input_per_1m=1_000_000.0, output_per_1m=0)})
        embedder = build_embedder(settings, gateway=gateway, meter=meter)
        text = "twenty characters..." * 4  # 80 characters: 20 tokens
        try:
            await embedder.aembed([text])
            assert (meter.spent.tokens, meter.spent.model_calls) == (20, 0)  # tokens, not a model call
            assert meter.spent.cost == pytest.approx(20.0)
            await embedder.aembed([text])  # 20 < 30: goes out, and reaches 40
            with pytest.raises(BudgetExceeded) as stopped:
                await embedder.aembed([text])
        finally:
            await embedder.aclose()
            await gateway.aclose()
    assert stopped.value.limit_name == "max_tokens" and meter.spent.tokens == 40
    assert server.endpoint_counts["embeddings"] == 2  # the third was never sent


def test_a_sync_embed_goes_through_the_gateway_too(tmp_path):
    with OpenAITestServer() as server:
        settings = settings_for_server(server, tmp_path)
        gateway = build_gateway(settings)
        embedder = build_embedder(settings, gateway=gateway)
        rows = embedder.embed(["one", "two"])
        dim = embedder.dim
        embedder.close()
        asyncio.run(gateway.aclose())
    assert rows.shape == (2, dim)
    assert gateway.usage.roles[EMBEDDINGS_ROLE].calls == 1
    (limiter,) = gateway.endpoint_limiters().values()
    assert limiter.calls == 1


async def test_langchain_openai_embeddings_share_the_endpoint_and_are_counted(tmp_path):
    # langchain-openai's OpenAIEmbeddings at the test server, with the chat model's key: one endpoint
    # (tiktoken is never touched: check_embedding_ctx_length=False sends the strings as they are)
    limit = 2
    config = TestServerConfig(latency_s=0.05, hold_until_in_flight=limit, hold_s=10.0)
    with OpenAITestServer(config) as server:
        settings = settings_for_server(server, tmp_path, llm_max_concurrency=limit, llm_max_retries=0).model_copy(update={
            "embeddings_provider": "langchain", "embeddings_class": "langchain_openai:OpenAIEmbeddings",
            "embeddings_kwargs": {"base_url": server.base_url, "api_key": "test-key", "check_embedding_ctx_length": False},
        })
        gateway = build_gateway(settings)
        embedder = build_embedder(settings, gateway=gateway)
        texts = [f"text number {i}" for i in range(8)]
        try:
            await asyncio.gather(*(gateway.text(USER, seed=i) for i in range(6)), *(embedder.aembed([t]) for t in texts))
        finally:
            await gateway.aclose()
    assert list(gateway.limits.endpoints()) == [gateway.endpoint_limiters().popitem()[0]]  # one endpoint for both
    assert server.endpoint_counts["embeddings"] == 8 and server.peak_in_flight == limit
    usage = gateway.usage.roles[EMBEDDINGS_ROLE]
    assert (usage.calls, usage.inputs) == (8, 8)
    assert usage.prompt_tokens == sum((len(t) + 3) // 4 for t in texts)  # LangChain reports none: estimated


def test_a_money_budget_needs_a_price_for_remote_embeddings(tmp_path):
    from personae.experiment import budget_meter

    experiment = Experiment.model_validate({
        "name": "emb", "graph": {"kind": "dyad"}, "personas_file": str(tmp_path / "personas.jsonl"),
        "scenarios": [{"name": "cafe", "setting": "a cafe", "roles": [{"name": "a"}, {"name": "b"}]}],
        "models": {"default": {"provider": "fake"}}, "budget": {"max_cost": 1.0},
        "embeddings": {"provider": "openai", "model": "emb", "base_url": "http://127.0.0.1:9/v1"},
    })
    settings = Settings(data_dir=tmp_path)
    with pytest.raises(ConfigError) as info:
        budget_meter(experiment, settings)
    assert info.value.field == "embeddings.price"
    priced = experiment.model_copy(update={"embeddings": EmbeddingsSpec(**{**experiment.embeddings.model_dump(), "price": {"input_per_1m": 0.02}})})
    assert budget_meter(priced, settings).prices[EMBEDDINGS_ROLE] == ModelPrice(input_per_1m=0.02, output_per_1m=0)
    hashing = experiment.model_copy(update={"embeddings": EmbeddingsSpec(provider="hashing")})
    assert budget_meter(hashing, settings) is not None  # an in-process embedder costs nothing


@pytest.mark.slow
def test_a_simulation_with_memory_counts_its_embeddings_in_the_stage_metrics(tmp_path, openai_server, prefect_api_session):
    import json

    import yaml

    from personae.flows.pipeline import pipeline_flow

    (tmp_path / "personas.jsonl").write_text("".join(json.dumps(p) + "\n" for p in PERSONAS))
    url = openai_server.base_url
    data = {
        "name": "emb-flow", "seed": 3, "personas_file": "personas.jsonl", "scenarios": [SCENARIO],
        "models": {"default": {"provider": "openai", "model": "chat-a", "base_url": url, "max_concurrency": 2}},
        "embeddings": {"provider": "openai", "model": EMBEDDING_MODEL, "base_url": url, "price": {"input_per_1m": 1000.0}},
        "graph": {"kind": "dyad", "memory": {"enabled": True}},
        "simulation": {"n_conversations": 2, "concurrency": 2, "shards": 2},
    }
    path = tmp_path / "emb-flow.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    result = pipeline_flow(experiment=str(path), stages=["generate", "simulate"], track=False, data_dir=str(tmp_path / "data"))
    m = result.metrics
    sent = openai_server.endpoint_counts["embeddings"]
    assert sent > 0 and m["simulate.usage.embeddings.calls"] == sent  # every request, the memory's and the shards' own
    assert m["simulate.usage.embeddings.tokens"] > 0
    assert m["simulate.usage.embeddings.cost"] == pytest.approx(m["simulate.usage.embeddings.tokens"] * 1000.0 / 1e6, abs=1e-6)
    assert m["simulate.usage.calls"] == openai_server.endpoint_counts["chat.completions"]  # chat calls only
    assert openai_server.peak_in_flight <= 2  # the model's limit, embeddings included


def test_the_estimate_spreads_a_stages_embeddings_over_its_units():
    from personae.estimate import _spread_embeddings, _usage
    from personae.forecast import StageSample, UnitUsage, forecast
    from personae.llm.gateway import UsageTracker

    tracker = UsageTracker()
    before = _usage(tracker)
    for _ in range(4):  # the stage's units shared the embedder: 4 requests of 2 texts, 10 tokens each
        tracker.record_embedding(inputs=2, prompt_tokens=10, latency_s=0.01)
    units = [{"persona": UnitUsage(calls=3, prompt_tokens=30, completion_tokens=6)} for _ in range(2)]
    stage = StageSample(stage="simulate", unit="conversation", units_total=10, units=units)
    _spread_embeddings(stage, tracker, before)
    assert [u[EMBEDDINGS_ROLE].calls for u in stage.units] == [2, 2] and stage.units[0][EMBEDDINGS_ROLE].prompt_tokens == 20
    price = {EMBEDDINGS_ROLE: ModelPrice(input_per_1m=1e6, output_per_1m=0), "persona": None}
    result = forecast([stage], price_for_role=price.get)
    assert result.row("simulate", EMBEDDINGS_ROLE).calls.value == pytest.approx(20)  # requests, on their own row
    total = result.row("simulate")
    assert total.calls.value == pytest.approx(30) and total.prompt_tokens.value == pytest.approx(300)  # chat, as usage.* counts
    assert total.cost.value == pytest.approx(200)  # but the embeddings' cost is in it


def test_an_estimate_on_the_test_server_sends_no_embedding_to_the_real_endpoint(tmp_path, openai_server):
    """The experiment's models and embeddings are the 'paid' endpoint (here another test server):
    the estimate's sample reroutes both to its own in-process test server, so the paid one sees
    no request at all, and the forecast still has the embeddings' row."""
    import json

    import yaml

    from personae.estimate import estimate_experiment
    from personae.experiment import load_experiment, settings_for

    (tmp_path / "personas.jsonl").write_text("".join(json.dumps(p) + "\n" for p in PERSONAS))
    paid = openai_server.base_url
    data = {
        "name": "estimate-emb", "seed": 5, "personas_file": "personas.jsonl", "scenarios": [SCENARIO],
        "models": {"default": {"provider": "openai", "model": "chat-a", "base_url": paid, "price": {"input_per_1m": 1.0, "output_per_1m": 2.0}}},
        "embeddings": {"provider": "openai", "model": EMBEDDING_MODEL, "base_url": paid, "price": {"input_per_1m": 0.5}},
        "graph": {"kind": "dyad", "memory": {"enabled": True}},
        "simulation": {"n_conversations": 4, "concurrency": 2},
    }
    path = tmp_path / "estimate-emb.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    exp = load_experiment(path)
    forecast = estimate_experiment(exp, settings_for(exp, Settings(data_dir=tmp_path / "data")), sample=2)
    assert openai_server.endpoint_counts.get("embeddings", 0) == 0 and openai_server.endpoint_counts.get("chat.completions", 0) == 0
    assert forecast.row("simulate", EMBEDDINGS_ROLE).calls.value > 0
