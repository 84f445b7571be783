"""Prices, cost and the hard budget of a run: plain data and arithmetic, no model calls.

A price is per model, split into input (prompt) and output (completion) tokens, per
1M tokens as providers quote them (an embeddings model has only an input price,
:class:`EmbeddingPrice`; its requests are charged under the name ``embeddings``: tokens and
cost, not model calls). ``price_per_1k_tokens`` on a model is the older
shorthand: one price for both kinds, per 1,000 tokens. Only calls that reached a
model cost anything; replies served from the cache are free.

A :class:`RunBudget` (the experiment's ``budget:``) bounds what one run spends: model
calls, tokens and money. A :class:`BudgetMeter` charges every call that reached a
model against it, shared by every gateway of a run (the stages and the shards that
run in one process); the call that would start past a limit raises
:class:`~personae.errors.BudgetExceeded` instead of going out. Calls already in
flight when a limit is reached still finish, so a run may end a little past it.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field

from personae.errors import BudgetExceeded

__all__ = ["ModelPrice", "EmbeddingPrice", "RunBudget", "BudgetSpend", "BudgetMeter", "call_cost", "resolve_price"]


class ModelPrice(BaseModel):
    """What a model costs, per 1M tokens (input = prompt tokens, output = completion tokens)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input_per_1m: float = Field(ge=0.0, description="price of 1M prompt tokens")
    output_per_1m: float = Field(ge=0.0, description="price of 1M completion tokens")

    @classmethod
    def per_1k(cls, price: float) -> ModelPrice:
        """The ``price_per_1k_tokens`` shorthand: one price for every token, per 1,000."""
        return cls(input_per_1m=price * 1000.0, output_per_1m=price * 1000.0)

    def cost(self, prompt_tokens: float, completion_tokens: float) -> float:
        """The cost of ``prompt_tokens`` in and ``completion_tokens`` out."""
        return (prompt_tokens * self.input_per_1m + completion_tokens * self.output_per_1m) / 1_000_000.0


class EmbeddingPrice(BaseModel):
    """What an embeddings model costs: per 1M input tokens (it has no output)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input_per_1m: float = Field(ge=0.0, description="price of 1M embedded tokens")

    def as_model_price(self) -> ModelPrice:
        """As a :class:`ModelPrice` with no output price."""
        return ModelPrice(input_per_1m=self.input_per_1m, output_per_1m=0.0)


def call_cost(price: ModelPrice | float | None, prompt_tokens: float, completion_tokens: float) -> float:
    """Cost of tokens at ``price`` (a :class:`ModelPrice`, a per-1k shorthand, or ``None`` = free)."""
    if price is None:
        return 0.0
    if not isinstance(price, ModelPrice):
        price = ModelPrice.per_1k(float(price))
    return price.cost(prompt_tokens, completion_tokens)


def resolve_price(
    *, price: ModelPrice | None, price_per_1k_tokens: float, model: str | None, table: Mapping[str, ModelPrice]
) -> ModelPrice | None:
    """A model's price: its own ``price``, else its ``price_per_1k_tokens`` shorthand (when not 0),
    else the settings' table entry for its ``model`` name, else ``None`` (unknown)."""
    if price is not None:
        return price
    if price_per_1k_tokens:
        return ModelPrice.per_1k(price_per_1k_tokens)
    if model and model in table:
        return table[model]
    return None


