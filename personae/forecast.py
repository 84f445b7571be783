"""The cost forecast: per-unit model usage measured on a sample, scaled to a full run.

Each stage has a unit: a persona generated, a conversation simulated, a persona judged.
A sample run measures the usage of some units, one by one (calls, calls that reached a
model, prompt and completion tokens, per role), plus a stage's fixed overhead where it
has one (the judges' reliability checks run once per evaluation, not per persona). The
forecast of a stage is ``units × mean per unit + overhead``, with a 95 % t-interval of
the mean scaled the same way; a row measured on fewer than two units has no interval.
Cost is priced per role from the model serving it (see :mod:`personae.costs`); like the
run's own cost metric, it counts only calls that reached a model.

Plain data and arithmetic: no model calls, no Prefect, no MLflow.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

from pydantic import BaseModel, Field

from personae.costs import ModelPrice, call_cost
from personae.llm.gateway import EMBEDDINGS_ROLE

__all__ = ["UnitUsage", "StageSample", "Estimate", "ForecastRow", "Forecast", "forecast", "t_quantile"]

FIELDS = ("calls", "model_calls", "prompt_tokens", "completion_tokens", "cost")


class UnitUsage(BaseModel):
    """One role's model use in one unit (or in a stage's overhead)."""

    calls: float = 0
    cached_calls: float = 0
    prompt_tokens: float = 0
    completion_tokens: float = 0

    @property
    def model_calls(self) -> float:
        return self.calls - self.cached_calls

    def minus(self, other: UnitUsage) -> UnitUsage:
        """What is left of this usage after ``other`` (never below 0)."""
        return UnitUsage(**{k: max(0.0, getattr(self, k) - getattr(other, k)) for k in type(self).model_fields})

    def plus(self, other: UnitUsage) -> UnitUsage:
        return UnitUsage(**{k: getattr(self, k) + getattr(other, k) for k in type(self).model_fields})


class StageSample(BaseModel):
    """What a sample measured of one stage, and how many units the full run has."""

    stage: str
    unit: str = Field(description="what one unit is, e.g. 'conversation'")
    units_total: int = Field(ge=0, description="units in the full run")
    units: list[dict[str, UnitUsage]] = Field(default_factory=list, description="per sampled unit: role → usage")
    overhead: dict[str, UnitUsage] = Field(default_factory=dict, description="role → usage paid once per stage")


class Estimate(BaseModel):
    """A forecast figure: the point estimate and its 95 % interval (``None``: fewer than two units sampled)."""

    value: float
    low: float | None = None
    high: float | None = None


class ForecastRow(BaseModel):
    """The forecast of one stage and role (``role`` is ``*`` for the stage's total, ``stage`` ``*`` for the run's)."""

    stage: str
    role: str
    units_total: int
    units_sampled: int
    calls: Estimate
    model_calls: Estimate
    prompt_tokens: Estimate
    completion_tokens: Estimate
    cost: Estimate

    @property
    def tokens(self) -> float:
        return self.prompt_tokens.value + self.completion_tokens.value


class Forecast(BaseModel):
    """Rows per stage and role, a total per stage and one for the run."""

    rows: list[ForecastRow]
    source: str = Field("", description="where the sample ran, e.g. 'test server' or 'experiment models (cache)'")
    prices: dict[str, ModelPrice | None] = Field(default_factory=dict, description="gateway model name → price used")
    unpriced: list[str] = Field(default_factory=list, description="models without a price (counted as free)")

    def row(self, stage: str = "*", role: str = "*") -> ForecastRow:
        """The row of ``stage`` and ``role`` (``*`` for totals)."""
        for row in self.rows:
            if row.stage == stage and row.role == role:
                return row
        raise KeyError(f"no forecast row for stage {stage!r} and role {role!r}")


# two-sided 95 % quantiles of Student's t for 1..30 degrees of freedom
_T95 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
    2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)


def t_quantile(df: int) -> float:
    """The two-sided 95 % quantile of Student's t with ``df`` degrees of freedom."""
    if df < 1:
        raise ValueError("df must be at least 1")
    return _T95[df - 1] if df <= len(_T95) else 1.96 + 2.5 / df  # within 0.01 of the exact value past 30


def _values(usage: UnitUsage, price: ModelPrice | None) -> dict[str, float]:
    share = usage.model_calls / usage.calls if usage.calls else 0.0
    return {
        "calls": usage.calls,
        "model_calls": usage.model_calls,
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "cost": share * call_cost(price, usage.prompt_tokens, usage.completion_tokens),
    }


