"""Endpoint limits for a flow run: one :class:`~personae.llm.limits.Limits` per process, and
Prefect's global concurrency limits across processes and machines, leased per shard.

Thread shards of a simulation share the flow's one ``Limits`` (in-process: exact, no
round trip). Shards on Dask workers run in other processes: when a Prefect server is
configured they share each endpoint's budget through one Prefect **global concurrency
limit** of ``max_concurrency`` slots (``personae-llm-…-calls``; ``prefect gcl ls`` lists
them), which the flow creates or updates before the shards start.

A shard does not take a slot per call (one round trip to the server each, served one after
another: it made the shared limit slower than the calls it limits). It **leases a share**
of the slots when it starts and holds it for its life (``prefect.concurrency.asyncio.concurrency``
with ``occupy=k``); its own in-process limiter then keeps at most ``k`` calls in flight:

* ``k`` = the endpoint's limit split over the shards that run at once (one per Dask worker
  of a local cluster; every shard of a run on a cluster at an address), but no more than
  the slots free on the server when it starts (a shard that starts later, or beside another
  run, takes what is free), and at least 1 (it waits for one if none is free);
* the rates (requests and tokens per minute) are split in proportion: ``k / limit`` of each;
* the lease is given back when the shard ends, also when it raises; Prefect renews it while
  it is held, and if its process dies the server takes the slots back once the lease expires
  (:data:`LEASE_S`, then the repossessor's loop, 15 s by default).

**Invariant**: the server grants leases atomically and never more slots than the limit, and
each process keeps within its lease, so the calls in flight to an endpoint over every process
never exceed its ``max_concurrency``; the shares of the rates add up to at most the endpoint's
rates (a new lease's buckets start full: one burst, ``burst_s`` of its share, per lease taken).

``llm_global_limits`` in the settings turns this on for every run with a server (``true``:
thread shards then lease for the flow's whole process) or off (``false``); unset, it is on for
Dask shards.

This module is the only place that brings Prefect to the limiter: ``personae.llm`` sees
a :class:`~personae.llm.limits.SharedLimiter` and nothing else.

Once ``concurrency()`` ran in a process, do not ``fork`` it: Prefect's events worker leaves
an exit hook that fails in a forked child (Prefect 3.8.8), which then exits with code 1
after doing its work. Start processes with ``spawn`` (personae never forks).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractAsyncContextManager, AsyncExitStack, ExitStack, asynccontextmanager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

from personae.errors import ConfigError
from personae.experiment import Experiment, ModelSpec, SimulationConfig
from personae.ids import content_hash
from personae.llm.limits import EndpointLimiter, LimitConfig, Limits, endpoint_identity, endpoint_url, key_fingerprint
from personae.settings import Settings

__all__ = [
    "LEASE_S",
    "Lease",
    "LeasedShares",
    "leased_limits",
    "endpoint_limit_configs",
    "global_limit_name",
    "ensure_global_limits",
    "shards_at_once",
    "slots_to_take",
    "share_of",
    "flow_limits",
    "shard_limits",
]

log = logging.getLogger(__name__)

_OPENAI_URL = "https://api.openai.com/v1"

LEASE_S = 60.0
"""Seconds a lease on a Prefect global limit lasts unless renewed (Prefect's shortest; it renews
it every 45 s while held): a holder that died gives its slots back this long after its last renewal."""


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


def global_limit_name(endpoint: str) -> str:
    """The Prefect global concurrency limit of ``endpoint``'s calls in flight (letters, digits
    and dashes, plus a hash of the endpoint): ``personae-llm-<endpoint>-<hash>-calls``."""
    slug = re.sub(r"[^A-Za-z0-9]+", "-", re.sub(r"^https?://", "", endpoint)).strip("-")[:48] or "endpoint"
    return f"personae-llm-{slug}-{content_hash(endpoint, length=8)}-calls"


def ensure_global_limits(configs: dict[str, LimitConfig]) -> dict[str, str]:
    """Create or update the global limit of every endpoint on the configured Prefect server
    (``max_concurrency`` slots); endpoint key → limit name."""
    from prefect.client.orchestration import get_client

    names = {endpoint: global_limit_name(endpoint) for endpoint in configs}
    with get_client(sync_client=True) as client:
        for endpoint, name in names.items():
            client.upsert_global_concurrency_limit_by_name(name, configs[endpoint].max_concurrency)
    log.info("Prefect global limits for %s", ", ".join(sorted(names)))
    return names


def shards_at_once(simulation: SimulationConfig, shards: int) -> int:
    """How many of a run's ``shards`` run at once, each holding a lease: one per worker of the
    local Dask cluster the flow starts (one thread each); every shard on a cluster at an address
    (its size is not known here: the split errs on the side of the limit)."""
    if simulation.dask is True:
        return max(1, min(shards, simulation.dask_workers or os.cpu_count() or 1))
    return max(1, shards)


def slots_to_take(limit: int, active: int, at_once: int) -> int:
    """The slots a shard leases of a limit of ``limit`` with ``active`` taken: its even share of
    the limit among ``at_once`` shards, no more than are free, at least 1 (it waits for one)."""
    return max(1, min(limit // max(1, at_once), limit - active))


def share_of(config: LimitConfig, slots: int) -> LimitConfig:
    """The part of an endpoint's limits that goes with ``slots`` of its ``max_concurrency``:
    that many calls in flight, and the same fraction of its requests and tokens per minute."""
    fraction = min(1.0, slots / config.max_concurrency)
    return config.model_copy(update={
        "max_concurrency": min(slots, config.max_concurrency),
        "rpm": config.rpm * fraction if config.rpm else None,
        "tpm": config.tpm * fraction if config.tpm else None,
    })


@dataclass(frozen=True)
class Lease:
    """Slots of one endpoint's global limit a process holds, and the limits that go with them."""

    endpoint: str
    name: str
    slots: int
    share: LimitConfig


