"""The one narrow model protocol every provider and wrapper implements."""

from __future__ import annotations

from enum import Enum
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from personae.ids import content_hash
from personae.llm.rate_headers import RateLimitInfo

__all__ = [
    "Message",
    "ResponseFormat",
    "LLMRequest",
    "Usage",
    "LLMResponse",
    "LLM",
    "estimate_tokens",
]


class Message(BaseModel):
    """One chat message."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    role: Literal["system", "user", "assistant"]
    content: str
    name: str | None = None


class ResponseFormat(str, Enum):
    """How the reply is asked for. The gateway falls back down this list for structured output."""

    TEXT = "text"
    JSON_SCHEMA = "json_schema"
    TOOL = "tool"
    JSON_OBJECT = "json_object"


class LLMRequest(BaseModel):
    """A complete, provider-agnostic chat request. Its canonical form is the cache key."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    messages: tuple[Message, ...]
    temperature: float = Field(0.7, ge=0.0, le=2.0)
    max_tokens: int | None = Field(256, ge=1)
    seed: int | None = None
    stop: tuple[str, ...] | None = None
    response_format: ResponseFormat = ResponseFormat.TEXT
    json_schema: dict[str, Any] | None = None
    schema_name: str = "output"
    replicate: int = Field(
        0, ge=0,
        description="which independent sample of this same request this is: replicates 0, 1, 2… of one prompt are "
        "drawn and cached separately (each with its own sampling seed), and each replays from the cache on a rerun",
    )

    def cache_payload(self) -> dict[str, Any]:
        """Everything that determines the reply (and nothing else, e.g. no wall clock).

        ``replicate`` 0 is left out, so the first sample's cache key is the same as before
        replicates existed.
        """
        return self.model_dump(mode="json", exclude={"replicate"} if self.replicate == 0 else None)

    @property
    def sampling_seed(self) -> int | None:
        """The seed a provider samples with: ``seed`` for replicate 0, a seed derived from
        ``(seed, replicate)`` for the others (so a seeded provider does not give the same
        sample again), ``None`` when unseeded."""
        if self.seed is None or self.replicate == 0:
            return self.seed
        return int(content_hash(["replicate", self.seed, self.replicate], length=8), 16)


class Usage(BaseModel):
    """Token counts of one call (from the provider, or estimated where it gives none)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = Field(0, description="prompt tokens the provider served from its prompt cache (OpenAI's "
                               "usage.prompt_tokens_details.cached_tokens); 0 when it does not say")

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class LLMResponse(BaseModel):
    """A model reply. For ``TOOL`` requests ``text`` holds the tool call's JSON arguments."""

    text: str
    usage: Usage = Field(default_factory=Usage)
    model: str = ""
    provider: str = ""
    finish_reason: str | None = None
    cached: bool = False
    latency_s: float = 0.0
    rate_limit: RateLimitInfo | None = Field(
        None, exclude=True, description="the provider's rate-limit headers on this reply (for the limiter; never cached)"
    )


@runtime_checkable
class LLM(Protocol):
    """A chat model. Providers and wrappers (cache, retry, limit) all implement this."""

    @property
    def provider(self) -> str:
        """Provider name, e.g. ``openai``, ``local``, ``fake``."""
        ...

    @property
    def model(self) -> str:
        """Model name at the provider."""
        ...

    async def complete(self, request: LLMRequest) -> LLMResponse:
        """Answer ``request``. Raise ``ModelCallError``/``UnsupportedFeature`` on failure."""
        ...

    async def aclose(self) -> None:
        """Release connections or loaded weights."""
        ...


def estimate_tokens(text: str) -> int:
    """Rough token count (≈4 characters per token) for providers that report none.

    tiktoken downloads its encodings at run time, which this project must not do.
    """
    return max(1, (len(text) + 3) // 4) if text else 0
