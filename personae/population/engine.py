"""The population engine: sample → validate/revise → (craft) → de-duplicate → append, resumably.

Every persona is a pure function of the spec (seed, taxonomy, rules, quotas), its
index and the personas before it (through de-duplication), so a rerun that finds
``personas.jsonl`` half written continues where it stopped and ends with exactly
the population an uninterrupted run would have produced. Without a model (no LLM
validation, no crafting) first attempts come from vectorised chunks
(:mod:`personae.population.columns`), each a pure function of the spec and its chunk
number, so resuming mid-chunk redraws the chunk and gets the same personas.

Files in ``out_dir``: ``personas.jsonl`` (appended batch by batch), ``rejects.jsonl``
(every rejected proposal with its reason), ``population_work.jsonl`` (each written batch's
time and model usage, so the report of a resumed run covers the whole population),
``population_spec.json`` (the spec and its fingerprint, which a resumed run must match),
``population_report.json`` and ``population_marginals.png``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from personae.embeddings.base import Embedder
from personae.errors import ConfigError, ModelCallError, ModelOutputError, PersonaeError
from personae.jsonl import append_jsonl, append_lines, iter_jsonl, read_jsonl_dicts, write_json, write_jsonl
from personae.llm.gateway import Gateway
from personae.memory.qdrant import QdrantHandle
from personae.models import Persona
from personae.population.columns import CHUNK, ColumnSampler
from personae.population.conditions import Rule
from personae.population.coverage import CoveragePlan, plan_coverage
from personae.population.craft import craft_persona
from personae.population.dedup import DedupIndex, best_earlier, persona_text
from personae.population.mapping import META_KEY, persona_json, persona_meta, to_persona, to_personas
from personae.population.quotas import QuotaPlan, plan_quotas
from personae.population.report import PopulationReport, ReportBuilder, plot_marginals
from personae.population.sampling import PersonaSampler, SamplingError
from personae.population.spec import PopulationSpec
from personae.population.taxonomy import Taxonomy, load_taxonomy
from personae.population.validate import LLMPlausibilityCheck, ReviseOutcome, Validator, validate_and_revise
from personae.prompts import PromptSet

__all__ = ["PopulationPlan", "PopulationError", "plan_population", "generate_population", "sample_population", "PERSONAS_FILE", "REJECTS_FILE"]

log = logging.getLogger(__name__)
_DEDUP_BLOCK = 1024  # personas checked against the index at once; they join it before the next block

PERSONAS_FILE = "personas.jsonl"
REJECTS_FILE = "rejects.jsonl"
WORK_FILE = "population_work.jsonl"
SPEC_FILE = "population_spec.json"
REPORT_FILE = "population_report.json"
PLOT_FILE = "population_marginals.png"

ProgressFn = Callable[[int, int], None]
_MAP_GROUP = 256  # first attempts mapped to personas together


class PopulationError(PersonaeError):
    """A persona could not be produced (e.g. every attempt was a near-duplicate)."""


@dataclass
class PopulationPlan:
    """A spec compiled against its taxonomy: rules, sampler, exact quota allocation."""

    spec: PopulationSpec
    taxonomy: Taxonomy
    rules: list[Rule]
    sampler: PersonaSampler
    quotas: QuotaPlan
    sequence: np.ndarray
    coverage: CoveragePlan | None = None

    def cell_of(self, index: int) -> int:
        """The quota cell of persona ``index``."""
        return int(self.sequence[index])


def plan_population(spec: PopulationSpec, *, taxonomy: Taxonomy | None = None) -> PopulationPlan:
    """Load the taxonomy, compile the rules and allocate quotas exactly (no model involved)."""
    tax = taxonomy or load_taxonomy(spec.taxonomy)
    rules = tax.rules + tax.compile_rules(spec.rules, file=spec.source, field="rules")
    sampler = PersonaSampler(tax, rules, seed=spec.seed, deep_attributes=spec.deep_attributes, near_share=spec.near_share)
    quotas = plan_quotas(spec.quotas, spec.size, tax, probe=sampler.probe, prior_draw=sampler.sample_prior, file=spec.source)
    coverage = plan_coverage(spec.sampling, tax, seed=spec.seed, prior_draw=sampler.sample_prior, quota_dims=quotas.dims, file=spec.source)
    return PopulationPlan(spec, tax, rules, sampler, quotas, quotas.sequence(spec.seed), coverage)


@dataclass
class _Built:
    persona: Persona
    attempt: int
    rejects: list[dict[str, Any]]


class _Pipeline:
    """Proposes one persona: sample → validate/revise → map → craft."""

    def __init__(self, plan: PopulationPlan, *, gateway: Gateway | None, validators: Sequence[Validator], prompts: PromptSet | None) -> None:
        spec = plan.spec
        self.plan = plan
        self.spec = spec
        self.validators = list(validators)
        self.prompts = prompts
        self.llm = LLMPlausibilityCheck(gateway, plan.taxonomy, prompts=prompts) if gateway is not None and spec.llm_validate else None
        self.gateway = gateway if gateway is not None and spec.craft else None
        # the non-LLM path draws whole chunks of personas as numpy columns
        self.columns = ColumnSampler(plan.sampler) if self.llm is None and self.gateway is None else None
        self._chunk: tuple[int, Sequence[dict[str, Any] | None]] | None = None

    def _from_columns(self, index: int) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """First-attempt attributes of ``index`` from its vectorised chunk (``None``: use the scalar sampler)."""
        if self.columns is None:
            return None
        number = index // CHUNK
        if self._chunk is None or self._chunk[0] != number:
            indices = range(number * CHUNK, min(self.spec.size, (number + 1) * CHUNK))
            self._chunk = (number, self.columns.sample_chunk(indices, [self._fixed(i) for i in indices], number))
        attrs = self._chunk[1][index - number * CHUNK]
        return None if attrs is None else (attrs, self._fixed(index))

    def _fixed(self, index: int) -> dict[str, Any]:
        """The values persona ``index`` starts from: its quota cell, then its coverage axes."""
        axes = self.plan.coverage.values_for(index) if self.plan.coverage is not None else {}
        return {**self.plan.quotas.cells[self.plan.cell_of(index)].values, **axes}

    def _sample(self, index: int, attempt: int, cell: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], int]:
        """Attributes, the values held fixed (quota cell and coverage axes), and how many axes fell back.

        Coverage axes are drawn independently, so a combination may break a rule: then the
        trailing axes are left to the sampler, one at a time, until a persona fits.
        """
        if attempt == 0 and (hit := self._from_columns(index)) is not None:
            return hit[0], hit[1], 0
        axes = self.plan.coverage.values_for(index) if self.plan.coverage is not None else {}
        names = list(axes)
        for dropped in range(len(names) + 1):
            fixed = {**cell, **{k: axes[k] for k in names[: len(names) - dropped]}}
            try:
                return self.plan.sampler.sample(index, fixed, attempt), fixed, dropped
            except SamplingError as exc:
                if dropped == len(names):
                    raise ConfigError(f"impossible quota cell {cell}: {exc.reason}", file=self.spec.source, field="quotas", expected="cells some rule-abiding persona fits") from None
        raise AssertionError("unreachable")  # pragma: no cover

    async def _propose(self, index: int, attempt: int) -> tuple[ReviseOutcome, int, int]:
        cell_index = self.plan.cell_of(index)
        cell = self.plan.quotas.cells[cell_index]
        if attempt == 0 and not self.validators and (hit := self._from_columns(index)) is not None:
            # the vectorised draw checked every rule over the whole chunk: nothing left to validate
            return ReviseOutcome(attrs=hit[0], accepted=True, history=[[]]), cell_index, 0
        attrs, fixed, dropped = self._sample(index, attempt, cell.values)
        outcome = await validate_and_revise(
            attrs,
            sampler=self.plan.sampler,
            validators=self.validators,
            llm=self.llm,
            fixed=fixed,
            max_rounds=self.spec.max_revise_rounds,
            index=index,
            attempt=attempt,
            seed=self.spec.seed,
        )
        return outcome, cell_index, dropped

    def _meta(self, index: int, attempt: int, outcome: ReviseOutcome, cell_index: int, *, unresolved: bool, fallback: int = 0) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "population": self.spec.name,
            "index": index,
            "attempt": attempt,
            "cell_index": cell_index,
            "cell": self.plan.quotas.cells[cell_index].values,
            "revised": outcome.revised,
            "revision_rounds": len(outcome.history) - 1,
        }
        if unresolved:
            meta["unresolved"] = [i.as_dict() for i in outcome.issues]
        if outcome.llm_failed:
            meta["llm_failed"] = True
        if fallback:
            meta["coverage_fallback"] = fallback
        return meta

    def first_attempts(self, indices: Sequence[int]) -> list[_Built | None]:
        """First attempts of ``indices`` straight from their vectorised chunks, mapped to personas in
        one batch (``None`` where the scalar path must build: no chunk row, validators, or a model)."""
        if self.columns is None or self.validators:
            return [None] * len(indices)
        out: list[_Built | None] = []
        for start in range(0, len(indices), _MAP_GROUP):  # in groups, so attribute dicts live briefly
            hits = [(index, self._from_columns(index)) for index in indices[start : start + _MAP_GROUP]]
            rows = [(index, hit[0]) for index, hit in hits if hit is not None]
            metas = []
            for index, attrs in rows:
                cell_index = self.plan.cell_of(index)
                metas.append(self._meta(index, 0, ReviseOutcome(attrs=attrs, accepted=True, history=[[]]), cell_index, unresolved=False))
            personas = iter(to_personas([a for _, a in rows], self.plan.taxonomy, seed=self.spec.seed, indices=[i for i, _ in rows], metas=metas, prompts=self.prompts))
            out.extend(_Built(next(personas), 0, []) if hit is not None else None for _, hit in hits)
        return out

    async def _persona(self, index: int, attempt: int, outcome: ReviseOutcome, cell_index: int, *, unresolved: bool, fallback: int = 0) -> Persona:
        meta = self._meta(index, attempt, outcome, cell_index, unresolved=unresolved, fallback=fallback)
        persona = to_persona(outcome.attrs, self.plan.taxonomy, seed=self.spec.seed, index=index, meta=meta, prompts=self.prompts)
        if self.gateway is not None:
            try:
                persona = await craft_persona(persona, self.plan.taxonomy, self.gateway, seed=self.spec.seed, prompts=self.prompts)
            except (ModelOutputError, ModelCallError) as exc:
                log.warning("crafting persona %d failed; keeping the templated description: %s", index, exc)
                persona.attributes[META_KEY]["craft_failed"] = True
        return persona

    async def build(self, index: int, first_attempt: int = 0) -> _Built:
        """The first acceptable proposal for ``index`` from ``first_attempt`` on.

        If validation rejects every attempt, the last proposal is kept and marked
        ``unresolved`` (the rules still hold for it); reaching ``max_attempts``
        before even one proposal raises :class:`PopulationError`.
        """
        rejects: list[dict[str, Any]] = []
        if first_attempt >= self.spec.max_attempts:
            raise PopulationError(
                f"persona {index} (cell {self.plan.quotas.cells[self.plan.cell_of(index)].values}) was a near-duplicate in all "
                f"{self.spec.max_attempts} attempts; raise max_attempts, raise dedup_threshold, or use a richer taxonomy"
            )
        last: tuple[int, ReviseOutcome, int] | None = None
        dropped = 0
        for attempt in range(first_attempt, self.spec.max_attempts):
            outcome, cell_index, dropped = await self._propose(index, attempt)
            if last is not None:
                rejects.append(_reject_record(index, *last))
            if outcome.accepted:
                return _Built(await self._persona(index, attempt, outcome, cell_index, unresolved=False, fallback=dropped), attempt, rejects)
            last = (attempt, outcome, cell_index)
        if last is None:  # pragma: no cover - the range above is never empty here
            raise PopulationError(f"persona {index}: no attempt was made")
        attempt, outcome, cell_index = last
        log.warning("persona %d kept with unresolved issues after %d attempts: %s", index, self.spec.max_attempts, [i.problem for i in outcome.issues])
        return _Built(await self._persona(index, attempt, outcome, cell_index, unresolved=True, fallback=dropped), attempt, rejects)



def _reject_record(index: int, attempt: int, outcome: ReviseOutcome, cell_index: int) -> dict[str, Any]:
    issues = outcome.issues
    return {
        "index": index,
        "attempt": attempt,
        "cell_index": cell_index,
        "source": issues[0].source if issues else "custom",
        "reason": "; ".join(i.problem for i in issues) or "failed validation",
        "attributes": sorted({p for i in issues for p in i.paths}),
        "revision_rounds": len(outcome.history) - 1,
    }


class _Run:
    """One generation run (file-backed or in memory)."""

    def __init__(self, plan: PopulationPlan, *, gateway: Gateway | None, embedder: Embedder | None, qdrant: QdrantHandle | None, out_dir: Path | None, validators: Sequence[Validator], prompts: PromptSet | None, on_progress: ProgressFn | None) -> None:
        self.plan = plan
        self.spec = plan.spec
        self.gateway = gateway
        self.out_dir = out_dir
        self.on_progress = on_progress
        self.pipeline = _Pipeline(plan, gateway=gateway, validators=validators, prompts=prompts)
        self.llm_used = self.pipeline.llm is not None or self.pipeline.gateway is not None
        if self.spec.dedup and embedder is None:
            log.warning("dedup is on but no embedder was given; personas are not de-duplicated")
        self.fingerprint = self.spec.fingerprint(
            plan.taxonomy.fingerprint,
            [str(r) for r in plan.rules],
            embedder.name if (embedder is not None and self.spec.dedup) else None,
            gateway.describe() if (gateway is not None and self.llm_used) else None,
            [v.__qualname__ if hasattr(v, "__qualname__") else type(v).__name__ for v in validators],
        )
        self.index = DedupIndex(embedder, threshold=self.spec.dedup_threshold, qdrant=qdrant, collection=self.spec.dedup_collection, population=self.fingerprint,
                                 workdir=out_dir) if (embedder is not None and self.spec.dedup) else None
        self.report = ReportBuilder(plan.taxonomy, plan.quotas, coverage=plan.coverage)
        self.kept: list[Persona] = []
        self._with_description = self.pipeline.gateway is not None

    def _text(self, persona: Persona) -> str:
        return persona_text(persona, include_description=self._with_description)

    # ---- files ----------------------------------------------------------------------
    def _resume(self) -> int:
        """Check the out dir belongs to this spec; load what is done; return how many."""
        if self.out_dir is None:
            return 0
        self.out_dir.mkdir(parents=True, exist_ok=True)
        personas_path = self.out_dir / PERSONAS_FILE
        spec_path = self.out_dir / SPEC_FILE
        has_personas = personas_path.exists() and personas_path.stat().st_size > 0
        if spec_path.exists():
            try:
                stored = json.loads(spec_path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as exc:
                raise ConfigError(f"cannot read {SPEC_FILE}: {exc}", file=str(spec_path)) from None
            if stored.get("fingerprint") != self.fingerprint:
                raise ConfigError(
                    "this output folder holds a population generated with a different spec, taxonomy, model or embedder",
                    file=str(spec_path), field="fingerprint", expected=self.fingerprint, got=stored.get("fingerprint"),
                )
        elif has_personas:
            raise ConfigError(f"{PERSONAS_FILE} exists but {SPEC_FILE} is missing, so the run cannot be resumed safely", file=str(personas_path), expected="an empty output folder or a complete one")
        else:
            write_json(spec_path, {"fingerprint": self.fingerprint, "spec": self.spec.model_dump(mode="json")})
        (self.out_dir / REJECTS_FILE).touch(exist_ok=True)
        done: list[Persona] = []
        if has_personas:
            for i, persona in enumerate(iter_jsonl(personas_path, Persona)):
                if persona_meta(persona).get("index") != i:
                    raise ConfigError(f"persona on line {i + 1} has index {persona_meta(persona).get('index')}, expected {i}", file=str(personas_path), line=i + 1)
                done.append(persona)
        if len(done) > self.spec.size:
            raise ConfigError(f"{len(done)} personas already written, more than size {self.spec.size}", file=str(personas_path))
        rejects_path = self.out_dir / REJECTS_FILE
        rejects: list[dict[str, Any]] = []
        if rejects_path.exists():
            every = [obj for _, obj in read_jsonl_dicts(rejects_path)]
            rejects = [r for r in every if isinstance(r.get("index"), int) and r["index"] < len(done)]
            if len(rejects) != len(every):  # proposals of personas that were never written
                write_jsonl(rejects_path, rejects)
        self.report.add_many(done)
        for persona in done:
            self._keep(persona)
        self.report.add_rejects(rejects)
        self._load_work()
        if self.index is not None and done:
            self.index.load([p.id for p in done], [self._text(p) for p in done])
        if done:
            log.info("resuming population %s at %d of %d", self.spec.name, len(done), self.spec.size)
        return len(done)

    def _load_work(self) -> None:
        """Count the time and model usage of the batches earlier runs wrote."""
        path = self.out_dir / WORK_FILE
        if not path.exists():  # a population from before the work was recorded
            return
        for number, record in read_jsonl_dicts(path):
            wall_s, usage = record.get("wall_s"), record.get("usage")
            if not isinstance(wall_s, (int, float)) or not isinstance(usage, dict) or not all(isinstance(v, (int, float)) for v in usage.values()):
                raise ConfigError("invalid work record", file=str(path), line=number, expected='{"wall_s": seconds, "usage": {counter: number}}', got=record)
            self.report.add_work(float(wall_s), usage)

    def _keep(self, persona: Persona) -> None:
        if self.out_dir is None:
            self.kept.append(persona)

    def _write(self, personas: list[Persona], rejects: list[dict[str, Any]]) -> None:
        if self.out_dir is None:
            return
        # rejects first: a crash in between leaves rejects of unwritten personas, which resume drops
        append_jsonl(self.out_dir / REJECTS_FILE, rejects)
        append_lines(self.out_dir / PERSONAS_FILE, [persona_json(p) for p in personas])

    def _usage(self) -> dict[str, float]:
        """The gateway's counters so far (empty when this run makes no model call)."""
        return self.gateway.usage.snapshot() if (self.gateway is not None and self.llm_used) else {}

    def _record_work(self, first: int, count: int, started: float, usage_before: dict[str, float]) -> None:
        """Count a written batch's time and model usage, and append them to the work file.

        Appended after the batch's personas: a crash in between loses only this batch's
        time and usage from later reports, never counts a batch twice.
        """
        usage = {k: v - usage_before.get(k, 0) for k, v in self._usage().items()}
        wall_s = time.perf_counter() - started
        self.report.add_work(wall_s, usage)
        if self.out_dir is not None:
            append_jsonl(self.out_dir / WORK_FILE, [{"first": first, "personas": count, "wall_s": wall_s, "usage": usage}])

    # ---- the loop -----------------------------------------------------------------------
    async def run(self) -> PopulationReport:
        try:
            return await self._generate()
        finally:
            if self.index is not None:
                self.index.close()  # the engine's scratch shard

    async def _generate(self) -> PopulationReport:
        size = self.spec.size
        done = self._resume()
        if self.on_progress is not None:
            self.on_progress(done, size)
        for start in range(done, size, self.spec.batch_size):
            started, usage_before = time.perf_counter(), self._usage()
            indices = range(start, min(size, start + self.spec.batch_size))
            if self.llm_used:
                built = list(await asyncio.gather(*(self.pipeline.build(i) for i in indices)))
            else:
                first = self.pipeline.first_attempts(indices)
                built = [b if b is not None else await self.pipeline.build(i) for i, b in zip(indices, first)]
            personas, rejects, vectors = await self._dedup(list(indices), built)
            self._write(personas, rejects)
            if self.index is not None:
                self.index.persist(vectors, [p.id for p in personas], payloads=[{"index": persona_meta(p)["index"], "name": p.name} for p in personas])
            self.report.add_many(personas)
            for persona in personas:
                self._keep(persona)
            self.report.add_rejects(rejects)
            self._record_work(start, len(personas), started, usage_before)
            if self.on_progress is not None:
                self.on_progress(start + len(personas), size)
        report = self.report.finish(
            name=self.spec.name,
            seed=self.spec.seed,
            fingerprint=self.fingerprint,
            nearest=self.index.nearest_similarity() if self.index is not None else None,
            llm_validated=self.pipeline.llm is not None,
            crafted=self.pipeline.gateway is not None,
            dedup_threshold=self.spec.dedup_threshold if self.index is not None else None,
        )
        if self.out_dir is not None:
            write_json(self.out_dir / REPORT_FILE, report.model_dump(mode="json"))
            plot_marginals(report, self.out_dir / PLOT_FILE)
        return report

    async def _dedup(self, indices: list[int], built: list[_Built]) -> tuple[list[Persona], list[dict[str, Any]], np.ndarray]:
        """Accept the batch in index order, resampling near-duplicates of earlier personas.

        Checked in blocks of the batch: the index answers a block at once, earlier personas
        of the block are compared exactly, the accepted ones join the index before the next block, so a
        persona is compared with every persona accepted before it. A rejected one is
        rebuilt and checked again at once. Returns the personas, the rejects, and the
        accepted vectors (already in the index, not yet persisted).
        """
        rejects = [r for b in built for r in b.rejects]
        personas = [b.persona for b in built]
        if self.index is None:
            return personas, rejects, np.zeros((0, 0), np.float32)
        index = self.index
        vectors = index.embed([self._text(p) for p in personas])
        for start in range(0, len(personas), _DEDUP_BLOCK):
            block = range(start, min(len(personas), start + _DEDUP_BLOCK))
            scan = index.scan(vectors[block.start : block.stop])
            inner_max, inner_arg = best_earlier(vectors[block.start : block.stop])  # among the block's first proposals
            replaced: list[int] = []  # positions in the block whose proposal was rebuilt
            for j in block:
                current, vec, original = built[j], vectors[j], True
                best, arg = float(scan.col_max[j - start]), int(scan.col_arg[j - start])
                while True:
                    other_id = index.ids[arg] if arg >= 0 else None
                    if j > start:  # the block's earlier personas, all accepted by now
                        k = int(inner_arg[j - start])
                        if original and start + k not in replaced:  # its best earlier proposal is still accepted
                            sim, k = float(inner_max[j - start]), start + k
                            if replaced:  # and the rebuilt ones
                                rebuilt = vectors[replaced] @ vec
                                if float(rebuilt.max()) > sim:
                                    sim, k = float(rebuilt.max()), replaced[int(rebuilt.argmax())]
                        else:
                            inner = vectors[start:j] @ vec
                            sim, k = float(inner.max()), start + int(inner.argmax())
                        if sim > best:
                            best, other_id = sim, personas[k].id
                    if not index.is_duplicate(best):
                        break
                    rejects.append({
                        "index": indices[j],
                        "attempt": current.attempt,
                        "cell_index": self.plan.cell_of(indices[j]),
                        "source": "dedup",
                        "reason": f"near-duplicate of {other_id} (cosine {best:.3f} >= {index.threshold})",
                        "attributes": [],
                        "revision_rounds": persona_meta(current.persona).get("revision_rounds", 0),
                    })
                    current = await self.pipeline.build(indices[j], current.attempt + 1)
                    rejects.extend(current.rejects)
                    vec = index.embed([self._text(current.persona)])[0]
                    one = index.scan(vec[None, :])
                    best, arg, original = float(one.col_max[0]), int(one.col_arg[0]), False
                if not original:
                    replaced.append(j)
                personas[j] = current.persona
                vectors[j] = vec
            index.add(vectors[block.start : block.stop], [p.id for p in personas[block.start : block.stop]], persist=False)
        return personas, rejects, vectors