class LeasedShares:
    """A :class:`~personae.llm.limits.SharedLimiter` over the leases of this process: each leased
    endpoint's own limiter, capped at its share (:func:`leased_limits`), enforces the lease, so its
    calls need no shared slot; and the rates are split into the shares, so nothing to wait for."""

    def __init__(self) -> None:
        self.limiters: dict[str, EndpointLimiter] = {}
        """Leased endpoint → its limiter (set by :func:`leased_limits`)."""

    def _lease_of(self, endpoint: str) -> str | None:
        """The leased endpoint of ``endpoint``'s URL, if another key than the leased one (a
        LangChain model may find its key itself, which the flow cannot see)."""
        url = endpoint_url(endpoint)
        return next((e for e in sorted(self.limiters) if endpoint_url(e) == url), None)

    def slot(self, endpoint: str) -> AbstractAsyncContextManager[Any]:
        """Nothing for a leased endpoint (its limiter holds the share); for another key of a leased
        URL, a permit of the leased endpoint's limiter too (it shares the lease: errs on the safe side)."""
        leased = None if endpoint in self.limiters else self._lease_of(endpoint)
        return _permit(self.limiters[leased]) if leased is not None else nullcontext()

    async def admit(self, endpoint: str, *, tokens: int) -> None:
        """The rates are split into the shares (each limiter's own buckets): nothing to wait for here."""
        return None


@asynccontextmanager
async def _permit(limiter: EndpointLimiter) -> AsyncIterator[None]:
    permit = await limiter.acquire()
    try:
        yield
    finally:
        await limiter.release(permit)


def leased_limits(leases: list[Lease]) -> Limits:
    """The limits of a process holding ``leases``: each leased endpoint's limiter capped at its share."""
    shared = LeasedShares()
    limits = Limits(shared=shared)
    shared.limiters = {lease.endpoint: limits.limiter(lease.endpoint, lease.share) for lease in leases}
    log.info("leased %s", ", ".join(f"{lease.slots} slot(s) of {lease.name}" for lease in leases))
    return limits


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


