"""Endpoint limits for a flow run: one :class:`~personae.llm.limits.Limits` per process, and
Prefect's global concurrency and rate limits across processes and machines.

Thread shards of a simulation share the flow's one ``Limits`` (in-process: exact, no
round trip). Shards on Dask workers run in other processes, so they also go through
Prefect's **global concurrency limits** when a Prefect server is configured: per
endpoint, one limit of ``max_concurrency`` slots held for each call
(``prefect.concurrency.asyncio.concurrency``), and rate limits with a slot decay of the
requests and tokens per minute (``prefect.concurrency.asyncio.rate_limit``). The flow
creates or updates them on the server before the shards start (``personae-llm-…`` names;
``prefect gcl ls`` lists them). ``llm_global_limits`` in the settings turns this on for
every run with a server (``true``) or off (``false``); unset, it is on for Dask shards.

This module is the only place that brings Prefect to the limiter: ``personae.llm`` sees
a :class:`~personae.llm.limits.SharedLimiter` and nothing else.

Once ``concurrency()`` or ``rate_limit()`` ran in a process, do not ``fork`` it: Prefect's
events worker leaves an exit hook that fails in a forked child (Prefect 3.8.8), which then
exits with code 1 after doing its work. Start processes with ``spawn`` (personae never forks).
"""

from __future__ import annotations

import logging
import math
import os
import re
from contextlib import AbstractAsyncContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

from personae.experiment import Experiment, ModelSpec
from personae.ids import content_hash
from personae.llm.limits import LimitConfig, Limits, endpoint_identity, endpoint_url, key_fingerprint
from personae.settings import Settings

__all__ = ["PrefectLimits", "GlobalLimitNames", "endpoint_limit_configs", "global_limit_names", "ensure_global_limits", "limits_for"]

log = logging.getLogger(__name__)

_OPENAI_URL = "https://api.openai.com/v1"


@dataclass(frozen=True)
class GlobalLimitNames:
    """The Prefect global limits of one endpoint, and their sizes."""

    calls: str
    concurrency: int
    requests: str | None = None
    requests_limit: int = 0
    requests_per_s: float = 0.0
    tokens: str | None = None
    tokens_limit: int = 0
    tokens_per_s: float = 0.0


def _endpoint(spec: ModelSpec | None, settings: Settings) -> str:
    """The endpoint key a model will have (the same rule as :func:`personae.llm.limits.endpoint_key`,
    with the key the model will be built with: ``api_key_env``, else the settings' key unless the
    model has a ``base_url`` of its own)."""
    if spec is None:
        kind = settings.llm_provider or ("openai" if (settings.llm_base_url or settings.llm_api_key) else "local")
        url, key = settings.llm_base_url, settings.llm_api_key
    else:
        kind, url = spec.provider, spec.base_url or settings.llm_base_url
        key = os.environ.get(spec.api_key_env) if spec.api_key_env else None if spec.base_url else settings.llm_api_key
    if kind == "openai":
        return endpoint_identity(url or _OPENAI_URL, key_fingerprint(key))
    if kind == "langchain" and spec is not None:  # the URL a LangChain model reads from its arguments, if any
        kwargs = spec.kwargs or {}
        url = kwargs.get("base_url") or kwargs.get("openai_api_base")
        key = os.environ.get(spec.api_key_env) if spec.api_key_env else None
        return endpoint_identity(url, key_fingerprint(key)) if isinstance(url, str) and url else kind
    return kind


def endpoint_limit_configs(experiment: Experiment, settings: Settings) -> dict[str, LimitConfig]:
    """Endpoint key → the limits the experiment's models set on it (the tightest, when several share it)."""
    specs: dict[str, ModelSpec | None] = dict(experiment.models)
    specs.setdefault("default", None)
    out: dict[str, LimitConfig] = {}
    for spec in specs.values():
        config = LimitConfig(
            max_concurrency=(spec.max_concurrency if spec else None) or settings.llm_max_concurrency,
            rpm=(spec.rpm if spec else None) or settings.llm_rpm,
            tpm=(spec.tpm if spec else None) or settings.llm_tpm,
        )
        key = _endpoint(spec, settings)
        out[key] = out[key].tighter(config) if key in out else config
    return out


