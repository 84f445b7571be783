"""LangGraph Studio: every graph ``langgraph.json`` names loads by its path, as ``langgraph dev``
loads it (import the file, take the attribute, call a factory with a config), and compiles."""

from __future__ import annotations

import importlib.util
import inspect
import json
import sys
from pathlib import Path

import pytest
from langgraph.graph.state import CompiledStateGraph

ROOT = Path(__file__).resolve().parents[1]
CONFIG = json.loads((ROOT / "langgraph.json").read_text())
# Nodes each graph must have (the studio check that the right graph came back, not just any graph).
EXPECTED_NODES = {
    "dyad": {"orchestrator", "persona"},
    "group": {"orchestrator", "persona"},
    "interview": {"orchestrator", "interviewer", "respondent", "extract"},
    "negotiation": {"orchestrator", "persona", "critic", "termination"},
}


def _load(spec: str):
    """What langgraph's loader does with ``"./path/file.py:name"``: import the file as a module
    of its own, take the attribute, call it with a config if it is a factory."""
    path, _, attribute = spec.rpartition(":")
    file = (ROOT / path).resolve()
    module_name = f"_studio_{file.parent.name}_{file.stem}"
    module_spec = importlib.util.spec_from_file_location(module_name, file)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_name] = module
    try:
        module_spec.loader.exec_module(module)
    finally:
        sys.modules.pop(module_name, None)
    value = getattr(module, attribute)
    if callable(value) and not isinstance(value, CompiledStateGraph):
        # langgraph-api refuses a factory that does not take exactly one argument (the RunnableConfig)
        assert len(inspect.signature(value).parameters) == 1, f"{spec}: a factory takes exactly one argument, the config"
        value = value({"configurable": {}})
    return value


@pytest.fixture
def studio_env(monkeypatch, tmp_path):
    """Settings as Studio would read them, on the fake model in a temp data dir."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PERSONAE_LLM_PROVIDER", "fake")
    monkeypatch.setenv("PERSONAE_EMBEDDINGS_PROVIDER", "hashing")
    monkeypatch.setenv("PERSONAE_DATA_DIR", str(tmp_path / "data"))


def test_langgraph_json_has_the_format_langgraph_dev_reads():
    assert CONFIG["dependencies"] == ["."]
    assert set(CONFIG["graphs"]) == set(EXPECTED_NODES)
    for name, spec in CONFIG["graphs"].items():
        path, sep, attribute = spec.rpartition(":")
        assert sep and attribute.isidentifier(), f"{name}: expected ./path/file.py:attribute, got {spec}"
        assert path.startswith("./") and (ROOT / path).is_file(), f"{name}: {path} is not a file in the repository"


@pytest.mark.parametrize("name", sorted(EXPECTED_NODES))
def test_every_studio_entry_loads_and_compiles(name, studio_env):
    graph = _load(CONFIG["graphs"][name])
    assert isinstance(graph, CompiledStateGraph), f"{name}: got {type(graph).__name__}"
    nodes = set(graph.get_graph().nodes) - {"__start__", "__end__"}
    assert EXPECTED_NODES[name] <= nodes, f"{name}: nodes {sorted(nodes)}"
    assert graph.checkpointer is None  # the LangGraph server attaches its own


def test_loading_the_studio_module_builds_nothing(monkeypatch):
    """No side effects on import: importing the file creates no gateway and loads no model."""
    import personae.llm

    def refuse(*args, **kwargs):
        raise AssertionError("a gateway was built on import")

    monkeypatch.setattr(personae.llm, "build_gateway", refuse)
    spec = CONFIG["graphs"]["dyad"]
    path = (ROOT / spec.rpartition(":")[0]).resolve()
    module_spec = importlib.util.spec_from_file_location("_studio_import_only", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    assert callable(module.dyad)
