"""The gateway: the single way any part of personae calls a model.

It routes each call to a model by *role* (persona, critic, judge, ...), serves
repeated requests from the response cache, stacks the cross-cutting wrappers
(retries → the endpoint's limiter of calls in flight, RPM and TPM → provider), does
structured output with a fallback chain, and accounts calls and tokens per role.

The cache stores a reply only once it has passed its validation (a structured reply
parsed and schema-valid, or whatever ``check`` the caller gives), so a rerun never
replays a failure: it asks the model again.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel

from personae.costs import BudgetMeter
from personae.errors import BudgetExceeded, ConfigError, ModelOutputError, UnsupportedFeature
from personae.llm.base import LLM, LLMRequest, LLMResponse, Message, ResponseFormat
from personae.llm.cache import ResponseCache, cache_key
from personae.llm.structured import parse_structured, schema_for
from personae.llm.limits import EndpointLimiter, LimitConfig, LimiterStats, Limits, endpoint_key
from personae.llm.wrappers import LimitedLLM, RetryingLLM

if TYPE_CHECKING:
    from personae.llm.embedding_gate import EmbeddingGate

__all__ = ["Gateway", "RoleUsage", "UsageTracker", "Budget", "default_limit_config", "EMBEDDINGS_ROLE"]

log = logging.getLogger(__name__)
T = TypeVar("T", bound=BaseModel)

STRUCTURED_CHAIN: tuple[ResponseFormat, ...] = (
    ResponseFormat.JSON_SCHEMA,
    ResponseFormat.TOOL,
    ResponseFormat.JSON_OBJECT,
)

MessagesLike = Sequence[Message | Mapping[str, Any]]

EMBEDDINGS_ROLE = "embeddings"
"""The usage role of embeddings requests: counted apart from the chat roles (see :meth:`UsageTracker.total`)."""


@dataclass
class RoleUsage:
    """Counters for one role."""

    calls: int = 0
    cached_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    latency_s: float = 0.0
    failures: int = 0
    inputs: int = 0
    """Texts embedded (the :data:`EMBEDDINGS_ROLE` only; a request carries many)."""

    @property
    def model_calls(self) -> int:
        """Calls that reached a model (not served from the cache)."""
        return self.calls - self.cached_calls


@dataclass
class UsageTracker:
    """Calls and tokens per role; thread-safe.

    Embeddings requests are the role :data:`EMBEDDINGS_ROLE` (calls = requests, ``inputs`` =
    texts, ``prompt_tokens`` = their tokens); :meth:`total` is over the chat roles only, so
    calls per utterance and the like count chat calls."""

    roles: dict[str, RoleUsage] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, role: str, response: LLMResponse) -> None:
        with self._lock:
            usage = self.roles.setdefault(role, RoleUsage())
            usage.calls += 1
            usage.cached_calls += int(response.cached)
            usage.prompt_tokens += response.usage.prompt_tokens
            usage.completion_tokens += response.usage.completion_tokens
            if not response.cached:  # a reply replayed from our cache reached no provider's prompt cache
                usage.cached_tokens += response.usage.cached_tokens
            usage.latency_s += response.latency_s

    def record_embedding(self, *, inputs: int, prompt_tokens: int, latency_s: float) -> None:
        """Count one embeddings request that reached its endpoint, carrying ``inputs`` texts."""
        with self._lock:
            usage = self.roles.setdefault(EMBEDDINGS_ROLE, RoleUsage())
            usage.calls += 1
            usage.inputs += inputs
            usage.prompt_tokens += prompt_tokens
            usage.latency_s += latency_s

    def record_failure(self, role: str) -> None:
        with self._lock:
            self.roles.setdefault(role, RoleUsage()).failures += 1

    def add(self, roles: Mapping[str, RoleUsage]) -> None:
        """Add another tracker's per-role counters (e.g. a worker process's) to these."""
        with self._lock:
            for role, counts in roles.items():
                into = self.roles.setdefault(role, RoleUsage())
                for f in dataclasses.fields(RoleUsage):
                    setattr(into, f.name, getattr(into, f.name) + getattr(counts, f.name))

    def total(self) -> RoleUsage:
        """Counters summed over the chat roles (embeddings requests are not chat calls)."""
        with self._lock:
            out = RoleUsage()
            for role, u in self.roles.items():
                if role == EMBEDDINGS_ROLE:
                    continue
                out.calls += u.calls
                out.cached_calls += u.cached_calls
                out.prompt_tokens += u.prompt_tokens
                out.completion_tokens += u.completion_tokens
                out.cached_tokens += u.cached_tokens
                out.latency_s += u.latency_s
                out.failures += u.failures
            return out

    def snapshot(self) -> dict[str, Any]:
        """A flat dict of counters, e.g. ``{"total.calls": 12, "persona.prompt_tokens": 900}``."""
        out: dict[str, Any] = {}
        total = self.total()
        with self._lock:
            items = [("total", total), *sorted(self.roles.items())]
        for name, u in items:
            out[f"{name}.calls"] = u.calls
            out[f"{name}.model_calls"] = u.model_calls
            out[f"{name}.cached_calls"] = u.cached_calls
            out[f"{name}.prompt_tokens"] = u.prompt_tokens
            out[f"{name}.completion_tokens"] = u.completion_tokens
            out[f"{name}.cached_tokens"] = u.cached_tokens
            out[f"{name}.failures"] = u.failures
            if name == EMBEDDINGS_ROLE:
                out[f"{name}.inputs"] = u.inputs
        return out


class Budget(BaseModel):
    """Hard limits on model use for one gateway; ``None`` means unlimited."""

    max_model_calls: int | None = None
    max_tokens: int | None = None


class Gateway:
    """Routes requests by role to wrapped models and accounts for them.

    Args:
        models: one model, or a mapping of name → model; ``"default"`` is required
            in a mapping and serves every role not routed elsewhere.
        roles: role → model name, e.g. ``{"critic": "judge"}``; a role that names a
            model in ``models`` directly needs no entry.
        cache: response cache shared by all models; ``None`` disables caching. Only
            replies that pass their validation are stored (see :meth:`complete`).
        max_concurrency: calls in flight at once per endpoint, shared by every caller and
            model reaching that endpoint (and by every gateway sharing ``limits``); adapted
            below it by AIMD on 429s and latency spikes.
        max_retries: retries per call for 429/5xx/timeouts; a retry waits without its slot.
        rpm, tpm: requests and tokens per minute per endpoint (``None``: unlimited).
        model_limits: model name → its :class:`~personae.llm.limits.LimitConfig`, instead of
            ``max_concurrency``/``rpm``/``tpm``; models on one endpoint share the tightest.
        limits: the registry of endpoint limiters to share with other gateways (e.g. the
            shards of one simulation); by default the gateway has its own.
        budget: optional hard limits.
    """

    def __init__(
        self,
        models: LLM | Mapping[str, LLM],
        *,
        roles: Mapping[str, str] | None = None,
        cache: ResponseCache | None = None,
        max_concurrency: int = 64,
        max_retries: int = 5,
        retry_base_delay_s: float = 0.25,
        budget: Budget | None = None,
        rpm: float | None = None,
        tpm: float | None = None,
        model_limits: Mapping[str, LimitConfig] | None = None,
        limits: Limits | None = None,
    ) -> None:
        raw = {"default": models} if not isinstance(models, Mapping) else dict(models)
        if "default" not in raw:
            raise ConfigError("the gateway needs a 'default' model", field="models", expected="a mapping with a 'default' key", got=sorted(raw))
        self.roles = dict(roles or {})
        for role, name in self.roles.items():
            if name not in raw:
                raise ConfigError(f"role {role!r} is routed to an unknown model", field=f"roles.{role}", expected=f"one of {sorted(raw)}", got=name)
        self.cache = cache
        self.max_concurrency = max_concurrency
        self.max_retries = max_retries
        self.retry_base_delay_s = retry_base_delay_s
        self._default_limits = LimitConfig(max_concurrency=max_concurrency, rpm=rpm, tpm=tpm)
        self.budget = budget or Budget()
        self.usage = UsageTracker()
        self._unsupported: dict[str, set[ResponseFormat]] = {}
        self._providers = raw
        self.limits = limits if limits is not None else Limits()
        self._models: dict[str, LLM] = {}
        self._limiters: dict[str, EndpointLimiter] = {}
        for name, model in raw.items():
            config = (model_limits or {}).get(name) or default_limit_config(model, max_concurrency=max_concurrency, rpm=rpm, tpm=tpm)
            limiter = self.limits.limiter(endpoint_key(model), config)
            self._limiters[name] = limiter
            wrapped: LLM = LimitedLLM(model, limiter)
            self._models[name] = RetryingLLM(wrapped, max_retries=max_retries, base_delay_s=retry_base_delay_s, on_retry=limiter.record_retry)

    # ---- routing ---------------------------------------------------------
    def _route(self, role: str) -> str:
        return self.roles.get(role, role if role in self._models else "default")

    def model_for(self, role: str = "default") -> LLM:
        """The wrapped model serving ``role``."""
        return self._models[self._route(role)]

    def model_identity(self, role: str = "default") -> str:
        """``provider:model`` (plus the endpoint, if any) of the model serving ``role``.

        Two roles with the same identity reach the same model, e.g. two judges that
        are really one model judging twice.
        """
        provider = self._providers[self._route(role)]
        base_url = getattr(provider, "base_url", None)
        return f"{provider.provider}:{provider.model}" + (f"@{base_url}" if base_url else "")

    def describe(self) -> dict[str, str]:
        """Model name → ``provider:model``, for logs and tracking (no secrets)."""
        return {name: f"{m.provider}:{m.model}" for name, m in self._providers.items()}

    # ---- calls -------------------------------------------------------------
    async def complete(
        self, request: LLMRequest, *, role: str = "default", check: Callable[[LLMResponse], Any] | None = None
    ) -> LLMResponse:
        """Send ``request`` to the model serving ``role``, or replay its reply from the cache.

        ``check`` validates a reply before it is cached: it refuses one by raising
        :class:`ModelOutputError`, which propagates, and the refused reply is not stored,
        so an identical rerun asks the model again instead of replaying the failure. A
        cached reply is checked as well; one refused now is evicted and the model asked
        again. Without ``check`` every reply is accepted. ``request.replicate`` draws an
        independent sample of the same request (see :class:`LLMRequest`).
        """
        self._check_budget()
        model = self.model_for(role)
        key = cache_key(model.provider, model.model, request) if self.cache is not None else None
        if key is not None:
            hit = self.cache.get(key)
            if hit is not None and _accepts(check, hit):
                self.usage.record(role, hit)
                return hit
            if hit is not None:
                log.info("a cached %s reply is refused by its check now; asking the model again", role)
                self.cache.delete(key)
        started = time.perf_counter()
        try:
            response = await model.complete(request)
        except Exception:
            self.usage.record_failure(role)
            raise
        if not response.cached and not response.latency_s:
            response = response.model_copy(update={"latency_s": time.perf_counter() - started})
        self.usage.record(role, response)
        if check is not None:
            check(response)
        if key is not None:
            self.cache.put(key, response)
        return response

    async def text(
        self,
        messages: MessagesLike,
        *,
        role: str = "default",
        temperature: float = 0.7,
        max_tokens: int | None = 256,
        seed: int | None = None,
        stop: Sequence[str] | None = None,
        replicate: int = 0,
        check: Callable[[LLMResponse], Any] | None = None,
    ) -> LLMResponse:
        """A plain text reply.

        ``replicate`` picks which independent sample of this same prompt to draw: replicates
        0, 1, 2… are separate model calls, each cached on its own, so a rerun replays every
        one of them without a call. ``check`` refuses a reply by raising
        :class:`ModelOutputError` (it is then not cached; see :meth:`complete`).
        """
        request = LLMRequest(
            messages=_messages(messages),
            temperature=temperature,
            max_tokens=max_tokens,
            seed=seed,
            stop=tuple(stop) if stop else None,
            replicate=replicate,
        )
        return await self.complete(request, role=role, check=check)

    async def structured(
        self,
        messages: MessagesLike,
        schema: type[T],
        *,
        role: str = "default",
        temperature: float = 0.0,
        max_tokens: int | None = 512,
        seed: int | None = None,
        repair_attempts: int = 1,
        replicate: int = 0,
        check: Callable[[T], Any] | None = None,
    ) -> T:
        """A reply validated as ``schema``, through the fallback chain.

        JSON-schema response format first; if the provider rejects it, a forced tool
        call; then JSON mode with the schema in the prompt and up to
        ``repair_attempts`` rounds that show the model its error. ``check`` validates
        further what the schema cannot say (raise :class:`ModelOutputError` to refuse:
        the chain goes on as for a schema error). Only a reply that parsed, matched the
        schema and passed ``check`` is cached. ``replicate`` draws an independent sample
        of the same prompt (see :meth:`text`). Raises :class:`ModelOutputError` with the
        raw reply when nothing validates.
        """
        msgs = _messages(messages)
        json_schema = schema_for(schema)
        model = self.model_for(role)
        key = f"{model.provider}:{model.model}"
        unsupported = self._unsupported.setdefault(key, set())
        last_error: ModelOutputError | None = None
        for fmt in STRUCTURED_CHAIN:
            if fmt in unsupported:
                continue
            attempt_msgs = msgs if fmt is not ResponseFormat.JSON_OBJECT else _with_schema_hint(msgs, json_schema)
            rounds = 1 + (repair_attempts if fmt is ResponseFormat.JSON_OBJECT else 0)
            for round_no in range(rounds):
                request = LLMRequest(
                    messages=attempt_msgs,
                    temperature=temperature,
                    max_tokens=max_tokens,
                    seed=seed,
                    response_format=fmt,
                    json_schema=json_schema,
                    schema_name=schema.__name__,
                    replicate=replicate,
                )
                reading = _StructuredReply(schema, key, check)
                try:
                    await self.complete(request, role=role, check=reading)
                except UnsupportedFeature as exc:
                    log.info("%s does not support %s (%s); falling back", key, fmt.value, exc)
                    unsupported.add(fmt)
                    break
                except ModelOutputError as exc:
                    if exc is not reading.refusal:  # not about this reply: nothing to repair
                        raise
                    last_error = exc
                    if round_no + 1 < rounds:
                        attempt_msgs = (
                            *attempt_msgs,
                            Message(role="assistant", content=reading.text),
                            Message(role="user", content=_repair_prompt(exc)),
                        )
                    continue
                return reading.value
            # a format that answered but did not validate: try the next one too
        if last_error is not None:
            raise last_error
        raise ModelOutputError(f"{key} supports none of the structured output modes {[f.value for f in STRUCTURED_CHAIN]}", model=key)

    # ---- embeddings ----------------------------------------------------------
    def embedding_gate(self, endpoint: str, *, meter: BudgetMeter | None = None, default: LimitConfig | None = None) -> EmbeddingGate:
        """The way an embedder's requests to ``endpoint`` (an endpoint key, see
        :func:`~personae.llm.limits.endpoint_identity`) go through this gateway: the endpoint's
        shared limiter (the chat models' on the same URL and key, else a new one with ``default``,
        else this gateway's limits), the gateway's retries, its usage (role :data:`EMBEDDINGS_ROLE`)
        and ``meter``."""
        from personae.llm.embedding_gate import EmbeddingGates

        gates = EmbeddingGates(self.limits, self.usage, self._default_limits, max_retries=self.max_retries, retry_base_delay_s=self.retry_base_delay_s)
        return gates.embedding_gate(endpoint, meter=meter, default=default)

    # ---- lifecycle ---------------------------------------------------------
    def _check_budget(self) -> None:
        b = self.budget
        if b.max_model_calls is None and b.max_tokens is None:
            return  # nothing to check: skip summing the counters on every call
        total = self.usage.total()
        if b.max_model_calls is not None and total.model_calls >= b.max_model_calls:
            raise BudgetExceeded("max_model_calls", b.max_model_calls, total.model_calls)
        if b.max_tokens is not None and total.prompt_tokens + total.completion_tokens >= b.max_tokens:
            raise BudgetExceeded("max_tokens", b.max_tokens, total.prompt_tokens + total.completion_tokens)

    @property
    def peak_in_flight(self) -> int:
        """Most model calls that were in flight at once on one endpoint, across all its models
        (and every gateway sharing :attr:`limits`)."""
        return max((lim.peak_in_flight for lim in self._limiters.values()), default=0)

    def endpoint_limiters(self) -> dict[str, EndpointLimiter]:
        """Endpoint key → the limiter this gateway's calls to it go through."""
        return {lim.key: lim for lim in self._limiters.values()}

    def limiter_stats(self) -> list[LimiterStats]:
        """What the limiters of this gateway's endpoints saw (429s, retries, waits, AIMD window),
        one entry per endpoint; see :func:`~personae.llm.limits.merge_limiter_stats`."""
        return [lim.stats() for lim in self.endpoint_limiters().values()]

    async def aclose(self) -> None:
        """Close every provider and the cache."""
        await asyncio.gather(*(m.aclose() for m in self._providers.values()))
        if self.cache is not None:
            self.cache.close()


def default_limit_config(model: LLM, *, max_concurrency: int, rpm: float | None = None, tpm: float | None = None) -> LimitConfig:
    """The limits of ``model``'s endpoint when none are given: latency spikes count only for
    HTTP endpoints (a fake or in-process model's latency says nothing about a server's load)."""
    remote = endpoint_key(model).startswith(("http://", "https://"))
    return LimitConfig(max_concurrency=max_concurrency, rpm=rpm, tpm=tpm, latency_spike_factor=4.0 if remote else None)


def _accepts(check: Callable[[LLMResponse], Any] | None, response: LLMResponse) -> bool:
    """Whether ``check`` accepts ``response`` (a :class:`ModelOutputError` refuses it)."""
    if check is None:
        return True
    try:
        check(response)
    except ModelOutputError:
        return False
    return True


class _StructuredReply:
    """The check of one structured call: parses the reply as ``schema`` (then the caller's
    ``check``) and keeps the value, or the refusal and the raw text for a repair round."""

    def __init__(self, schema: type[BaseModel], model: str, check: Callable[[Any], Any] | None) -> None:
        self.schema = schema
        self.model = model
        self.check = check
        self.text = ""
        self.value: Any = None
        self.refusal: ModelOutputError | None = None

    def __call__(self, response: LLMResponse) -> None:
        self.text = response.text
        try:
            value = parse_structured(response.text, self.schema, model=self.model)
            if self.check is not None:
                self.check(value)
        except ModelOutputError as exc:
            self.refusal = exc
            raise
        self.value, self.refusal = value, None


def _messages(messages: MessagesLike) -> tuple[Message, ...]:
    return tuple(m if isinstance(m, Message) else Message.model_validate(m) for m in messages)


def _with_schema_hint(messages: tuple[Message, ...], json_schema: dict[str, Any]) -> tuple[Message, ...]:
    from personae.prompts import render

    hint = render("structured_output_hint", schema=json_schema)
    if messages and messages[0].role == "system":
        first = Message(role="system", content=messages[0].content + "\n\n" + hint)
        return (first, *messages[1:])
    return (Message(role="system", content=hint), *messages)


def _repair_prompt(error: ModelOutputError) -> str:
    from personae.prompts import render

    return render("structured_output_repair", error=error.message)
