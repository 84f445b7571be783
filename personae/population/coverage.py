"""Coverage mode: low-discrepancy (scrambled Sobol) sampling over chosen diversity axes.

In the spec::

    sampling:
      mode: coverage             # or quota (the default): axes are then only measured
      axes: [age_band, gender, region, {attribute: personality.big_five.openness, bins: 4}]

Persona ``i`` takes the ``i``-th point of a scrambled, seeded Sobol sequence in the unit
cube with one dimension per axis. Each coordinate becomes a value by the inverse CDF of
that axis's marginal: the categorical weights of the taxonomy (estimated from prior draws
when the attribute is conditioned on others), or the numeric attribute's own distribution
over its range. The axis values are fixed for the persona like a quota cell's; every other
attribute is sampled as always, conditioned on them. Axes are drawn independently of each
other, so an axis may not be conditioned on another axis.

The coverage metric (:class:`CoverageReport`) is the share of occupied cells of the joint
grid of the axes (categories × numeric bins) and the centred L2 discrepancy of the realised
cells (each persona mapped to its cell's midpoint in the unit cube), next to the same
figures for iid draws from the same marginals at the same n and seed.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator
from scipy.stats import qmc, truncnorm

from personae.errors import ConfigError
from personae.population.taxonomy import Taxonomy

__all__ = ["AxisSpec", "SamplingSpec", "CoveragePlan", "CoverageReport", "plan_coverage"]

_CHUNK = 4096
_MAX_GRID = 1_000_000
_DISCREPANCY_LIMIT = 20_000  # the centred L2 discrepancy is O(n^2); above this a seeded subsample of this size is measured


class AxisSpec(BaseModel):
    """One diversity axis: a categorical attribute, or a numeric one cut into ``bins`` equal-width bins."""

    model_config = ConfigDict(extra="forbid")

    attribute: str = Field(min_length=1)
    bins: int | None = Field(None, ge=2, le=100, description="numeric attributes: equal-width bins over the range (default 5)")


class SamplingSpec(BaseModel):
    """How core attribute values are chosen: quotas (iid draws) or low-discrepancy coverage of ``axes``."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["quota", "coverage"] = "quota"
    axes: list[str | AxisSpec] = Field(default_factory=list, max_length=12, description="diversity axes; in quota mode only measured")
    prior_samples: int = Field(2000, ge=100, le=1_000_000, description="prior draws estimating the marginal of a conditioned axis")

    @model_validator(mode="after")
    def _axes_for_coverage(self) -> SamplingSpec:
        if self.mode == "coverage" and not self.axes:
            raise ValueError("coverage mode needs at least one axis in sampling.axes")
        return self

    @property
    def is_default(self) -> bool:
        return self.mode == "quota" and not self.axes and self.prior_samples == 2000


class CoverageReport(BaseModel):
    """How well the population covers the joint grid of its axes, and the iid baseline at the same n."""

    mode: str
    axes: list[str]
    cells: int = Field(description="cells of the joint grid (categories × bins)")
    n: int
    occupied: int
    occupied_share: float = Field(description="occupied / cells")
    attainable_share: float = Field(description="min(n, cells) / cells: the most any sampler could reach")
    discrepancy: float | None = Field(None, description="centred L2 discrepancy of the realised cells' midpoints (lower is more even)")
    iid_occupied: int = 0
    iid_occupied_share: float = 0.0
    iid_discrepancy: float | None = None
    fallbacks: int = Field(0, description="coverage personas whose axis values broke a rule, so trailing axes were sampled instead")


