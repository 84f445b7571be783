"""The scorecard's transcript viewer in a real headless browser (Debian's chromium).

Skipped when no chromium is installed (README set-up: ``apt-get install -y chromium``;
.ci/run installs it). Chromium prints the page's console messages and uncaught
exceptions to stderr as ``INFO:CONSOLE`` lines with ``--enable-logging=stderr``; the
DOM is dumped after the page's scripts ran (``--dump-dom``). The conversations are
the shipped hand-written reference dialogues (not collected human data) and echo loops.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import pytest
from test_evaluation_reference import echo_loop

from personae.evaluation import EvaluationConfig, evaluate_run
from personae.evaluation.validation import reference_dialogues
from personae.evaluation.viewer import transcript_view

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (optional: apt-get install -y chromium)")
HANG_GUARD_S = 600  # only catches a hung browser; never a measure of speed
N_ECHO = 8


class _Dom(HTMLParser):
    """The viewer's conversation and turn elements, with whether each is hidden."""

    def __init__(self) -> None:
        super().__init__()
        self.conversations: list[tuple[str, bool]] = []
        self.turns: list[bool] = []
        self.count = ""
        self._in_count = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        classes = (a.get("class") or "").split()
        if tag == "details" and "conv" in classes:
            self.conversations.append((a.get("data-cid") or "", "hidden" in a))
        elif tag == "div" and "turn" in classes:
            self.turns.append("hidden" in a)
        self._in_count = a.get("id") == "tv-count"

    def handle_data(self, data: str) -> None:
        if self._in_count:
            self.count += data
            self._in_count = False


def _load(page: Path, fragment: str, tmp_path: Path) -> tuple[_Dom, list[str]]:
    """Open ``page#fragment`` headless; return the DOM after its scripts ran and the page's console lines."""
    profile = tempfile.mkdtemp(prefix="chromium-profile-", dir=tmp_path)
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
           "--disable-sync", "--no-first-run", f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", "--dump-dom",
           page.as_uri() + (f"#{fragment}" if fragment else "")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=HANG_GUARD_S, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    dom = _Dom()
    dom.feed(done.stdout)
    console = [line for line in done.stderr.splitlines() if re.search(r":CONSOLE[:(]", line)]
    return dom, console


def test_the_console_check_catches_a_script_error(tmp_path):
    page = tmp_path / "broken.html"
    page.write_text("<!DOCTYPE html><html><body><script>null.x;</script></body></html>")
    _, console = _load(page, "", tmp_path)
    assert any("Uncaught TypeError" in line for line in console), console


async def test_viewer_lists_every_conversation_and_filters(tmp_path, hashing_embedder):
    human = reference_dialogues()
    convs = human + [echo_loop(c) for c in human[:N_ECHO]]
    scorecard = await evaluate_run(convs, [], config=EvaluationConfig(plots=False), gateway=None, embedder=hashing_embedder,
                                   out_dir=tmp_path / "out")
    page = tmp_path / "out" / "scorecard.html"
    view = transcript_view(convs, scorecard.transcript)

    dom, console = _load(page, "", tmp_path)
    assert console == []  # no exception, no console output
    assert [cid for cid, _ in dom.conversations] == [c.id for c in convs]
    assert not any(hidden for _, hidden in dom.conversations)
    assert dom.count == f"showing {len(convs)} of {len(convs)} conversations"

    dom, console = _load(page, "metric=echo_rate&op=gt&value=0.5", tmp_path)
    assert console == []
    visible = [cid for cid, hidden in dom.conversations if not hidden]
    assert sorted(visible) == sorted(f"{c.id}-echo" for c in human[:N_ECHO])
    assert dom.count == f"showing {N_ECHO} of {len(convs)} conversations"

    dom, console = _load(page, "flagged=1", tmp_path)
    assert console == []
    flagged = sum(1 for c in view["conversations"] for t in c["turns"] if t["flags"])
    assert 0 < flagged < len(dom.turns)
    assert sum(1 for hidden in dom.turns if not hidden) == flagged

    dom, console = _load(page, "metric=n_turns&op=gt&value=0&sort=asc", tmp_path)
    assert console == []
    n_turns = {c.id: len(c.utterances) for c in convs}
    order = [n_turns[cid] for cid, _ in dom.conversations]
    assert order == sorted(order) and len(order) == len(convs)