def _scale(per_unit: Sequence[float], units_total: int, overhead: float) -> tuple[Estimate, float]:
    """``units_total × mean + overhead`` with its interval; also the half-width (for summing)."""
    n = len(per_unit)
    if n == 0:
        return Estimate(value=overhead, low=overhead, high=overhead), 0.0
    mean = sum(per_unit) / n
    value = units_total * mean + overhead
    if n < 2:
        return Estimate(value=value), math.nan
    sd = math.sqrt(sum((x - mean) ** 2 for x in per_unit) / (n - 1))
    half = units_total * t_quantile(n - 1) * sd / math.sqrt(n)
    return Estimate(value=value, low=max(0.0, value - half), high=value + half), half


def _row(stage: str, role: str, units_total: int, per_unit: Sequence[Mapping[str, float]], overhead: Mapping[str, float]) -> tuple[ForecastRow, dict[str, float]]:
    estimates: dict[str, Estimate] = {}
    halves: dict[str, float] = {}
    for name in FIELDS:
        estimates[name], halves[name] = _scale([u[name] for u in per_unit], units_total, overhead.get(name, 0.0))
    return ForecastRow(stage=stage, role=role, units_total=units_total, units_sampled=len(per_unit), **estimates), halves


def _sum_rows(stage: str, rows: Sequence[tuple[ForecastRow, dict[str, float]]], units_total: int, units_sampled: int) -> tuple[ForecastRow, dict[str, float]]:
    """Rows added up; independent parts' half-widths add in quadrature."""
    estimates: dict[str, Estimate] = {}
    halves: dict[str, float] = {}
    for name in FIELDS:
        value = sum(getattr(r, name).value for r, _ in rows)
        parts = [h[name] for _, h in rows]
        if any(math.isnan(h) for h in parts):
            estimates[name], halves[name] = Estimate(value=value), math.nan
            continue
        half = math.sqrt(sum(h * h for h in parts))
        estimates[name], halves[name] = Estimate(value=value, low=max(0.0, value - half), high=value + half), half
    return ForecastRow(stage=stage, role="*", units_total=units_total, units_sampled=units_sampled, **estimates), halves


def _total(usage: Mapping[str, UnitUsage], price_for_role: Callable[[str], ModelPrice | None]) -> dict[str, float]:
    """One unit's figures summed over roles as the run's ``usage.*`` metrics sum them: calls and
    tokens of the chat roles, cost of every role (embeddings requests have their own row)."""
    out = dict.fromkeys(FIELDS, 0.0)
    for role, one in usage.items():
        for name, value in _values(one, price_for_role(role)).items():
            if role != EMBEDDINGS_ROLE or name == "cost":
                out[name] += value
    return out


def forecast(
    samples: Sequence[StageSample],
    *,
    price_for_role: Callable[[str], ModelPrice | None],
    source: str = "",
    prices: Mapping[str, ModelPrice | None] | None = None,
) -> Forecast:
    """Scale each stage's per-unit sample to its ``units_total``: a row per stage and role,
    the stage's total, and the run's total (stages' intervals combined as independent).

    A stage total is computed from per-unit totals over roles (so roles that move together
    do not get an interval too narrow), not from the role rows.
    """
    rows: list[ForecastRow] = []
    stage_totals: list[tuple[ForecastRow, dict[str, float]]] = []
    for sample in samples:
        roles = sorted({r for unit in sample.units for r in unit} | set(sample.overhead))
        for role in roles:
            price = price_for_role(role)
            per_unit = [_values(unit.get(role, UnitUsage()), price) for unit in sample.units]
            overhead = _values(sample.overhead.get(role, UnitUsage()), price)
            rows.append(_row(sample.stage, role, sample.units_total, per_unit, overhead)[0])
        per_unit_total = [_total(unit, price_for_role) for unit in sample.units]
        overhead_total = _total(sample.overhead, price_for_role)
        total, halves = _row(sample.stage, "*", sample.units_total, per_unit_total, overhead_total)
        rows.append(total)
        stage_totals.append((total, halves))
    run_total, _ = _sum_rows("*", stage_totals, units_total=sum(r.units_total for r, _ in stage_totals), units_sampled=sum(r.units_sampled for r, _ in stage_totals))
    rows.append(run_total)
    table = dict(prices or {})
    return Forecast(rows=rows, source=source, prices=table, unpriced=sorted(n for n, p in table.items() if p is None))