@dataclass
class _Axis:
    path: str
    kind: str  # categorical | numeric
    values: tuple[str, ...] = ()
    cum: np.ndarray | None = None  # cumulative marginal (ends at 1)
    lo: float = 0.0
    hi: float = 1.0
    is_int: bool = False
    normal: tuple[float, float] | None = None  # (mean, sd) of a normal numeric attribute
    bins: int = 0
    decimals: int = 2

    @property
    def size(self) -> int:
        return len(self.values) if self.kind == "categorical" else self.bins

    def value(self, u: float) -> Any:
        """The value at quantile ``u`` of the marginal (inverse CDF)."""
        if self.kind == "categorical":
            return self.values[min(int(np.searchsorted(self.cum, u, side="right")), len(self.values) - 1)]
        if self.normal is not None:
            mean, sd = self.normal
            x = float(truncnorm.ppf(u, (self.lo - mean) / sd, (self.hi - mean) / sd, loc=mean, scale=sd))
        else:
            x = self.lo + u * (self.hi - self.lo + (1 if self.is_int else 0))
        x = min(max(x, self.lo), self.hi)
        return min(int(math.floor(x + (0.5 if self.normal is not None else 0.0))), int(self.hi)) if self.is_int else round(x, self.decimals)

    def cell(self, value: Any) -> int | None:
        """The grid index of ``value`` on this axis (None: no value)."""
        if value is None:
            return None
        if self.kind == "categorical":
            try:
                return self.values.index(str(value))
            except ValueError:
                return None
        span = self.hi - self.lo
        pos = 0.0 if span <= 0 else (float(value) - self.lo) / span
        return min(max(int(pos * self.bins), 0), self.bins - 1)

    def midpoint(self, k: int) -> float:
        """The unit-cube coordinate of grid index ``k``: the middle of its marginal interval."""
        if self.kind == "categorical":
            start = 0.0 if k == 0 else float(self.cum[k - 1])
            return (start + float(self.cum[k])) / 2
        return (k + 0.5) / self.bins


