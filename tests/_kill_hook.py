"""SIGKILL the current process at a chosen point of a pipeline (a test helper, not a test module).

The kill tests run ``personae`` in a child process (``_fork_cli``) that calls
:func:`install` with ``PERSONAE_TEST_KILL``, which names the point:

* ``model:ROLE[,ROLE...]:N`` — at the N-th model call (through the gateway) for one of these roles
  (``validator``/``crafter`` = generation, ``persona`` = mid-conversation, ``judge_a`` = evaluation);
* ``append:N`` — during the N-th append of a finished conversation: half the line is written,
  then the process dies (a torn JSONL line);
* ``artifact:NAME`` — when MLflow is asked to log the artifact file NAME (during MLflow logging);
* ``written:N`` — at the first model call after N finished conversations were appended whole: the
  conversation making that call is mid-way (its checkpoint is written), N others are done.

Before dying it writes what it hit to ``PERSONAE_TEST_KILL_MARK``, so a test can tell a kill at
the chosen point from a crash anywhere else. Nothing here is imported by personae itself.
"""

from __future__ import annotations

import fcntl
import functools
import os
import signal
import threading
from pathlib import Path

_lock = threading.Lock()


def _die(what: str) -> None:
    mark = os.environ.get("PERSONAE_TEST_KILL_MARK")
    if mark:
        Path(mark).write_text(what, encoding="utf-8")
    os.kill(os.getpid(), signal.SIGKILL)


def _counter(limit: int):
    count = 0

    def hit() -> bool:
        nonlocal count
        with _lock:
            count += 1
            return count == limit

    return hit


def _kill_at_model_call(roles: set[str], limit: int) -> None:
    from personae.llm.gateway import Gateway

    original = Gateway.complete
    hit = _counter(limit)

    @functools.wraps(original)
    async def complete(self, request, *, role: str = "default", **options):
        if role in roles and hit():
            _die(f"model call {limit} for {role}")
        return await original(self, request, role=role, **options)

    Gateway.complete = complete


def _kill_mid_append(limit: int) -> None:
    import personae.graphs.runner as runner
    from personae.jsonl import _encode

    original = runner.append_jsonl
    hit = _counter(limit)

    def append_jsonl(path, records):
        records = list(records)
        if hit():
            payload = ("\n".join(_encode(r) for r in records) + "\n").encode("utf-8")
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            fcntl.flock(fd, fcntl.LOCK_EX)  # as the real append does: die inside its locked write
            os.write(fd, payload[: len(payload) // 2])
            os.fsync(fd)
            _die(f"append {limit}: wrote {len(payload) // 2} of {len(payload)} bytes")
        return original(path, records)

    runner.append_jsonl = append_jsonl


def _kill_after_written(limit: int) -> None:
    import personae.graphs.runner as runner
    from personae.llm.gateway import Gateway

    original_append, original_complete = runner.append_jsonl, Gateway.complete
    written = 0

    def append_jsonl(path, records):
        nonlocal written
        records = list(records)
        result = original_append(path, records)
        with _lock:
            written += len(records)
        return result

    @functools.wraps(original_complete)
    async def complete(self, request, *, role: str = "default", **options):
        with _lock:
            armed = written >= limit
        if armed:
            _die(f"model call ({role}) after {limit} conversations were written")
        return await original_complete(self, request, role=role, **options)

    runner.append_jsonl = append_jsonl
    Gateway.complete = complete


def _kill_at_artifact(name: str) -> None:
    from mlflow import MlflowClient

    original = MlflowClient.log_artifact

    @functools.wraps(original)
    def log_artifact(self, run_id, local_path, artifact_path=None):
        if Path(local_path).name == name:
            _die(f"logging artifact {name}")
        return original(self, run_id, local_path, artifact_path)

    MlflowClient.log_artifact = log_artifact


def install(spec: str) -> None:
    """Arm the kill described by ``spec`` (see the module docs)."""
    kind, _, rest = spec.partition(":")
    if kind == "model":
        roles, _, n = rest.rpartition(":")
        _kill_at_model_call(set(roles.split(",")), int(n))
    elif kind == "append":
        _kill_mid_append(int(rest))
    elif kind == "artifact":
        _kill_at_artifact(rest)
    elif kind == "written":
        _kill_after_written(int(rest))
    else:
        raise ValueError(f"unknown kill point {spec!r}")
