"""The dashboard's parts: the braille canvas, key parsing, the message model (garbage, gaps,
restarts) and the drawing, fed with real messages from a real daemon over ZeroMQ."""

from __future__ import annotations

import asyncio

from collections import Counter
import contextlib
import os
from pathlib import Path
import re
import subprocess
import sys
import time
from typing import Iterator

import numpy as np
import pytest
from rich.console import Console
import zmq

from conftest import free_tcp_port
from ecgmon.dashboard.braille import BLANK, column_extents, encode, render_trace
from ecgmon.dashboard.keys import parse_keys
from ecgmon.dashboard.state import DashboardState
from ecgmon.dashboard.view import Dashboard
from ecgmon.monitor.publisher import Publisher
from ecgmon.schema import (
    AlarmMessage,
    BeatMessage,
    Message,
    PcgClassMessage,
    PcgMessage,
    StatusMessage,
    StreamStatus,
    VitalsMessage,
    WaveMessage,
    parse_message,
)

REPO = Path(__file__).resolve().parent.parent
BRAILLE = re.compile("[\u2801-\u28ff]")


# --------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def daemon_process(source: str, speed: float, endpoint: str, control: str, *extra: str) -> Iterator[subprocess.Popen]:
    """``ecgmon run --headless`` (and ``extra`` arguments) as a user starts it, stopped with
    SIGTERM at the end."""
    env = {k: v for k, v in os.environ.items() if k != "ECGMON_CONFIG"}
    env["PYTHONPATH"] = str(REPO)
    proc = subprocess.Popen(
        [sys.executable, "-m", "ecgmon.cli", "run", "--headless", "--source", source, "--speed", str(speed),
         "--endpoint", endpoint, "--control", control, *extra],
        env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        proc.stderr.close()


def frames_of(msg: Message, seq: int = 0, pub: str = "test") -> list[bytes]:
    msg.seq, msg.pub, msg.wall = seq, pub, time.time()
    return [msg.topic.encode(), msg.model_dump_json().encode()]


def render(state: DashboardState, width: int, height: int) -> list[str]:
    console = Console(record=True, width=width, height=height, file=open(os.devnull, "w"), color_system="truecolor")
    console.print(Dashboard(state))
    return console.export_text().splitlines()


def alarm(stream: str, **kw) -> AlarmMessage:
    fields = dict(id=f"{stream}-vtach-1", alarm="vtach", category="physiological", priority="high",
                  state="raised", text="V-tach 152 bpm, 9 beats", onset_s=10.0, raised_s=12.0,
                  raised_wall=time.time() - 65)
    fields.update(kw)
    return AlarmMessage(stream=stream, **fields)


# --------------------------------------------------------------------------- braille


def test_braille_cells_encode_each_dot():
    on = np.zeros((4, 4), dtype=bool)
    assert encode(on, 1) == [BLANK * 2]
    on[:, :2] = True
    assert encode(on, 1) == ["\u28ff" + BLANK]  # all eight dots of the first cell
    on[:] = False
    on[0, 0] = on[3, 3] = True  # dot 1 of cell one, dot 8 of cell two
    assert encode(on, 1) == ["\u2801\u2880"]


def test_narrow_spike_keeps_its_height_and_the_trace_is_continuous():
    fs, cells, rows = 125.0, 40, 4
    t = np.arange(0, 4, 1 / fs)
    y = np.zeros_like(t)
    y[250] = 1.0  # one sample: narrower than a pixel column (~6 samples)
    lo, hi = column_extents(t, y, 0.0, 4.0, cells * 2)
    assert np.nanmax(hi) == 1.0
    lines = render_trace(lo, hi, rows, 0.0, 1.0)
    assert len(lines) == rows and all(len(line) == cells for line in lines)
    assert lines[0].strip(BLANK) != ""  # the spike reaches the top row
    # Every column has at least one dot: a continuous line, no holes.
    dots = np.array([[ord(c) - 0x2800 for c in line] for line in lines])
    assert (dots.sum(axis=0) > 0).all()


def test_columns_without_samples_stay_blank_and_nan_is_skipped():
    t = np.arange(0, 2, 0.01)
    y = np.sin(t)
    y[50:60] = np.nan
    lo, hi = column_extents(t, y, 0.0, 4.0, 40)  # the second half of the window has no data
    lines = render_trace(lo, hi, 2, -1, 1)
    assert all(line[10:] == BLANK * 10 for line in lines)
    assert render_trace(lo, hi, 0, -1, 1) == []


# --------------------------------------------------------------------------- keys


def test_keys_from_escape_sequences_and_garbage():
    assert parse_keys(b"\x1b[A\x1b[B\x1b[C\x1b[D\t\x1b[Zq") == [
        "up", "down", "right", "left", "tab", "shift-tab", "q"]
    assert parse_keys(b"a2s") == ["a", "2", "s"]
    # Unknown escapes (F5, a mouse report, a bare ESC) and control bytes are skipped whole.
    assert parse_keys(b"\x1b[15~x\x1b[<0;3;4Ms\x1b") == ["x", "s"]
    assert parse_keys(b"\x00\x07\xff") == []


# --------------------------------------------------------------------------- model


def test_garbage_frames_are_counted_not_raised():
    st = DashboardState([("tcp://127.0.0.1:1", None)])
    now = time.monotonic()
    good = frames_of(VitalsMessage(stream="bed1", time_s=1.0, hr_bpm=70.0, hr_method="mean", beats=2))
    for frames in (
        [b"only one frame"],
        [b"vitals.bed1", b"{not json"],
        [b"vitals.bed1", b'{"kind": "vitals", "stream": "bed1"}'],  # fields missing
        [b"x.bed1", b'{"kind": "newer-kind", "stream": "bed1"}'],
        [b"beat.bed9", good[1]],  # topic and body disagree
        [b"a", b"b", b"c"],
    ):
        assert st.receive(0, frames, now, time.time()) is None
    assert st.links[0].garbage == 6
    assert st.receive(0, good, now, time.time()) is not None
    assert st.streams["bed1"].hr_bpm == 70.0
    assert render(st, 80, 24)  # and the screen still draws


def test_seq_gaps_per_topic_and_a_restart():
    st = DashboardState([("tcp://127.0.0.1:1", None)])
    now, wall = time.monotonic(), time.time()
    v = VitalsMessage(stream="bed1", time_s=1.0, hr_bpm=70.0, hr_method="mean", beats=2)
    for seq in (0, 1, 4, 5, 9):  # 2 + 3 missed
        st.receive(0, frames_of(v, seq, "p1"), now, wall)
    st.receive(0, frames_of(alarm("bed1"), 0, "p1"), now, wall)  # another topic: its own count
    assert st.links[0].missed == 5
    assert "bed1-vtach-1" in st.streams["bed1"].alarms
    st.receive(0, frames_of(v, 0, "p2"), now, wall)  # a new daemon instance starts at seq 0
    assert st.links[0].missed == 5 and st.links[0].pub == "p2"
    assert st.streams["bed1"].alarms == {}  # what the old instance raised is gone


def test_alarm_life_and_marks():
    st = DashboardState([("tcp://127.0.0.1:1", None)])
    now, wall = time.monotonic(), time.time()
    st.receive(0, frames_of(alarm("bed1"), 0), now, wall)
    st.receive(0, frames_of(alarm("bed1", id="bed1-noise-1", alarm="noise", category="technical",
                                  priority="low", text="Noisy signal"), 1), now, wall)
    st.receive(0, frames_of(alarm("bed1", state="updated", acknowledged_by="nurse",
                                  silenced_until_wall=wall + 90, suppressed=True), 2), now, wall)
    text = "\n".join(render(st, 100, 24))
    assert "HIGH" in text and "LOW" in text and "Noisy signal" in text
    assert "ack nurse" in text and "silenced 1:2" in text and "suppressed" in text
    assert "1:05" in text  # the age of the alarm raised 65 s ago
    assert [a.id for a in st.streams["bed1"].active_alarms()] == ["bed1-vtach-1", "bed1-noise-1"]
    st.receive(0, frames_of(alarm("bed1", state="cleared", cleared_s=20.0), 3), now, wall)
    assert "V-tach" not in "\n".join(render(st, 100, 24))


def test_heart_sound_area():
    st = DashboardState([("tcp://127.0.0.1:1", None)])
    now, wall = time.monotonic(), time.time()
    st.receive(0, frames_of(VitalsMessage(stream="bed1", time_s=1.0, hr_bpm=70.0, hr_method="m", beats=2)), now, wall)
    assert "no heart sounds" in "\n".join(render(st, 80, 24))
    fs = 50.0
    t = np.arange(0, 6, 1 / fs)
    env = np.exp(-((t % 0.8) / 0.05) ** 2) + 0.6 * np.exp(-(((t - 0.3) % 0.8) / 0.05) ** 2)
    st.receive(0, frames_of(PcgMessage(stream="bed1", fs=fs, start=0, time_s=0.0, envelope=env.tolist(),
                                       s1_s=list(np.arange(0, 6, 0.8)), s2_s=list(np.arange(0.3, 6, 0.8)),
                                       hr_bpm=75.0, quality=0.9)), now, wall)
    st.receive(0, frames_of(PcgClassMessage(stream="bed1", time_s=6.0, label="abnormal", probability=0.83,
                                            window_probability=0.9, windows=3)), now, wall)
    text = "\n".join(render(st, 80, 24))
    assert "no heart sounds" not in text
    assert "PCG 75 bpm" in text and "abnormal 83%" in text and "quality 0.90" in text
    marks = [line for line in text.splitlines() if re.search(r"1\s+2\s+1\s+2", line)]
    assert marks, text  # S1 and S2 marks under the envelope
    # Uncertain is shown as such, with its reason and without a percentage that would read as a measurement.
    st.receive(0, frames_of(PcgClassMessage(stream="bed1", time_s=8.5, label="uncertain", reason="near threshold",
                                            probability=None, p_abnormal=0.52, window_probability=0.6,
                                            windows=4)), now, wall)
    text = "\n".join(render(st, 80, 24))
    assert "uncertain: near threshold (4 windows)" in text and "abnormal" not in text and "52%" not in text
    # The cycle rule's verdict (the default): a score against the device's threshold and the heart
    # cycles judged, never a percentage or windows (a real daemon's: test_pcg_cycles).
    for label, reason, score, shown in (("abnormal", None, 0.71, "abnormal score +0.71 ≥ +0.32 (23 cycles)"),
                                        ("normal", None, -0.2, "normal score -0.20 < +0.32 (23 cycles)"),
                                        ("uncertain", "near threshold", 0.3, "uncertain: near threshold (23 cycles)"),
                                        ("uncertain", "device not calibrated", None,
                                         "uncertain: device not calibrated (23 cycles)")):
        st.receive(0, frames_of(PcgClassMessage(stream="bed1", method="cycles", time_s=10.0, label=label,
                                                reason=reason, probability=None, p_abnormal=score, threshold=0.32,
                                                calibrated=score is not None, window_probability=score or 0.0,
                                                windows=23, window_quality=None)), now, wall)
        text = "\n".join(render(st, 100, 24))
        assert shown in text and "%" not in text.split("PCG")[1].splitlines()[0], text


def test_silent_stream_shows_no_data_with_its_age():
    st = DashboardState([("tcp://127.0.0.1:1", None)])
    t0, wall = time.monotonic(), time.time()
    w = WaveMessage(stream="bed1", fs=125.0, start=0, time_s=0.0, lead="II", samples_mv=[0.1] * 25)
    st.receive(0, frames_of(w), t0, wall)
    dash = Dashboard(st, clock=lambda: t0 + 42.0)
    console = Console(record=True, width=80, height=24, file=open(os.devnull, "w"))
    console.print(dash)
    text = console.export_text()
    assert "no data for 0:42" in text and "NO DATA" in text


# --------------------------------------------------------------------------- real messages


def _subscriber(ctx: zmq.Context, endpoint: str, prefix: str) -> zmq.Socket:
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt_string(zmq.SUBSCRIBE, prefix)
    sub.connect(endpoint)
    return sub


def _collect(endpoint: str, enough, timeout_s: float) -> list[list[bytes]]:
    """Frames from a real SUB socket until ``enough(messages)`` holds."""
    ctx = zmq.Context()
    sub = _subscriber(ctx, endpoint, "")
    frames, msgs = [], []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline and not enough(msgs):
            if sub.poll(500):
                f = sub.recv_multipart()
                frames.append(f)
                msgs.append(parse_message(f[1]))
    finally:
        sub.close()
        ctx.term()
    assert enough(msgs), f"not enough data within {timeout_s} s: {Counter(m.kind for m in msgs)}"
    return frames


def _published_alarm(stream: str) -> list[bytes]:
    """A synthetic alarm sent through a real PUB socket and received by a real SUB socket."""
    # The daemon's publisher is a zmq.asyncio socket: it needs an event loop, whatever
    # earlier tests left behind.
    return asyncio.run(_publish_and_receive(stream))


async def _publish_and_receive(stream: str) -> list[bytes]:
    endpoint = f"tcp://127.0.0.1:{free_tcp_port()}"
    pub = Publisher(endpoint, 100)
    ctx = zmq.Context()
    sub = _subscriber(ctx, endpoint, "alarm.")
    try:
        for _ in range(100):  # until the subscription has reached the publisher
            pub.publish(alarm(stream))
            if sub.poll(200):
                return sub.recv_multipart()
        raise AssertionError("the alarm never arrived")
    finally:
        sub.close()
        ctx.term()
        pub.close()


@pytest.fixture(scope="module")
def record_frames() -> list[list[bytes]]:
    """Messages of a daemon replaying MIT-BIH 100 at 10× speed: waves, beats, vitals, status."""
    endpoint = f"tcp://127.0.0.1:{free_tcp_port()}"
    control = f"tcp://127.0.0.1:{free_tcp_port()}"

    def enough(msgs: list[Message]) -> bool:
        kinds = Counter(m.kind for m in msgs)
        vitals = [m for m in msgs if isinstance(m, VitalsMessage) and m.hr_bpm is not None]
        return kinds["wave"] >= 60 and kinds["beat"] >= 30 and len(vitals) >= 3 and kinds["status"] >= 1

    from conftest import _data_dir  # the module fixture runs outside the autouse env fixture

    os.environ.setdefault("ECGMON_DATA", str(_data_dir()))
    with daemon_process("mitdb:100", 10, endpoint, control):
        return _collect(endpoint, enough, 120)


def test_dashboard_shows_real_trace_hr_classes_and_alarm(record_frames):
    st = DashboardState([("tcp://127.0.0.1:5555", None), ("tcp://127.0.0.1:5599", None)])
    now, wall = time.monotonic(), time.time()
    msgs = [st.receive(0, f, now, wall) for f in record_frames]
    assert st.links[0].garbage == 0
    st.receive(1, _published_alarm("mitdb-100"), now, wall)
    lines = render(st, 120, 40)
    text = "\n".join(lines)
    assert "mitdb-100" in text and "mitdb:100" in text
    assert len(BRAILLE.findall(text)) > 100  # the trace
    hr = [m.hr_bpm for m in msgs if isinstance(m, VitalsMessage) and m.hr_bpm is not None][-1]
    assert re.search(rf"HR\s+{hr:.0f} bpm", text), text
    labels = Counter(m.label for m in msgs if isinstance(m, BeatMessage) and m.label)
    assert sum(labels.values()) > 0, "the daemon's beats carry no class: is the beat model loaded?"
    for c in "NSVFQ":
        assert re.search(rf"\b{c}{labels.get(c, 0)}\b", text), c
    assert "V-tach 152 bpm, 9 beats" in text and "HIGH" in text and "VTACH" in text
    assert len(lines) == 40 and max(len(line) for line in lines) <= 120
    latency = [m.latency_ms for m in msgs if isinstance(m, BeatMessage) and m.latency_ms is not None]
    assert re.search(r"beat \d+ ms", text) and latency


@pytest.mark.parametrize("width,height", [(80, 24), (60, 12), (250, 70)])
def test_sizes_from_small_to_large(record_frames, width, height):
    st = DashboardState([("tcp://127.0.0.1:5555", None)])
    now, wall = time.monotonic(), time.time()
    for f in record_frames:
        st.receive(0, f, now, wall)
    for k in range(8):  # more streams than fit on a small terminal: a page of them
        st.receive(0, frames_of(WaveMessage(stream=f"bed{k}", fs=125.0, start=0, time_s=0.0, lead="II",
                                            samples_mv=np.sin(np.arange(25) / 4).tolist())), now, wall)
    st.select(index=st.names().index("bed7"))
    lines = render(st, width, height)
    assert len(lines) == height and max(len(line) for line in lines) <= width
    text = "\n".join(lines)
    assert "bed7" in text  # the selected stream is on the page shown
    assert "q quit" in text or width < 80
    assert BRAILLE.search(text)


def test_ecg_and_heart_sounds_of_one_patient_share_a_panel():
    st = DashboardState([("tcp://127.0.0.1:1", None)])
    now, wall = time.monotonic(), time.time()
    ecg = StreamStatus(stream="bed1", source="mitdb:100", fs=360, lead="MLII", state="running", samples=3600,
                       time_s=10, beats=12, hr_bpm=72.0)
    pcg = StreamStatus(stream="bed1", source="mic", fs=2000, lead="", state="ended", samples=0, time_s=0,
                       beats=0, hr_bpm=None)
    st.receive(0, frames_of(StatusMessage(uptime_s=10, streams=[ecg, pcg], dropped=0, sent=9)), now, wall)
    v = st.streams["bed1"]
    assert list(st.streams) == ["bed1"]
    assert (v.source, v.state, v.lead, v.hr_bpm, v.beats) == ("mitdb:100 + mic", "running", "MLII", 72.0, 12)