async def generate_population(
    spec: PopulationSpec,
    *,
    gateway: Gateway | None,
    embedder: Embedder | None,
    qdrant: QdrantHandle | None,
    out_dir: Path,
    on_progress: ProgressFn | None = None,
    validators: Sequence[Validator] = (),
    prompts: PromptSet | None = None,
    taxonomy: Taxonomy | None = None,
) -> PopulationReport:
    """Generate ``spec.size`` personas into ``out_dir`` (resuming what is there).

    Args:
        spec: the population spec.
        gateway: model gateway for the plausibility check (role ``validator``) and
            crafting (role ``crafter``); ``None`` runs the non-LLM path.
        embedder: for semantic de-duplication (``None`` disables it).
        qdrant: where de-duplication vectors persist (a dedicated collection); optional.
        out_dir: output folder (see module docs for the files).
        on_progress: called with ``(done, total)`` after each batch.
        validators: extra checks ``attrs -> list[Issue]`` run after the rules.
        prompts: prompt overrides.
        taxonomy: an already loaded taxonomy (defaults to ``spec.taxonomy``).
    """
    plan = plan_population(spec, taxonomy=taxonomy)
    run = _Run(plan, gateway=gateway, embedder=embedder, qdrant=qdrant, out_dir=Path(out_dir), validators=validators, prompts=prompts, on_progress=on_progress)
    return await run.run()


def sample_population(
    spec: PopulationSpec,
    *,
    embedder: Embedder | None = None,
    validators: Sequence[Validator] = (),
    taxonomy: Taxonomy | None = None,
) -> list[Persona]:
    """The non-LLM path in memory: sample + rules (+ de-duplication with ``embedder``).

    Synchronous; call it outside a running event loop (use :func:`generate_population`
    from async code).
    """
    plan = plan_population(spec, taxonomy=taxonomy)
    run = _Run(plan, gateway=None, embedder=embedder, qdrant=None, out_dir=None, validators=validators, prompts=None, on_progress=None)
    asyncio.run(run.run())
    return run.kept