class RunBudget(BaseModel):
    """Hard limits on what one run spends; ``None`` means no limit.

    Counted over every stage of the run (generation, simulation, evaluation), only for
    calls that reached a model: a rerun replays what an earlier run paid for from the
    cache at no cost, so a rerun with a larger budget resumes where the last one stopped.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_model_calls: int | None = Field(None, ge=1, description="calls that reached a model")
    max_tokens: int | None = Field(None, ge=1, description="prompt + completion tokens of those calls")
    max_cost: float | None = Field(None, gt=0.0, description="money, in the unit of the price table")

    @property
    def limited(self) -> bool:
        """Whether any limit is set."""
        return any(v is not None for v in (self.max_model_calls, self.max_tokens, self.max_cost))

    def remaining(self, spent: BudgetSpend) -> RunBudget:
        """What is left of this budget after ``spent`` (a limit never drops below 0 here:
        a meter with nothing left stops the first call)."""
        return RunBudget.model_construct(
            max_model_calls=None if self.max_model_calls is None else max(0, self.max_model_calls - spent.model_calls),
            max_tokens=None if self.max_tokens is None else max(0, self.max_tokens - spent.tokens),
            max_cost=None if self.max_cost is None else max(0.0, self.max_cost - spent.cost),
        )

    def share(self, parts: int) -> RunBudget:
        """One of ``parts`` equal shares (for shards in other processes, which share no meter)."""
        parts = max(1, parts)
        return RunBudget.model_construct(
            max_model_calls=None if self.max_model_calls is None else self.max_model_calls // parts,
            max_tokens=None if self.max_tokens is None else self.max_tokens // parts,
            max_cost=None if self.max_cost is None else self.max_cost / parts,
        )


class BudgetSpend(BaseModel):
    """What a run (or a stage, or a shard) spent: model calls, tokens, cost."""

    model_calls: int = 0
    tokens: int = 0
    cost: float = 0.0

    def __add__(self, other: BudgetSpend) -> BudgetSpend:
        return BudgetSpend(model_calls=self.model_calls + other.model_calls, tokens=self.tokens + other.tokens, cost=self.cost + other.cost)

    def metrics(self, prefix: str = "budget") -> dict[str, float]:
        """As flat metrics, e.g. ``budget.tokens``."""
        return {f"{prefix}.model_calls": self.model_calls, f"{prefix}.tokens": self.tokens, f"{prefix}.cost": round(self.cost, 9)}

    @classmethod
    def from_metrics(cls, metrics: Mapping[str, float], prefix: str = "budget") -> BudgetSpend:
        """The spend in ``metrics`` written by :meth:`metrics` (0 where missing)."""
        return cls(
            model_calls=int(metrics.get(f"{prefix}.model_calls", 0)),
            tokens=int(metrics.get(f"{prefix}.tokens", 0)),
            cost=float(metrics.get(f"{prefix}.cost", 0.0)),
        )


class BudgetMeter:
    """Charges calls that reached a model against a :class:`RunBudget`; thread-safe.

    ``prices`` maps a gateway model name (``default``, ``judge``…) to its price; a model
    without one costs 0. ``spent`` starts at what earlier stages of the run spent.

    A :meth:`child` shares its parent's budget and totals and also counts what was
    charged through it (:attr:`own`), e.g. one shard's spend. Pickled (a shard on another
    process) a meter travels as an independent one holding the budget and the total so far.
    A plain class on purpose: Prefect rebuilds dataclasses and pydantic models passed to a
    task, and a copy would not be shared.
    """

    def __init__(
        self, budget: RunBudget, prices: Mapping[str, ModelPrice | None], spent: BudgetSpend | None = None,
        *, parent: BudgetMeter | None = None,
    ) -> None:
        self.budget = budget
        self.prices = dict(prices)
        self.parent = parent
        self._spent = spent or BudgetSpend()
        self.own = BudgetSpend()
        self.exceeded: BudgetExceeded | None = None
        self._lock = threading.Lock()

    @classmethod
    def start(cls, budget: RunBudget, prices: Mapping[str, ModelPrice | None], spent: BudgetSpend | None = None) -> BudgetMeter:
        return cls(budget, prices, spent)

    def child(self) -> BudgetMeter:
        """A meter charging through this one (same limits and totals) that also counts its own spend."""
        return BudgetMeter(self.budget, self.prices, parent=self)

    @property
    def spent(self) -> BudgetSpend:
        """What the whole run has spent so far (the root meter's total)."""
        return self.parent.spent if self.parent is not None else self._spent

    def check(self) -> None:
        """Raise :class:`BudgetExceeded` if a limit is reached (before a call goes out)."""
        b, s = self.budget, self.spent
        for name, limit, value in (
            ("max_model_calls", b.max_model_calls, s.model_calls),
            ("max_tokens", b.max_tokens, s.tokens),
            ("max_cost", b.max_cost, s.cost),
        ):
            if limit is not None and value >= limit:
                error = BudgetExceeded(name, limit, round(value, 6) if isinstance(value, float) else value)
                with self._lock:
                    self.exceeded = self.exceeded or error
                raise error

    def charge(self, model: str, prompt_tokens: int, completion_tokens: int, *, calls: int = 1) -> None:
        """Count one call that reached ``model`` (``calls=0``: tokens and cost only, as for an
        embeddings request, which is not a model call)."""
        self._add(BudgetSpend(
            model_calls=calls, tokens=prompt_tokens + completion_tokens,
            cost=call_cost(self.prices.get(model), prompt_tokens, completion_tokens),
        ))

    def _add(self, spend: BudgetSpend) -> None:
        with self._lock:
            self.own = self.own + spend
            if self.parent is None:
                self._spent = self._spent + spend
        if self.parent is not None:
            self.parent._add(spend)

    def __reduce__(self):  # noqa: D105
        return (BudgetMeter, (self.budget, self.prices, self.spent))
