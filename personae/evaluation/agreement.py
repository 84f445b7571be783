"""Agreement of an ensemble of judges scoring the same items (1–5 scales).

Judges are unreliable; their agreement is reported with every judged score:
pairwise mean absolute difference, exact and within-1 agreement, and Krippendorff's
alpha (interval metric, missing values allowed).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence

import numpy as np
from pydantic import BaseModel

__all__ = ["PairAgreement", "AgreementReport", "judge_agreement", "krippendorff_alpha_interval"]


class PairAgreement(BaseModel):
    """Agreement of two judges on the items both scored."""

    judge_a: str
    judge_b: str
    n: int
    mean_abs_diff: float | None
    exact: float | None
    within_1: float | None


class AgreementReport(BaseModel):
    """Agreement over all judges; pairwise figures are averaged over judge pairs."""

    n_items: int
    mean_abs_diff: float | None
    exact: float | None
    within_1: float | None
    krippendorff_alpha: float | None
    per_judge_mean: dict[str, float | None]
    pairs: list[PairAgreement]

    def metrics(self, prefix: str = "agreement") -> dict[str, float]:
        """Flat, finite figures for tracking."""
        out = {
            f"{prefix}.n_items": float(self.n_items),
            f"{prefix}.mean_abs_diff": self.mean_abs_diff,
            f"{prefix}.exact": self.exact,
            f"{prefix}.within_1": self.within_1,
            f"{prefix}.krippendorff_alpha": self.krippendorff_alpha,
        }
        for judge, mean in self.per_judge_mean.items():
            out[f"{prefix}.judge_mean.{judge}"] = mean
        return {k: float(v) for k, v in out.items() if v is not None and math.isfinite(v)}


def _opt(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def judge_agreement(scores: Mapping[str, Sequence[float | None]]) -> AgreementReport:
    """Agreement of judges given ``judge → scores`` aligned by item (``None`` = missing)."""
    judges = list(scores)
    lengths = {len(v) for v in scores.values()}
    if len(lengths) > 1:
        raise ValueError(f"judge score lists differ in length: {lengths}")
    n = lengths.pop() if lengths else 0
    matrix = np.full((len(judges), n), np.nan)
    for row, judge in enumerate(judges):
        for col, value in enumerate(scores[judge]):
            if value is not None:
                matrix[row, col] = float(value)
    pairs = []
    for (i, a), (j, b) in itertools.combinations(enumerate(judges), 2):
        both = ~np.isnan(matrix[i]) & ~np.isnan(matrix[j])
        diff = np.abs(matrix[i, both] - matrix[j, both])
        m = int(both.sum())
        pairs.append(
            PairAgreement(
                judge_a=a,
                judge_b=b,
                n=m,
                mean_abs_diff=float(diff.mean()) if m else None,
                exact=float((diff == 0).mean()) if m else None,
                within_1=float((diff <= 1).mean()) if m else None,
            )
        )

    def pair_mean(attr: str) -> float | None:
        values = [getattr(p, attr) for p in pairs if getattr(p, attr) is not None]
        return float(np.mean(values)) if values else None

    rated = (~np.isnan(matrix)).sum(axis=0) >= 2 if n else np.zeros(0, dtype=bool)
    per_judge = {}
    for row, judge in enumerate(judges):
        values = matrix[row][~np.isnan(matrix[row])]
        per_judge[judge] = float(values.mean()) if values.size else None
    return AgreementReport(
        n_items=int(rated.sum()),
        mean_abs_diff=pair_mean("mean_abs_diff"),
        exact=pair_mean("exact"),
        within_1=pair_mean("within_1"),
        krippendorff_alpha=_opt(krippendorff_alpha_interval(matrix)) if n else None,
        per_judge_mean=per_judge,
        pairs=pairs,
    )


def krippendorff_alpha_interval(matrix: np.ndarray) -> float:
    """Krippendorff's alpha, interval metric, for a ``judges × items`` matrix (NaN = missing).

    Only items with at least two values count. Returns NaN when undefined (no pairable
    values, or no variation at all in the data).
    """
    matrix = np.asarray(matrix, dtype=float)
    columns = [col[~np.isnan(col)] for col in matrix.T]
    columns = [c for c in columns if c.size >= 2]
    if not columns:
        return math.nan
    values = np.concatenate(columns)
    n = values.size
    observed = 0.0
    for col in columns:
        observed += _sum_sq_pair_diffs(col) / (col.size - 1)
    observed /= n
    expected = _sum_sq_pair_diffs(values) / (n * (n - 1))
    if expected == 0:
        return math.nan
    return 1.0 - observed / expected


def _sum_sq_pair_diffs(values: np.ndarray) -> float:
    """Σ over ordered pairs i≠j of (v_i − v_j)², in O(n)."""
    n = values.size
    centred = values - values.mean()
    return float(2.0 * n * np.dot(centred, centred))
