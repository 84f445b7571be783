"""Bad input: every malformed file gives one clear error, exit code != 0, no traceback, no output.

Each case builds its malformed experiment / persona / scenario / taxonomy / quota /
settings file in code, runs the real CLI (``personae.cli.main``) on it, and checks:

* the exit code is not 0;
* stderr holds exactly one ``error:`` message naming the file and the field (or line),
  and no Python traceback;
* nothing was written: the case folder (inputs, output folder, data dir) is unchanged.

The CLI runs in a child process per case, forked from one driver that imports personae
once (``tests/_fork_cli.py``), so 60-odd cases stay cheap on two cores.
"""

from __future__ import annotations

import json
import re
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from _fork_cli import CliCase, run_cli_cases

pytestmark = pytest.mark.timeout(900)  # a guard against a hang: the first test runs all cases (49 s under a 2-core hog)

SECRET = "sk-reliability-inline-key-0123456789abcdef"

PERSONAS = [
    {"name": "Ana Ruiz", "age": 34, "occupation": "nurse", "description": "A practical night-shift nurse."},
    {"name": "Ben Okafor", "age": 51, "occupation": "plumber", "description": "Blunt, funny, hates waiting."},
]
SCENARIO = {
    "name": "refund",
    "setting": "An online shop's support chat.",
    "roles": [{"name": "client", "goal": "get a refund"}, {"name": "responder", "goal": "help within policy"}],
    "max_turns": 4,
}


def _experiment(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": "bad-input",
        "seed": 1,
        "models": {"default": {"provider": "fake"}},
        "embeddings": {"provider": "hashing"},
        "personas_file": "personas.jsonl",
        "scenarios": [SCENARIO],
        "graph": {"kind": "dyad"},
        "simulation": {"n_conversations": 2, "concurrency": 2},
        "tracking": {"enabled": False},
    }
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    return data