def _plan(configs: dict[str, LimitConfig], at_once: int) -> list[Lease]:
    """What to lease of each endpoint's global limit, in a fixed order (leases taken in one order
    cannot wait on each other in a circle), sized by the slots free on the server now."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    plan = []
    with get_client(sync_client=True) as client:
        for endpoint in sorted(configs):
            name = global_limit_name(endpoint)
            try:
                limit = client.read_global_concurrency_limit_by_name(name)
            except ObjectNotFound:
                raise ConfigError(
                    f"no Prefect global limit {name} for endpoint {endpoint} on this process's Prefect server",
                    field="llm_global_limits", got=os.environ.get("PREFECT_API_URL"),
                    expected="the flow creates it before the shards start: give the workers the flow's "
                    "PREFECT_API_URL and the same endpoint settings",
                ) from None
            slots = slots_to_take(limit.limit, limit.active_slots, at_once)
            plan.append(Lease(endpoint, name, slots, share_of(configs[endpoint], slots)))
    return plan


def _holder() -> Any:
    """Who holds the lease, for ``prefect gcl inspect``: this task run, else this flow run, else nobody."""
    from prefect.client.schemas.objects import ConcurrencyLeaseHolder
    from prefect.context import FlowRunContext, TaskRunContext

    task_run = TaskRunContext.get()
    if task_run is not None:
        return ConcurrencyLeaseHolder(type="task_run", id=task_run.task_run.id)
    flow_run = FlowRunContext.get()
    if flow_run is not None and flow_run.flow_run is not None:
        return ConcurrencyLeaseHolder(type="flow_run", id=flow_run.flow_run.id)
    return None


_LEASE_OPTIONS: dict[str, Any] = {"lease_duration": LEASE_S, "strict": True, "raise_on_lease_renewal_failure": True}
"""A limit that does not exist is an error (not a silent pass), and so is a lease Prefect failed
to renew (its slots may be someone else's by now: the shard stops rather than exceed the limit)."""


@asynccontextmanager
async def shard_limits(experiment: Experiment, settings: Settings, *, shards: int) -> AsyncIterator[Limits]:
    """The endpoint limits of one shard of ``shards`` running in a process of its own (a Dask
    worker): when Prefect's global limits are in use, a lease on each endpoint's global limit
    (see the module docs), held until the block ends, also on an error; else this process's own limits."""
    if not _use_global_limits(settings, other_processes=True):
        yield Limits()
        return
    from prefect.concurrency.asyncio import concurrency

    leases = _plan(endpoint_limit_configs(experiment, settings), shards_at_once(experiment.simulation, shards))
    async with AsyncExitStack() as stack:
        holder = _holder()
        for lease in leases:
            await stack.enter_async_context(concurrency(lease.name, occupy=lease.slots, holder=holder, **_LEASE_OPTIONS))
        yield leased_limits(leases)


@contextmanager
def flow_limits(experiment: Experiment, settings: Settings, *, other_processes: bool) -> Iterator[Limits]:
    """The endpoint limits of a simulate flow, for the block's duration: when Prefect's global
    limits are in use, creates or updates them on the server first; thread shards
    (``other_processes`` false) then share one lease of the flow's process, while shards in other
    processes lease their own (:func:`shard_limits`: the limits yielded here are not theirs)."""
    if not _use_global_limits(settings, other_processes=other_processes):
        yield Limits()
        return
    configs = endpoint_limit_configs(experiment, settings)
    ensure_global_limits(configs)
    if other_processes:
        yield Limits()
        return
    from prefect.concurrency.sync import concurrency

    leases = _plan(configs, at_once=1)
    with ExitStack() as stack:
        holder = _holder()
        for lease in leases:
            stack.enter_context(concurrency(lease.name, occupy=lease.slots, holder=holder, **_LEASE_OPTIONS))
        yield leased_limits(leases)
