"""Engine: de-duplication, resume after interruption, Qdrant persistence, report files, CLI."""

from __future__ import annotations

import json
import random
import textwrap
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest

from personae.embeddings import HashingEmbedder
from personae.errors import ConfigError
from personae.jsonl import read_jsonl, read_jsonl_dicts
from personae.llm import Gateway
from personae.llm.testing import ScriptedLLM, fake_from_schema
from personae.memory.qdrant import open_qdrant
from personae.models import Persona
from personae.population import DedupIndex, PopulationError, PopulationSpec, generate_population, persona_meta, persona_text, sample_population
from personae.population.dedup import lsh_shape, lsh_tables

SMALL_TAXONOMY = """
extends: none
persona_fields:
  name: [who.name]
attributes:
  who:
    tier: core
    layer: social_identity
    name: [Ann, Bob, Cy]
    colour: [red, green, blue]
    pet: [cat, dog, fish]
    food: [rice, bread, pasta]
rules:
  - "if name == Ann then pet != fish"
"""


@pytest.fixture
def small_taxonomy(tmp_path) -> Path:
    path = tmp_path / "small.yaml"
    path.write_text(textwrap.dedent(SMALL_TAXONOMY), encoding="utf-8")
    return path


def _combo(p: Persona) -> tuple:
    return tuple(p.attributes[k] for k in ("who.name", "who.colour", "who.pet", "who.food"))


# ---- de-duplication ----------------------------------------------------------------


def test_dedup_index_flags_planted_near_duplicates():
    index = DedupIndex(HashingEmbedder(256), threshold=0.9)
    base = [
        "Maria Silva is a 34 year old nurse in Recife who loves samba, cooking and her two dogs",
        "Kenji Sato is a retired engineer in Osaka who tends bonsai trees and plays go every evening",
        "Amara Okafor runs a tailoring shop in Lagos and sings in her church choir on Sundays",
    ]
    vecs = index.embed(base)
    index.add(vecs, ["a", "b", "c"])
    probes = [
        "Maria Silva is a 34 year old nurse in Recife who loves samba, cooking and her two cats",  # planted near-duplicate
        "Liam Walsh drives a delivery van in Dublin and supports his local hurling team",
    ]
    scan = index.scan(index.embed(probes))
    assert scan.col_max[0] >= 0.9 and index.ids[int(scan.col_arg[0])] == "a"
    assert scan.col_max[1] < 0.5
    assert index.is_duplicate(float(scan.col_max[0])) and not index.is_duplicate(float(scan.col_max[1]))
    nn = index.nearest_similarity()
    assert nn.shape == (3,) and np.all(nn < 0.9)
    assert 0.0 < index.uniqueness() <= 1.0


def test_dedup_index_checks_in_the_engine_like_the_exact_check(tmp_path):
    # the engine finds candidates by hash buckets in its inverted index and scores them; compare with brute force
    rng = random.Random(5)
    words = "rain coffee music train office garden city river bread lamp paper window family money plan dream router price help nurse".split()
    base = [" ".join(rng.choice(words) for _ in range(12)) + f" person {i}" for i in range(60)]
    engine = DedupIndex(HashingEmbedder(128), threshold=0.9, workdir=tmp_path, nn_sample=8)
    assert (engine.bits, engine.tables) == lsh_shape(0.9) == (16, lsh_tables(0.9, 16)) and lsh_shape(0.97)[0] == 20
    assert lsh_tables(0.9, 16) > lsh_tables(0.97, 16) > lsh_tables(0.99, 16) >= 1
    for start in range(0, 60, 7):
        engine.add(engine.embed(base[start : start + 7]), [f"p{i}" for i in range(start, min(60, start + 7))])
    assert len(engine) == 60 and any(tmp_path.iterdir())  # the shard lives under workdir
    near = [base[3] + " too", base[41].replace("person 41", "person 41 again"), base[59] + " x"]  # planted near-duplicates
    far = ["Liam Walsh drives a delivery van in Dublin and supports his local hurling team"]
    probes = engine.embed(near + far)
    scan = engine.scan(probes)
    vecs = engine.embed(base)
    exact = probes @ vecs.T
    assert [engine.ids[int(a)] for a in scan.col_arg[:3]] == ["p3", "p41", "p59"] == [f"p{k}" for k in exact[:3].argmax(axis=1)]
    assert np.allclose(scan.col_max[:3], exact[:3].max(axis=1), atol=1e-5)
    assert [engine.is_duplicate(float(s)) for s in scan.col_max] == [True, True, True, False]
    sims = vecs @ vecs.T
    np.fill_diagonal(sims, -1.0)
    nn = engine.nearest_similarity()  # the first 8 personas, exact over all 60
    assert nn.shape == (8,) and np.allclose(nn, sims.max(axis=1)[:8], atol=1e-5)
    assert engine.uniqueness() == pytest.approx(float(np.mean(1.0 - sims.max(axis=1)[:8])), abs=1e-5)
    engine.close()
    assert not any(tmp_path.iterdir())  # closing removes the scratch shard


