"""A wrapper that charges every call reaching a model against a run's :class:`~personae.costs.BudgetMeter`.

It sits right around the provider, inside the gateway's concurrency limit and retries,
so it sees only calls that go out (never cache hits), checks the budget just before
each one is sent, and charges each reply's tokens to its model's price.
"""

from __future__ import annotations

from personae.costs import BudgetMeter
from personae.llm.base import LLM, LLMRequest, LLMResponse
from personae.llm.wrappers import WrapperLLM

__all__ = ["MeteredLLM"]


class MeteredLLM(WrapperLLM):
    """``inner`` with its calls charged to ``meter`` as the gateway model ``name``.

    A call that would start past a limit raises :class:`~personae.errors.BudgetExceeded`
    (never retried, never recorded as a failed conversation: the batch stops).
    """

    def __init__(self, inner: LLM, meter: BudgetMeter, name: str) -> None:
        super().__init__(inner)
        self.meter = meter
        self.name = name

    @property
    def base_url(self) -> str | None:
        """The endpoint of the wrapped provider, if any (for ``Gateway.model_identity``)."""
        return getattr(self.inner, "base_url", None)

    async def complete(self, request: LLMRequest) -> LLMResponse:
        self.meter.check()
        response = await self.inner.complete(request)
        if not response.cached:
            self.meter.charge(self.name, response.usage.prompt_tokens, response.usage.completion_tokens)
        return response
