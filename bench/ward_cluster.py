"""Benchmark: a ward on several daemons through NATS JetStream, as deployed (README: A ward on
several daemons). A real nats-server with the ward's partition mapping, K daemons ``ecgmon run
--source nats://...`` with the shipped models, one ``ecgmon ward proxy`` in front of them, and N
simulated bedside devices in a process of their own publishing live 0.1 s binary payloads
(360 Hz MIT-BIH records, MLII, each bed from its own offset, looping) on ``ward.<bed>``. A real
ZeroMQ subscriber on the proxy takes every message.

It reports, per N, what bench/ward.py reports for one daemon (CPU per stream-hour, streams per
core, beat latency percentiles, share within 200 ms, streams behind, dropped messages, memory),
with the CPU of the daemons, the proxy, the broker and the devices apart; ``cpu_s_per_stream_hour``
counts the ward (daemons, proxy, broker), not the simulated devices. The devices start once every
daemon is up; what the broker holds unread at the start and the end of the window (the backlog)
shows whether the daemons keep up with the ward. ``--failover`` then kills one daemon
(SIGKILL) and measures how long until each of its beds shows signal on a survivor and the
signal gap at the move.

    ECGMON_DATA=../shared/data nice -n 10 .venv/bin/python bench/ward_cluster.py --beds 100 200
        [--daemons 2] [--partitions 32] [--warmup 40] [--seconds 30] [--failover]
        [--out bench/results/ward_cluster]
"""

from __future__ import annotations

import argparse
import asyncio
from collections import defaultdict
import json
import os
from pathlib import Path
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ward import (  # noqa: E402
    CHUNK_S, DEVICE_RECORDS, Subscriber, bed_chunk, device_signals, free_port, process_cpu, rss_mb, summarise,
    wait_listening,
)

REPO = Path(__file__).resolve().parents[1]
PREFIX = "ward"


# -- the devices (run as a process of their own: --devices-only) ------------------------------

def run_devices(url: str, beds: int, data: Path, records: list[str]) -> None:
    """N beds publishing live until SIGTERM; each bed a record from its own offset."""
    import nats

    from ecgmon.payloads.mqtt import encode_binary

    signals = device_signals(data, records)
    n = int(360 * CHUNK_S)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    async def main() -> None:
        nc = await nats.connect(url, pending_size=64 * 1024 * 1024)
        t0 = time.monotonic()
        k = 0
        while not stop.is_set():
            for bed in range(beds):
                await nc.publish(f"{PREFIX}.bed{bed}", encode_binary(k, k * n, 360.0, "MLII", bed_chunk(signals, bed, k, n)))
            k += 1
            await asyncio.sleep(max(0.0, t0 + k * CHUNK_S - time.monotonic()))
        await nc.flush()
        await nc.close()

    asyncio.run(main())


# -- the ward ----------------------------------------------------------------------------------

