"""Benchmark: the whole daemon, as users run it (`ecgmon run --headless`, shipped models, 0.1 s
chunks), with a real ZeroMQ subscriber taking every message: CPU seconds of the daemon
process per hour of signal, hence how many live streams one core serves, messages per second
and peak memory. Two runs: *replay*, the records once each as fast as the daemon can; *live*,
``--streams`` streams (the records in turn, looping) at real-time speed for ``--seconds``, where
the inference batcher sees the small batches of a real ward.

bench/pipeline.py measures one stream's pipeline in-process; this adds what it leaves out:
the event loop, the inference batcher across streams, JSON encoding and ZeroMQ publishing.

    ECGMON_DATA=../shared/data nice -n 10 .venv/bin/python bench/daemon.py [--records 100 106 ...]
                                   [--streams 32] [--seconds 60] [--out bench/results/daemon]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
from pathlib import Path
import socket
import subprocess
import sys
import threading
import time

import wfdb
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pipeline import RECORDS  # noqa: E402


WARMUP_S = 15.0  # live run: start-up and the first model batches are left out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def count_messages(endpoint: str, counts: dict[str, int], stop: threading.Event) -> None:
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.RCVHWM, 0)  # keep everything: the count is the daemon's output
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.setsockopt(zmq.RCVTIMEO, 200)
    sub.connect(endpoint)
    while not stop.is_set():
        try:
            topic = sub.recv_multipart()[0].split(b".", 1)[0].decode()
        except zmq.Again:
            continue
        counts[topic] = counts.get(topic, 0) + 1
    sub.close(linger=0)
    ctx.term()


def _process_cpu(pid: int) -> float:
    """User + system CPU seconds of a running process, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_daemon(data: Path, sources: list[str], extra: list[str], seconds: float | None) -> dict:
    """Run ``ecgmon run`` on ``sources`` until they end, or for ``WARMUP_S`` + ``seconds`` then
    SIGINT; its wall time and CPU (whole run, or the ``seconds`` after warm-up), peak RSS and the
    messages a subscriber received, by kind."""
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    counts: dict[str, int] = {}
    stop = threading.Event()
    counter = threading.Thread(target=count_messages, args=(endpoint, counts, stop), daemon=True)
    counter.start()
    time.sleep(0.5)  # the subscriber connects before the first message
    cmd = [sys.executable, "-m", "ecgmon.cli", "run", "--headless", "--chunk-s", "0.1", "--endpoint", endpoint,
           "--control", "", *extra, *[a for spec in sources for a in ("--source", spec)]]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, env={**os.environ, "ECGMON_DATA": str(data)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    steady = None
    if seconds is not None:
        # Live: the CPU between WARMUP_S and the end, past start-up (imports, models, records).
        time.sleep(WARMUP_S)
        c0, w0 = _process_cpu(proc.pid), time.monotonic()
        time.sleep(seconds)
        steady = (_process_cpu(proc.pid) - c0, time.monotonic() - w0)
        proc.send_signal(signal.SIGINT)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - t0
    time.sleep(1.0)  # the last messages reach the subscriber
    stop.set()
    counter.join()
    if os.waitstatus_to_exitcode(status) not in (0, 130):
        raise SystemExit(f"ecgmon run failed:\n{proc.stderr.read()}")
    if steady is not None:
        return {"wall_s": steady[1], "cpu_s": steady[0], "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
                "messages": counts, "messages_over_s": wall}
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
            "messages": counts, "messages_over_s": wall}


def summarise(name: str, run: dict, streams: int, hours: float) -> dict:
    cpu, wall, n = run["cpu_s"], run["wall_s"], sum(run["messages"].values())
    rate = n / run["messages_over_s"]
    out = {"streams": streams, "signal_hours": round(hours, 3), "wall_s": round(wall, 1), "daemon_cpu_s": round(cpu, 1),
           "cpu_s_per_signal_hour": round(cpu / hours, 1), "streams_per_core": int(3600 * hours / cpu),
           "messages": run["messages"], "messages_per_s": round(rate), "peak_rss_mb": run["peak_rss_mb"]}
    print(f"{name}: {streams} streams, {hours:.2f} h of signal in {wall:.0f} s: daemon CPU {cpu:.0f} s = "
          f"{out['cpu_s_per_signal_hour']} s per hour of signal: one core serves about "
          f"{out['streams_per_core']} live streams; {n:,} messages ({out['messages_per_s']:,}/s); "
          f"peak RSS {out['peak_rss_mb']} MB")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default = Path(os.environ.get("ECGMON_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
    ap.add_argument("--data", type=Path, default=default)
    ap.add_argument("--records", nargs="+", default=list(RECORDS))
    ap.add_argument("--streams", type=int, default=32, help="live run: number of streams")
    ap.add_argument("--seconds", type=float, default=60.0, help="live run: how long")
    ap.add_argument("--out", type=Path, default=Path("bench/results/daemon"))
    args = ap.parse_args()
    hours = sum(wfdb.rdheader(str(args.data / "mitdb" / r)).sig_len / 360 / 3600 for r in args.records)
    replay = run_daemon(args.data, [f"bed{r}=mitdb:{r}" for r in args.records], ["--speed", "0"], None)
    specs = [f"bed{i}=mitdb:{args.records[i % len(args.records)]}" for i in range(args.streams)]
    live = run_daemon(args.data, specs, ["--speed", "1", "--loop"], args.seconds)
    result = {"command": "nice -n 10 .venv/bin/python bench/daemon.py",
              "replay": summarise("replay", replay, len(args.records), hours),
              "live": summarise("live", live, args.streams, args.streams * live["wall_s"] / 3600)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "daemon.json").write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out / 'daemon.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
