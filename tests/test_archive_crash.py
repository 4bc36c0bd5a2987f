"""Crash safety of the archive (issue 15): the daemon, a real `ecgmon run` process replaying
a record, is killed with SIGKILL in the middle of a segment and started again on the same
archive: every closed segment and every audit entry from before the kill is intact and
readable, and the stream's archive goes on after a gap segment."""

from __future__ import annotations

import json
import os
from pathlib import Path
import signal
import subprocess
import sys
import time

import numpy as np
import wfdb

from ecgmon.archive import reader
from ecgmon.archive.layout import NULL

REPO = Path(__file__).resolve().parents[1]
WAIT_S = 120  # a bound for a busy machine, never a measured time


def _start(config: Path, archive: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "ecgmon.cli", "--config", str(config), "run", "--headless",
           "--source", "bed1=mitdb:100", "--speed", "20", "--archive", str(archive),
           "--endpoint", "tcp://127.0.0.1:0", "--control", ""]
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def _listed(archive: Path) -> list[tuple[str, int]]:
    try:
        return reader.open_layout(archive / "bed1").entries
    except (OSError, ValueError, IndexError):
        return []


def _wait_for(proc: subprocess.Popen, done) -> None:
    deadline = time.monotonic() + WAIT_S
    while not done():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "the archive did not grow"
        time.sleep(0.05)


def _check_segments(archive: Path, record: np.ndarray) -> dict[str, bytes]:
    """Every listed segment reads back as the record's samples at its stream_start."""
    layout = reader.open_layout(archive / "bed1")
    out = {}
    for seg in reader.segments(layout):
        if seg.name == NULL:
            continue
        got = wfdb.rdrecord(str(archive / "bed1" / seg.name), physical=False).d_signal
        np.testing.assert_array_equal(got, record[seg.stream_start : seg.stream_start + seg.length])
        out[seg.name] = (archive / "bed1" / f"{seg.name}.dat").read_bytes()
    return out


def test_sigkill_mid_segment_loses_only_the_open_segment(tmp_path, data_dir):
    config = tmp_path / "config.toml"
    # No models (they would only slow the start); segments of 2 s so that several close.
    config.write_text('[archive]\nsegment_s = 2.0\n[models]\nbeat = ""\nsegment = ""\npcg = ""\n')
    archive = tmp_path / "archive"
    record = wfdb.rdrecord(str(data_dir / "mitdb" / "100"), physical=False).d_signal

    proc = _start(config, archive)
    try:
        _wait_for(proc, lambda: sum(n != NULL for n, _ in _listed(archive)) >= 4)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    before = _check_segments(archive, record)
    assert len(before) >= 4
    # Their beats too, written as each segment closed (each within 150 ms of a reference beat);
    # the first segment's are published only after the detector has learnt, after it closed.
    ref = wfdb.rdann(str(data_dir / "mitdb" / "100"), "atr").sample
    for seg in [s for s in reader.segments(reader.open_layout(archive / "bed1")) if s.name != NULL][1:]:
        beats = wfdb.rdann(str(archive / "bed1" / seg.name), "ecgmon").sample + seg.stream_start
        assert len(beats) >= 1 and all(np.abs(ref - b).min() <= 54 for b in beats)
    lines = (archive / "audit.jsonl").read_text().splitlines()
    audit_before = [json.loads(ln) for ln in lines]  # every line whole: fsynced per entry
    assert audit_before[0]["type"] == "daemon_start"
    assert not any(e["type"] == "daemon_stop" for e in audit_before)

    proc = _start(config, archive)
    try:
        _wait_for(proc, lambda: (e := _listed(archive)) and NULL in [n for n, _ in e]
                  and sum(n != NULL for n, _ in e) >= len(before) + 2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(WAIT_S) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    after = _check_segments(archive, record)
    assert {k: after[k] for k in before} == before  # the closed segments are untouched
    names = [n for n, _ in reader.open_layout(archive / "bed1").entries]
    gap = names.index(NULL)
    assert names[:gap] == list(before) and names.count(NULL) == 1  # the gap marks the downtime
    segs = [s for s in reader.segments(reader.open_layout(archive / "bed1")) if s.name != NULL]
    assert segs[gap].stream_start == 0  # the replay started again: the record from its start
    assert len({s.run for s in segs[:gap]}) == 1 and segs[gap].run != segs[0].run
    audit = [json.loads(ln) for ln in (archive / "audit.jsonl").read_text().splitlines()]
    assert audit[: len(audit_before)] == audit_before
    assert [e["type"] for e in audit].count("daemon_start") == 2 and audit[-1]["type"] == "daemon_stop"
    whole = wfdb.rdrecord(str(archive / "bed1" / "bed1"), physical=False)
    assert whole.sig_len == sum(n for _, n in reader.open_layout(archive / "bed1").entries)