class Ward:
    """nats-server, K daemons, the proxy and the devices, as subprocesses in a scratch folder."""

    def __init__(self, work: Path, data: Path, beds: int, daemons: int, partitions: int, records: list[str]) -> None:
        from ecgmon.monitor.sources.ward_subjects import server_config

        self.work = work
        nats_port = free_port()
        self.url = f"nats://127.0.0.1:{nats_port}"
        conf = work / "nats.conf"
        conf.write_text(server_config("127.0.0.1", nats_port, str(work / "js"), PREFIX, partitions))
        env = {**os.environ, "ECGMON_DATA": str(data), "OMP_NUM_THREADS": "1"}
        self.logs = []
        self.broker = self._start(["nats-server", "-c", str(conf)], "nats", env)
        wait_listening(nats_port, self.broker, "nats-server")
        self.endpoints = [f"tcp://127.0.0.1:{free_port()}" for _ in range(daemons)]
        self.daemons = [self._start([sys.executable, "-m", "ecgmon.cli", "run", "--headless", "--no-archive",
                                     "--control", "", "--endpoint", ep, "--source",
                                     f"{self.url}/{PREFIX}?partitions={partitions}&member=w{i}"], f"daemon{i}", env)
                        for i, ep in enumerate(self.endpoints)]
        self.front = f"tcp://127.0.0.1:{free_port()}"
        self.proxy = self._start([sys.executable, "-m", "ecgmon.cli", "ward", "proxy", "--endpoint", self.front,
                                  *[a for ep in self.endpoints for a in ("--connect", ep)]], "proxy", env)
        self._devices_cmd = [sys.executable, __file__, "--devices-only", self.url, str(beds), "--data", str(data),
                             "--records", *records]
        self._env = env
        self.devices: subprocess.Popen | None = None
        self.stream = f"ECGMON_{PREFIX}"

    def start_devices(self) -> None:
        """The beds start once every daemon is up: a backlog published while the models load would
        be worked off during the measurement and blur it."""
        self.devices = self._start(self._devices_cmd, "devices", self._env)

    def wait_daemons(self, timeout: float = 180.0) -> None:
        """Until each daemon's status comes through the proxy (models loaded, ward joined)."""
        ctx = zmq.Context()
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.SUBSCRIBE, b"status.")
        sub.setsockopt(zmq.RCVTIMEO, 500)
        sub.connect(self.front)
        pubs: set[str] = set()
        deadline = time.monotonic() + timeout
        try:
            while len(pubs) < len(self.daemons):
                if time.monotonic() > deadline:
                    raise SystemExit(f"only {len(pubs)} of {len(self.daemons)} daemons up after {timeout:g} s")
                try:
                    pubs.add(json.loads(sub.recv_multipart()[1])["pub"])
                except zmq.Again:
                    pass
        finally:
            sub.close(linger=0)
            ctx.term()

    def _start(self, cmd: list[str], name: str, env: dict) -> subprocess.Popen:
        log = open(self.work / f"{name}.log", "w")
        self.logs.append(log)
        return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)

    def cpu(self) -> dict[str, float]:
        alive = [d for d in self.daemons if d.poll() is None]
        return {"daemons": sum(process_cpu(d.pid) for d in alive), "proxy": process_cpu(self.proxy.pid),
                "broker": process_cpu(self.broker.pid),
                "devices": process_cpu(self.devices.pid) if self.devices is not None else 0.0}

    def backlog(self) -> int | None:
        """Messages the broker still holds: published, not yet acknowledged by a daemon."""
        async def ask() -> int:
            import nats

            nc = await nats.connect(self.url)
            try:
                return (await nc.jetstream().stream_info(self.stream)).state.messages
            finally:
                await nc.close()
        try:
            return asyncio.run(ask())
        except Exception:
            return None

    def stop(self) -> None:
        procs = [p for p in [self.devices, *self.daemons, self.proxy, self.broker] if p is not None]
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT if proc in self.daemons else signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for log in self.logs:
            log.close()


