"""``personae doctor``: which model, embedder and stores are in use, and whether each works.

Every check really exercises its part (one tiny model call, one embedding, opening
Qdrant and the MLflow store) and reports instead of raising; the command exits 1
if any check failed. Shown values come from :meth:`Settings.public_dict`, so
secrets appear only as "set"/"not set".
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import typer
from pydantic import BaseModel
from rich.console import Console
from rich.table import Table
from rich.text import Text

from personae.paths import require_writable
from personae.settings import Settings

__all__ = ["CheckResult", "run_checks", "register"]

_STATUS_STYLE = {"ok": "green", "FAIL": "bold red", "skipped": "yellow", "info": "cyan"}


class CheckResult(BaseModel):
    """One row of the doctor's report."""

    part: str
    in_use: str
    status: Literal["ok", "FAIL", "skipped", "info"]
    detail: str = ""

    @property
    def failed(self) -> bool:
        return self.status == "FAIL"


def _attempt(part: str, in_use: str, check: Callable[[], str]) -> CheckResult:
    """Run ``check``; its return value is the detail of a passing row, an exception fails the row."""
    try:
        return CheckResult(part=part, in_use=in_use, status="ok", detail=check())
    except Exception as exc:  # the doctor reports every failure instead of stopping
        return CheckResult(part=part, in_use=in_use, status="FAIL", detail=f"{type(exc).__name__}: {exc}")


# ---- individual checks ----------------------------------------------------------
def check_model(settings: Settings, public: dict[str, Any], *, skip: bool, timeout_s: float) -> CheckResult:
    """Build the configured provider and, unless ``skip``, make one tiny call through a gateway."""
    from personae.llm import Gateway, build_provider

    try:
        provider = build_provider(settings)
    except Exception as exc:
        return CheckResult(part="model", in_use=_model_label(public), status="FAIL", detail=f"{type(exc).__name__}: {exc}")
    in_use = f"{provider.provider}:{provider.model}"
    if public.get("llm_base_url"):
        in_use += (f" @ {public['llm_base_url']} (api key {public.get('llm_api_key') or 'not set'}; "
                   f"timeout {settings.llm_timeout_s:g}s per call, PERSONAE_LLM_TIMEOUT_S)")
    if skip:
        asyncio.run(provider.aclose())
        return CheckResult(part="model", in_use=in_use, status="skipped", detail="--skip-model")

    async def call() -> str:
        gateway = Gateway(provider, cache=None, max_concurrency=1, max_retries=0)
        try:
            started = time.perf_counter()
            try:
                reply = await asyncio.wait_for(
                    gateway.text([{"role": "user", "content": "Reply with the word OK."}], temperature=0.0, max_tokens=8, seed=0),
                    timeout=timeout_s,
                )
            except TimeoutError:
                raise TimeoutError(f"no reply within {timeout_s:g}s (--timeout)") from None
            took = time.perf_counter() - started
        finally:
            await gateway.aclose()
        if not reply.text.strip():
            raise RuntimeError("the model returned an empty reply")
        return f"replied in {took:.2f}s ({reply.usage.completion_tokens} tokens)"

    return _attempt("model", in_use, lambda: asyncio.run(call()))


def _model_label(public: dict[str, Any]) -> str:
    provider = public.get("llm_provider") or ("openai" if public.get("llm_base_url") or public.get("llm_api_key") else "local")
    return f"{provider}:{public.get('llm_model') or '?'}"


def check_embedder(settings: Settings) -> CheckResult:
    """Build the configured embedder and embed one sentence."""
    from personae.embeddings import build_embedder

    try:
        embedder = build_embedder(settings)
    except Exception as exc:
        return CheckResult(part="embedder", in_use=settings.embeddings_provider or "local", status="FAIL", detail=f"{type(exc).__name__}: {exc}")

    def embed_one() -> str:
        started = time.perf_counter()
        vectors = embedder.embed(["The doctor checks that embeddings work."])
        took = time.perf_counter() - started
        if vectors.shape != (1, embedder.dim):
            raise RuntimeError(f"expected shape (1, {embedder.dim}), got {vectors.shape}")
        norm = float((vectors[0] ** 2).sum() ** 0.5)
        if abs(norm - 1.0) > 1e-3:
            raise RuntimeError(f"vector is not normalised (norm {norm:.4f})")
        return f"{embedder.dim}-dim, one sentence in {took * 1000:.0f} ms"

    return _attempt("embedder", embedder.name, embed_one)


def check_qdrant(settings: Settings) -> CheckResult:
    """Open Qdrant (server URL or local path), list collections, close."""
    from personae.memory.qdrant import open_qdrant

    in_use = f"server {settings.qdrant_url}" if settings.qdrant_url else f"local {settings.qdrant_path}"

    def open_close() -> str:
        with open_qdrant(settings) as handle:
            collections = handle.client.get_collections().collections
        return f"{len(collections)} collection(s)"

    return _attempt("qdrant", in_use, open_close)


