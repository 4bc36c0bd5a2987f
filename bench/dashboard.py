"""Dashboard drawing cost: milliseconds per redraw for 1 to 16 streams at common terminal
sizes, each stream with 12 s of ECG wave, beats, an alarm and a heart-sound envelope.
The dashboard redraws at 8 Hz, so a redraw must stay well under 125 ms of one core.

    python bench/dashboard.py
"""

from __future__ import annotations

import io
import time

import numpy as np
from rich.console import Console

from ecgmon.dashboard.state import DashboardState
from ecgmon.dashboard.view import Dashboard
from ecgmon.schema import AlarmMessage, BeatMessage, Message, PcgMessage, VitalsMessage, WaveMessage


def _send(st: DashboardState, msg: Message, seq: int) -> None:
    msg.pub, msg.seq, msg.wall = "bench", seq, time.time()
    st.receive(0, [msg.topic.encode(), msg.model_dump_json().encode()], time.monotonic(), time.time())


def state_with(streams: int) -> DashboardState:
    st = DashboardState([("tcp://127.0.0.1:5555", "tcp://127.0.0.1:5556")])
    rng = np.random.default_rng(1)
    fs = 125.0
    t = np.arange(0, 12, 1 / fs)
    for k in range(streams):
        name = f"bed{k}"
        beats = np.arange(0.4, 12, 0.8)
        y = sum(1.2 * np.exp(-((t - b) / 0.015) ** 2) for b in beats) + 0.03 * rng.standard_normal(t.size)
        for i in range(0, t.size, 25):
            _send(st, WaveMessage(stream=name, fs=fs, start=i, time_s=i / fs, lead="II", samples_mv=y[i:i + 25].tolist()), i // 25)
        for j, b in enumerate(beats):
            _send(st, BeatMessage(stream=name, sample=int(b * 360), time_s=b, fs=360, delay_ms=200, rr_ms=800,
                                  amplitude_mv=1.2, label="NV"[j % 7 == 6], probability=0.9), j)
        _send(st, VitalsMessage(stream=name, time_s=12, hr_bpm=75, hr_method="m", beats=len(beats)), 0)
        _send(st, AlarmMessage(stream=name, id=f"{name}-pvc-1", alarm="pvc_run", category="physiological",
                               priority="medium", state="raised", text="PVC run", onset_s=5, raised_s=6,
                               raised_wall=time.time() - 30), 0)
        env = np.abs(np.sin(np.pi * np.arange(0, 12, 1 / 50) / 0.8)) ** 8
        _send(st, PcgMessage(stream=name, fs=50, start=0, time_s=0, envelope=env.tolist(), s1_s=list(beats),
                             s2_s=list(beats + 0.3), hr_bpm=75, quality=0.8), 0)
    return st


def main() -> None:
    print(f"{'streams':>7} {'size':>8} {'CPU ms/redraw':>14} {'p95':>6}")
    for streams in (1, 4, 16):
        st = state_with(streams)
        for width, height in ((80, 24), (120, 40), (240, 70)):
            console = Console(file=io.StringIO(), width=width, height=height, force_terminal=True,
                              color_system="truecolor")
            dash = Dashboard(st)
            times = []
            for _ in range(40):
                t0 = time.process_time()
                console.print(dash)
                times.append((time.process_time() - t0) * 1000)
                console.file.seek(0)
                console.file.truncate()
            print(f"{streams:>7} {width:>4}x{height:<3} {np.median(times):>14.1f} {np.percentile(times, 95):>6.1f}")


if __name__ == "__main__":
    main()