def test_dedup_check_keeps_the_first_of_near_duplicates_in_a_batch():
    index = DedupIndex(HashingEmbedder(128), threshold=0.9)
    texts = ["alpha beta gamma delta epsilon zeta eta theta", "one two three four five six seven", "alpha beta gamma delta epsilon zeta eta theta iota"]
    index.add(index.embed(texts[1:2]), ["old"])
    batch = index.embed([texts[0], texts[1] + " eight", texts[2], "completely different words here now"])
    keep, scan = index.check(batch)
    # 0 kept (first of its pair), 1 a duplicate of the accepted "old", 2 a duplicate of kept 0, 3 kept
    assert keep.tolist() == [True, False, False, True]
    assert index.ids[int(scan.col_arg[1])] == "old" and len(index) == 1  # checking adds nothing
    index.close()


@pytest.mark.parametrize("batch_size", [5, 24])  # 24: one block, rebuilt personas checked against the block's later ones
def test_population_has_no_near_duplicates_and_keeps_quotas(small_taxonomy, tmp_path, batch_size):
    spec = PopulationSpec(size=24, seed=2, taxonomy=small_taxonomy, deep_attributes=0, dedup_threshold=0.999, batch_size=batch_size, max_attempts=60,
                          quotas={"marginals": {"name": {"Ann": 0.25, "Bob": 0.375, "Cy": 0.375}}})
    embedder = HashingEmbedder(256)
    report = _run(spec, embedder, tmp_path / "out")
    people = read_jsonl(tmp_path / "out" / "personas.jsonl", Persona)
    combos = [_combo(p) for p in people]
    assert len(set(combos)) == 24  # no two personas alike
    vecs = embedder.embed([persona_text(p, include_description=False) for p in people])
    sims = vecs @ vecs.T
    assert max(sims[i, j] for i, j in combinations(range(24), 2)) < 0.999
    rejects = [r for _, r in read_jsonl_dicts(tmp_path / "out" / "rejects.jsonl")]
    dedup = [r for r in rejects if r["source"] == "dedup"]
    assert dedup and all("near-duplicate of persona-" in r["reason"] for r in dedup)
    assert report.rejects["dedup"] == len(dedup)
    assert report.quotas_exact
    assert [p.name for p in people].count("Ann") == 6
    assert all(p.attributes["who.pet"] != "fish" for p in people if p.name == "Ann")
    assert report.uniqueness is not None and report.min_nn_distance > 0.001


def test_dedup_gives_up_clearly_when_uniqueness_is_impossible(small_taxonomy):
    # only 18 distinct Ann personas exist (3 colours × 2 pets (no fish for Ann) × 3 foods); ask for 19
    spec = PopulationSpec(size=19, seed=0, taxonomy=small_taxonomy, deep_attributes=0, dedup_threshold=0.999, max_attempts=40,
                          quotas={"marginals": {"name": {"Ann": 1.0}}})
    with pytest.raises(PopulationError, match="near-duplicate in all 40 attempts"):
        sample_population(spec, embedder=HashingEmbedder(256))


# ---- resume ---------------------------------------------------------------------------


class _Stop(Exception):
    pass


def _scripted_gateway() -> Gateway:
    def reply(request):
        text = request.messages[-1].content
        if request.schema_name == "PlausibilityVerdict":
            issues = [{"attributes": ["who.food"], "problem": "no bread for Bob"}] if "who.name: Bob" in text and "who.food: bread" in text else []
            return json.dumps({"issues": issues})
        return json.dumps(fake_from_schema(request.json_schema, random.Random(text)))

    return Gateway(ScriptedLLM(reply))


