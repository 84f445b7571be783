"""The experiment file: validation errors name file and field; keys only by env var name;
paths relative to the file; gateway wiring from the models and role routing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from personae.errors import ConfigError
from personae.experiment import Experiment, build_gateway_for, describe_models, load_experiment, settings_for
from personae.settings import Settings

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

BASE = {
    "name": "exp-1",
    "models": {"default": {"provider": "fake"}},
    "personas_file": "personas.jsonl",
    "scenarios": [{"name": "chat", "roles": [{"name": "a"}, {"name": "b"}]}],
    "graph": {"kind": "dyad"},
}


def _write(tmp_path: Path, data: dict, name: str = "exp.yaml") -> Path:
    (tmp_path / "personas.jsonl").write_text(json.dumps({"name": "Ana"}) + "\n")
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def _error(tmp_path: Path, **changes) -> ConfigError:
    data = {**BASE, **changes}
    data = {k: v for k, v in data.items() if v is not None}
    with pytest.raises(ConfigError) as info:
        load_experiment(_write(tmp_path, data))
    return info.value


def test_a_valid_file_loads_with_paths_relative_to_it(tmp_path, monkeypatch):
    monkeypatch.chdir("/")
    exp = load_experiment(_write(tmp_path, {**BASE, "data_dir": "out"}))
    assert exp.personas_file == tmp_path / "personas.jsonl"
    assert exp.data_dir == tmp_path / "out"
    assert exp.source == tmp_path / "exp.yaml"
    assert settings_for(exp, Settings()).root == tmp_path / "out"


@pytest.mark.parametrize(
    ("changes", "field", "message"),
    [
        ({"nmae": "x"}, "nmae", "no such field"),
        ({"name": "bad name/with slash"}, "name", "pattern"),
        ({"scenarios": []}, "scenarios", "at least 1"),
        ({"graph": {"kind": "triad"}}, "graph.kind", "dyad"),
        ({"simulation": {"n_conversations": 0}}, "simulation.n_conversations", "greater than or equal to 1"),
        ({"simulation": {"dask": "localhost:8786"}}, "simulation.dask", "tcp://"),
        ({"models": {"default": {"provider": "fake", "api_key": "sk-oops"}}}, "models.default", "api_key_env"),
        ({"models": {"default": {"provider": "openai", "api_key_env": "not a name"}}}, "models.default.api_key_env", "pattern"),
        ({"models": {"default": {"provider": "local", "base_url": "http://x"}}}, "models.default", "openai"),
        ({"roles": {"critic": "judge"}}, "<root>", "judge"),
        ({"schedule": {"interval_s": 0}}, "schedule.interval_s", "greater than 0"),
        ({"schedule": {"cron": "0 3 * * *", "interval_s": 60}}, "schedule", "exactly one"),
        ({"personas_file": None}, "<root>", "exactly one of population"),
        ({"population": {"size": 3}}, "<root>", "exactly one of population"),
        ({"evaluation": {"judged": {"judges": ["only-one"]}}}, "evaluation.judged.judges", "at least 2"),
    ],
)
def test_validation_errors_name_the_file_and_the_field(tmp_path, changes, field, message):
    error = _error(tmp_path, **changes)
    assert error.file == str(tmp_path / "exp.yaml")
    assert error.field == field
    assert message in str(error)


def test_missing_files_and_bad_yaml_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_experiment(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="invalid YAML") as info:
        load_experiment(bad)
    assert info.value.line is not None
    error = _error(tmp_path, personas_file="missing.jsonl")
    assert error.field == "personas_file"


def test_scenarios_and_population_may_come_from_files(tmp_path):
    (tmp_path / "scen.yaml").write_text(yaml.safe_dump([{"name": "s1", "roles": [{"name": "a"}, {"name": "b"}]}]))
    (tmp_path / "pop.yaml").write_text(yaml.safe_dump({"size": 5, "seed": 2}))
    data = {**BASE, "scenarios": "scen.yaml", "population": "pop.yaml"}
    del data["personas_file"]
    exp = load_experiment(_write(tmp_path, data))
    assert [s.name for s in exp.scenarios] == ["s1"]
    assert exp.population.size == 5 and exp.population.seed == 2


def test_memory_enabled_switches_on_graph_memory_and_refuses_local_qdrant_on_dask(tmp_path):
    exp = load_experiment(_write(tmp_path, {**BASE, "memory": {"enabled": True}}))
    assert exp.memory_enabled and exp.graph.memory.enabled
    error = _error(tmp_path, memory={"enabled": True}, simulation={"dask": True})
    assert "Qdrant server" in str(error)


async def test_gateway_routes_roles_and_reads_keys_only_from_env(tmp_path, monkeypatch, settings):
    data = {
        **BASE,
        "models": {
            "default": {"provider": "fake"},
            "judge": {"provider": "openai", "model": "m", "base_url": "http://127.0.0.1:9/v1", "api_key_env": "JUDGE_KEY"},
        },
        "roles": {"critic": "judge"},
    }
    exp = load_experiment(_write(tmp_path, data))
    with pytest.raises(ConfigError, match="JUDGE_KEY is not set") as info:
        build_gateway_for(exp, settings)
    assert info.value.field == "models.judge.api_key_env"
    monkeypatch.setenv("JUDGE_KEY", "k-123")
    gateway = build_gateway_for(exp, settings)
    try:
        assert gateway.describe() == {"default": "fake:fake-chat", "judge": "openai:m"}
        assert gateway.model_for("critic").model == "m" and gateway.model_for("persona").model == "fake-chat"
        assert exp.model_for_role("critic") == "judge" and exp.model_for_role("persona") == "default"
        assert describe_models(exp, settings) == gateway.describe()
    finally:
        await gateway.aclose()


def test_a_model_with_its_own_endpoint_never_gets_the_default_key(tmp_path, settings):
    from personae.experiment import _provider
    from personae.experiment import ModelSpec

    keyed = settings.model_copy(update={"llm_api_key": "sk-default-key-0000"})
    own = _provider("x", ModelSpec(provider="openai", model="m", base_url="http://127.0.0.1:9/v1"), keyed)
    shared = _provider("y", ModelSpec(provider="openai", model="m"), keyed)
    assert own._client.api_key != "sk-default-key-0000"
    assert shared._client.api_key == "sk-default-key-0000"


@pytest.mark.parametrize("name", ["quickstart", "customer_support", "focus_group", "survey_interview", "multi_session"])
def test_examples_are_valid(name):
    exp = load_experiment(EXAMPLES / f"{name}.yaml")
    assert isinstance(exp, Experiment) and exp.name
