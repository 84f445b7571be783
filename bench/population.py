"""Benchmark: the non-LLM population path (sample + rules + dedup) at scale.

Generates ``--size`` personas (default 100,000) with quotas on age band × gender ×
region (raked marginals), the packaged taxonomy and rules, ``--deep`` deep
attributes each, and exact semantic de-duplication with the hashing embedder,
writing personas.jsonl like a real run. Reports personas/second, peak memory
(``resource.getrusage`` max RSS; ``--tracemalloc`` adds Python-heap peak at a
speed cost) and a per-stage breakdown measured on a small sample.

    .venv/bin/python bench/population.py                 # 100k personas
    .venv/bin/python bench/population.py --size 20000 --qdrant

Not a test: numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import shutil
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


def _max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def _stages(spec, embedder, n: int) -> dict[str, float]:
    """Microseconds per persona for each stage, on ``n`` personas (warm caches)."""
    from personae.population import persona_text, plan_population, to_persona

    plan = plan_population(spec)
    cells = [plan.quotas.cells[plan.cell_of(i)].values for i in range(n)]
    for i in range(n):  # warm the distribution cache as a long run would have it
        plan.sampler.sample(i, cells[i])
    t = time.perf_counter()
    attrs = [plan.sampler.sample(i, cells[i]) for i in range(n)]
    sample_us = (time.perf_counter() - t) / n * 1e6
    t = time.perf_counter()
    people = [to_persona(a, plan.taxonomy, seed=spec.seed, index=i, meta={"index": i}) for i, a in enumerate(attrs)]
    map_us = (time.perf_counter() - t) / n * 1e6
    texts = [persona_text(p, include_description=False) for p in people]
    t = time.perf_counter()
    embedder.embed(texts)
    embed_us = (time.perf_counter() - t) / n * 1e6
    t = time.perf_counter()
    lines = [p.model_dump_json() for p in people]
    json_us = (time.perf_counter() - t) / n * 1e6
    return {
        "sample_rules_us": round(sample_us, 1),
        "map_to_persona_us": round(map_us, 1),
        "embed_us": round(embed_us, 1),
        "json_us": round(json_us, 1),
        "mean_attributes": round(sum(len(a) for a in attrs) / n, 1),
        "mean_json_bytes": round(sum(len(x) for x in lines) / n),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--deep", type=int, default=40, help="deep attributes per persona")
    parser.add_argument("--dim", type=int, default=128, help="hashing embedder dimension")
    parser.add_argument("--threshold", type=float, default=0.97)
    parser.add_argument("--batch", type=int, default=2000)
    parser.add_argument("--qdrant", action="store_true", help="also persist vectors in embedded (local) Qdrant")
    parser.add_argument("--tracemalloc", action="store_true", help="track the Python heap peak (slower)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: a temp folder, removed)")
    parser.add_argument("--stage-sample", type=int, default=2000, help="personas for the per-stage breakdown (0 = skip)")
    args = parser.parse_args(argv)

    from personae.embeddings import HashingEmbedder
    from personae.memory.qdrant import open_qdrant
    from personae.population import PopulationSpec, generate_population

    spec = PopulationSpec(
        name="bench", size=args.size, seed=args.seed, deep_attributes=args.deep, quotas=QUOTAS,
        dedup_threshold=args.threshold, batch_size=args.batch, llm_validate=False, craft=False,
    )
    embedder = HashingEmbedder(args.dim)
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
            print(f"  {done:>7}/{total}  {rate:7.0f} personas/s  rss {_max_rss_mb():.0f} MB", file=sys.stderr, flush=True)
            last[0], last[1] = now, done

    started = time.perf_counter()
    try:
        report = asyncio.run(generate_population(spec, gateway=None, embedder=embedder, qdrant=qdrant, out_dir=out, on_progress=progress))
    finally:
        if qdrant is not None:
            qdrant.close()
    wall = time.perf_counter() - started
    heap_peak = tracemalloc.get_traced_memory()[1] / 2**20 if args.tracemalloc else None
    if args.tracemalloc:
        tracemalloc.stop()
    result = {
        "size": args.size,
        "deep_attributes": args.deep,
        "embedder": embedder.name,
        "qdrant": bool(args.qdrant),
        "wall_s": round(wall, 1),
        "personas_per_s": round(args.size / wall, 1),
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
    if args.stage_sample:
        result["stages_per_persona"] = _stages(spec.model_copy(update={"size": max(args.stage_sample, 10)}), embedder, args.stage_sample)
    print(json.dumps(result, indent=2))
    if args.out is None:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
