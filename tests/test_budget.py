"""Prices, the experiment budget and the cost forecast (issue 16, part 3).

Fast tests check the arithmetic and the config errors; the slow ones run the pipeline
over real HTTP against the local OpenAI-compatible test server: a budget stops a run
cleanly and a rerun with a larger one resumes to the same result, and ``personae
estimate`` forecasts the actual run within 25 %.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
import yaml

from _flows_support import PERSONAS, SCENARIO, prefect_api_session, run_cli  # noqa: F401
from personae.costs import BudgetMeter, BudgetSpend, ModelPrice, RunBudget
from personae.errors import BudgetExceeded, ConfigError
from personae.experiment import budget_meter, load_experiment, price_table, settings_for
from personae.settings import Settings

JUDGED = {"enabled": True, "tasks": ["expected_action"], "questions_per_task": 1, "environments_per_persona": 1}


def server_experiment(
    tmp_path: Path, base_url: str, *, name: str = "budget-test", n_conversations: int = 6, population: int | None = 4,
    concurrency: int = 8, shards: int = 1, budget: dict | None = None, judged: bool = False, models: dict | None = None,
) -> Path:
    """An experiment whose models are the test server at ``base_url`` (a chat model and a
    pricier judge for the critic), hashing embeddings, a dyad support scenario."""
    models = models or {
        "default": {"provider": "openai", "model": "chat-a", "base_url": base_url, "price": {"input_per_1m": 0.5, "output_per_1m": 1.5}},
        "judge": {"provider": "openai", "model": "judge-b", "base_url": base_url, "price_per_1k_tokens": 0.002},
    }
    data: dict = {
        "name": name,
        "seed": 7,
        "models": models,
        "roles": {"critic": "judge", "judge_a": "judge", "judge_b": "default"} if "judge" in models else {},
        "embeddings": {"provider": "hashing"},
        "scenarios": [SCENARIO],
        "graph": {"kind": "dyad"},
        "simulation": {"n_conversations": n_conversations, "concurrency": concurrency, "shards": shards},
    }
    if population:
        data["population"] = {"size": population, "seed": 3, "batch_size": 2}
    else:
        (tmp_path / "personas.jsonl").write_text("".join(json.dumps(p) + "\n" for p in PERSONAS))
        data["personas_file"] = "personas.jsonl"
    if judged:
        data["evaluation"] = {"judged": JUDGED}
    if budget:
        data["budget"] = budget
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# ---- prices and budget config -------------------------------------------------------------
def test_prices_per_model_and_the_per_1k_shorthand(tmp_path):
    exp = load_experiment(server_experiment(tmp_path, "http://127.0.0.1:9/v1"))
    table = price_table(exp, Settings(data_dir=tmp_path / "d"))
    assert table["default"] == ModelPrice(input_per_1m=0.5, output_per_1m=1.5)
    assert table["judge"] == ModelPrice(input_per_1m=2.0, output_per_1m=2.0)  # 0.002 per 1k, in and out
    assert table["default"].cost(1_000_000, 2_000_000) == pytest.approx(3.5)


def test_a_settings_price_table_prices_models_by_name(tmp_path):
    models = {"default": {"provider": "openai", "model": "gpt-x", "base_url": "http://127.0.0.1:9/v1"}}
    exp = load_experiment(server_experiment(tmp_path, "http://127.0.0.1:9/v1", models=models))
    settings = Settings(data_dir=tmp_path / "d", prices={"gpt-x": {"input_per_1m": 1.0, "output_per_1m": 4.0}})
    assert price_table(exp, settings)["default"] == ModelPrice(input_per_1m=1.0, output_per_1m=4.0)
    assert price_table(exp, Settings(data_dir=tmp_path / "d"))["default"] is None  # unknown: counted as free


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"budget": {"max_tokens": 0}}, "budget.max_tokens"),
        ({"budget": {"max_cost": -1}}, "budget.max_cost"),
        ({"budget": {"max_dollars": 5}}, "budget.max_dollars"),
        ({"models": {"default": {"provider": "fake", "price": {"input_per_1m": -1, "output_per_1m": 1}}}}, "models.default.price.input_per_1m"),
        ({"models": {"default": {"provider": "fake", "price": {"input_per_1m": 1}}}}, "models.default.price.output_per_1m"),
    ],
)
def test_bad_budget_or_price_is_a_config_error_naming_the_field(tmp_path, change, field):
    data = yaml.safe_load(server_experiment(tmp_path, "http://127.0.0.1:9/v1").read_text())
    data.update(change)
    if "models" in change:
        data["roles"] = {}
    with pytest.raises(ConfigError) as info:
        load_experiment(_write(tmp_path, data))
    assert info.value.field == field, str(info.value)


def test_price_and_its_shorthand_together_are_refused(tmp_path):
    data = yaml.safe_load(server_experiment(tmp_path, "http://127.0.0.1:9/v1").read_text())
    data["models"]["default"]["price_per_1k_tokens"] = 0.001
    with pytest.raises(ConfigError) as info:
        load_experiment(_write(tmp_path, data))
    assert info.value.field == "models.default" and "not both" in str(info.value)


def test_a_money_budget_needs_a_price_for_every_model(tmp_path):
    models = {"default": {"provider": "openai", "model": "gpt-x", "base_url": "http://127.0.0.1:9/v1"}}
    exp = load_experiment(server_experiment(tmp_path, "http://127.0.0.1:9/v1", models=models, budget={"max_cost": 1.0}))
    with pytest.raises(ConfigError) as info:
        budget_meter(exp, Settings(data_dir=tmp_path / "d"))
    assert info.value.field == "models.default.price" and "budget.max_cost" in str(info.value)
    # a token budget needs no price
    assert budget_meter(exp.model_copy(update={"budget": RunBudget(max_tokens=10)}), Settings(data_dir=tmp_path / "d")) is not None


def test_run_refuses_an_unpriced_money_budget_before_starting(tmp_path):
    models = {"default": {"provider": "openai", "model": "gpt-x", "base_url": "http://127.0.0.1:9/v1"}}
    path = server_experiment(tmp_path, "http://127.0.0.1:9/v1", models=models, budget={"max_cost": 1.0})
    data_dir = tmp_path / "data"
    with pytest.raises(ConfigError, match="budget.max_cost"):
        run_cli(["run", str(path), "--no-track", "--data-dir", str(data_dir)])
    assert not Settings(data_dir=data_dir).run_dir("budget-test").exists()


def test_meter_shares_limits_with_its_children_and_counts_their_own_spend():
    meter = BudgetMeter.start(RunBudget(max_model_calls=3, max_cost=1.0), {"default": ModelPrice(input_per_1m=1e5, output_per_1m=2e5)}, BudgetSpend(model_calls=1))
    a, b = meter.child(), meter.child()
    a.check()
    a.charge("default", 1, 1)  # 0.1 + 0.2
    b.charge("unpriced", 5, 5)
    assert meter.spent.model_calls == 3 and meter.spent.tokens == 12 and meter.spent.cost == pytest.approx(0.3)
    assert a.own.model_calls == 1 and b.own.tokens == 10
    with pytest.raises(BudgetExceeded) as info:
        b.check()
    assert info.value.limit_name == "max_model_calls" and info.value.value == 3
    import pickle

    copy = pickle.loads(pickle.dumps(a))  # a shard on another process: an independent meter of the total so far
    assert copy.spent.model_calls == 3 and copy.parent is None


def test_dask_shards_each_get_an_equal_share_of_what_is_left(tmp_path):
    from personae.experiment import Experiment
    from personae.flows.simulate import _shard_meter

    meter = BudgetMeter.start(RunBudget(max_model_calls=100, max_cost=1.0), {}, BudgetSpend(model_calls=40, cost=0.4))
    exp = load_experiment(server_experiment(tmp_path, "http://127.0.0.1:9/v1", population=None))
    assert _shard_meter(meter, exp, 3) is meter  # thread shards share the run's meter
    dask = Experiment.model_validate({**exp.model_dump(), "simulation": {**exp.simulation.model_dump(), "dask": True}, "personas_file": str(exp.personas_file)})
    share = _shard_meter(meter, dask, 3)
    assert share is not meter and share.budget.max_model_calls == 20 and share.budget.max_cost == pytest.approx(0.2)
    assert share.spent.model_calls == 0


def test_usage_cost_prices_prompt_and_completion_tokens_apart():
    from personae.llm.base import LLMResponse, Usage
    from personae.llm.gateway import UsageTracker
    from personae.tracking import usage_metrics

    usage = UsageTracker()
    usage.record("persona", LLMResponse(text="x", usage=Usage(prompt_tokens=1000, completion_tokens=100)))
    usage.record("persona", LLMResponse(text="x", usage=Usage(prompt_tokens=1000, completion_tokens=100), cached=True))
    metrics = usage_metrics(usage, prices_per_1k={"default": ModelPrice(input_per_1m=1.0, output_per_1m=10.0)})
    # half the calls reached a model: half of (2000 × 1 + 200 × 10) / 1M
    assert metrics["usage.cost"] == pytest.approx(0.002)
    assert metrics["usage.persona.cost"] == pytest.approx(0.002)


def test_forecast_scales_per_unit_means_with_a_t_interval():
    from personae.forecast import StageSample, UnitUsage, forecast, t_quantile

    units = [{"persona": UnitUsage(calls=c, prompt_tokens=10 * c, completion_tokens=c)} for c in (8, 10, 12)]
    sample = StageSample(stage="simulate", unit="conversation", units_total=100, units=units,
                         overhead={"judge": UnitUsage(calls=5, prompt_tokens=50)})
    result = forecast([sample], price_for_role=lambda role: ModelPrice(input_per_1m=1e6, output_per_1m=0))
    row = result.row("simulate", "persona")
    assert row.calls.value == pytest.approx(1000)
    half = 100 * t_quantile(2) * 2.0 / 3 ** 0.5
    assert (row.calls.low, row.calls.high) == pytest.approx((1000 - half, 1000 + half))
    total = result.row("simulate")
    assert total.calls.value == pytest.approx(1005) and total.prompt_tokens.value == pytest.approx(10050)
    assert total.cost.value == pytest.approx(10050)  # 1 per prompt token
    assert result.row().calls.value == pytest.approx(1005)
    one = forecast([sample.model_copy(update={"units": units[:1]})], price_for_role=lambda role: None)
    assert one.row("simulate", "persona").calls.low is None  # no interval from one unit


# ---- over real HTTP -------------------------------------------------------------------------------
def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def _transcripts(path: Path) -> dict[str, list]:
    return {c["id"]: [(u["id"], u["speaker"], u["text"]) for u in c["utterances"]] for c in _records(path)}


def _checkpointed(run_dir: Path) -> set[str]:
    threads: set[str] = set()
    for db in (run_dir / "checkpoints").glob("*.sqlite"):
        with sqlite3.connect(db) as conn:
            threads |= {row[0] for row in conn.execute("SELECT DISTINCT thread_id FROM checkpoints")}
    return threads


@pytest.mark.slow
def test_budget_stops_the_run_cleanly_and_a_larger_budget_resumes_to_the_same_result(tmp_path, openai_server, prefect_api_session):
    n = 6
    reference_dir, data_dir = tmp_path / "reference", tmp_path / "data"
    exp_dir = tmp_path / "exp"
    exp_dir.mkdir()

    def experiment(budget: dict | None) -> Path:  # two thread shards, one conversation in flight each
        return server_experiment(exp_dir, openai_server.base_url, n_conversations=n, concurrency=1, shards=2, budget=budget)

    def run(budget: dict | None, where: Path):
        return run_cli(["run", str(experiment(budget)), "--no-track", "--data-dir", str(where), "--stage", "generate", "--stage", "simulate"])

    from personae.flows.pipeline import pipeline_flow

    unlimited = pipeline_flow(experiment=str(experiment(None)), stages=["generate", "simulate"], track=False, data_dir=str(reference_dir))
    assert unlimited.budget_stop is None
    # stop the second run half-way through the simulation, whatever a conversation costs today
    simulation_calls = unlimited.metrics["simulate.usage.model_calls"]
    assert simulation_calls >= 4 * n, unlimited.metrics
    ref_run = Settings(data_dir=reference_dir).run_dir("budget-test")
    reference = _transcripts(ref_run / "conversations.jsonl")
    assert len(reference) == n
    generation_calls = len(_records(ref_run / "personas.jsonl")) * 2  # a plausibility check and a crafting call each
    run_dir = Settings(data_dir=data_dir).run_dir("budget-test")

    # 1. the budget runs out during generation: the finished batch of 2 personas is kept, nothing is simulated
    first = run({"max_model_calls": 5}, data_dir)
    assert first.exit_code == 3, first.output
    assert "stopped by the budget" in first.output and "max_model_calls" in first.output and "generate" in first.output
    assert len(_records(run_dir / "personas.jsonl")) == 2
    assert not (run_dir / "conversations.jsonl").exists()

    # 2. a larger budget counts generation and simulation (both shards) together and stops mid-simulation
    limit = generation_calls + int(simulation_calls // 2)
    second = pipeline_flow(experiment=str(experiment({"max_model_calls": limit})), stages=["generate", "simulate"], track=False, data_dir=str(data_dir))
    assert second.budget_stop and "max_model_calls" in second.budget_stop and "simulate" in second.budget_stop
    m = second.metrics
    # the 2 personas written in step 1 are not redone (and calls step 1 made for the next batch replay from the cache)
    assert 0 < m["generate.budget.model_calls"] <= generation_calls - 4
    assert m["budget.model_calls"] == m["generate.budget.model_calls"] + m["simulate.budget.model_calls"]
    # the run's spend is charged against one budget over both stages; at most the 2 calls in flight pass it
    assert limit <= m["budget.model_calls"] <= limit + 2, m
    written = _records(run_dir / "conversations.jsonl")
    print(f"budget stop: {len(written)} of {n} conversations written, {m['budget.model_calls']:.0f} calls for a limit of {limit}")
    assert 1 <= len(written) < n
    assert {c["status"] for c in written} == {"complete"}, "a budget stop is never recorded as a failure"
    assert _checkpointed(run_dir) - {c["id"] for c in written}, "conversations stopped in flight keep their checkpoints"
    for conversation in written:
        assert _transcripts(run_dir / "conversations.jsonl")[conversation["id"]] == reference[conversation["id"]]

    # 3. a budget large enough: the rest is done, nothing twice, the same result as without a budget
    third = run({"max_model_calls": 10_000, "max_tokens": 10_000_000}, data_dir)
    assert third.exit_code == 0, third.output
    records = _records(run_dir / "conversations.jsonl")
    assert len(records) == n and {c["status"] for c in records} == {"complete"}
    assert _transcripts(run_dir / "conversations.jsonl") == reference


@pytest.mark.slow
def test_forecast_is_within_25_percent_of_the_actual_run(tmp_path, openai_server, prefect_api_session):
    from personae.estimate import estimate_experiment
    from personae.flows.pipeline import pipeline_flow

    path = server_experiment(tmp_path, openai_server.base_url, name="forecast-test", population=8, n_conversations=12, judged=True)
    exp = load_experiment(path)
    data_dir = tmp_path / "data"
    # the settings the run gets (the experiment's hashing embeddings: the critic's risk signals use them)
    forecast = estimate_experiment(exp, settings_for(exp, Settings(data_dir=data_dir)), sample=4)  # its own in-process test server
    result = pipeline_flow(experiment=str(path), track=False, data_dir=str(data_dir))
    m = result.metrics
    ratios = {}
    for stage in ("generate", "simulate", "evaluate"):
        row = forecast.row(stage)
        ratios[stage] = {
            "calls": row.calls.value / m[f"{stage}.usage.calls"],
            "tokens": row.tokens / m[f"{stage}.usage.tokens"],
            "cost": row.cost.value / m[f"{stage}.usage.cost"],
        }
    total = forecast.row()
    ratios["total"] = {"calls": total.calls.value / m["usage.calls"], "tokens": total.tokens / m["usage.tokens"], "cost": total.cost.value / m["usage.cost"]}
    print("forecast / actual:", json.dumps(ratios, indent=1))
    # the run's forecast: within 25 % of what the run spent
    for what, ratio in ratios["total"].items():
        assert 0.75 <= ratio <= 1.25, f"total {what}: forecast/actual = {ratio:.3f}"
    # per stage, a sample of 4 units is noisier (the critic judges only drafts at risk, so its calls
    # vary from conversation to conversation): within 25 %, or inside the forecast's own interval
    for stage in ("generate", "simulate", "evaluate"):
        calls, actual = forecast.row(stage).calls, m[f"{stage}.usage.calls"]
        inside = calls.low is not None and calls.low <= actual <= calls.high
        assert 0.75 <= ratios[stage]["calls"] <= 1.25 or inside, f"{stage}: forecast {calls} against {actual} calls"
        assert 0.75 <= ratios[stage]["tokens"] <= 1.25 or inside, f"{stage}: forecast tokens/actual = {ratios[stage]['tokens']:.3f}"
    assert m["usage.cost"] > 0


@pytest.mark.slow
def test_estimate_cli_prints_a_table_and_json(tmp_path, openai_server):
    path = server_experiment(tmp_path, openai_server.base_url, population=None, n_conversations=5)
    shown = run_cli(["estimate", "--help"])
    assert shown.exit_code == 0 and "--sample" in shown.output and "--test-server" in shown.output and "interval" in shown.output
    result = run_cli(["estimate", str(path), "--sample", "2", "--json", "--data-dir", str(tmp_path / "d")])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    stages = {row["stage"] for row in data["rows"]}
    assert stages == {"simulate", "*"}  # personas from a file: no generation; judged evaluation off
    simulate = next(r for r in data["rows"] if r["stage"] == "simulate" and r["role"] == "*")
    assert simulate["units_total"] == 5 and simulate["units_sampled"] == 2 and simulate["calls"]["value"] > 0
    table = run_cli(["estimate", str(path), "--sample", "2", "--data-dir", str(tmp_path / "d")])
    assert table.exit_code == 0, table.output
    assert "simulate" in table.output and "persona" in table.output
    both = run_cli(["estimate", str(path), "--test-server", "--experiment-models"])
    assert both.exit_code != 0
