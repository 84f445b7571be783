"""Bring your own personas: persona lines parsed into only the fields they state, with a grounding check."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from personae.errors import ConfigError
from personae.llm import Gateway
from personae.llm.testing import ScriptedLLM
from personae.population import ParsedPersona, parse_personas, read_persona_lines
from personae.population.parse import ground

PERSONAGYM = Path(__file__).parent / "data" / "personagym" / "code" / "personas.py"
BEEKEEPER, NURSE, FISHERMAN = (
    "A 45-year-old beekeeper from Slovenia who restores old motorcycles",
    "A 31-year-old night-shift nurse from Lagos who writes poetry",
    "A 68-year-old retired fisherman from Newfoundland who sings in a church choir",
)
MARIA = "Maria Lopez, a 52-year-old Mexican mother of three who values honesty and family"


def _scripted(replies: dict[str, dict]) -> tuple[Gateway, ScriptedLLM]:
    """A fake model answering each line's prompt with its scripted extraction."""

    def reply(request):
        assert request.schema_name == "ParsedPersona"
        prompt = request.messages[-1].content
        [line] = [line for line in replies if line in prompt]
        return json.dumps(replies[line])

    llm = ScriptedLLM(reply)
    return Gateway(llm), llm


BAD = {  # what a weak model does: the whole line as name, nationality as gender, one value ten times, invented facts
    BEEKEEPER: {"name": BEEKEEPER, "age": 30, "gender": "Slovenian", "nationality": "Slovenian", "location": "Ljubljana, Slovenia", "occupation": "beekeeper", "values": ["motorcycles"] * 10, "interests": ["restoring old motorcycles", "hiking"]},
    NURSE: {"name": "Lagos", "age": 31, "gender": "female", "nationality": "Nigerian", "location": "Lagos", "occupation": "night-shift nurse", "values": [], "interests": ["writing poetry", "poetry writing"]},
    FISHERMAN: {"name": "Retired Fisherman", "age": 68, "gender": "male", "nationality": None, "location": "Newfoundland, Canada", "occupation": "retired fisherman", "values": ["faith"], "interests": ["singing in a church choir"]},
}

FAITHFUL = {
    BEEKEEPER: {"name": None, "age": 45, "gender": None, "nationality": "Slovenian", "location": "Slovenia", "occupation": "beekeeper", "values": [], "interests": ["restoring old motorcycles"]},
    NURSE: {"name": None, "age": 31, "gender": None, "nationality": None, "location": "Lagos", "occupation": "night-shift nurse", "values": [], "interests": ["writing poetry"]},
    FISHERMAN: {"name": None, "age": 68, "gender": None, "nationality": None, "location": "Newfoundland", "occupation": "retired fisherman", "values": [], "interests": ["singing in a church choir"]},
    MARIA: {"name": "Maria Lopez", "age": 52, "gender": "woman", "nationality": "Mexican", "location": None, "occupation": None, "values": ["honesty", "family"], "interests": []},
}


def test_personagym_lines_are_read_from_their_python_file():
    lines = read_persona_lines(PERSONAGYM)
    assert [s.text for s in lines] == [BEEKEEPER, NURSE, FISHERMAN]
    assert [s.line for s in lines] == [4, 5, 6] and lines[0].file == str(PERSONAGYM)


