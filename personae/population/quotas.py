"""Quotas met exactly: joint cells and marginals, largest-remainder rounding, raking (IPF).

* Joint cells (e.g. age band × gender × region with a share each) are rounded to
  counts summing exactly to the population size by largest remainder.
* Marginals (a share per value of each attribute) are first rounded per attribute
  by largest remainder, then a joint table is raked to them by iterative
  proportional fitting from a prior (the taxonomy's own conditional model, or
  uniform), then integerised so that every integer marginal is met exactly.
* A joint table and marginals of *other* attributes can be combined: the joint
  table acts as one combined dimension.

Cells the rules make impossible get a zero prior; a quota that cannot be met then
raises :class:`ConfigError` naming the file and field.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import product
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from personae.errors import ConfigError
from personae.population.taxonomy import Taxonomy

__all__ = [
    "JointQuota",
    "QuotaSpec",
    "Cell",
    "QuotaPlan",
    "largest_remainder",
    "ipf",
    "integerise",
    "plan_quotas",
]

log = logging.getLogger(__name__)
_MAX_CELLS = 200_000
_PROBE_LIMIT = 20_000


class JointQuota(BaseModel):
    """Joint cells: ``dims`` are attributes; each cell names a value per dim and a ``share``."""

    model_config = ConfigDict(extra="forbid")

    dims: list[str] = Field(min_length=1)
    cells: list[dict[str, Any]] = Field(min_length=1)


class QuotaSpec(BaseModel):
    """Quotas of a population: a joint table, marginals, or both (over different attributes)."""

    model_config = ConfigDict(extra="forbid")

    joint: JointQuota | None = None
    marginals: dict[str, dict[str, float]] = Field(default_factory=dict)
    prior: Literal["taxonomy", "uniform"] = Field("taxonomy", description="IPF seed: the taxonomy's conditional model (sampled) or uniform")
    prior_samples: int = Field(2000, ge=100, le=1_000_000)
    share_tolerance: float = Field(1e-6, gt=0, le=0.05)

    @property
    def empty(self) -> bool:
        return self.joint is None and not self.marginals


@dataclass(frozen=True)
class Cell:
    """One quota cell: fixed attribute values and how many personas it gets."""

    values: dict[str, str]
    target: int


@dataclass
class QuotaPlan:
    """The exact allocation of a population to quota cells."""

    size: int
    cells: list[Cell]
    dims: list[str]
    marginal_targets: dict[str, dict[str, int]] = field(default_factory=dict)
    ipf_iterations: int = 0
    ipf_max_error: float = 0.0

    def sequence(self, seed: int) -> np.ndarray:
        """Cell index of every persona index: each cell repeated ``target`` times, shuffled by ``seed``."""
        counts = np.array([c.target for c in self.cells], dtype=np.int64)
        seq = np.repeat(np.arange(len(self.cells), dtype=np.int32), counts)
        rng = np.random.default_rng([int(seed), 0xC311])
        return rng.permutation(seq)


# ---- arithmetic -------------------------------------------------------------------


def largest_remainder(shares: Sequence[float] | np.ndarray, total: int) -> np.ndarray:
    """Integer counts summing to ``total``, proportional to ``shares`` (Hamilton's method).

    Ties in the remainder go to the earlier position, so the result is deterministic.
    """
    weights = np.asarray(shares, dtype=np.float64).ravel()
    if total < 0:
        raise ValueError(f"total must be >= 0, got {total}")
    if weights.size == 0:
        raise ValueError("no shares")
    if np.any(weights < 0) or not np.all(np.isfinite(weights)):
        raise ValueError("shares must be finite and >= 0")
    s = weights.sum()
    if s <= 0:
        raise ValueError("shares sum to zero")
    quotas = weights / s * total
    counts = np.floor(quotas).astype(np.int64)
    left = int(total - counts.sum())
    if left > 0:
        remainders = quotas - counts
        remainders[weights == 0] = -1.0
        order = np.lexsort((np.arange(weights.size), -remainders))
        counts[order[:left]] += 1
    return counts.reshape(np.shape(shares))


def ipf(seed: np.ndarray, margins: Sequence[np.ndarray], *, tol: float = 1e-10, max_iter: int = 2000) -> tuple[np.ndarray, int, float]:
    """Rake ``seed`` (an n-d table) so its sum over all axes but ``i`` equals ``margins[i]``.

    Returns ``(table, iterations, max absolute marginal error)``. Zero cells stay zero.
    """
    table = np.asarray(seed, dtype=np.float64).copy()
    if table.ndim != len(margins):
        raise ValueError(f"{table.ndim}-d seed but {len(margins)} margins")
    error = math.inf
    iterations = 0
    for iterations in range(1, max_iter + 1):
        for axis, target in enumerate(margins):
            other = tuple(a for a in range(table.ndim) if a != axis)
            current = table.sum(axis=other)
            factor = np.divide(target, current, out=np.zeros_like(current, dtype=np.float64), where=current > 0)
            shape = [1] * table.ndim
            shape[axis] = -1
            table *= factor.reshape(shape)
        error = max(float(np.abs(table.sum(axis=tuple(a for a in range(table.ndim) if a != axis)) - t).max()) for axis, t in enumerate(margins))
        if error <= tol:
            break
    return table, iterations, error


class QuotaInfeasible(ValueError):
    """Integer marginals cannot be met on the feasible cells."""

    def __init__(self, axis: int, category: int) -> None:
        self.axis = axis
        self.category = category
        super().__init__(f"axis {axis} category {category} cannot reach its target on feasible cells")


def integerise(table: np.ndarray, margins: Sequence[np.ndarray], total: int) -> np.ndarray:
    """Integer counts close to ``table`` that meet every integer margin exactly.

    Rounds the whole table by largest remainder, then for each axis moves single
    units from over-target to under-target categories between cells that differ
    only on that axis (which leaves every other margin unchanged), preferring the
    cells whose rounding drifted most. Only cells with ``table > 0`` are used.
    Raises :class:`QuotaInfeasible` if a margin cannot be met.
    """
    frac = np.asarray(table, dtype=np.float64)
    feasible = frac > 0
    if total == 0:
        return np.zeros(frac.shape, dtype=np.int64)
    if not feasible.any():
        raise QuotaInfeasible(0, 0)
    counts = largest_remainder(frac, total).reshape(frac.shape)
    for axis, target in enumerate(margins):
        target = np.asarray(target, dtype=np.int64)
        other = tuple(a for a in range(frac.ndim) if a != axis)
        for _ in range(int(total) * 2 + 10):
            diff = counts.sum(axis=other) - target
            if not diff.any():
                break
            over = int(np.argmax(diff))
            under = int(np.argmin(diff))
            take_from = np.take(counts, over, axis=axis)
            give_to_ok = np.take(feasible, under, axis=axis)
            drift = (take_from - np.take(frac, over, axis=axis)) - (np.take(counts, under, axis=axis) - np.take(frac, under, axis=axis))
            valid = (take_from > 0) & give_to_ok
            if not valid.any():
                raise QuotaInfeasible(axis, under)
            flat = np.where(valid.ravel(), drift.ravel(), -np.inf)
            pos = np.unravel_index(int(np.argmax(flat)), valid.shape)
            src = list(pos)
            src.insert(axis, over)
            dst = list(pos)
            dst.insert(axis, under)
            counts[tuple(src)] -= 1
            counts[tuple(dst)] += 1
        else:  # pragma: no cover - the loop always converges on feasible input
            raise QuotaInfeasible(axis, int(np.argmin(counts.sum(axis=other) - target)))
    return counts


# ---- planning ----------------------------------------------------------------------


Prober = Callable[[Mapping[str, str]], str | None]
"""Returns ``None`` if a persona can be sampled with these fixed values, else the reason."""
PriorDraw = Callable[[int], Mapping[str, Any]]
"""Draws the core attributes of prior sample ``i`` (no quota)."""


@dataclass
class _Dim:
    name: str
    attrs: tuple[str, ...]
    categories: list[tuple[str, ...]]
    shares: np.ndarray
    field: str


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _resolve_dim(tax: Taxonomy, name: str, *, file: str | None, field: str) -> str:
    try:
        path = tax.resolve(str(name))
    except KeyError as exc:
        raise ConfigError(f"unknown attribute in quota: {exc.args[0]}", file=file, field=field, expected="a categorical taxonomy attribute", got=name) from None
    leaf = tax.by_path[path]
    if leaf.type != "categorical":
        raise ConfigError(f"quota attribute {path} is {leaf.type}; quotas need a categorical attribute (e.g. an age band)", file=file, field=field, got=name)
    return path


def _check_value(tax: Taxonomy, path: str, value: Any, *, file: str | None, field: str) -> str:
    text = _text(value)
    domain = tax.by_path[path].domain
    if text not in domain:
        import difflib

        close = difflib.get_close_matches(text, sorted(domain), n=3)
        hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
        raise ConfigError(f"unknown value {text!r} for {path} in quota{hint}", file=file, field=field, expected=f"one of {sorted(domain)[:30]}", got=value)
    return text


def _check_shares(shares: list[float], *, tol: float, file: str | None, field: str) -> None:
    if any((not isinstance(s, (int, float))) or isinstance(s, bool) or not math.isfinite(s) or s < 0 for s in shares):
        raise ConfigError("shares must be numbers >= 0", file=file, field=field, expected="non-negative numbers summing to 1", got=shares)
    total = float(sum(shares))
    if abs(total - 1.0) > tol:
        raise ConfigError(f"shares sum to {total:.6g}, not 1", file=file, field=field, expected="shares summing to 1", got=round(total, 6))


def _dims(spec: QuotaSpec, tax: Taxonomy, *, file: str | None) -> list[_Dim]:
    dims: list[_Dim] = []
    used: dict[str, str] = {}
    if spec.joint is not None:
        paths = []
        for i, name in enumerate(spec.joint.dims):
            path = _resolve_dim(tax, name, file=file, field=f"quotas.joint.dims[{i}]")
            if path in used:
                raise ConfigError(f"attribute {path} appears twice in the joint dims", file=file, field=f"quotas.joint.dims[{i}]", got=name)
            used[path] = "joint"
            paths.append(path)
        names = {str(n): p for n, p in zip(spec.joint.dims, paths)} | {p: p for p in paths}
        cats: list[tuple[str, ...]] = []
        shares: list[float] = []
        for i, cell in enumerate(spec.joint.cells):
            where = f"quotas.joint.cells[{i}]"
            if "share" not in cell:
                raise ConfigError("a joint cell needs a 'share'", file=file, field=where, expected="{<dim>: <value>, ..., share: <0..1>}", got=cell)
            keys = {k for k in cell if k != "share"}
            values: dict[str, str] = {}
            for key in keys:
                try:
                    path = names.get(str(key)) or tax.resolve(str(key))
                except KeyError:
                    path = None
                if path not in paths:
                    raise ConfigError("joint cell names an attribute that is not one of the dims", file=file, field=f"{where}.{key}", expected=f"one of {spec.joint.dims}", got=key)
                values[path] = _check_value(tax, path, cell[key], file=file, field=f"{where}.{key}")
            missing = [p for p in paths if p not in values]
            if missing:
                raise ConfigError(f"joint cell is missing a value for {missing[0]}", file=file, field=where, expected=f"a value for each of {spec.joint.dims}", got=cell)
            combo = tuple(values[p] for p in paths)
            if combo in cats:
                raise ConfigError("repeated joint cell", file=file, field=where, got=cell)
            cats.append(combo)
            shares.append(cell["share"])
        _check_shares(shares, tol=spec.share_tolerance, file=file, field="quotas.joint.cells[*].share")
        dims.append(_Dim("×".join(paths), tuple(paths), cats, np.asarray(shares, dtype=np.float64), "quotas.joint"))
    for name, table in spec.marginals.items():
        where = f"quotas.marginals.{name}"
        path = _resolve_dim(tax, name, file=file, field=where)
        if path in used:
            raise ConfigError(f"attribute {path} has two quotas (joint and marginal, or twice)", file=file, field=where, got=name)
        used[path] = "marginal"
        if not table:
            raise ConfigError("empty marginal", file=file, field=where, expected="value: share pairs")
        cats = [(_check_value(tax, path, value, file=file, field=f"{where}.{value}"),) for value in table]
        shares = list(table.values())
        _check_shares(shares, tol=spec.share_tolerance, file=file, field=where)
        dims.append(_Dim(path, (path,), cats, np.asarray(shares, dtype=np.float64), where))
    return dims


def plan_quotas(
    spec: QuotaSpec,
    size: int,
    taxonomy: Taxonomy,
    *,
    probe: Prober,
    prior_draw: PriorDraw | None = None,
    file: str | None = None,
) -> QuotaPlan:
    """Allocate ``size`` personas to quota cells exactly.

    ``probe`` tells whether a cell can be sampled under the rules; ``prior_draw``
    draws unconstrained core attributes for the taxonomy prior of the raking.
    Raises :class:`ConfigError` (naming ``file`` and the quota field) on bad or
    impossible quotas.
    """
    if size < 1:
        raise ConfigError("population size must be at least 1", file=file, field="size", got=size)
    if spec.empty:
        return QuotaPlan(size=size, cells=[Cell({}, size)], dims=[])
    dims = _dims(spec, taxonomy, file=file)
    attrs = [a for d in dims for a in d.attrs]
    targets = [largest_remainder(d.shares, size) for d in dims]
    marginal_targets: dict[str, dict[str, int]] = {}
    for d, t in zip(dims, targets):
        for j, path in enumerate(d.attrs):
            bucket = marginal_targets.setdefault(path, {})
            for cat, n in zip(d.categories, t):
                bucket[cat[j]] = bucket.get(cat[j], 0) + int(n)
    shape = tuple(len(d.categories) for d in dims)
    n_cells = int(np.prod(shape))
    if n_cells > _MAX_CELLS:
        raise ConfigError(f"the quota table has {n_cells} cells (limit {_MAX_CELLS})", file=file, field="quotas", expected="fewer quota attributes or values")

    def cell_values(index: tuple[int, ...]) -> dict[str, str]:
        out: dict[str, str] = {}
        for d, i in zip(dims, index):
            out.update(zip(d.attrs, d.categories[i]))
        return out

    mask = np.ones(shape, dtype=bool)
    reasons: dict[tuple[int, ...], str] = {}
    if n_cells <= _PROBE_LIMIT:
        for index in product(*(range(n) for n in shape)):
            reason = probe(cell_values(index))
            if reason is not None:
                mask[index] = False
                reasons[index] = reason
    if len(dims) == 1:
        counts = targets[0].reshape(shape)
        iterations, error = 0, 0.0
        for index, reason in reasons.items():
            if counts[index] > 0:
                raise ConfigError(f"impossible quota: no persona with {cell_values(index)} satisfies the rules ({reason})", file=file, field=dims[0].field, expected="quota cells the rules allow")
    else:
        prior = _prior(dims, shape, spec, prior_draw) * mask
        table, iterations, error = ipf(prior, [d.shares * size for d in dims])
        try:
            counts = integerise(table, targets, size)
        except QuotaInfeasible as exc:
            d = dims[exc.axis]
            cat = d.categories[exc.category]
            why = next((r for idx, r in reasons.items() if idx[exc.axis] == exc.category), None)
            raise ConfigError(
                f"impossible quota: {dict(zip(d.attrs, cat))} cannot get its share together with the other quotas under the rules"
                + (f" (e.g. {why})" if why else ""),
                file=file, field=d.field, expected="quotas that some rule-abiding persona can meet",
            ) from None
    if n_cells > _PROBE_LIMIT:
        for index in product(*(range(n) for n in shape)):
            if counts[index] > 0 and (reason := probe(cell_values(index))) is not None:
                raise ConfigError(f"impossible quota: no persona with {cell_values(index)} satisfies the rules ({reason})", file=file, field="quotas", expected="quota cells the rules allow")
    cells = [Cell(cell_values(index), int(counts[index])) for index in product(*(range(n) for n in shape)) if counts[index] > 0]
    log.debug("quota plan: %d cells over %s (IPF %d iterations, error %.2g)", len(cells), attrs, iterations, error)
    return QuotaPlan(size=size, cells=cells, dims=attrs, marginal_targets=marginal_targets, ipf_iterations=iterations, ipf_max_error=error)


def _prior(dims: list[_Dim], shape: tuple[int, ...], spec: QuotaSpec, prior_draw: PriorDraw | None) -> np.ndarray:
    """The IPF seed: the taxonomy's joint over the quota attributes (smoothed), or uniform."""
    if spec.prior == "uniform" or prior_draw is None:
        return np.ones(shape, dtype=np.float64)
    counts = np.zeros(shape, dtype=np.float64)
    lookup = [{cat: i for i, cat in enumerate(d.categories)} for d in dims]
    for i in range(spec.prior_samples):
        attrs = prior_draw(i)
        index = []
        for d, table in zip(dims, lookup):
            pos = table.get(tuple(_text(attrs.get(a)) for a in d.attrs))
            if pos is None:
                break
            index.append(pos)
        else:
            counts[tuple(index)] += 1
    # Smoothing keeps combinations the taxonomy rarely produces reachable; the probe
    # (not the prior) decides which cells are impossible.
    return counts + 0.5
