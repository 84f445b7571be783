"""Retrieval scoring (Generative Agents): recency, importance and relevance, each
min-max normalised over the candidates, then weighted and summed."""

from __future__ import annotations

import numpy as np

__all__ = ["minmax", "recency", "combine"]


def minmax(values: np.ndarray) -> np.ndarray:
    """Scale to [0, 1]; when every value is equal they all become 0.5 (as in Generative Agents)."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return values
    lo, hi = float(values.min()), float(values.max())
    if hi - lo <= 1e-12:
        return np.full_like(values, 0.5)
    return (values - lo) / (hi - lo)


def recency(steps: np.ndarray, now_step: int, decay: float) -> np.ndarray:
    """``decay ** (now_step - step)`` on the logical clock; memories "from the future"
    (another conversation's later clock) count as age 0."""
    age = np.maximum(now_step - np.asarray(steps, dtype=np.float64), 0.0)
    return np.power(decay, age)


def combine(
    rec: np.ndarray, imp: np.ndarray, rel: np.ndarray, weights: tuple[float, float, float]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Normalise the three parts and return ``(score, recency, importance, relevance)``."""
    r, i, v = minmax(rec), minmax(imp), minmax(rel)
    w_r, w_i, w_v = weights
    return w_r * r + w_i * i + w_v * v, r, i, v
