"""Core pieces without HTTP: the gateway over the fakes, JSON repair, JSONL, validation, error pickling."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import pickle
import time

import pytest
from pydantic import BaseModel, Field

import personae.errors as errors_module
from personae.errors import (
    BudgetExceeded,
    ConfigError,
    MissingExtra,
    ModelCallError,
    ModelOutputError,
    PersonaeError,
    StoreLockedError,
    UnsupportedFeature,
    WorkerProcessError,
)
from personae.jsonl import append_jsonl, iter_jsonl, read_jsonl, read_jsonl_dicts, write_jsonl
from personae.llm import Budget, Gateway, LLMRequest, ResponseFormat
from personae.llm.structured import extract_json, parse_structured
from personae.llm.testing import FakeLLM, ScriptedLLM
from personae.models import Persona
from personae.validation import load_data_file, load_model_file

USER = [{"role": "user", "content": "Who are you?"}]


class Profile(BaseModel):
    name: str
    age: int = Field(ge=0, le=120)
    tags: list[str]


# ---- the gateway over the fakes -------------------------------------------------------------


async def test_fake_llm_through_the_gateway_is_deterministic_and_schema_valid():
    fake_a, fake_b = FakeLLM(seed=0), FakeLLM(seed=0)
    a, b = Gateway(fake_a), Gateway(fake_b)
    first = await a.text(USER, seed=1)
    assert first.text == (await b.text(USER, seed=1)).text
    assert first.text != (await a.text(USER, seed=2)).text
    profile = await a.structured(USER, Profile, seed=1)
    assert isinstance(profile, Profile) and profile == await b.structured(USER, Profile, seed=1)
    assert [r.response_format for r in fake_a.requests] == [ResponseFormat.TEXT, ResponseFormat.TEXT, ResponseFormat.JSON_SCHEMA]
    assert a.usage.snapshot()["default.calls"] == 3


async def test_fake_llm_concurrency_is_capped_by_the_gateway():
    gateway = Gateway(FakeLLM(latency_s=0.05), max_concurrency=4)
    started = time.perf_counter()
    await asyncio.gather(*(gateway.text(USER, seed=i) for i in range(16)))
    assert gateway.peak_in_flight == 4
    assert time.perf_counter() - started >= 4 * 0.05


async def test_scripted_llm_walks_the_fallback_chain_and_repairs():
    def script(request: LLMRequest) -> str:
        if request.response_format is ResponseFormat.JSON_SCHEMA:
            raise UnsupportedFeature("no json_schema here", status=400, model="scripted")
        if request.response_format is ResponseFormat.TOOL:
            return "I would rather chat."
        if request.messages[-1].role == "user" and "could not be used" in request.messages[-1].content:
            return '```json\n{"name": "Ada", "age": 36, "tags": ["math",],}\n```'
        return '{"name": "Ada"}'

    scripted = ScriptedLLM(script)
    gateway = Gateway(scripted)
    assert await gateway.structured(USER, Profile) == Profile(name="Ada", age=36, tags=["math"])
    fmts = [r.response_format for r in scripted.requests]
    assert fmts == [ResponseFormat.JSON_SCHEMA, ResponseFormat.TOOL, ResponseFormat.JSON_OBJECT, ResponseFormat.JSON_OBJECT]
    hint, repair = scripted.requests[2], scripted.requests[3]
    assert hint.messages[0].role == "system" and '"tags"' in hint.messages[0].content
    assert "age" in repair.messages[-1].content  # the repair prompt names the bad field
    await gateway.structured(USER, Profile)
    assert scripted.requests[4].response_format is ResponseFormat.TOOL  # json_schema remembered as unsupported


async def test_scripted_garbage_ends_in_model_output_error_with_raw_reply():
    gateway = Gateway(ScriptedLLM(lambda request: f"no json for {request.response_format.value}"))
    with pytest.raises(ModelOutputError) as info:
        await gateway.structured(USER, Profile)
    assert info.value.raw == "no json for json_object"
    assert "Profile" in str(info.value) and "raw reply" in str(info.value)


async def test_scripted_transient_errors_are_retried_then_budget_stops_calls():
    failures = iter([ModelCallError("busy", status=503, retryable=True), ModelCallError("busy", status=429, retryable=True)])

    def script(request: LLMRequest) -> str:
        error = next(failures, None)
        if error is not None:
            raise error
        return "fine"

    gateway = Gateway(ScriptedLLM(script), retry_base_delay_s=0.001, budget=Budget(max_model_calls=2))
    assert (await gateway.text(USER)).text == "fine"
    await gateway.text(USER, seed=1)
    with pytest.raises(BudgetExceeded) as info:
        await gateway.text(USER, seed=2)
    assert info.value.limit_name == "max_model_calls" and info.value.value == 2


# ---- JSON extraction and repair ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ('{"a": 1}', {"a": 1}),
        ('```json\n{"a": 1}\n```', {"a": 1}),
        ('Sure, here it is:\n{"a": [1, 2,],}\nAnything else?', {"a": [1, 2]}),
        ('Here [as requested]: {"a": {"b": "}{"}}', {"a": {"b": "}{"}}),
        ('Fill in {name} like this: {"name": "Ada"}', {"name": "Ada"}),
        ("[1, 2, 3]", [1, 2, 3]),
        ('{"quote": "she said \\"hi\\" {"}', {"quote": 'she said "hi" {'}),
    ],
)
def test_extract_json_repairs_the_usual_damage(reply, expected):
    assert extract_json(reply) == expected


@pytest.mark.parametrize("reply", ["no json at all", '{"a": 1', '{"a": {"b": 1}, oops}', ""])
def test_extract_json_refuses_what_it_cannot_repair(reply):
    with pytest.raises(ValueError):
        extract_json(reply)


def test_parse_structured_unwraps_once_and_names_the_bad_field():
    wrapped = '{"output": {"name": "Ada", "age": 36, "tags": []}}'
    assert parse_structured(wrapped, Profile) == Profile(name="Ada", age=36, tags=[])
    with pytest.raises(ModelOutputError) as info:
        parse_structured('{"name": "Ada", "age": 400, "tags": []}', Profile, model="m")
    assert "field age" in info.value.message and info.value.raw.startswith('{"name"') and info.value.model == "m"


# ---- JSONL ---------------------------------------------------------------------------------------


def test_torn_tail_is_skipped_on_read_and_dropped_on_append(tmp_path):
    path = tmp_path / "out.jsonl"
    write_jsonl(path, [{"n": 1}, {"n": 2}])
    with open(path, "ab") as fh:
        fh.write(b'{"n": 3, "text": "killed mid-wri')
    assert [obj["n"] for _, obj in read_jsonl_dicts(path)] == [1, 2]
    append_jsonl(path, [{"n": 4}])
    assert path.read_text().splitlines() == ['{"n": 1}', '{"n": 2}', '{"n": 4}']


def test_a_whole_last_line_without_newline_is_a_record_and_the_next_append_keeps_it(tmp_path):
    path = tmp_path / "hand-written.jsonl"
    path.write_text('{"name": "Ann"}\n{"name": "Bob"}')  # no final newline, as editors often save
    assert [p.name for p in read_jsonl(path, Persona)] == ["Ann", "Bob"]
    append_jsonl(path, [{"name": "Cid"}])
    assert path.read_text() == '{"name": "Ann"}\n{"name": "Bob"}\n{"name": "Cid"}\n'
    single = tmp_path / "one.jsonl"
    single.write_text('{"name": "Ann"}')
    append_jsonl(single, [{"name": "Bob"}])
    assert [p.name for p in read_jsonl(single, Persona)] == ["Ann", "Bob"]


def test_read_jsonl_unique_names_both_lines_of_a_repeated_id(tmp_path):
    path = tmp_path / "personas.jsonl"
    path.write_text('{"id": "p1", "name": "Ann"}\n{"id": "p2", "name": "Bob"}\n{"id": "p1", "name": "Cid"}\n')
    assert len(read_jsonl(path, Persona)) == 3  # without unique=, a reader of appended logs keeps every record
    with pytest.raises(ConfigError) as info:
        read_jsonl(path, Persona, unique="id")
    assert info.value.line == 3 and info.value.field == "id" and "line 1" in info.value.message


def test_duplicate_keys_in_yaml_and_json_files_are_refused_with_the_line(tmp_path):
    doc = tmp_path / "experiment.yaml"
    doc.write_text("name: a\nseed: 1\nsimulation:\n  concurrency: 2\n  concurrency: 4\n")
    with pytest.raises(ConfigError) as info:
        load_data_file(doc)
    assert info.value.line == 5 and "duplicate key 'concurrency' (first at line 4)" in info.value.message
    doc.write_text("base: &base {a: 1, b: 2}\nderived:\n  <<: *base\n  a: 3\n")  # a merge may be overridden
    assert load_data_file(doc)["derived"] == {"a": 3, "b": 2}
    flow = tmp_path / "flow.yaml"
    flow.write_text("roles: [{name: a, name: b}]\n")
    with pytest.raises(ConfigError, match="duplicate key 'name'"):
        load_data_file(flow)
    as_json = tmp_path / "experiment.json"
    as_json.write_text('{"name": "a", "graph": {"kind": "dyad", "kind": "group"}}')
    with pytest.raises(ConfigError) as info:
        load_data_file(as_json)
    assert info.value.field == "kind" and "duplicate key" in info.value.message


def _append_many(path: str, writer: int, count: int) -> None:
    for i in range(count):
        append_jsonl(path, [{"writer": writer, "i": i, "pad": "x" * 20_000}])  # far above PIPE_BUF


def test_concurrent_process_writers_never_interleave(tmp_path):
    path = tmp_path / "shared.jsonl"
    # spawned, not forked: a fork of a pytest process that already ran Prefect flows and
    # threads (earlier tests) inherits their state, and such children can exit with 1
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_append_many, args=(str(path), w, 40)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(300)  # a guard against a hang, not a measure of speed
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    records = [obj for _, obj in read_jsonl_dicts(path)]
    assert len(records) == 160
    for w in range(4):
        assert [r["i"] for r in records if r["writer"] == w] == list(range(40))
    assert all(len(r["pad"]) == 20_000 for r in records)


def test_bad_jsonl_lines_name_file_and_line(tmp_path):
    path = tmp_path / "personas.jsonl"
    path.write_text('{"name": "Ada"}\n{"name": "Bo",\n')
    with pytest.raises(ConfigError) as info:
        read_jsonl(path, Persona)
    assert info.value.file == str(path) and info.value.line == 2
    path.write_text('{"name": "Ada"}\n["not", "an", "object"]\n')
    with pytest.raises(ConfigError) as info:
        list(read_jsonl_dicts(path))
    assert info.value.line == 2 and info.value.expected == "object"
    path.write_text('{"name": "Ada"}\n{"name": "Bo", "age": -3}\n')
    with pytest.raises(ConfigError) as info:
        list(iter_jsonl(path, Persona))
    assert (info.value.line, info.value.field) == (2, "age")
    assert f"{path}:2" in str(info.value)


def test_jsonl_rejects_bad_utf8_and_missing_files(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"a": 1}\n{"a": "\xff"}\n')
    with pytest.raises(ConfigError) as info:
        list(read_jsonl_dicts(path))
    assert info.value.line == 2
    with pytest.raises(ConfigError):
        list(read_jsonl_dicts(tmp_path / "missing.jsonl"))


# ---- validation ------------------------------------------------------------------------------------


def test_yaml_alias_bomb_is_rejected_quickly(tmp_path, monkeypatch):
    """Rejected after a bounded amount of work (counted, not timed): nothing of the 9**9 expansion is built."""
    from personae import validation

    lines = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for prev, name in zip("abcdefgh", "bcdefghi"):
        lines.append(f"{name}: &{name} [" + ", ".join([f"*{prev}"] * 9) + "]")
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\n")
    work = {"counted": 0, "built": 0}
    count, build = validation._BoundedLoader._count, validation._BoundedLoader.construct_object

    def counted(self, node, stack):
        work["counted"] += 1
        assert work["counted"] <= 2 * validation._MAX_YAML_NODES, "the node count did not stop at the limit"
        return count(self, node, stack)

    def built(self, node, deep=False):
        work["built"] += 1
        assert work["built"] <= 2 * validation._MAX_YAML_NODES, "the bomb is being built"
        return build(self, node, deep)

    monkeypatch.setattr(validation._BoundedLoader, "_count", counted)
    monkeypatch.setattr(validation._BoundedLoader, "construct_object", built)
    with pytest.raises(ConfigError) as info:
        load_data_file(path)
    assert "alias bomb" in str(info.value) and info.value.file == str(path)
    assert work["counted"] == validation._MAX_YAML_NODES + 1  # stopped at the limit, not at 9**9
    assert work["built"] <= len(lines)  # only the top mapping's keys (the duplicate-key check), no value of the bomb


def test_shared_yaml_aliases_within_limits_still_load(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text("base: &base {k: 1}\nitems: [*base, *base]\n")
    assert load_data_file(path) == {"base": {"k": 1}, "items": [{"k": 1}, {"k": 1}]}


def test_bad_utf8_names_the_line(tmp_path):
    path = tmp_path / "persona.yaml"
    path.write_bytes(b"name: Ada\noccupation: caf\xe9 owner\n")
    with pytest.raises(ConfigError) as info:
        load_data_file(path)
    assert info.value.line == 2 and "UTF-8" in str(info.value)


def test_unknown_key_names_the_field(tmp_path):
    path = tmp_path / "persona.yaml"
    path.write_text("name: Ada\nbig_five:\n  openess: 0.3\n")
    with pytest.raises(ConfigError) as info:
        load_model_file(path, Persona)
    assert info.value.field == "big_five.openess" and "unknown key" in info.value.expected
    assert str(path) in str(info.value)


def test_invalid_json_and_empty_files(tmp_path):
    path = tmp_path / "persona.json"
    path.write_text('{\n  "name": "Ada",\n  "age": ,\n}\n')
    with pytest.raises(ConfigError) as info:
        load_data_file(path)
    assert info.value.line == 3
    empty = tmp_path / "empty.yaml"
    empty.write_text("  \n")
    with pytest.raises(ConfigError, match="empty"):
        load_data_file(empty)


# ---- errors pickle ----------------------------------------------------------------------------------

ERRORS = [
    PersonaeError("plain"),
    ConfigError("bad value", file="exp.yaml", field="graph.kind", expected="dyad | group", got="triad", line=4),
    ModelOutputError("not JSON", raw="{oops", model="openai:gpt"),
    ModelCallError("HTTP 429", status=429, model="gpt", retryable=True, retry_after=1.5),
    UnsupportedFeature("json_schema rejected", status=400, model="gpt"),
    BudgetExceeded("max_tokens", 1000, 1200),
    MissingExtra("llama_cpp", "local"),
    StoreLockedError("/data/qdrant", "stop the other run"),
    WorkerProcessError("worker process batch-part-0 was killed by signal SIGKILL before it finished"),
]


def test_every_error_is_covered():
    assert {type(e).__name__ for e in ERRORS} == set(errors_module.__all__)


@pytest.mark.parametrize("error", ERRORS, ids=lambda e: type(e).__name__)
def test_errors_survive_pickling(error):
    clone = pickle.loads(pickle.dumps(error))
    assert type(clone) is type(error)
    assert str(clone) == str(error)
    assert vars(clone) == vars(error)
    assert json.dumps(str(clone))  # printable
