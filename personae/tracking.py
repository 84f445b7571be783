"""MLflow tracking adapter, called by the flows (library code below ``flows`` never imports MLflow).

One parent run per pipeline and one child run per stage. Params are the flattened
experiment, model names, seeds and prompt versions; metrics are counts, calls,
tokens, cost, latency and evaluation scores; artifacts are the stage outputs and the
experiment file; tags are the git commit, the personae version and the process that
owns the run. A run whose process was killed stays RUNNING in MLflow; the next run of
the same experiment marks it KILLED once it is sure that process has ended.

No secret reaches MLflow: the experiment names API keys only by environment
variable, and :func:`scrub_params` additionally redacts anything key/token/secret
shaped, any value of a secret-named environment variable, and passwords in URLs.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from personae.costs import call_cost
from personae.llm.gateway import EMBEDDINGS_ROLE, RoleUsage, UsageTracker
from personae.llm.limits import LimiterStats, endpoint_label, merge_limiter_stats
from personae.processes import ProcessOwner
from personae.settings import Settings

__all__ = [
    "REDACTED",
    "Tracker",
    "TrackedRun",
    "flatten",
    "scrub_params",
    "secret_values",
    "git_commit",
    "usage_metrics",
    "usage_to_dict",
    "limit_metrics",
    "merge_usage",
    "enable_langgraph_tracing",
    "RunSummary",
    "pipeline_runs",
    "child_runs",
]

log = logging.getLogger(__name__)

REDACTED = "***"
_MAX_PARAM_LEN = 6000
_MAX_KEY_LEN = 250
_PARAMS_PER_BATCH = 100
_METRICS_PER_BATCH = 1000
_SECRET_NAME = re.compile(
    r"(^|[_.\-])(api[_\-]?key|apikey|secret|password|passwd|token|access[_\-]?key|private[_\-]?key|credentials?|auth|authorization|bearer)($|[_.\-])",
    re.IGNORECASE,
)
_SECRET_VALUE = re.compile(
    r"(sk-[A-Za-z0-9_\-]{12,}|gh[pousr]_[A-Za-z0-9]{20,}|xox[abpr]-[A-Za-z0-9\-]{10,}|AKIA[0-9A-Z]{16}|(?i:bearer)\s+\S{8,})"
)
_URL_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.\-]*://)(?P<user>[^/@\s:]*)(:(?P<pw>[^/@\s]*))?@")
_METRIC_KEY = re.compile(r"[^A-Za-z0-9_\-. /]")


# ---- params: flatten and scrub ----------------------------------------------
def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts/lists as one level of dotted keys (``graph.critic.enabled``, ``scenarios.0.name``)."""
    out: dict[str, Any] = {}
    if isinstance(value, Mapping):
        if not value and prefix:
            out[prefix] = "{}"
        for key, sub in value.items():
            out.update(flatten(sub, f"{prefix}.{key}" if prefix else str(key)))
    elif isinstance(value, (list, tuple)):
        if not value and prefix:
            out[prefix] = "[]"
        for index, sub in enumerate(value):
            out.update(flatten(sub, f"{prefix}.{index}" if prefix else str(index)))
    else:
        out[prefix or "value"] = value
    return out


def _is_secret_name(key: str) -> bool:
    last = key.rsplit(".", 1)[-1]
    if last.lower().endswith("_env"):  # names an environment variable; the name is not the secret
        return False
    return bool(_SECRET_NAME.search(last))


def secret_values(settings: Settings | None = None, environ: Mapping[str, str] | None = None) -> set[str]:
    """Values that must never be logged: secret-named env vars and the settings' secrets."""
    environ = os.environ if environ is None else environ
    found = {v for k, v in environ.items() if _is_secret_name(k) and len(v) >= 6}
    if settings is not None:
        for secret in (settings.llm_api_key, settings.qdrant_api_key):
            if secret is not None and len(secret.get_secret_value()) >= 6:
                found.add(secret.get_secret_value())
    return found