async def test_grounding_check_drops_and_counts_bad_extractions():
    gateway, llm = _scripted(BAD)
    result = await parse_personas(read_persona_lines(PERSONAGYM), gateway)
    beekeeper, nurse, fisherman = result.personas
    # the whole line is not a name, a nationality is not a gender, an age the line does not state is not kept
    assert (beekeeper.name, beekeeper.age, beekeeper.gender) == ("Persona 4", None, None)
    assert beekeeper.attributes["parse.name_stated"] is False
    assert beekeeper.values == ["motorcycles"]  # once, not ten times
    assert beekeeper.location is None and beekeeper.attributes["nationality"] == "Slovenian"
    assert beekeeper.attributes["interests"] == ["restoring old motorcycles"]
    assert (nurse.name, nurse.gender, nurse.age, nurse.location) == ("Persona 5", None, 31, "Lagos")
    assert "nationality" not in nurse.attributes and nurse.attributes["interests"] == ["writing poetry"]
    assert (fisherman.name, fisherman.gender, fisherman.occupation, fisherman.values) == ("Persona 6", None, "retired fisherman", [])
    assert result.report.dropped == {
        "age": {"not in the line": 1},
        "gender": {"not in the line": 2, "not a gender": 1},
        "interests": {"not in the line": 1, "repeated": 1},
        "location": {"not in the line": 2},
        "name": {"whole line": 1, "a place, not a name": 1, "not a name": 1},
        "nationality": {"not in the line": 1},
        "values": {"repeated": 9, "not in the line": 1},
    }
    assert result.report.dropped_total == 22 and result.report.model_failures == 0
    assert result.report.kept == {"age": 2, "nationality": 1, "location": 1, "occupation": 3, "interests": 3, "values": 1}
    reasons = {(d["field"], d["reason"]) for d in beekeeper.attributes["parse.dropped"]}
    assert ("name", "whole line") in reasons and ("gender", "not a gender") in reasons
    for persona, line in zip(result.personas, (BEEKEEPER, NURSE, FISHERMAN)):
        assert persona.description == persona.attributes["source.text"] == line
    prompt = llm.requests[0].messages[-1].content
    assert "Copy into the fields" in prompt and "null" in prompt
    assert ParsedPersona.model_validate({}) == ParsedPersona()  # every field optional: None = not stated ...
    assert ParsedPersona.model_json_schema()["required"] == list(ParsedPersona.model_fields)  # ... yet every key is asked for


async def test_faithful_extractions_land(tmp_path):
    path = tmp_path / "personas.txt"
    path.write_text("# my personas\n" + "\n".join([BEEKEEPER, NURSE, "", FISHERMAN, MARIA]) + "\n")
    gateway, _ = _scripted(FAITHFUL)
    result = await parse_personas(read_persona_lines(path), gateway)
    beekeeper, nurse, fisherman, maria = result.personas
    assert (beekeeper.age, beekeeper.occupation, beekeeper.location, beekeeper.attributes["nationality"]) == (45, "beekeeper", "Slovenia", "Slovenian")
    assert (nurse.age, nurse.occupation, nurse.location) == (31, "night-shift nurse", "Lagos")
    assert fisherman.attributes["interests"] == ["singing in a church choir"]
    assert (maria.name, maria.age, maria.gender, maria.attributes["nationality"], maria.values) == ("Maria Lopez", 52, "female", "Mexican", ["honesty", "family"])
    assert maria.attributes["parse.name_stated"] is True and maria.attributes["source.line"] == 6
    assert result.report.dropped == {} and "parse.dropped" not in maria.attributes
    assert result.report.kept == {"name": 1, "age": 4, "gender": 1, "nationality": 2, "location": 3, "occupation": 3, "interests": 3, "values": 1}
    again = await parse_personas(read_persona_lines(path), _scripted(FAITHFUL)[0])
    assert [p.id for p in again.personas] == [p.id for p in result.personas] and len({p.id for p in result.personas}) == 4


def test_stated_only_a_line_without_age_keeps_age_empty():
    line = "A beekeeper from Slovenia who restores old motorcycles"
    kept, dropped = ground(line, ParsedPersona(age=None, occupation="beekeeper"))
    assert "age" not in kept and kept["occupation"] == "beekeeper" and dropped == []
    kept, dropped = ground(line, ParsedPersona(age=45, gender="man"))
    assert kept == {} and {(d.field, d.reason) for d in dropped} == {("age", "not in the line"), ("gender", "not in the line")}
    kept, _ = ground("He is a 45 year old beekeeper", ParsedPersona(age=45, gender="male"))
    assert kept == {"age": 45, "gender": "male"}
    kept, dropped = ground("A teacher from Ohio who reads to us", ParsedPersona(nationality="American", location="Ohio, USA"))
    assert kept == {} and [d.reason for d in dropped] == ["not in the line", "not in the line"]  # "us" is not the US


async def test_a_reply_that_never_validates_keeps_the_line_with_no_fields():
    result = await parse_personas([NURSE], Gateway(ScriptedLLM(lambda request: "not json")))
    [persona] = result.personas
    assert result.report.model_failures == 1 and persona.attributes["parse.model_failed"] is True
    assert (persona.name, persona.age, persona.description) == ("Persona 1", None, NURSE)