def global_limit_names(endpoint: str, config: LimitConfig) -> GlobalLimitNames:
    """Prefect limit names for ``endpoint`` (letters, digits and dashes, plus a hash of the endpoint)."""
    slug = re.sub(r"[^A-Za-z0-9]+", "-", re.sub(r"^https?://", "", endpoint)).strip("-")[:48] or "endpoint"
    base = f"personae-llm-{slug}-{content_hash(endpoint, length=8)}"
    names = GlobalLimitNames(calls=f"{base}-calls", concurrency=config.max_concurrency)
    if config.rpm:
        per_s = config.rpm / 60.0
        names = GlobalLimitNames(**{**names.__dict__, "requests": f"{base}-rpm", "requests_limit": max(1, math.ceil(per_s * config.burst_s)), "requests_per_s": per_s})
    if config.tpm:
        per_s = config.tpm / 60.0
        names = GlobalLimitNames(**{**names.__dict__, "tokens": f"{base}-tpm", "tokens_limit": max(1, math.ceil(per_s * config.burst_s)), "tokens_per_s": per_s})
    return names


def ensure_global_limits(configs: dict[str, LimitConfig]) -> dict[str, GlobalLimitNames]:
    """Create or update the global limits of every endpoint on the configured Prefect server."""
    from prefect.client.orchestration import get_client

    names = {endpoint: global_limit_names(endpoint, config) for endpoint, config in configs.items()}
    with get_client(sync_client=True) as client:
        for n in names.values():
            client.upsert_global_concurrency_limit_by_name(n.calls, n.concurrency)
            if n.requests:
                client.upsert_global_concurrency_limit_by_name(n.requests, n.requests_limit, slot_decay_per_second=n.requests_per_s)
            if n.tokens:
                client.upsert_global_concurrency_limit_by_name(n.tokens, n.tokens_limit, slot_decay_per_second=n.tokens_per_s)
    log.info("Prefect global limits for %s", ", ".join(sorted(names)))
    return names


class PrefectLimits:
    """A :class:`~personae.llm.limits.SharedLimiter` over Prefect's global concurrency and rate limits."""

    def __init__(self, names: dict[str, GlobalLimitNames]) -> None:
        self.names = names

    def _names(self, endpoint: str) -> GlobalLimitNames | None:
        """The limits of ``endpoint``; else of its URL with any key (a LangChain model may find its
        key itself, which the flow cannot see: sharing that URL's limits errs on the safe side)."""
        found = self.names.get(endpoint)
        if found is None:
            url = endpoint_url(endpoint)
            found = next((n for e, n in sorted(self.names.items()) if endpoint_url(e) == url), None)
        return found

    def slot(self, endpoint: str) -> AbstractAsyncContextManager[Any]:
        from prefect.concurrency.asyncio import concurrency

        n = self._names(endpoint)
        if n is None:
            return nullcontext()
        return concurrency(n.calls, occupy=1)

    async def admit(self, endpoint: str, *, tokens: int) -> None:
        from prefect.concurrency.asyncio import rate_limit

        n = self._names(endpoint)
        if n is None:
            return
        if n.requests:
            await rate_limit(n.requests, occupy=1)
        if n.tokens and tokens:
            await rate_limit(n.tokens, occupy=min(tokens, n.tokens_limit))


def _use_global_limits(settings: Settings, *, other_processes: bool) -> bool:
    from personae.flows.prefect_server import configured_api_url

    wanted = settings.llm_global_limits if settings.llm_global_limits is not None else other_processes
    if not wanted:
        return False
    if configured_api_url(settings) is None:
        if settings.llm_global_limits:
            log.warning("llm_global_limits is on but no Prefect server is configured (PREFECT_API_URL): limits are per process")
        return False
    return True


def limits_for(experiment: Experiment, settings: Settings, *, other_processes: bool = False, create: bool = True) -> Limits:
    """The endpoint limits of a flow run in this process, shared through Prefect's global limits
    when they are in use (see the module docs). ``create`` makes or updates them on the server
    first (the flow does it once; shards on workers pass ``False``)."""
    if not _use_global_limits(settings, other_processes=other_processes):
        return Limits()
    configs = endpoint_limit_configs(experiment, settings)
    names = ensure_global_limits(configs) if create else {e: global_limit_names(e, c) for e, c in configs.items()}
    return Limits(shared=PrefectLimits(names))