@contextlib.contextmanager
def _env(**values: str) -> Iterator[None]:
    """Environment variables set for the duration of the block, then restored."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


@contextlib.contextmanager
def _quiet(*loggers: str) -> Iterator[None]:
    """Loggers raised to WARNING for the block (e.g. migrations of a throwaway store)."""
    saved = {name: logging.getLogger(name).level for name in loggers}
    for name in loggers:
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


def _search_experiments(uri: str) -> int:
    from mlflow.tracking import MlflowClient

    with _env(MLFLOW_HTTP_REQUEST_TIMEOUT="10", MLFLOW_HTTP_REQUEST_MAX_RETRIES="0"):
        return len(MlflowClient(tracking_uri=uri).search_experiments(max_results=50))


def check_mlflow(settings: Settings) -> CheckResult:
    """Open the MLflow tracking store.

    An existing SQLite store is opened where it is; a missing one is not created
    by the doctor: a throwaway store in a temp dir proves the backend works and
    the target directory is checked for writability.
    """
    uri = settings.mlflow_tracking_uri

    def open_store() -> str:
        import mlflow  # noqa: F401  (imported first: it configures its loggers on import)

        if uri.startswith("sqlite:///"):
            db = Path(uri[len("sqlite:///") :])
            if db.exists():
                return f"{_search_experiments(uri)} experiment(s)"
            require_writable(db, kind="file")
            with tempfile.TemporaryDirectory(prefix="personae-doctor-") as tmp, _quiet("mlflow", "alembic"):
                _search_experiments(f"sqlite:///{Path(tmp) / 'mlflow.db'}")
            return "store not created yet (made on first run); SQLite backend works"
        return f"{_search_experiments(uri)} experiment(s)"

    return _attempt("mlflow", uri, open_store)


def check_prefect(settings: Settings) -> CheckResult:
    """Report the Prefect API in use and the installed version (no server is contacted)."""
    in_use = settings.prefect_api_url or "ephemeral (in-process API, started on demand)"

    def version() -> str:
        return f"prefect {importlib.metadata.version('prefect')} installed"

    result = _attempt("prefect", in_use, version)
    return result if result.failed else result.model_copy(update={"status": "info"})


def check_path(part: str, path: Path, *, kind: Literal["file", "dir"] = "file", enabled: bool = True) -> CheckResult:
    """Whether a store file (or the data dir) exists or can be created where settings put it."""
    if not enabled:
        return CheckResult(part=part, in_use=str(path), status="info", detail="disabled")

    def probe() -> str:
        existed = path.exists()
        require_writable(path, kind=kind)
        if not existed:
            return "not created yet (writable)"
        return f"exists ({path.stat().st_size / 1e6:.1f} MB)" if path.is_file() else "exists (writable)"

    return _attempt(part, str(path), probe)


def run_checks(settings: Settings, *, skip_model: bool = False, model_timeout_s: float = 120.0) -> list[CheckResult]:
    """Every doctor check, in display order."""
    public = settings.public_dict()
    return [
        check_path("data dir", settings.root, kind="dir"),
        check_model(settings, public, skip=skip_model, timeout_s=model_timeout_s),
        check_embedder(settings),
        check_qdrant(settings),
        check_mlflow(settings),
        check_prefect(settings),
        check_path("llm cache", settings.cache_path, enabled=settings.cache_enabled),
        check_path("checkpoints", settings.checkpoint_path),
    ]


def render(results: list[CheckResult], console: Console) -> None:
    """Print the results as a table."""
    table = Table(title="personae doctor", show_lines=False)
    table.add_column("part", style="bold")
    table.add_column("in use", overflow="fold")
    table.add_column("status", no_wrap=True)
    table.add_column("detail", overflow="fold")
    for r in results:
        table.add_row(r.part, Text(r.in_use), Text(r.status, style=_STATUS_STYLE.get(r.status, "")), Text(r.detail))
    console.print(table)


def register(app: typer.Typer) -> None:
    """Add ``personae doctor`` to ``app``."""

    @app.command()
    def doctor(
        skip_model: bool = typer.Option(False, "--skip-model", help="Do not call the model."),
        timeout: float = typer.Option(120.0, "--timeout", min=1.0, help="Seconds to wait for the model call (an HTTP endpoint's call also stops at PERSONAE_LLM_TIMEOUT_S)."),
        config: Path | None = typer.Option(None, "--config", "-c", help="Settings file (default: PERSONAE_CONFIG or ./personae.yaml)."),
    ) -> None:
        """Show which model, embedder and stores personae uses, and check that each works."""
        settings = Settings.load(config)
        console = Console()
        results = run_checks(settings, skip_model=skip_model, model_timeout_s=timeout)
        render(results, console)
        failed = [r.part for r in results if r.failed]
        if failed:
            console.print(f"[bold red]{len(failed)} check(s) failed:[/] {', '.join(failed)}")
            raise typer.Exit(1)
        console.print("[green]all checks passed[/]")
