"""Shared pieces of the benchmarks (not a test module, not part of the library).

Fixtures built here are deliberately plain and deterministic: synthetic personas,
one support scenario, graph configs whose termination is "max turns only" unless a
benchmark says otherwise, the local OpenAI-compatible test server started in its
own process (so it does not share the client's GIL), and result files under
``bench/results``.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"

if str(ROOT) not in sys.path:  # run as `python bench/x.py` from anywhere
    sys.path.insert(0, str(ROOT))

from personae.graphs.config import GraphConfig, MemoryConfig  # noqa: E402
from personae.llm.base import LLMRequest, ResponseFormat  # noqa: E402
from personae.llm.testing import FakeLLM  # noqa: E402
from personae.models import Persona, Role, Scenario  # noqa: E402
from personae.nodes.critic import CriticConfig  # noqa: E402
from personae.nodes.termination import TerminationConfig  # noqa: E402

_OCCUPATIONS = ("teacher", "nurse", "plumber", "accountant", "student", "retired engineer", "chef", "farmer")
_STYLES = ("short and direct", "chatty, with many asides", "formal and careful", "warm and informal")


def make_personas(n: int) -> list[Persona]:
    """``n`` distinct, deterministic personas of realistic prompt size."""
    return [
        Persona(
            name=f"Person {i}",
            age=20 + i % 60,
            occupation=_OCCUPATIONS[i % len(_OCCUPATIONS)],
            location=("Leeds", "Lyon", "Porto", "Graz")[i % 4],
            speaking_style=_STYLES[i % len(_STYLES)],
            values=["honesty", "family", "thrift"][: 1 + i % 3],
            goals=["get good value", "be treated fairly"],
            description=f"Person {i} is a {_OCCUPATIONS[i % len(_OCCUPATIONS)]} who likes clear answers and dislikes waiting.",
        )
        for i in range(n)
    ]


def make_scenario(max_turns: int, *, roles: int = 2) -> Scenario:
    """A customer-support scenario with ``roles`` roles."""
    names = ["client", "responder", "observer", "expert", "manager"][:roles]
    return Scenario(
        name="Router support",
        setting="A phone call to an internet provider about a router that keeps dropping the connection.",
        roles=[Role(name=r, goal=f"act as the {r} and reach a solution") for r in names],
        max_turns=max_turns,
        min_turns=2,
    )


def max_turns_only(max_turns: int) -> TerminationConfig:
    """Termination by max turns only: no closing, repetition, empty or LLM-detector stop."""
    return TerminationConfig(max_turns=max_turns, closing=False, repetition=False, empty=False, detector=False)


def graph_config(
    kind: str = "dyad",
    *,
    max_turns: int = 10,
    critic: bool = False,
    projection: str = "ecp",
    window: int | None = 12,
    memory: bool = False,
    group_size: int = 5,
    termination: TerminationConfig | None = None,
    turn_policy: str | None = None,
) -> GraphConfig:
    """A graph config for the benchmarks (critic off and max-turns termination unless asked)."""
    return GraphConfig(
        kind=kind,
        projection=projection,
        window=window,
        group_size=group_size,
        turn_policy=turn_policy,
        critic=CriticConfig(enabled=critic),
        termination=termination or max_turns_only(max_turns),
        memory=MemoryConfig(enabled=memory),
    )


class AgreeableFakeLLM(FakeLLM):
    """FakeLLM whose critic always accepts and whose end detector (alone or folded into the critic's call) never ends the
    conversation, so a benchmark conversation runs its full length with every
    model call of a real run (one critic and, every few turns, one detector call)."""

    async def complete(self, request: LLMRequest):  # noqa: D102
        if request.response_format is not ResponseFormat.TEXT and request.schema_name in ("CriticJudgement", "CriticJudgementWithEnd", "EndDetection"):
            self.requests.append(request)
            accept = {"in_character": True, "role_consistent": True, "follows_constraints": True, "issues": [], "feedback": ""}
            if request.schema_name == "CriticJudgement":
                text = json.dumps(accept)
            elif request.schema_name == "CriticJudgementWithEnd":  # the end question folded into the critic's call
                text = json.dumps({**accept, "ended": False, "end_reason": "still going"})
            else:
                text = json.dumps({"ended": False, "reason": "still going"})
            return self._response(request, text)
        return await super().complete(request)


# ---- the test server in its own process ------------------------------------------
@contextlib.contextmanager
def test_server_process(latency_s: float, *, seed: int = 0, extra: tuple[str, ...] = ()) -> Iterator[tuple[str, int]]:
    """Start ``python -m personae.testing.server`` on a free port (``extra``: more options); yield ``(base_url, pid)``."""
    cmd = [sys.executable, "-m", "personae.testing.server", "--port", "0", "--latency", str(latency_s), "--seed", str(seed), *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        line = proc.stdout.readline().strip() if proc.stdout else ""
        if not line.startswith("http"):
            err = proc.stderr.read() if proc.stderr else ""
            raise RuntimeError(f"test server did not start: {line!r} {err[-2000:]}")
        yield line, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


# ---- memory ------------------------------------------------------------------------
def rss_mb() -> float:
    """Current resident set size of this process in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def peak_rss_mb() -> float:
    """Peak resident set size (VmHWM) of this process in MiB since start or :func:`reset_peak_rss`."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux ``clear_refs`` 5); False where not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


# ---- results -----------------------------------------------------------------------
def write_result(name: str, payload: dict[str, Any]) -> Path:
    """Write ``bench/results/<name>.json`` (with the time and Python version) and return its path."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / f"{name}.json"
    record = {"benchmark": name, "written_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "python": platform.python_version(), **payload}
    out.write_text(json.dumps(record, indent=2, sort_keys=False) + "\n")
    return out


def machine() -> dict[str, Any]:
    """CPU model, cores, memory and load of this machine (from /proc, nproc and free)."""
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = ""
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        mem = subprocess.run(["free", "-h"], capture_output=True, text=True, check=True).stdout.strip()
    nproc = ""
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        nproc = subprocess.run(["nproc"], capture_output=True, text=True, check=True).stdout.strip()
    return {
        "cpu": cpu,
        "nproc": nproc or str(os.cpu_count()),
        "memory": mem,
        "loadavg": os.getloadavg(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def log(msg: str) -> None:
    """Progress line on stderr (benchmarks are scripts; stdout carries the result summary)."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)