def _run(spec, embedder, out, *, gateway=None, qdrant=None, stop_at=None):
    import asyncio

    def progress(done, total):
        if stop_at is not None and done >= stop_at:
            raise _Stop()

    return asyncio.run(generate_population(spec, gateway=gateway, embedder=embedder, qdrant=qdrant, out_dir=out, on_progress=progress))


@pytest.mark.parametrize("llm", [False, True], ids=["no-llm", "scripted-llm"])
def test_resume_after_interruption_matches_uninterrupted_run(small_taxonomy, tmp_path, llm):
    spec = PopulationSpec(size=30, seed=5, taxonomy=small_taxonomy, deep_attributes=0, dedup_threshold=0.999, batch_size=7, max_attempts=80)
    full = tmp_path / "full"
    full_run = _run(spec, HashingEmbedder(256), full, gateway=_scripted_gateway() if llm else None)
    assert full_run.rejects.get("dedup", 0) > 0  # the resumed part must replay de-duplication decisions too

    part = tmp_path / "part"
    with pytest.raises(_Stop):
        _run(spec, HashingEmbedder(256), part, gateway=_scripted_gateway() if llm else None, stop_at=14)
    assert len(read_jsonl(part / "personas.jsonl", Persona)) == 14
    # a kill in the middle of the next batch: a stray reject and a torn persona line
    with open(part / "rejects.jsonl", "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"index": 20, "attempt": 0, "source": "dedup", "reason": "from a killed run"}) + "\n")
    with open(part / "personas.jsonl", "a", encoding="utf-8") as fh:
        fh.write('{"id": "persona-torn", "name": "Half')
    # resumed with another batch size: batches group the work, they do not change the result
    report = _run(spec.model_copy(update={"batch_size": 4}), HashingEmbedder(256), part, gateway=_scripted_gateway() if llm else None)

    assert (part / "personas.jsonl").read_text() == (full / "personas.jsonl").read_text()
    assert (part / "rejects.jsonl").read_text() == (full / "rejects.jsonl").read_text()
    assert report.produced == 30 and report.quotas_exact
    full_report = json.loads((full / "population_report.json").read_text())
    # the report of the run that finished the population covers all of it, not just the personas it added
    for key in ("produced", "rejects", "revised_attributes", "uniqueness", "distinct_1", "distinct_2", "attribute_coverage", "valid_first_try", "usage"):
        assert getattr(report, key) == pytest.approx(full_report[key]), key
    assert json.loads((part / "population_report.json").read_text()) == report.model_dump(mode="json")
    work = [r for _, r in read_jsonl_dicts(part / "population_work.jsonl")]
    assert [r["first"] for r in work] == [0, 7, 14, 18, 22, 26] and sum(r["personas"] for r in work) == 30
    assert report.wall_s == pytest.approx(sum(r["wall_s"] for r in work))
    assert report.personas_per_s == pytest.approx(30 / report.wall_s)
    if llm:
        assert report.usage["total.model_calls"] == full_report["usage"]["total.model_calls"] > 0
        assert report.revised_personas > 0
        assert all(not (p.name == "Bob" and p.attributes["who.food"] == "bread") for p in read_jsonl(part / "personas.jsonl", Persona))
    else:
        assert report.usage == {}
    # rerunning a finished population changes nothing, its report included
    again = _run(spec, HashingEmbedder(256), part, gateway=_scripted_gateway() if llm else None)
    assert (part / "personas.jsonl").read_text() == (full / "personas.jsonl").read_text()
    assert again.model_dump(exclude={"uniqueness", "min_nn_distance"}) == report.model_dump(exclude={"uniqueness", "min_nn_distance"})
    assert again.uniqueness == pytest.approx(report.uniqueness)


def test_resume_with_different_spec_is_refused(small_taxonomy, tmp_path):
    spec = PopulationSpec(size=6, seed=1, taxonomy=small_taxonomy, deep_attributes=0)
    _run(spec, HashingEmbedder(64), tmp_path)
    with pytest.raises(ConfigError, match="different spec") as info:
        _run(spec.model_copy(update={"seed": 2}), HashingEmbedder(64), tmp_path)
    assert info.value.file.endswith("population_spec.json")
    with pytest.raises(ConfigError, match="different spec"):
        _run(spec, HashingEmbedder(128), tmp_path)  # another embedder would dedupe differently


def test_qdrant_persists_vectors_and_resume_reads_them(small_taxonomy, tmp_path):
    spec = PopulationSpec(size=20, seed=3, taxonomy=small_taxonomy, deep_attributes=0, dedup_threshold=0.999, batch_size=6, dedup_collection="pop_test", max_attempts=80)
    handle = open_qdrant(path=tmp_path / "qdrant")
    try:
        with pytest.raises(_Stop):
            _run(spec, HashingEmbedder(128), tmp_path / "out", qdrant=handle, stop_at=12)
        assert handle.client.count("pop_test").count == 12

        class CountingEmbedder(HashingEmbedder):
            texts = 0

            def embed(self, texts):
                CountingEmbedder.texts += len(texts)
                return super().embed(texts)

        counting = CountingEmbedder(128)
        _run(spec, counting, tmp_path / "out", qdrant=handle)
        assert handle.client.count("pop_test").count == 20
        assert CountingEmbedder.texts < 20  # the 12 done personas came back from Qdrant, not re-embedded
        people = read_jsonl(tmp_path / "out" / "personas.jsonl", Persona)
        point = handle.client.retrieve("pop_test", ids=[__import__("personae.population.dedup", fromlist=["point_id"]).point_id(people[0].id)], with_payload=True)
        assert point and point[0].payload["persona_id"] == people[0].id
        with pytest.raises(ConfigError, match="256-dimensional|dimensional"):
            DedupIndex(HashingEmbedder(256), threshold=0.9, qdrant=handle, collection="pop_test")
    finally:
        handle.close()


def test_report_files_and_metrics(tmp_path, hashing_embedder):
    spec = PopulationSpec(size=16, seed=8, deep_attributes=30, quotas={"marginals": {"gender": {"female": 0.5, "male": 0.5}, "settlement": {"big city": 0.75, "rural area": 0.25}}})
    report = _run(spec, hashing_embedder, tmp_path)
    for name in ("personas.jsonl", "rejects.jsonl", "population_report.json", "population_spec.json", "population_marginals.png"):
        assert (tmp_path / name).exists(), name
    assert (tmp_path / "population_marginals.png").read_bytes()[:4] == b"\x89PNG"
    assert report.marginals["demographics.settlement"]["big city"].target == 12
    assert report.marginals["demographics.settlement"]["big city"].achieved == 12
    metrics = report.metrics()
    assert metrics["population.quotas_exact"] == 1.0
    assert 0 < metrics["population.attribute_coverage"] <= 1
    assert metrics["population.mean_attributes"] > 60
    assert 0 < metrics["population.distinct_2"] <= 1
    assert 0 < metrics["population.uniqueness"] <= 1
    people = read_jsonl(tmp_path / "personas.jsonl", Persona)
    assert [persona_meta(p)["index"] for p in people] == list(range(16))
    p = people[0]
    assert p.social_identity and p.personal_identity and p.life_context and p.big_five is not None and p.speaking_style
    assert p.name in p.description


# ---- CLI ------------------------------------------------------------------------------


def test_cli_generate(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from personae.cli import app

    spec = tmp_path / "population.yaml"
    spec.write_text("name: cli\nsize: 50\nseed: 1\ndeep_attributes: 5\nquotas:\n  marginals:\n    gender: {female: 0.5, male: 0.5}\n", encoding="utf-8")
    monkeypatch.setenv("PERSONAE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("PERSONAE_EMBEDDINGS_PROVIDER", "hashing")
    result = CliRunner().invoke(app, ["generate", "--spec", str(spec), "--out", str(tmp_path / "out"), "--no-llm", "--size", "9", "--seed", "4"])
    assert result.exit_code == 0, result.output
    assert "quota cells met exactly" in result.output
    people = read_jsonl(tmp_path / "out" / "personas.jsonl", Persona)
    assert len(people) == 9
    saved = json.loads((tmp_path / "out" / "population_spec.json").read_text())
    assert saved["spec"]["size"] == 9 and saved["spec"]["seed"] == 4