def _jsonl(rows: list[Any]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def _yaml(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


BILLION_LAUGHS = textwrap.dedent(
    """\
    a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
    b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
    c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
    d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
    e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
    f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
    g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
    h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
    i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
    name: bomb
    """
)
JUNK = bytes(range(256)) * 3 + b"\x00\xff\xfe\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class Link:
    """A symlink to ``target`` (relative to the case folder) in a case's files."""

    target: str


# A place even root cannot create files in (tests run as root, so chmod proves nothing).
UNWRITABLE = "/proc/personae-bad-input/out"


@dataclass
class Case:
    """One malformed input: the files to write, the command to run, what the error must name."""

    id: str
    command: str  # run | generate | simulate | evaluate
    files: dict[str, str | bytes | Link | None]  # None = a directory
    target: str  # the file the error must name
    names: tuple[str, ...]  # field (or line/problem) words the error must contain; "re:..." is a regex
    args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    forbidden: tuple[str, ...] = ()  # text that must not appear (e.g. a secret)


def _run(target: str, files: dict, names: tuple[str, ...], case_id: str, **kw: Any) -> Case:
    base = {"personas.jsonl": _jsonl(PERSONAS)}
    return Case(case_id, "run", {**base, **files}, target, names, **kw)


def _sim(case_id: str, target: str, names: tuple[str, ...], *, personas: str | bytes | Link | None = None, scenario: str | bytes | None = None, config: str | None = None, env: dict | None = None, out: str = "out/conversations.jsonl", more: tuple[str, ...] = ()) -> Case:
    files: dict[str, str | bytes | Link | None] = {
        "personas.jsonl": _jsonl(PERSONAS) if personas is None else personas,
        "scenario.yaml": _yaml(SCENARIO) if scenario is None else scenario,
    }
    args = ["--personas", "personas.jsonl", "--scenario", "scenario.yaml", "-n", "2", "--out", out, *more]
    if config is not None:
        files["graph.yaml"] = config
        args += ["--config", "graph.yaml"]
    return Case(case_id, "simulate", files, target, names, tuple(args), env=env or {})


def _gen(case_id: str, spec: str | bytes, target: str, names: tuple[str, ...], *, taxonomy: str | bytes | None = None, out: str = "out", env: dict | None = None) -> Case:
    files: dict[str, str | bytes | Link | None] = {"population.yaml": spec}
    if taxonomy is not None:
        files["taxonomy.yaml"] = taxonomy
    return Case(case_id, "generate", files, target, names, ("--spec", "population.yaml", "--out", out, "--no-llm"), env=env or {})


def _conversation(**changes: Any) -> dict[str, Any]:
    people = [{"persona": PERSONAS[0], "role": "client"}, {"persona": PERSONAS[1], "role": "responder"}]
    record = {"id": "conv-1", "scenario": SCENARIO, "participants": people, "status": "complete",
              "utterances": [{"speaker": "x", "turn": 0, "text": "hi"}]}
    record.update(changes)
    return record


def _eval(case_id: str, target: str, names: tuple[str, ...], *, conversations: str | bytes, config: str | None = None, out: str = "out") -> Case:
    files: dict[str, str | bytes | Link | None] = {"conversations.jsonl": conversations}
    args = ["conversations.jsonl", "--out", out]
    if config is not None:
        files["evaluation.yaml"] = config
        args += ["--config", "evaluation.yaml"]
    return Case(case_id, "evaluate", files, target, names, tuple(args))


def _cases() -> list[Case]:
    exp = "experiment.yaml"
    sim_ok = {"n_conversations": 2, "concurrency": 2}
    cases = [
        # ---- experiment files (personae run) -------------------------------------------
        _run(exp, {exp: _yaml(_experiment(simulation={**sim_ok, "n_conversations": "many"}))}, ("simulation.n_conversations",), "exp-wrong-type"),
        _run(exp, {exp: _yaml(_experiment(scenarios=None))}, ("scenarios",), "exp-missing-field"),
        _run(exp, {exp: _yaml({**_experiment(), "scenarioz": []})}, ("scenarioz", "unknown"), "exp-unknown-key"),
        _run(exp, {exp: _yaml(_experiment(graph={"kind": "dyad", "critic": {"enabeld": True}}))}, ("graph.critic.enabeld",), "exp-unknown-nested-key"),
        _run(exp, {exp: _yaml(_experiment(simulation={**sim_ok, "n_conversations": 10**15}))}, ("simulation.n_conversations",), "exp-huge-value"),
        _run(exp, {exp: _yaml(_experiment(simulation={**sim_ok, "concurrency": -3}))}, ("simulation.concurrency",), "exp-negative-value"),
        _run(exp, {exp: _yaml(_experiment()).replace("concurrency: 2", "concurrency: 2\n  retry_delay_s: .inf")}, ("simulation.retry_delay_s",), "exp-infinite-value"),
        _run(exp, {exp: _yaml(_experiment(name="x" * 100_000))}, ("name",), "exp-huge-string"),
        _run(exp, {exp: _yaml(_experiment(models={"default": {"provider": "openai", "model": "m", "api_key": SECRET}}))}, ("models.default", "api_key_env"), "exp-inline-api-key", forbidden=(SECRET,)),
        _run(exp, {exp: _yaml(_experiment(roles={"critic": "judge"}))}, ("roles.critic", "judge"), "exp-role-routed-to-unknown-model"),
        _run(exp, {exp: _yaml(_experiment(schedule={"cron": "61 * * * *"}))}, ("schedule.cron",), "exp-bad-cron"),
        _run(exp, {exp: _yaml(_experiment(schedule={"cron": "MON * * * *"}))}, ("schedule.cron", "Invalid cron string"), "exp-cron-weekday-as-minute"),
        _run(exp, {exp: _yaml(_experiment(schedule={"cron": "0 3 * * *", "timezone": "Mars/Olympus_Mons"}))}, ("schedule.timezone", "Invalid timezone"), "exp-schedule-unknown-timezone"),
        _run(exp, {exp: _yaml(_experiment(schedule={"interval_s": float("inf")}))}, ("schedule.interval_s",), "exp-schedule-infinite-interval"),
        _run(exp, {exp: _yaml(_experiment(schedule={"interval_s": 1e-9}))}, ("schedule.interval_s", "greater than 0"), "exp-schedule-interval-below-a-microsecond"),
        _run(exp, {exp: _yaml(_experiment(population={"size": 3}))}, ("population", "personas_file"), "exp-population-and-personas-file"),
        _run(exp, {exp: _yaml(_experiment(personas_file=None))}, ("population", "personas_file"), "exp-no-personas-source"),
        _run(exp, {exp: _yaml(_experiment(personas_file="missing.jsonl"))}, ("personas_file",), "exp-personas-file-missing"),
        _run(exp, {exp: _yaml(_experiment(personas_file=None, population={"size": 0}))}, ("population.size",), "exp-empty-population"),
        _run(exp, {exp: _yaml(_experiment(graph={"kind": "interview"}))}, ("graph", "question"), "exp-interview-without-questions"),
        _run(exp, {exp: ("# café\n" + _yaml(_experiment(description="Überprüfung der Persönlichkeit"))).encode("latin-1")}, ("UTF-8", "experiment.yaml:1:"), "exp-latin-1"),
        _run(exp, {exp: _yaml(_experiment()).encode("utf-16")}, ("UTF-8",), "exp-utf-16"),
        _run(exp, {exp: BILLION_LAUGHS}, ("alias bomb",), "exp-yaml-bomb"),
        _run(exp, {exp: JUNK}, ("UTF-8",), "exp-binary-junk"),
        _run(exp, {exp: None}, ("directory",), "exp-directory-not-file"),
        _run(exp, {exp: ""}, ("empty",), "exp-empty-file"),
        _run(exp, {exp: json.dumps([_experiment()])}, ("mapping", "list"), "exp-json-list-not-mapping"),
        _run("experiment.json", {"experiment.json": json.dumps(_experiment(), indent=1)[:-3] + ",\n}"}, ("invalid JSON", r"re:experiment\.json:\d+:"), "exp-json-syntax-error", args=("experiment.json",)),
        _run("experiment.json", {"experiment.json": _yaml(_experiment())}, ("invalid JSON",), "exp-yaml-in-json-file", args=("experiment.json",)),
        _run(exp, {exp: "name: bad\nscenarios: [{name: s, roles: [\n"}, ("invalid YAML", "experiment.yaml:3:"), "exp-yaml-syntax-error"),
        _run("scenarios.yaml", {exp: _yaml(_experiment(scenarios="scenarios.yaml")), "scenarios.yaml": _yaml([{**SCENARIO, "max_turns": "ten"}])}, ("max_turns",), "exp-scenario-file-wrong-type"),
        _run("personas.jsonl", {exp: _yaml(_experiment()), "personas.jsonl": _jsonl([PERSONAS[0], {"name": "Ann", "age": "old"}])}, ("age", ":2"), "exp-personas-file-bad-record"),
        _run("personas.jsonl", {exp: _yaml(_experiment()), "personas.jsonl": ""}, ("persona",), "exp-personas-file-empty"),
        _run(exp, {exp: _yaml(_experiment(personas_file=None, population={"size": 10, "quotas": {"marginals": {"gender": {"female": 0.9, "male": 0.9}}}}))}, ("quotas.marginals.gender",), "exp-impossible-quota"),
        _run("taxonomy.yaml", {exp: _yaml(_experiment(personas_file=None, population={"size": 5, "taxonomy": "taxonomy.yaml"})), "taxonomy.yaml": JUNK}, ("UTF-8",), "exp-taxonomy-binary-junk"),
        # ---- population spec / taxonomy / quotas (personae generate) ---------------------
        _gen("pop-impossible-quota-shares", _yaml({"size": 10, "quotas": {"marginals": {"gender": {"female": 0.9, "male": 0.9}}}}), "population.yaml", ("quotas.marginals.gender",)),
        _gen("pop-quota-unknown-attribute", _yaml({"size": 10, "quotas": {"marginals": {"planet": {"mars": 1.0}}}}), "population.yaml", ("quotas.marginals.planet",)),
        _gen("pop-quota-unknown-value", _yaml({"size": 10, "quotas": {"marginals": {"gender": {"alien": 1.0}}}}), "population.yaml", ("quotas.marginals.gender",)),
        _gen("pop-empty-population", _yaml({"size": 0}), "population.yaml", ("size",)),
        _gen("pop-huge-size", _yaml({"size": 10**12}), "population.yaml", ("size",)),
        _gen("pop-missing-size", _yaml({"seed": 3}), "population.yaml", ("size",)),
        _gen("pop-unknown-key", _yaml({"size": 5, "sizes": 3}), "population.yaml", ("sizes",)),
        _gen("pop-yaml-bomb", BILLION_LAUGHS, "population.yaml", ("alias bomb",)),
        _gen("pop-utf-16", _yaml({"size": 5}).encode("utf-16"), "population.yaml", ("UTF-8",)),
        _gen("taxonomy-latin-1", _yaml({"size": 5, "taxonomy": "taxonomy.yaml"}), "taxonomy.yaml", ("UTF-8",),
             taxonomy="attributes:\n  hobbies:\n    pastime: [pétanque, café]\n".encode("latin-1")),
        _gen("taxonomy-unknown-leaf-type", _yaml({"size": 5, "taxonomy": "taxonomy.yaml"}), "taxonomy.yaml", ("hobbies.pastime",),
             taxonomy=_yaml({"attributes": {"hobbies": {"pastime": {"type": "banana", "values": ["a"]}}}})),
        _gen("taxonomy-wrong-type", _yaml({"size": 5, "taxonomy": "taxonomy.yaml"}), "taxonomy.yaml", ("attributes",),
             taxonomy=_yaml({"attributes": ["not", "a", "tree"]})),
        _gen_yaml_in_json_taxonomy(),
        # ---- personas / scenarios / graph config (personae simulate) ---------------------
        _sim("persona-invalid-json-line", "personas.jsonl", (":2", "invalid JSON"), personas=_jsonl(PERSONAS[:1]) + '{"name": "Bob", age: 3}\n'),
        _sim("persona-missing-name", "personas.jsonl", ("name",), personas=_jsonl([{"age": 30}])),
        _sim("persona-wrong-type", "personas.jsonl", ("age",), personas=_jsonl([{"name": "Ann", "age": "old"}])),
        _sim("persona-unknown-key", "personas.jsonl", ("favourite_colour",), personas=_jsonl([{"name": "Ann", "favourite_colour": "red"}])),
        _sim("persona-huge-value", "personas.jsonl", ("age",), personas=_jsonl([{"name": "Ann", "age": 10**30}])),
        _sim("persona-array-not-object", "personas.jsonl", ("object", ":1"), personas=json.dumps(["Ann", 30]) + "\n"),
        _sim("persona-empty-population", "personas.jsonl", ("persona",), personas=""),
        _sim("persona-utf-16", "personas.jsonl", ("UTF-8",), personas=_jsonl(PERSONAS).encode("utf-16")),
        _sim("persona-binary-junk", "personas.jsonl", ("UTF-8",), personas=JUNK),
        _sim("scenario-missing-roles", "scenario.yaml", ("roles",), scenario=_yaml({"name": "s"})),
        _sim("scenario-duplicate-roles", "scenario.yaml", ("roles",), scenario=_yaml({"name": "s", "roles": [{"name": "a"}, {"name": "a"}]})),
        _sim("scenario-min-above-max-turns", "scenario.yaml", ("min_turns",), scenario=_yaml({**SCENARIO, "min_turns": 9, "max_turns": 3})),
        _sim("scenario-yaml-bomb", "scenario.yaml", ("alias bomb",), scenario=BILLION_LAUGHS),
        _sim("graph-config-unknown-kind", "graph.yaml", ("kind",), config=_yaml({"kind": "triad"})),
        _sim("graph-config-huge-value", "graph.yaml", ("max_tokens",), config=_yaml({"kind": "dyad", "max_tokens": 10**9})),
        # ---- settings (file and environment) ---------------------------------------------
        _sim("settings-file-unknown-key", "settings.yaml", ("llm_max_concurrencyy",), env={"PERSONAE_CONFIG": "settings.yaml"}),
        _sim("settings-env-wrong-type", "PERSONAE_LLM_MAX_CONCURRENCY", ("llm_max_concurrency",), env={"PERSONAE_LLM_MAX_CONCURRENCY": "lots"}),
        # ---- conversations / evaluation config (personae evaluate) -----------------------
        _eval("conversation-bad-status", "conversations.jsonl", ("status", ":1"), conversations=_jsonl([_conversation(status="exploded")])),
        _eval("conversation-missing-participants", "conversations.jsonl", ("participants",), conversations=_jsonl([_conversation(participants=None) | {"participants": []}])),
        _eval("conversations-empty", "conversations.jsonl", ("conversation",), conversations=""),
        _eval("evaluation-config-unknown-key", "evaluation.yaml", ("judgd",), conversations=_jsonl([_conversation()]), config=_yaml({"judgd": {"enabled": True}})),
        # ---- inputs that are not files, outputs personae cannot write (checked before any model call)
        _replace_files(_sim("persona-file-is-a-directory", "personas.jsonl", ("directory",)), {"personas.jsonl": None}),
        _sim("persona-file-is-a-symlink-loop", "personas.jsonl", ("symbolic links",), personas=Link("personas.jsonl")),
        _sim("simulate-out-below-a-regular-file", "scenario.yaml/conversations.jsonl", ("--out", "not a directory"), out="scenario.yaml/conversations.jsonl"),
        _replace_files(_sim("simulate-out-is-a-directory", "out", ("--out", "is a directory"), out="out"), {"out": None}),
        _sim("simulate-out-unwritable-place", UNWRITABLE, ("--out", "cannot be written"), out=f"{UNWRITABLE}/conversations.jsonl"),
        _sim("simulate-checkpoint-below-a-regular-file", "scenario.yaml/checkpoints.sqlite", ("--checkpoint", "not a directory"), more=("--checkpoint", "scenario.yaml/checkpoints.sqlite")),
        _sim("simulate-data-dir-is-a-file", "scenario.yaml", ("data_dir", "PERSONAE_DATA_DIR", "not a directory"), env={"PERSONAE_DATA_DIR": "scenario.yaml"}),
        _gen("generate-out-is-a-file", _yaml({"size": 5}), "population.yaml", ("--out", "not a directory"), out="population.yaml"),
        _gen("generate-out-unwritable-place", _yaml({"size": 5}), UNWRITABLE, ("--out", "cannot be written"), out=UNWRITABLE),
        _gen("generate-data-dir-below-a-file", _yaml({"size": 5}), "population.yaml/data", ("data_dir", "not a directory"), env={"PERSONAE_DATA_DIR": "population.yaml/data"}),
        _eval("evaluate-out-is-a-file", "conversations.jsonl", ("--out", "not a directory"), conversations=_jsonl([_conversation()]), out="conversations.jsonl"),
        _run("personas.jsonl", {exp: _yaml(_experiment(data_dir="personas.jsonl"))}, ("data_dir", "not a directory"), "exp-data-dir-is-a-file"),
        # ---- silently resolved before: a key given twice, a persona id given twice ---------
        _run(exp, {exp: _yaml(_experiment()) + "seed: 2\n"}, ("duplicate key 'seed'", "first at line 2", r"re:experiment\.yaml:\d+:"), "exp-duplicate-key"),
        _run("experiment.json", {"experiment.json": json.dumps(_experiment())[:-1] + ', "seed": 2}'}, ("duplicate key 'seed'",), "exp-json-duplicate-key", args=("experiment.json",)),
        _run("personas.jsonl", {exp: _yaml(_experiment()), "personas.jsonl": _jsonl([*PERSONAS, PERSONAS[0]])}, ("duplicate id", "personas.jsonl:3", "line 1"), "exp-personas-file-duplicate-id"),
        _sim("scenario-duplicate-key", "scenario.yaml", ("duplicate key 'max_turns'", r"re:scenario\.yaml:\d+:"), scenario=_yaml(SCENARIO) + "max_turns: 6\n"),
        _sim("graph-config-duplicate-key", "graph.yaml", ("duplicate key 'kind'", "graph.yaml:2:"), config="kind: dyad\nkind: group\n"),
        _sim("persona-duplicate-id", "personas.jsonl", ("duplicate id", "personas.jsonl:2", "line 1", "p-1"),
             personas=_jsonl([{**PERSONAS[0], "id": "p-1"}, {**PERSONAS[1], "id": "p-1"}])),
        _sim("persona-repeated-line", "personas.jsonl", ("duplicate id", "personas.jsonl:3", "line 1"), personas=_jsonl([*PERSONAS, PERSONAS[0]])),
        _replace_files(_sim("settings-file-duplicate-key", "settings.yaml", ("duplicate key 'llm_max_concurrency'", "settings.yaml:2:"), env={"PERSONAE_CONFIG": "settings.yaml"}),
                       {"settings.yaml": "llm_max_concurrency: 3\nllm_max_concurrency: 4\n"}),
        _gen("pop-duplicate-key", "size: 5\nseed: 1\nsize: 6\n", "population.yaml", ("duplicate key 'size'", "population.yaml:3:", "first at line 1")),
        _gen("taxonomy-duplicate-key", _yaml({"size": 5, "taxonomy": "taxonomy.yaml"}), "taxonomy.yaml", ("duplicate key 'pastime'", "taxonomy.yaml:4:"),
             taxonomy="attributes:\n  hobbies:\n    pastime: [chess]\n    pastime: [go]\n"),
        _eval("evaluation-config-duplicate-key", "evaluation.yaml", ("duplicate key 'judged'",), conversations=_jsonl([_conversation()]),
              config="judged: {enabled: false}\njudged: {enabled: true}\n"),
    ]
    for case in cases:
        if case.id == "settings-file-unknown-key":
            case.files["settings.yaml"] = _yaml({"llm_max_concurrencyy": 3})
    return cases


def _replace_files(case: Case, files: dict[str, str | bytes | Link | None]) -> Case:
    case.files.update(files)
    return case


def _gen_yaml_in_json_taxonomy() -> Case:
    case = _gen("taxonomy-yaml-in-json-file", _yaml({"size": 5, "taxonomy": "taxonomy.json"}), "taxonomy.json", ("invalid JSON",))
    case.files["taxonomy.json"] = "attributes:\n  hobbies:\n    pastime: [chess]\n"
    return case


CASES = _cases()

CASE_TIMEOUT_S = 120  # "does not hang": each case takes about a second, several on a loaded machine


def _write(folder: Path, files: dict[str, str | bytes | Link | None]) -> None:
    for name, content in files.items():
        path = folder / name
        if content is None:
            path.mkdir(parents=True)
        elif isinstance(content, Link):
            path.symlink_to(content.target)
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")


def _tree(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): (p.stat().st_size if p.is_file() else -1) for p in folder.rglob("*")}


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> dict[str, dict[str, Any]]:
    """Run every case through the CLI once; id → exit code, stderr, files before and after."""
    root = tmp_path_factory.mktemp("bad-input")
    logs = tmp_path_factory.mktemp("bad-input-logs")
    runs, before = [], {}
    for case in CASES:
        folder = root / case.id
        folder.mkdir()
        _write(folder, case.files)
        before[case.id] = _tree(folder)
        args = case.args or (("experiment.yaml",) if case.command == "run" else ())
        env = {"PERSONAE_DATA_DIR": str(folder / "data"), "PREFECT_LOGGING_LEVEL": "WARNING", **case.env}
        runs.append(CliCase(case.id, [case.command, *args], folder, env, timeout_s=CASE_TIMEOUT_S))
    results = run_cli_cases(runs, logs)
    return {
        case.id: {**vars(results[case.id]), "before": before[case.id], "after": _tree(root / case.id)}
        for case in CASES
    }


def test_at_least_25_distinct_malformed_inputs():
    assert len({c.id for c in CASES}) == len(CASES) >= 25
    assert {c.command for c in CASES} == {"run", "generate", "simulate", "evaluate"}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_malformed_input_gives_one_clear_error_and_no_output(case: Case, outcomes):
    result = outcomes[case.id]
    stderr = result["stderr"]
    assert not result["timeout"], f"{case.command} did not stop within {CASE_TIMEOUT_S}s"
    assert result["code"] not in (0, None), f"exit code {result['code']}; stderr: {stderr[-2000:]}"
    assert "Traceback" not in stderr, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, f"expected one error message, got: {stderr[-2000:]}"
    message = stderr[stderr.index("error:"):]
    assert len(message) < 2500, f"error message too long ({len(message)} chars)"
    assert case.target in message, f"the error does not name {case.target}: {message}"
    for name in case.names:
        if name.startswith("re:"):
            assert re.search(name[3:], message), f"the error does not match {name[3:]!r}: {message}"
        else:
            assert name.lower() in message.lower(), f"the error does not mention {name!r}: {message}"
    for secret in case.forbidden:
        assert secret not in stderr + result["stdout"], "a secret was echoed"
    new = sorted(set(result["after"]) - set(result["before"]))
    assert not new, f"left output behind: {new}"
    assert result["after"] == result["before"], "an input file was modified"
