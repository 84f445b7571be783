"""Reliability under concurrency: locked stores fail clearly, concurrent appends never interleave.

* Two processes on one local Qdrant path: the second gets ``StoreLockedError`` (a clear
  message naming the path and the fix) and the first one's data stays intact.
* Several processes x many appends to one JSONL file: every line parses, counts are exact.
* A writer killed mid-line leaves a torn tail that readers skip and the next append repairs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from personae.errors import StoreLockedError
from personae.jsonl import append_jsonl, read_jsonl_dicts
from personae.memory import open_qdrant

pytestmark = pytest.mark.timeout(600)  # a guard against a hang, not a measure of speed

PY = sys.executable


def _spawn(code: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [PY, "-c", textwrap.dedent(code), *args],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


# ---- local Qdrant: one process per path ----------------------------------------
_HOLDER = """
    import sys
    from qdrant_client import models
    from personae.memory import open_qdrant
    handle = open_qdrant(path=sys.argv[1])
    handle.client.create_collection("c", vectors_config=models.VectorParams(size=4, distance=models.Distance.COSINE))
    handle.client.upsert("c", points=[models.PointStruct(id=i, vector=[1.0, float(i), 0.5, 0.0], payload={"n": i}) for i in range(50)])
    print("ready", flush=True)
    sys.stdin.readline()          # hold the store until the test says stop
    handle.close()
    print("closed", flush=True)
"""

_SECOND = """
    import sys
    from personae.errors import StoreLockedError
    from personae.memory import open_qdrant
    try:
        open_qdrant(path=sys.argv[1])
    except StoreLockedError as exc:
        print("LOCKED", exc, flush=True)
        sys.exit(3)
    print("OPENED", flush=True)
"""


def test_second_process_on_the_same_local_qdrant_gets_a_clear_error_and_data_is_intact(tmp_path):
    path = tmp_path / "qdrant"
    holder = _spawn(_HOLDER, str(path))
    try:
        assert holder.stdout.readline().strip() == "ready", holder.stderr.read()
        second = subprocess.run([PY, "-c", textwrap.dedent(_SECOND), str(path)], capture_output=True, text=True, timeout=300)
        assert second.returncode == 3, second.stdout + second.stderr
        assert "Traceback" not in second.stderr
        message = second.stdout
        assert message.startswith("LOCKED") and str(path) in message
        assert "another process" in message and "PERSONAE_QDRANT_URL" in message
        # in this process too (a different open file description on the lock file)
        with pytest.raises(StoreLockedError) as info:
            open_qdrant(path=path)
        assert info.value.path == str(path)
    finally:
        holder.stdin.write("stop\n")
        holder.stdin.flush()
        assert holder.stdout.readline().strip() == "closed"
        holder.wait(300)
    # the holder's data survived the refused opens, and the lock is free again
    with open_qdrant(path=path) as handle:
        assert handle.client.count("c").count == 50
        point = handle.client.retrieve("c", [7], with_payload=True)[0]
        assert point.payload == {"n": 7}


def test_cli_on_a_locked_qdrant_exits_with_one_clear_error_and_writes_nothing(tmp_path):
    """``personae simulate`` with memory on, while another process holds the store."""
    data = tmp_path / "data"
    holder = _spawn(_HOLDER, str(data / "qdrant"))
    try:
        assert holder.stdout.readline().strip() == "ready", holder.stderr.read()
        (tmp_path / "personas.jsonl").write_text(
            '{"name": "Ann", "occupation": "nurse"}\n{"name": "Bob", "occupation": "plumber"}\n', encoding="utf-8")
        (tmp_path / "scenario.yaml").write_text("name: s\nroles: [{name: a}, {name: b}]\nmax_turns: 2\n", encoding="utf-8")
        (tmp_path / "graph.yaml").write_text("kind: dyad\nmemory: {enabled: true}\n", encoding="utf-8")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PERSONAE_", "OPENAI_"))}
        env.update(PERSONAE_DATA_DIR=str(data), PERSONAE_LLM_PROVIDER="fake", PERSONAE_EMBEDDINGS_PROVIDER="hashing")
        proc = subprocess.run(
            [PY, "-c", "from personae.cli import main; main()", "simulate", "--personas", "personas.jsonl",
             "--scenario", "scenario.yaml", "--config", "graph.yaml", "-n", "2", "--out", "out/conversations.jsonl"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
        )
    finally:
        holder.stdin.write("stop\n")
        holder.stdin.flush()
        holder.wait(300)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "in use by another process" in errors[0] and str(data / "qdrant") in errors[0]
    assert not (tmp_path / "out").exists()
    with open_qdrant(path=data / "qdrant") as handle:
        assert handle.client.count("c").count == 50


def test_a_killed_holder_releases_the_qdrant_lock(tmp_path):
    """The lock is an flock: SIGKILL releases it, so a crashed run never blocks the next one."""
    path = tmp_path / "qdrant"
    holder = _spawn(_HOLDER, str(path))
    assert holder.stdout.readline().strip() == "ready", holder.stderr.read()
    with pytest.raises(StoreLockedError):
        open_qdrant(path=path)
    holder.send_signal(signal.SIGKILL)
    holder.wait(300)
    with open_qdrant(path=path) as handle:
        assert handle.client.count("c").count == 50


# ---- JSONL: concurrent appends ---------------------------------------------------
_WRITER = """
    import sys
    from personae.jsonl import append_jsonl
    path, writer, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    for i in range(n):
        # sizes from a few bytes to ~200 kB: far beyond PIPE_BUF, so only the lock keeps lines whole
        size = (i * 7919 + writer * 104729) % 5 and (i % 97) * 31 or 200_000
        batch = [{"writer": writer, "seq": i, "part": k, "pad": "x" * size, "text": "line\\nbreak \\u00e9"} for k in range(1 + i % 3)]
        append_jsonl(path, batch)
