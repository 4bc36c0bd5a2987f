"""Benchmark: does a burst of uploads to the HTTP face delay live monitoring? (issue 17)

One ``ecgmon run --http`` with N live simulator beds (360 Hz, 0.1 s chunks, real time, the
shipped models) and a real ZeroMQ subscriber taking every message, as bench/ward.py runs it.
After a warm-up it measures the live beat latency (chunk arrival to publication, ward.py's
definition) over a quiet window, then fires a burst of U concurrent uploads of a WFDB record
excerpt to ``POST /v1/analyze`` and measures the same latency over the burst's window (first
upload sent to last answer). Prints both p50/p99, their ratio, and the uploads' answers and
times; issue 17 asks for the burst p99 within 2x of the quiet one.

    ECGMON_DATA=../shared/data .venv/bin/python bench/http_burst.py
        [--beds 8] [--uploads 20] [--excerpt-s 300] [--pool process|thread] [--warmup 20] [--quiet 60]

The analyses queue in the pool ([http] workers, queue): the bench's config admits all U.
"""

from __future__ import annotations

import argparse
import io
import json
import os
from pathlib import Path
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zipfile

import httpx
import wfdb

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ward import Subscriber, free_port, process_cpu, rss_mb, summarise  # noqa: E402


def excerpt_zip(data: Path, record: str, seconds: float) -> bytes:
    """The first ``seconds`` of ``mitdb/<record>`` as a zip of a WFDB record of its own."""
    rec = wfdb.rdrecord(str(data / "mitdb" / record), sampto=int(seconds * 360), physical=False)
    with tempfile.TemporaryDirectory() as tmp:
        wfdb.wrsamp(f"x{record}", fs=rec.fs, units=rec.units, sig_name=rec.sig_name, d_signal=rec.d_signal,
                    fmt=rec.fmt, adc_gain=rec.adc_gain, baseline=rec.baseline, write_dir=tmp)
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            for suffix in (".hea", ".dat"):
                zf.write(Path(tmp) / f"x{record}{suffix}", f"x{record}{suffix}")
    return buf.getvalue()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default = Path(os.environ.get("ECGMON_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
    ap.add_argument("--data", type=Path, default=default)
    ap.add_argument("--beds", type=int, default=8)
    ap.add_argument("--uploads", type=int, default=20)
    ap.add_argument("--record", default="100")
    ap.add_argument("--excerpt-s", type=float, default=300.0, help="seconds of the record in each upload")
    ap.add_argument("--pool", choices=["process", "thread"], default="process")
    ap.add_argument("--warmup", type=float, default=20.0)
    ap.add_argument("--quiet", type=float, default=60.0, help="seconds of the quiet window")
    ap.add_argument("--out", type=Path, default=Path("bench/results/http_burst"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    body = excerpt_zip(args.data, args.record, args.excerpt_s)
    endpoint, port = f"tcp://127.0.0.1:{free_port()}", free_port()
    config = args.out / "config.toml"
    config.write_text(f'[http]\npool = "{args.pool}"\nworkers = 1\nqueue = {args.uploads}\n')
    sub = Subscriber(endpoint)
    sub.start()
    cmd = [sys.executable, "-m", "ecgmon.cli", "--config", str(config), "run", "--headless", "--chunk-s", "0.1",
           "--speed", "1", "--loop", "--endpoint", endpoint, "--control", "", "--no-archive",
           "--http", f"127.0.0.1:{port}", *[a for i in range(args.beds) for a in ("--source", f"bed{i}=sim?seed={i + 1}")]]
    env = {**os.environ, "ECGMON_DATA": str(args.data), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    err: list[str] = []
    drain = threading.Thread(target=lambda: err.extend(proc.stderr), daemon=True)
    drain.start()
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        else:
            raise SystemExit(f"the HTTP face never became ready:\n{''.join(err)}")
        time.sleep(args.warmup)
        c0, w0, t0 = process_cpu(proc.pid), time.monotonic(), time.time()
        time.sleep(args.quiet)
        quiet = summarise(args.beds, sub, process_cpu(proc.pid) - c0, time.monotonic() - w0, t0, time.time(),
                          rss_mb(proc.pid), float("nan"), None)

        answers: list[tuple[int, float]] = []

        # Clients made and threads started before the window: making 20 httpx clients (an SSL
        # context each) takes this 2-core machine's CPU for about half a second, which stalled
        # the daemon beside the bench and was once counted as the uploads' doing.
        clients = [httpx.Client(timeout=600) for _ in range(args.uploads)]
        go = threading.Barrier(args.uploads + 1)

        def upload(client: httpx.Client) -> None:
            go.wait()
            start = time.monotonic()
            with client:
                r = client.post(f"{base}/v1/analyze", files={"file": (f"x{args.record}.zip", body)})
            answers.append((r.status_code, time.monotonic() - start))

        threads = [threading.Thread(target=upload, args=(c,)) for c in clients]
        for t in threads:
            t.start()
        time.sleep(1.0)
        c0, w0, t0 = process_cpu(proc.pid), time.monotonic(), time.time()
        go.wait()
        for t in threads:
            t.join()
        burst = summarise(args.beds, sub, process_cpu(proc.pid) - c0, time.monotonic() - w0, t0, time.time(),
                          rss_mb(proc.pid), float("nan"), None)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(60)
        drain.join()
        sub.stop()
    codes = sorted({c for c, _ in answers})
    times = sorted(s for _, s in answers)
    ratio = (burst["latency_ms_p99"] / quiet["latency_ms_p99"]) if quiet["latency_ms_p99"] else None
    result = {
        "command": ".venv/bin/python bench/http_burst.py " + " ".join(sys.argv[1:]),
        "beds": args.beds, "pool": args.pool, "uploads": args.uploads, "excerpt_s": args.excerpt_s,
        "upload_bytes": len(body), "answers": {str(c): sum(1 for a, _ in answers if a == c) for c in codes},
        "upload_s_min_median_max": [round(times[0], 1), round(times[len(times) // 2], 1), round(times[-1], 1)],
        "quiet": {k: quiet[k] for k in ("measured_s", "daemon_cpu_cores", "beats", "latency_ms_p50", "latency_ms_p99",
                                        "in_time_share", "streams_behind")},
        "burst": {k: burst[k] for k in ("measured_s", "daemon_cpu_cores", "beats", "latency_ms_p50", "latency_ms_p99",
                                        "in_time_share", "streams_behind")},
        "p99_ratio": round(ratio, 2) if ratio else None,
    }
    print(f"{args.uploads} uploads of {args.excerpt_s:g} s ({len(body) / 1e6:.2f} MB) to a {args.pool} pool beside "
          f"{args.beds} live beds: answers {result['answers']}, each {result['upload_s_min_median_max']} s "
          f"(min/median/max); live beat latency p99 quiet {quiet['latency_ms_p99']} ms, burst "
          f"{burst['latency_ms_p99']} ms (x{result['p99_ratio']}; p50 {quiet['latency_ms_p50']} -> "
          f"{burst['latency_ms_p50']} ms)")
    path = args.out / f"http_burst-{args.pool}.json"
    path.write_text(json.dumps(result, indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