def measure_failover(ward: Ward, limit_s: float = 30.0) -> dict:
    """Kill daemon 0 (SIGKILL) and time until each bed it served shows signal on another daemon."""
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"wave.")
    sub.setsockopt(zmq.RCVHWM, 0)
    sub.setsockopt(zmq.RCVTIMEO, 100)
    sub.connect(ward.front)
    rows: list[tuple[float, str, str, float, float]] = []

    def take(until: float) -> None:
        while time.time() < until:
            try:
                m = json.loads(sub.recv_multipart()[1])
            except zmq.Again:
                continue
            rows.append((time.time(), m["pub"], m["stream"], m["time_s"], m["time_s"] + len(m["samples_mv"]) / m["fs"]))

    take(time.time() + 3.0)
    pubs = defaultdict(set)
    for _, pub, stream, _, _ in rows:
        pubs[pub].add(stream)
    # Daemon 0's publisher id: the one of its own endpoint.
    own = ctx.socket(zmq.SUB)
    own.setsockopt(zmq.SUBSCRIBE, b"status.")
    own.setsockopt(zmq.RCVTIMEO, 5000)
    own.connect(ward.endpoints[0])
    victim_pub = json.loads(own.recv_multipart()[1])["pub"]
    own.close(linger=0)
    moved = sorted(pubs.get(victim_pub, set()))
    t_kill = time.time()
    ward.daemons[0].send_signal(signal.SIGKILL)
    ward.daemons[0].wait()
    take(t_kill + limit_s)
    sub.close(linger=0)
    ctx.term()
    first, gap = {}, {}
    for bed in moved:
        after = [r for r in rows if r[2] == bed and r[1] != victim_pub and r[0] >= t_kill]
        before = [r for r in rows if r[2] == bed and r[1] == victim_pub]
        if after:
            first[bed] = min(r[0] for r in after) - t_kill
            if before:
                gap[bed] = min(r[3] for r in after) - max(r[4] for r in before)
    out = {"beds_moved": len(moved), "beds_back": len(first),
           "failover_s_max": round(max(first.values()), 2) if first else None,
           "failover_s_median": round(sorted(first.values())[len(first) // 2], 2) if first else None,
           "signal_gap_s_max": round(max(gap.values()), 2) if gap else None}
    print(f"failover: killed daemon 0 serving {len(moved)} beds; {len(first)} back on the survivors, "
          f"median {out['failover_s_median']} s, last {out['failover_s_max']} s after the kill; "
          f"largest signal gap {out['signal_gap_s_max']} s", flush=True)
    return out


def run_ward(data: Path, beds: int, daemons: int, partitions: int, records: list[str], warmup: float,
             seconds: float, failover: bool) -> dict:
    tmp = tempfile.mkdtemp(prefix="ward-cluster-")  # kept, with its logs, when a run fails
    if True:
        ward = Ward(Path(tmp), data, beds, daemons, partitions, records)
        try:
            ward.wait_daemons()
            sub = Subscriber(ward.front)
            sub.start()
            ward.start_devices()
            time.sleep(warmup)
            dead = [p.args[0] for p in [ward.broker, ward.proxy, ward.devices, *ward.daemons] if p.poll() is not None]
            if dead:
                raise SystemExit(f"ended early: {dead}; logs in {tmp}")
            backlog0 = ward.backlog()
            c0, w0, t0 = ward.cpu(), time.monotonic(), time.time()
            time.sleep(seconds)
            c1, wall, t1 = ward.cpu(), time.monotonic() - w0, time.time()
            rss = sum(rss_mb(d.pid) for d in ward.daemons)
            proxy_rss, broker_rss = rss_mb(ward.proxy.pid), rss_mb(ward.broker.pid)
            backlog = ward.backlog()
            time.sleep(1.0)
            sub.stop()
            cpu = {k: c1[k] - c0[k] for k in c0}
            ward_cpu = cpu["daemons"] + cpu["proxy"] + cpu["broker"]
            out = summarise(beds, sub, ward_cpu, wall, t0, t1, rss + proxy_rss + broker_rss, float("nan"), None)
            out.update({
                "daemons": daemons, "partitions": partitions,
                "cores": {k: round(v / wall, 2) for k, v in cpu.items()},
                "ward_cores": round(ward_cpu / wall, 2),
                "daemons_rss_mb": round(rss, 1), "proxy_rss_mb": round(proxy_rss, 1),
                "broker_rss_mb": round(broker_rss, 1), "broker_backlog_msgs_start": backlog0,
                "broker_backlog_msgs": backlog,
            })
            print(f"  cores: {out['cores']}; broker backlog {backlog0} -> {backlog} messages over the window; "
                  f"daemons' RSS {rss:.0f} MB, "
                  f"proxy {proxy_rss:.0f} MB, broker {broker_rss:.0f} MB", flush=True)
            if failover:
                out["failover"] = measure_failover(ward)
        finally:
            ward.stop()
        shutil.rmtree(tmp, ignore_errors=True)
        return out


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--devices-only":
        ap = argparse.ArgumentParser()
        ap.add_argument("url")
        ap.add_argument("beds", type=int)
        ap.add_argument("--data", type=Path)
        ap.add_argument("--records", nargs="+")
        a = ap.parse_args(sys.argv[2:])
        run_devices(a.url, a.beds, a.data, a.records)
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default = Path(os.environ.get("ECGMON_DATA") or REPO.parent / "shared" / "data")
    ap.add_argument("--data", type=Path, default=default)
    ap.add_argument("--beds", type=int, nargs="+", default=[100, 200])
    ap.add_argument("--daemons", type=int, default=2)
    ap.add_argument("--partitions", type=int, default=32)
    ap.add_argument("--records", nargs="+", default=DEVICE_RECORDS)
    ap.add_argument("--warmup", type=float, default=40.0)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--failover", action="store_true", help="then kill one daemon and time the move")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "ward_cluster")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    runs = []
    for n in args.beds:
        runs.append(run_ward(args.data, n, args.daemons, args.partitions, args.records, args.warmup,
                             args.seconds, args.failover))
    result = {"command": "nice -n 10 .venv/bin/python bench/ward_cluster.py " + " ".join(sys.argv[1:]),
              "cores": os.cpu_count(), "shared_machine": True, "runs": runs}
    path = args.out / f"ward_cluster-k{args.daemons}.json"
    path.write_text(json.dumps(result, indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
