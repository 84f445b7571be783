"""Run many ``personae`` command lines as separate processes, cheaply (a test helper).

Starting ``personae`` costs seconds of imports (Prefect, MLflow, scipy) per process,
which on a shared 2-core machine would dominate tests that run dozens of command lines.
:func:`run_cli_cases` starts ONE driver process that imports personae once, then forks
a fresh child per case. Each child gets its own working directory, environment, argv
and stdout/stderr files, runs ``personae.cli.main`` and exits; an exception escaping
``main`` is printed as the interpreter would (a traceback on stderr, exit code 1). With
``PERSONAE_TEST_KILL`` in a case's environment, the child arms ``_kill_hook`` first.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CliCase", "CliOutcome", "run_cli_cases"]

TESTS_DIR = Path(__file__).resolve().parent

_DRIVER = r"""
import json, os, signal, sys, time, traceback
from personae.cli import main
# the imports the commands make, paid once here instead of once per case
import personae.experiment, personae.population, personae.graphs, personae.evaluation, personae.jsonl
import personae.flows.pipeline, personae.tracking, mlflow

cases = json.loads(sys.stdin.read())
base_env = dict(os.environ)
results = {}
for case in cases:
    pid = os.fork()
    if pid == 0:
        code = 70
        try:
            os.chdir(case["cwd"])
            os.environ.clear()
            os.environ.update({**base_env, **case["env"]})
            for fd, path in ((1, case["stdout"]), (2, case["stderr"])):
                target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(target, fd)
                os.close(target)
            if os.environ.get("PERSONAE_TEST_KILL"):
                import _kill_hook
                _kill_hook.install(os.environ["PERSONAE_TEST_KILL"])
            sys.argv = ["personae", *case["argv"]]
            try:
                main()
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            except BaseException:
                traceback.print_exc()  # what the interpreter prints for an uncaught exception
                code = 1
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)
    started = time.monotonic()
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            results[case["id"]] = {"code": os.waitstatus_to_exitcode(status), "timeout": False, "seconds": time.monotonic() - started}
            break
        if time.monotonic() - started > case["timeout"]:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            results[case["id"]] = {"code": None, "timeout": True, "seconds": time.monotonic() - started}
            break
        time.sleep(0.02)
print(json.dumps(results))
"""


@dataclass
class CliCase:
    """One command line: ``personae ARGV`` in ``cwd`` with ``env`` added to the environment."""

    id: str
    argv: list[str]
    cwd: Path
    env: dict[str, str]
    timeout_s: float = 60.0


@dataclass
class CliOutcome:
    """How a case ended: exit code (negative = killed by that signal; ``None`` = timed out)."""

    code: int | None
    timeout: bool
    seconds: float
    stdout: str
    stderr: str


def run_cli_cases(cases: list[CliCase], logs: Path, *, env: dict[str, str] | None = None) -> dict[str, CliOutcome]:
    """Run ``cases`` one after another, each in a forked child of one driver process."""
    base = dict(os.environ if env is None else env)
    base = {k: v for k, v in base.items() if not k.startswith(("PERSONAE_", "OPENAI_"))}
    base["PYTHONPATH"] = os.pathsep.join([str(TESTS_DIR), str(TESTS_DIR.parent), base.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    specs = [
        {"id": c.id, "argv": c.argv, "cwd": str(c.cwd), "env": c.env, "timeout": c.timeout_s,
         "stdout": str(logs / f"{c.id}.out"), "stderr": str(logs / f"{c.id}.err")}
        for c in cases
    ]
    budget = sum(c.timeout_s for c in cases) + 120
    proc = subprocess.run([sys.executable, "-c", _DRIVER], input=json.dumps(specs), capture_output=True, text=True, env=base, timeout=budget)
    if proc.returncode != 0:
        raise RuntimeError(f"the CLI driver failed ({proc.returncode}): {proc.stderr[-3000:]}")
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    out: dict[str, CliOutcome] = {}
    for c in cases:
        r = results[c.id]
        read = lambda suffix: (logs / f"{c.id}.{suffix}").read_text(encoding="utf-8", errors="replace")  # noqa: E731
        out[c.id] = CliOutcome(r["code"], r["timeout"], r["seconds"], read("out"), read("err"))
    return out