def _scrub_text(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        if secret and secret in text:
            text = text.replace(secret, REDACTED)
    text = _URL_USERINFO.sub(lambda m: f"{m['scheme']}{REDACTED}@", text)
    return _SECRET_VALUE.sub(REDACTED, text)


def scrub_params(params: Mapping[str, Any], *, secrets: Iterable[str] = ()) -> dict[str, str]:
    """Params as strings safe to log: secret-named keys, secret values and URL passwords redacted.

    Keys ending in ``_env`` hold environment variable *names* and are kept.
    """
    secrets = sorted(set(secrets), key=len, reverse=True)
    out: dict[str, str] = {}
    for key, value in params.items():
        text = "" if value is None else str(value)
        if _is_secret_name(key) and text:
            text = REDACTED
        else:
            text = _scrub_text(text, secrets)
        out[key[:_MAX_KEY_LEN]] = text[:_MAX_PARAM_LEN]
    return out


# ---- tags -------------------------------------------------------------------
def git_commit(path: str | os.PathLike) -> str | None:
    """The commit checked out at ``path`` (a file or folder), or ``None`` outside git."""
    folder = Path(path)
    folder = folder if folder.is_dir() else folder.parent
    try:
        done = subprocess.run(
            ["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    commit = done.stdout.strip()
    return commit if done.returncode == 0 and re.fullmatch(r"[0-9a-f]{40}", commit) else None


# ---- metrics ----------------------------------------------------------------
def usage_metrics(
    usage: UsageTracker,
    *,
    model_for_role: Callable[[str], str] | None = None,
    prices_per_1k: Mapping[str, Any] | None = None,
    peak_in_flight: int = 0,
    prefix: str = "usage",
) -> dict[str, float]:
    """Calls, tokens, latency and cost of the model use in ``usage``.

    ``model_for_role`` names the model serving a role and ``prices_per_1k`` maps a
    model name to its price: a :class:`~personae.costs.ModelPrice` (input/output per 1M
    tokens) or a number per 1,000 tokens (missing models cost 0); the cost
    counts only calls that reached a model, not cache hits.

    Embeddings requests (role ``embeddings``, priced by the ``embeddings`` entry) have
    their own ``usage.embeddings.*`` lines (requests as ``calls``, texts as ``inputs``,
    ``tokens``, ``cost``); ``usage.calls``, ``usage.tokens`` and the like count chat calls
    only, while ``usage.cost`` is the cost of both.
    """
    prices = dict(prices_per_1k or {})
    route = model_for_role or (lambda role: "default")
    out: dict[str, float] = {}
    total = usage.total()
    cost = 0.0
    for role, counts in sorted(usage.roles.items()):
        tokens = counts.prompt_tokens + counts.completion_tokens
        model_share = counts.model_calls / counts.calls if counts.calls else 0.0
        price = prices.get(EMBEDDINGS_ROLE if role == EMBEDDINGS_ROLE else route(role))
        role_cost = model_share * call_cost(price, counts.prompt_tokens, counts.completion_tokens)
        cost += role_cost
        out[f"{prefix}.{role}.cost"] = round(role_cost, 6)
        out[f"{prefix}.{role}.calls"] = counts.calls
        out[f"{prefix}.{role}.model_calls"] = counts.model_calls
        out[f"{prefix}.{role}.tokens"] = tokens
        if role == EMBEDDINGS_ROLE:
            out[f"{prefix}.{role}.inputs"] = counts.inputs
    out.update(
        {
            f"{prefix}.calls": total.calls,
            f"{prefix}.model_calls": total.model_calls,
            f"{prefix}.cached_calls": total.cached_calls,
            f"{prefix}.prompt_tokens": total.prompt_tokens,
            f"{prefix}.completion_tokens": total.completion_tokens,
            f"{prefix}.cached_tokens": total.cached_tokens,
            f"{prefix}.tokens": total.prompt_tokens + total.completion_tokens,
            f"{prefix}.failures": total.failures,
            f"{prefix}.cost": round(cost, 6),
            f"{prefix}.latency_mean_s": total.latency_s / total.model_calls if total.model_calls else 0.0,
            f"{prefix}.peak_in_flight": peak_in_flight,
        }
    )
    return out


LIMIT_TOTALS = ("throttled", "retries", "retry_wait_s", "retry_after_waits", "retry_after_s", "slot_wait_s", "rate_wait_s")
"""The ``limits.*`` figures that add up over endpoints and stages."""


def limit_metrics(stats: Iterable[LimiterStats], *, prefix: str = "limits") -> dict[str, float]:
    """The endpoint limiters' figures as metrics: ``limits.<endpoint>.<figure>`` per endpoint
    (see :class:`~personae.llm.limits.LimiterStats`; the endpoint as letters, digits and dashes,
    its API key only as a fingerprint) and over all endpoints ``limits.throttled``, ``limits.retries``,
    the waits (summed) and ``limits.peak_in_flight`` (the largest)."""
    merged = merge_limiter_stats(stats)
    out: dict[str, float] = {}
    for endpoint, one in merged.items():
        label = endpoint_label(endpoint)
        for name, value in one.model_dump(exclude={"endpoint", "instance"}).items():
            out[f"{prefix}.{label}.{name}"] = round(value, 6) if isinstance(value, float) else value
    if merged:
        for name in LIMIT_TOTALS:
            out[f"{prefix}.{name}"] = round(sum(getattr(one, name) for one in merged.values()), 6)
        out[f"{prefix}.peak_in_flight"] = max(one.peak_in_flight for one in merged.values())
    return out


def usage_to_dict(usage: UsageTracker) -> dict[str, dict[str, float]]:
    """Per-role counters as plain data (picklable, JSON-able), for shipping between tasks."""
    return {role: dataclasses.asdict(counts) for role, counts in usage.roles.items()}


def merge_usage(parts: Iterable[Mapping[str, Mapping[str, float]]]) -> UsageTracker:
    """One tracker summing the per-role counters of ``parts`` (from :func:`usage_to_dict`)."""
    merged = UsageTracker()
    for part in parts:
        for role, counts in part.items():
            into = merged.roles.setdefault(role, RoleUsage())
            for name, value in counts.items():
                setattr(into, name, getattr(into, name) + value)
    return merged


def _metric_value(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    return None


# ---- runs -------------------------------------------------------------------
@dataclass
class TrackedRun:
    """A run being tracked (``run_id`` is ``None`` when tracking is off; every method is then a no-op)."""

    tracker: Tracker
    run_id: str | None

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log params (scrubbed of secrets)."""
        self.tracker.log_params(self.run_id, params)

    def log_metrics(self, metrics: Mapping[str, Any], *, step: int = 0) -> None:
        """Log numeric metrics; non-numeric values are skipped."""
        self.tracker.log_metrics(self.run_id, metrics, step=step)

    def log_artifacts(self, paths: Iterable[str | os.PathLike], artifact_path: str | None = None) -> None:
        """Upload the files in ``paths`` that exist."""
        self.tracker.log_artifacts(self.run_id, paths, artifact_path=artifact_path)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Set string tags."""
        self.tracker.set_tags(self.run_id, tags)


class Tracker:
    """MLflow runs of one experiment, through an explicit client (no global active run).

    Args:
        settings: where the tracking store (``mlflow_tracking_uri``) and, for a local
            store, the artifacts (``mlflow_artifact_root``) live.
        experiment_name: the MLflow experiment (the personae experiment's name).
        enabled: ``False`` makes every call a no-op (``personae run --no-track``).
    """

    def __init__(self, settings: Settings, experiment_name: str, *, enabled: bool = True) -> None:
        self.settings = settings
        self.experiment_name = experiment_name
        self.enabled = enabled
        self._secrets = secret_values(settings)
        self._client = None
        self._experiment_id: str | None = None
        self._stale_checked = False

    # ---- client -------------------------------------------------------------
    @property
    def tracking_uri(self) -> str:
        return self.settings.mlflow_tracking_uri

    def client(self):
        """The ``MlflowClient`` (created on first use)."""
        if self._client is None:
            os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
            from mlflow import MlflowClient

            uri = self.tracking_uri
            if uri.startswith("sqlite:///"):
                Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
            self._client = MlflowClient(tracking_uri=uri)
        return self._client

    def experiment_id(self, *, create: bool = True) -> str | None:
        """The MLflow experiment id, created (with a local artifact location) if needed."""
        if self._experiment_id is not None:
            return self._experiment_id
        from mlflow.exceptions import MlflowException

        client = self.client()
        found = client.get_experiment_by_name(self.experiment_name)
        if found is None and create:
            location = None
            if self.tracking_uri.startswith(("sqlite:", "file:")) or "://" not in self.tracking_uri:
                root = self.settings.mlflow_artifact_root / self.experiment_name
                root.mkdir(parents=True, exist_ok=True)
                location = root.as_uri()
            try:
                client.create_experiment(self.experiment_name, artifact_location=location)
            except MlflowException:  # another process created it first
                pass
            found = client.get_experiment_by_name(self.experiment_name)
        if found is None:
            return None
        if found.lifecycle_stage == "deleted" and create:
            client.restore_experiment(found.experiment_id)
        self._experiment_id = found.experiment_id
        return self._experiment_id

    # ---- runs ---------------------------------------------------------------
    def start_run(self, name: str, *, parent_run_id: str | None = None, tags: Mapping[str, Any] | None = None) -> TrackedRun:
        """Start a run (a child of ``parent_run_id`` if given), tagged with the process that owns it.

        The first run a tracker starts first ends the experiment's stale runs
        (:meth:`end_stale_runs`).
        """
        if not self.enabled:
            return TrackedRun(self, None)
        owner = ProcessOwner.current()
        experiment_id = self.experiment_id()
        if not self._stale_checked:
            self._stale_checked = True
            self.end_stale_runs(owner)
        all_tags = {**owner.tags(), **{k: str(v) for k, v in (tags or {}).items() if v is not None}}
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        run = self.client().create_run(experiment_id, run_name=name, tags=all_tags)
        log.info("MLflow run %s (%s) started in %s", run.info.run_id, name, self.experiment_name)
        return TrackedRun(self, run.info.run_id)

    def end_run(self, run_id: str | None, *, status: str = "FINISHED") -> None:
        """Mark a run FINISHED, FAILED or KILLED."""
        if self.enabled and run_id:
            self.client().set_terminated(run_id, status=status)

    def end_stale_runs(self, here: ProcessOwner | None = None) -> list[str]:
        """Mark KILLED the experiment's RUNNING runs whose owning process has ended; return their ids.

        A process killed mid-run (SIGKILL, OOM, a closed terminal) never ends its run. Only
        runs whose recorded owner ran on this host, boot and pid namespace are judged, and
        only a free, zombie or reused pid counts as ended (see :class:`ProcessOwner`), so a
        live run of another process, here or elsewhere, is never touched. Failing to read
        or update the store is logged, never fatal: it must not stop a new run.
        """
        if not self.enabled:
            return []
        from mlflow.exceptions import MlflowException

        here = here or ProcessOwner.current()
        ended: list[str] = []
        try:
            experiment_id = self.experiment_id(create=False)
            if experiment_id is None:
                return []
            client = self.client()
            running, token = [], None
            while True:  # collect every page first: ending runs changes what the filter matches
                page = client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=1000, page_token=token)
                running.extend(page)
                token = page.token
                if not token:
                    break
            for run in running:
                owner = ProcessOwner.from_tags(run.data.tags)
                if owner is None or not owner.has_ended(here):
                    continue
                client.set_tag(run.info.run_id, "personae.ended_by", f"process {here.pid} on {here.host}: the run's process {owner.pid} had ended")
                self.end_run(run.info.run_id, status="KILLED")
                ended.append(run.info.run_id)
        except MlflowException as exc:
            log.warning("could not check %s for runs left RUNNING by killed processes: %s", self.experiment_name, exc)
        if ended:
            log.warning("marked %d MLflow run(s) of %s KILLED: their process had ended without ending them (%s)", len(ended), self.experiment_name, ", ".join(ended))
        return ended

    @contextmanager
    def run(self, name: str, *, parent_run_id: str | None = None, tags: Mapping[str, Any] | None = None) -> Iterator[TrackedRun]:
        """A run that ends FINISHED, or FAILED if the block raises."""
        tracked = self.start_run(name, parent_run_id=parent_run_id, tags=tags)
        try:
            yield tracked
        except BaseException:
            self.end_run(tracked.run_id, status="FAILED")
            raise
        self.end_run(tracked.run_id)

    # ---- logging ------------------------------------------------------------
    def log_params(self, run_id: str | None, params: Mapping[str, Any]) -> None:
        """Log ``params`` scrubbed of secrets, in MLflow-sized batches."""
        if not (self.enabled and run_id):
            return
        from mlflow.entities import Param

        clean = scrub_params(params, secrets=self._secrets)
        items = [Param(k, v) for k, v in sorted(clean.items())]
        for start in range(0, len(items), _PARAMS_PER_BATCH):
            self.client().log_batch(run_id, params=items[start : start + _PARAMS_PER_BATCH])

    def log_metrics(self, run_id: str | None, metrics: Mapping[str, Any], *, step: int = 0) -> None:
        """Log the finite numeric values of ``metrics``."""
        if not (self.enabled and run_id):
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = []
        for key, value in sorted(metrics.items()):
            number = _metric_value(value)
            if number is not None:
                items.append(Metric(_METRIC_KEY.sub("_", key)[:_MAX_KEY_LEN], number, now, step))
        for start in range(0, len(items), _METRICS_PER_BATCH):
            self.client().log_batch(run_id, metrics=items[start : start + _METRICS_PER_BATCH])

    def set_tags(self, run_id: str | None, tags: Mapping[str, Any]) -> None:
        """Set tags (values scrubbed like params)."""
        if not (self.enabled and run_id):
            return
        from mlflow.entities import RunTag

        clean = scrub_params({k: v for k, v in tags.items() if v is not None}, secrets=self._secrets)
        self.client().log_batch(run_id, tags=[RunTag(k, v) for k, v in clean.items()])

    def log_artifacts(self, run_id: str | None, paths: Iterable[str | os.PathLike], *, artifact_path: str | None = None) -> None:
        """Upload every existing file in ``paths``."""
        if not (self.enabled and run_id):
            return
        for path in paths:
            path = Path(path)
            if path.is_file():
                self.client().log_artifact(run_id, str(path), artifact_path=artifact_path)
            elif path.is_dir():
                self.client().log_artifacts(run_id, str(path), artifact_path=artifact_path)


def enable_langgraph_tracing(settings: Settings, experiment_name: str) -> bool:
    """Trace LangGraph runs into MLflow via ``mlflow.langchain.autolog`` (process-wide).

    Returns ``False`` (and logs why) when autologging is unavailable, so tracing
    never blocks a run.
    """
    try:
        import mlflow

        mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
        mlflow.set_experiment(experiment_name)
        mlflow.langchain.autolog(log_traces=True, silent=True)
    except Exception as exc:  # optional: missing integration or an incompatible langchain
        log.warning("LangGraph tracing through MLflow is unavailable: %s", exc)
        return False
    return True


# ---- reading runs back ----------------------------------------------------------
@dataclass
class RunSummary:
    """A pipeline run as read back from MLflow."""

    run_id: str
    name: str
    status: str
    start_time: int
    metrics: dict[str, float]
    params: dict[str, str]
    tags: dict[str, str]


def _run_summary(run: Any) -> RunSummary:
    info, data = run.info, run.data
    return RunSummary(
        run_id=info.run_id, name=info.run_name or info.run_id[:8], status=info.status, start_time=info.start_time or 0,
        metrics=dict(data.metrics), params=dict(data.params), tags=dict(data.tags),
    )


def pipeline_runs(settings: Settings, experiment_name: str, *, limit: int = 10) -> list[RunSummary]:
    """The latest ``limit`` pipeline (parent) runs of an experiment, newest first."""
    tracker = Tracker(settings, experiment_name)
    experiment_id = tracker.experiment_id(create=False)
    if experiment_id is None:
        return []
    runs = tracker.client().search_runs(
        [experiment_id],
        filter_string="tags.`personae.kind` = 'pipeline'",
        order_by=["attributes.start_time DESC"],
        max_results=limit,
    )
    return [_run_summary(r) for r in runs]


def child_runs(settings: Settings, experiment_name: str, parent_run_id: str) -> list[RunSummary]:
    """The stage runs of one pipeline run."""
    tracker = Tracker(settings, experiment_name)
    experiment_id = tracker.experiment_id(create=False)
    if experiment_id is None:
        return []
    runs = tracker.client().search_runs([experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}'")
    return [_run_summary(r) for r in runs]