def test_persona_hub_jsonl(tmp_path):
    path = tmp_path / "persona.jsonl"
    path.write_text(json.dumps({"persona": BEEKEEPER}) + "\n" + json.dumps({"input persona": NURSE, "synthesized text": "…"}) + "\n")
    assert [(s.text, s.line) for s in read_persona_lines(path)] == [(BEEKEEPER, 1), (NURSE, 2)]


@pytest.mark.parametrize(
    ("name", "content", "line", "words"),
    [
        ("hub.jsonl", '{"persona": "A nurse"}\n{"text": "A baker"}\n', 2, "no persona in the record"),
        ("hub.jsonl", '{"persona": "A nurse"}\n{"persona": 42}\n', 2, "must be a non-empty string"),
        ("hub.jsonl", '{"persona": "A nurse"}\n{"persona": \n', 2, "invalid JSON"),
        ("lines.txt", "# only a comment\n\n", None, "no persona lines"),
        ("lines.txt", "", None, "file is empty"),
        ("personas.py", "personas = 3\n", None, "no list of persona strings"),
    ],
)
def test_bad_input_names_file_and_line(tmp_path, name, content, line, words):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(ConfigError) as info:
        read_persona_lines(path)
    assert words in str(info.value) and info.value.file == str(path) and info.value.line == line


def test_cli_parse_writes_personas_and_report(tmp_path, cli_env):
    from typer.testing import CliRunner

    src = tmp_path / "lines.txt"
    src.write_text(f"{BEEKEEPER}\n{NURSE}\n")
    result = CliRunner().invoke(cli_env, ["parse", str(src), "--out", str(tmp_path / "out")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    people = [json.loads(line) for line in (tmp_path / "out" / "personas.jsonl").read_text().splitlines()]
    report = json.loads((tmp_path / "out" / "parse_report.json").read_text())
    assert [p["description"] for p in people] == [BEEKEEPER, NURSE] and report["lines"] == 2
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "x"}\n')
    with pytest.raises(ConfigError, match="no persona in the record"):
        CliRunner().invoke(cli_env, ["parse", str(bad), "--out", str(tmp_path / "never")], catch_exceptions=False)
    assert not (tmp_path / "never").exists()


def test_long_lists_are_read_and_capped_with_a_count():
    line = "A gardener who loves roses, tulips, lilies, orchids, daisies, violets, peonies, irises, poppies and asters"
    flowers = ["roses", "tulips", "lilies", "orchids", "daisies", "violets", "peonies", "irises", "poppies", "asters"]
    assert ParsedPersona.model_json_schema()["properties"]["interests"]["maxItems"] == 8  # asked for (the local grammar keeps it) ...
    parsed = ParsedPersona.model_validate({"interests": flowers})  # ... not enforced: an endpoint's longer list is still read
    kept, dropped = ground(line, parsed)
    assert kept["interests"] == flowers[:8] and [(d.field, d.value, d.reason) for d in dropped] == [("interests", "poppies", "too many"), ("interests", "asters", "too many")]


@pytest.mark.slow
async def test_embedded_model_through_its_grammar_keeps_only_grounded_values():
    from personae.llm.local import LocalLlamaLLM

    llm = LocalLlamaLLM()
    try:
        result = await parse_personas([BEEKEEPER], Gateway(llm, max_concurrency=1))
    finally:
        await llm.aclose()
    [persona] = result.personas
    assert result.report.model_failures == 0  # the grammar-constrained reply validates
    assert persona.name != BEEKEEPER and persona.description == BEEKEEPER
    listed = persona.attributes.get("parse.dropped", [])
    assert result.report.dropped_total == len(listed)
    kept = {f: getattr(persona, f) for f in ("age", "gender", "location", "occupation") if getattr(persona, f) is not None}
    again, dropped = ground(BEEKEEPER, ParsedPersona(**kept, nationality=persona.attributes.get("nationality"), interests=persona.attributes.get("interests", []), values=persona.values))
    assert dropped == [] and again == {k: v for k, v in {**kept, "nationality": persona.attributes.get("nationality"), "interests": persona.attributes.get("interests"), "values": persona.values or None}.items() if v}
