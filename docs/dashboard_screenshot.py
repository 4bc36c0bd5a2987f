"""Makes docs/dashboard.svg, the README's screenshot: a daemon replays two MIT-BIH records
(119: ventricular bigeminy, 208: PVCs and fusion beats) with a PhysioNet/CinC 2016 heart-sound
recording (a0007, normal) on the first patient, and the dashboard, fed with what the daemon
publishes over ZeroMQ, is drawn into a recording Rich console and saved as SVG.

    ECGMON_DATA=../shared/data .venv/bin/python docs/dashboard_screenshot.py [SECONDS]
"""

from __future__ import annotations

import os
from pathlib import Path
import socket
import subprocess
import sys
import time

from rich.console import Console
import zmq

from ecgmon.dashboard.state import DashboardState
from ecgmon.dashboard.view import Dashboard

HERE = Path(__file__).resolve().parent
RECORDS = ["bed1=mitdb:119", "bed2=mitdb:208"]
HEART_SOUNDS = "bed1={data}/pcg2016/training-a/a0007.flac"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(seconds: float) -> None:
    endpoint, control = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    args = [sys.executable, "-m", "ecgmon.cli", "run", "--headless", "--endpoint", endpoint, "--control", control,
            "--pcg", HEART_SOUNDS.format(data=os.environ["ECGMON_DATA"])]
    for spec in RECORDS:
        args += ["--source", spec]
    daemon = subprocess.Popen(args, cwd=HERE.parent, env={**os.environ, "PYTHONPATH": str(HERE.parent)})
    state = DashboardState([(endpoint, control)])
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt_string(zmq.SUBSCRIBE, "")
    sub.connect(endpoint)
    end = time.monotonic() + seconds
    try:
        while time.monotonic() < end:
            if sub.poll(200):
                state.receive(0, sub.recv_multipart(), time.monotonic(), time.time())
        # Drawn while the daemon still runs, as a user would see it.
        console = Console(record=True, width=120, height=34, file=open(os.devnull, "w"), color_system="truecolor")
        console.print(Dashboard(state))
    finally:
        daemon.terminate()
        daemon.wait()
        sub.close(linger=0)
        ctx.term()
    print(console.export_text(clear=False))
    console.save_svg(str(HERE / "dashboard.svg"), title="ecgmon dashboard")
    print(f"wrote {HERE / 'dashboard.svg'}")


if __name__ == "__main__":
    main(float(sys.argv[1]) if len(sys.argv) > 1 else 30.0)