class CoveragePlan:
    """The resolved axes and the Sobol sequence (generated chunk by chunk, reproducibly)."""

    def __init__(self, spec: SamplingSpec, axes: list[_Axis], *, seed: int) -> None:
        self.spec = spec
        self.axes = axes
        self.seed = int(seed)
        self.paths = [a.path for a in axes]
        self.cells = int(np.prod([a.size for a in axes]))
        self._chunks: dict[int, np.ndarray] = {}

    @property
    def active(self) -> bool:
        """Whether the axes' values are chosen by the Sobol sequence (coverage mode)."""
        return self.spec.mode == "coverage"

    def _chunk(self, k: int) -> np.ndarray:
        got = self._chunks.get(k)
        if got is None:
            engine = qmc.Sobol(d=len(self.axes), scramble=True, seed=np.random.default_rng([self.seed, 0x50B0]))
            if k:
                engine.fast_forward(k * _CHUNK)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # chunks of 2^12 keep Sobol's balance; scipy warns on any non-power-of-two call
                got = engine.random(_CHUNK)
            if len(self._chunks) > 16:
                self._chunks.clear()
            self._chunks[k] = got
        return got

    def point(self, index: int) -> np.ndarray:
        """The Sobol point of persona ``index``."""
        return self._chunk(index // _CHUNK)[index % _CHUNK]

    def values_for(self, index: int) -> dict[str, Any]:
        """The axis values of persona ``index`` (empty in quota mode)."""
        if not self.active:
            return {}
        u = self.point(index)
        return {axis.path: axis.value(float(x)) for axis, x in zip(self.axes, u)}

    def cell_of(self, attrs: Mapping[str, Any]) -> tuple[int, ...] | None:
        """The joint-grid cell of a persona's attributes (None when an axis has no value)."""
        out = []
        for axis in self.axes:
            k = axis.cell(attrs.get(axis.path))
            if k is None:
                return None
            out.append(k)
        return tuple(out)

    def iid_cells(self, n: int) -> list[tuple[int, ...]]:
        """The cells of ``n`` iid draws from the same marginals (the baseline), seeded."""
        rng = np.random.default_rng([self.seed, 0x11D])
        u = rng.random((n, len(self.axes)))
        cells = []
        for row in u:
            cell = self.cell_of({a.path: a.value(float(x)) for a, x in zip(self.axes, row)})
            if cell is not None:
                cells.append(cell)
        return cells

    def discrepancy(self, counts: Counter) -> float | None:
        """Centred L2 discrepancy of the cells' midpoints, each repeated by its count."""
        n = sum(counts.values())
        if n < 2:
            return None
        cells = sorted(counts)
        points = np.array([[a.midpoint(k) for a, k in zip(self.axes, cell)] for cell in cells])
        reps = np.array([counts[c] for c in cells])
        if n > _DISCREPANCY_LIMIT:
            rows = np.random.default_rng([self.seed, 0xD15C]).choice(np.repeat(np.arange(len(cells)), reps), _DISCREPANCY_LIMIT, replace=False)
            return float(qmc.discrepancy(points[rows], method="CD"))
        return float(qmc.discrepancy(np.repeat(points, reps, axis=0), method="CD"))

    def report(self, counts: Counter, *, fallbacks: int = 0) -> CoverageReport:
        """The coverage figures of a population whose cells are ``counts``, with the iid baseline."""
        n = sum(counts.values())
        iid = Counter(self.iid_cells(n))
        return CoverageReport(
            mode=self.spec.mode,
            axes=self.paths,
            cells=self.cells,
            n=n,
            occupied=len(counts),
            occupied_share=len(counts) / self.cells,
            attainable_share=min(n, self.cells) / self.cells,
            discrepancy=self.discrepancy(counts),
            iid_occupied=len(iid),
            iid_occupied_share=len(iid) / self.cells,
            iid_discrepancy=self.discrepancy(iid),
            fallbacks=fallbacks,
        )


PriorDraw = Callable[[int], Mapping[str, Any]]


def plan_coverage(spec: SamplingSpec, taxonomy: Taxonomy, *, seed: int, prior_draw: PriorDraw, quota_dims: Sequence[str] = (), file: str | None = None) -> CoveragePlan | None:
    """Resolve ``spec.axes`` against the taxonomy (None when there are no axes).

    Errors are :class:`ConfigError` naming ``sampling.axes[i]``: an unknown or ambiguous
    attribute, a type that cannot be an axis (multi, text), a numeric attribute conditioned on
    others, an axis given twice, an axis that is also a quota attribute, or an axis conditioned
    on another axis.
    """
    if not spec.axes:
        return None
    axes: list[_Axis] = []
    fields: dict[str, str] = {}
    prior: list[Mapping[str, Any]] | None = None
    for i, entry in enumerate(spec.axes):
        field = f"sampling.axes[{i}]"
        item = entry if isinstance(entry, AxisSpec) else AxisSpec(attribute=entry)
        try:
            path = taxonomy.resolve(item.attribute)
        except KeyError as exc:
            raise ConfigError(f"unknown sampling axis: {exc.args[0]}", file=file, field=field, expected="a categorical or numeric taxonomy attribute", got=item.attribute) from None
        if path in fields:
            raise ConfigError(f"axis {path} is given twice", file=file, field=field, got=item.attribute)
        if path in quota_dims:
            raise ConfigError(f"axis {path} is also a quota attribute; an attribute is either fixed by quotas or covered", file=file, field=field, got=item.attribute)
        leaf = taxonomy.by_path[path]
        if leaf.type == "categorical":
            if item.bins is not None:
                raise ConfigError(f"bins apply to numeric axes; {path} is categorical", file=file, field=f"{field}.bins", got=item.bins)
            if leaf.deps:
                if prior is None:
                    prior = [prior_draw(j) for j in range(spec.prior_samples)]
                counts = Counter(str(p.get(path)) for p in prior if p.get(path) is not None)
                values = tuple(v for v in sorted(leaf.domain) if counts.get(v))
                weights = np.array([counts[v] for v in values], dtype=np.float64)
            else:
                values = tuple(v for v, w in zip(leaf.values, leaf.weights) if w > 0)
                weights = np.array([w for w in leaf.weights if w > 0], dtype=np.float64)
            if not values:
                raise ConfigError(f"axis {path} never takes a value", file=file, field=field, got=item.attribute)
            axes.append(_Axis(path, "categorical", values=values, cum=np.cumsum(weights) / weights.sum()))
        elif leaf.is_numeric:
            if leaf.deps:
                raise ConfigError(f"numeric axis {path} is conditioned on {sorted(leaf.deps)}; use a banded categorical attribute (e.g. age_band) as the axis", file=file, field=field, got=item.attribute)
            lo, hi = leaf.range or (0.0, 1.0)
            normal = None
            if leaf.dist == "normal":
                mean = leaf.mean if leaf.mean is not None else (lo + hi) / 2
                normal = (mean, leaf.sd if leaf.sd else ((hi - lo) / 4 or 1.0))
            axes.append(_Axis(path, "numeric", lo=float(lo), hi=float(hi), is_int=leaf.type == "int", normal=normal, bins=item.bins or 5, decimals=leaf.decimals))
        else:
            raise ConfigError(f"axis {path} is {leaf.type}; an axis must be categorical or numeric", file=file, field=field, got=item.attribute)
        fields[path] = field
    for axis in axes:
        tied = sorted(taxonomy.by_path[axis.path].deps & set(fields))
        if tied:
            raise ConfigError(f"axis {axis.path} is conditioned on axis {tied[0]}; axes are drawn independently, so choose axes that do not depend on each other", file=file, field=fields[axis.path], got=axis.path)
    plan = CoveragePlan(spec, axes, seed=seed)
    if plan.cells > _MAX_GRID:
        raise ConfigError(f"the axes make a grid of {plan.cells} cells", file=file, field="sampling.axes", expected=f"at most {_MAX_GRID} cells")
    return plan