"""

WRITERS = 4
APPENDS = 150


def _expected_parts(i: int) -> int:
    return 1 + i % 3


def test_concurrent_process_writers_never_interleave_lines(tmp_path):
    path = tmp_path / "out.jsonl"
    procs = [_spawn(_WRITER, str(path), str(w), str(APPENDS)) for w in range(WRITERS)]
    for p in procs:
        p.wait(300)
        assert p.returncode == 0, p.stderr.read()
    raw = path.read_bytes()
    assert raw.endswith(b"\n")
    lines = raw.split(b"\n")[:-1]
    records = [json.loads(line) for line in lines]  # every line parses on its own
    per_writer = Counter(r["writer"] for r in records)
    expected = sum(_expected_parts(i) for i in range(APPENDS))
    assert per_writer == {w: expected for w in range(WRITERS)}
    # exact: each (writer, seq, part) once, and a batch's lines stay together in order
    keys = [(r["writer"], r["seq"], r["part"]) for r in records]
    assert len(set(keys)) == len(keys)
    for index, r in enumerate(records):
        if r["part"] > 0:
            prev = records[index - 1]
            assert (prev["writer"], prev["seq"], prev["part"]) == (r["writer"], r["seq"], r["part"] - 1)
    assert all(r["text"] == "line\nbreak é" for r in records)
    assert any(len(line) > 100_000 for line in lines)


def test_concurrent_thread_writers_never_interleave_lines(tmp_path):
    path = tmp_path / "out.jsonl"

    def write(writer: int) -> None:
        for i in range(200):
            append_jsonl(path, [{"writer": writer, "seq": i, "pad": "y" * ((i * 131) % 9000)}])

    threads = [threading.Thread(target=write, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    records = [obj for _, obj in read_jsonl_dicts(path)]
    assert Counter(r["writer"] for r in records) == {w: 200 for w in range(8)}
    assert len({(r["writer"], r["seq"]) for r in records}) == 1600


# ---- JSONL: a killed writer's torn tail ------------------------------------------
_TORN = """
    import os, signal, sys
    from personae.jsonl import append_jsonl
    path = sys.argv[1]
    append_jsonl(path, [{"seq": 0}, {"seq": 1}])
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    os.write(fd, b'{"seq": 2, "text": "cut sho')   # the first half of a line...
    os.kill(os.getpid(), signal.SIGKILL)            # ...and the writer dies
"""


def test_a_writer_killed_mid_line_leaves_a_tail_that_the_next_append_repairs(tmp_path, caplog):
    path = tmp_path / "out.jsonl"
    proc = subprocess.run([PY, "-c", textwrap.dedent(_TORN), str(path)], capture_output=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL
    assert not path.read_bytes().endswith(b"\n")
    # readers skip the torn line (with a warning) instead of failing or returning garbage
    assert [obj["seq"] for _, obj in read_jsonl_dicts(path)] == [0, 1]
    assert "torn" in caplog.text
    # the next append cuts the torn tail first, so the file is whole again
    append_jsonl(path, [{"seq": 2}])
    raw = path.read_bytes()
    assert raw.endswith(b"\n") and b"cut sho" not in raw
    assert [json.loads(line)["seq"] for line in raw.splitlines()] == [0, 1, 2]


_BIG_WRITER = """
    import sys
    from personae.jsonl import append_jsonl
    path = sys.argv[1]
    i = 0
    while True:
        append_jsonl(path, [{"seq": i, "pad": "z" * 4_000_000}])
        i += 1
"""


@pytest.mark.parametrize("delay_s", [0.15, 0.4, 0.7])
def test_sigkill_during_large_appends_never_leaves_a_bad_line(tmp_path, delay_s):
    """A real kill at an arbitrary moment of 4 MB appends: at most a torn tail, repaired next time."""
    path = tmp_path / "big.jsonl"
    proc = _spawn(_BIG_WRITER, str(path))
    # wait for the first bytes however long the start takes (the module's timeout guards a hang);
    # the delay after that only varies where the kill lands, and any moment must be safe
    while not (path.exists() and path.stat().st_size > 0):
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.01)
    time.sleep(delay_s)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the writer ended before it was killed"
    complete = [obj["seq"] for _, obj in read_jsonl_dicts(path)]
    assert complete == list(range(len(complete)))  # whole records, in order, none garbled
    append_jsonl(path, [{"seq": "after"}])
    records = [json.loads(line) for line in path.read_bytes().splitlines()]
    assert [r["seq"] for r in records] == [*complete, "after"]
    assert all(len(r["pad"]) == 4_000_000 for r in records[:-1])
