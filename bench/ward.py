"""Benchmark: a ward on one daemon. N simulated bedside streams (the built-in simulator, or
looping record replays; 360 Hz, 0.1 s chunks, live pacing) in one ``ecgmon run --headless`` with
the shipped models, and a real ZeroMQ subscriber taking every message. For each N it reports
daemon CPU per stream-hour and the streams per core that implies, beat latency percentiles,
the share of beats published in time, how far the streams fall behind, dropped messages and
memory (RSS).

Two latencies, because they answer different questions:

* *latency*: from the arrival of the chunk that released a beat to the beat's publication. A
  classified beat waits for its successor, so the releasing chunk is the one in which the
  successor was detected; its arrival is the successor's publication less the successor's
  ``latency_ms`` (the daemon's figure, which counts from the chunk holding the beat's own
  detection and so includes the wait of about one RR interval; reported too as
  ``detection_latency_ms``). A beat is *in time* when its latency is at most 200 ms.
* *lag*: publication wall time minus the beat's signal time, per stream, less that stream's
  smallest value. A source paced by the event loop stamps its chunks late when the loop is
  late, so ``latency_ms`` alone can look fine while a stream slips further behind real time;
  the lag's growth over the measured window (``behind_s``: the least lag of its last third
  against that of its first) shows it. A stream is *behind* when it slipped by more than one
  second.

``--via mqtt`` is the ward as deployed with MQTT telemetry (issue 16's ward benchmark): a real
mosquitto on loopback, N simulated bedside devices in a process of their own publishing live
0.1 s binary payloads (QoS 1, 360 Hz MIT-BIH records, MLII, each bed from its own offset,
looping) on ``ward/bed<i>/ecg``, and the daemon subscribed to ``mqtt://.../ward/+/ecg``. The
daemon's CPU is reported apart from the broker's and the devices'; the devices start once the
daemon is up (its first status), so that nothing queues while the models load.

bench/daemon.py measures the whole daemon at one N as a CPU extrapolation; this measures whether
N streams actually keep up in one process.

    ECGMON_DATA=../shared/data nice -n 10 .venv/bin/python bench/ward.py --beds 32 100 200
        [--via sim|mqtt [--stagger SLOTS]] [--warmup 30] [--seconds 30] [--source sim|RECORD...] [--profile SECONDS]
        [--out bench/results/ward]

``--profile S`` runs the daemon under ``py-spy record`` (``pip install -e '.[bench]'``) for S
seconds of the measured window and writes the top functions (own and cumulative samples) next
to the JSON, plus the raw collapsed stacks.
"""

from __future__ import annotations

import argparse
import getpass
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import zmq

DEADLINE_MS = 200.0  # issue 16: chunk-arrival-to-publication p99 at most 200 ms
BEHIND_S = 1.0  # a stream that slipped more than this over the measured window is behind
REPO = Path(__file__).resolve().parents[1]
CHUNK_S = 0.1
DEVICE_RECORDS = ["100", "101", "106", "119", "201", "208", "223", "230"]


def wait_listening(port: int, proc: subprocess.Popen, name: str, timeout: float = 15.0) -> None:
    """Until the server ``proc`` just started accepts connections on loopback ``port``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{name} did not listen on {port}") from None
            time.sleep(0.1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Subscriber:
    """A real ZeroMQ subscriber taking every message (no receive high-water mark) on its own
    thread: counts by kind, per-topic sequence gaps (what ZeroMQ dropped on the way), and for
    each beat its latency, signal time and reception wall time."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.counts: Counter[str] = Counter()
        self.gaps = 0
        self.beats: list[tuple[str, float, float, float]] = []  # stream, time_s, pub wall, latency_ms
        self.last_status: dict | None = None
        self.faults: Counter[str] = Counter()  # warning and error events, by code
        self.waves: list[tuple[str, float, float]] = []  # stream, signal time at a frame's end, reception wall
        self._seq: dict[tuple[str, str | None], int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()
        time.sleep(0.5)  # connected before the daemon's first message

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def wait_status(self, proc: subprocess.Popen, timeout: float = 180.0) -> bool:
        """Until the daemon's first status (models loaded, sources started); False if it ended
        or did not come up in time."""
        deadline = time.monotonic() + timeout
        while self.last_status is None:
            if proc.poll() is not None or time.monotonic() > deadline:
                return False
            time.sleep(0.2)
        return True

    def _run(self) -> None:
        ctx = zmq.Context()
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.RCVHWM, 0)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.setsockopt(zmq.RCVTIMEO, 200)
        sub.connect(self.endpoint)
        while not self._stop.is_set():
            try:
                topic, body = sub.recv_multipart()
            except zmq.Again:
                continue
            msg = json.loads(body)
            # seq is gapless per topic and publisher run (a ward's stream moving to another
            # daemon starts a new run): a jump is a message lost on the way.
            key = (topic.decode(), msg.get("pub"))
            self.counts[msg["kind"]] += 1
            last = self._seq.get(key)
            if last is not None and msg["seq"] > last + 1:
                self.gaps += msg["seq"] - last - 1
            self._seq[key] = msg["seq"]
            if msg["kind"] == "beat" and msg.get("latency_ms") is not None:
                self.beats.append((msg["stream"], msg["time_s"], msg["wall"], msg["latency_ms"]))
            elif msg["kind"] == "wave":
                # Signal time at the frame's end, and when it got here.
                self.waves.append((msg["stream"], msg["time_s"] + len(msg["samples_mv"]) / msg["fs"], time.time()))
            elif msg["kind"] == "status":
                self.last_status = msg
            elif msg["kind"] == "event" and msg.get("level") != "info":
                self.faults[msg.get("code", "?")] += 1
        sub.close(linger=0)
        ctx.term()


class MqttWard:
    """A real mosquitto on loopback and N simulated bedside devices publishing through it, in
    a scratch folder, for a daemon subscribed to ``ward/+/ecg``."""

    def __init__(self, beds: int, data: Path, env: dict, slots: int = 1) -> None:
        self.beds, self.env, self.slots = beds, env, slots
        self.work = Path(tempfile.mkdtemp(prefix="ward-mqtt-"))
        self.port = free_port()
        conf = self.work / "mosquitto.conf"
        conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
            # A ward's broker queues what a slow daemon has not taken yet rather than drop it
            # (mosquitto's default keeps 1000 messages per client).
            "max_queued_messages 0\n"
            f"log_dest file {self.work / 'mosquitto.log'}\nuser {getpass.getuser()}\n")
        mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.broker = subprocess.Popen([mosquitto, "-c", str(conf)], stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL)
        wait_listening(self.port, self.broker, f"mosquitto (log in {self.work})")
        # The repository's config with room for every bed as a stream of the one MQTT source.
        text = (REPO / "config.toml").read_text()
        self.config = self.work / "config.toml"
        self.config.write_text(re.sub(r"(?m)^max_streams = \d+$", f"max_streams = {beds}", text))
        self.t0_file = self.work / "devices-t0"
        self._devices_cmd = [sys.executable, __file__, "--devices-only", str(self.port), str(beds),
                             "--data", str(data), "--t0-file", str(self.t0_file), "--slots", str(slots)]
        self.devices: subprocess.Popen | None = None

    def daemon_args(self) -> list[str]:
        return ["--config", str(self.config), "--source", f"mqtt://127.0.0.1:{self.port}/ward/+/ecg"]

    def start_devices(self) -> None:
        with open(self.work / "devices.log", "w") as log:  # the child keeps its own copy
            self.devices = subprocess.Popen(self._devices_cmd, env=self.env, stdout=subprocess.DEVNULL, stderr=log)

    def devices_t0(self) -> float | None:
        """Wall time at which the devices sent their first chunk (chunk k goes out k * CHUNK_S later)."""
        try:
            return float(self.t0_file.read_text())
        except (OSError, ValueError):
            return None

    def cpu(self) -> dict[str, float]:
        out = {"broker": process_cpu(self.broker.pid)}
        if self.devices is not None:
            out["devices"] = process_cpu(self.devices.pid)
        return out

    def stop(self) -> None:
        for proc in [self.devices, self.broker]:
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
        shutil.rmtree(self.work, ignore_errors=True)


def device_signals(data: Path, records: list[str]) -> list[np.ndarray]:
    """MLII of each MIT-BIH record, float32 mV: what the simulated devices send."""
    import wfdb

    return [wfdb.rdrecord(str(data / "mitdb" / r), channels=[0]).p_signal[:, 0].astype(np.float32)
            for r in records]


def bed_chunk(signals: list[np.ndarray], bed: int, k: int, n: int) -> np.ndarray:
    """The ``k``-th chunk of ``n`` samples of a bed: a record of ``signals`` in turn, from an
    offset of its own (beds of one record at different places), looping."""
    x = signals[bed % len(signals)]
    offset = (bed * 7919 * n) % (len(x) - n)
    i = (offset + k * n) % (len(x) - n)
    return x[i:i + n]


def phase_s(bed: int, slots: int) -> float:
    """When in each chunk period a bed sends: beds spread over ``slots`` equal steps (1: all at once)."""
    return (bed % slots) * CHUNK_S / slots


def run_devices(port: int, beds: int, data: Path, t0_file: Path, slots: int) -> None:
    """N beds publishing live 0.1 s binary payloads (QoS 1) on ``ward/bed<i>/ecg`` until SIGTERM;
    each bed a record of ``DEVICE_RECORDS`` from its own offset, sending at its ``phase_s``."""
    import paho.mqtt.client as mqtt

    from ecgmon.payloads.mqtt import encode_binary

    signals = device_signals(data, DEVICE_RECORDS)
    n = int(360 * CHUNK_S)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"ward-devices-{os.getpid()}")
    client.max_queued_messages_set(0)
    client.max_inflight_messages_set(1000)
    client.connect("127.0.0.1", port)
    client.loop_start()
    t0, k = time.monotonic(), 0
    t0_file.write_text(repr(time.time()))
    while not stop.is_set():
        for j in range(slots):
            stop.wait(max(0.0, t0 + k * CHUNK_S + phase_s(j, slots) - time.monotonic()))
            for bed in range(j, beds, slots):
                payload = encode_binary(k, k * n, 360.0, "MLII", bed_chunk(signals, bed, k, n))
                client.publish(f"ward/bed{bed}/ecg", payload, qos=1)
        k += 1
    client.loop_stop()
    client.disconnect()


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of a running process, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def specs(beds: int, source: list[str]) -> list[str]:
    """``bed<i>=`` specs: the simulator with a seed per bed (different hearts, not one copied),
    or the records in turn."""
    if source == ["sim"]:
        return [f"bed{i}=sim?seed={i + 1}" for i in range(beds)]
    return [f"bed{i}=mitdb:{source[i % len(source)]}" for i in range(beds)]


def run_ward(data: Path, beds: int, source: list[str], warmup: float, seconds: float, archive: bool,
             profile: float | None, out: Path, via: str = "sim", slots: int = 1) -> dict:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    sub = Subscriber(endpoint)
    sub.start()
    env = {**os.environ, "ECGMON_DATA": str(data), "OMP_NUM_THREADS": "1"}
    ward = MqttWard(beds, data, env, slots) if via == "mqtt" else None
    sources = ward.daemon_args() if ward else [a for s in specs(beds, source) for a in ("--source", s)]
    cmd = [sys.executable, "-m", "ecgmon.cli", "run", "--headless", "--chunk-s", str(CHUNK_S), "--speed", "1",
           "--loop", "--endpoint", endpoint, "--control", "", *([] if archive else ["--no-archive"]), *sources]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    # The daemon's stderr is drained on a thread: a full pipe would block its logging.
    err: list[str] = []
    drain = threading.Thread(target=lambda: err.extend(proc.stderr), daemon=True)
    drain.start()
    try:
        up = sub.wait_status(proc) if ward else True
        if ward and up:
            ward.start_devices()
        time.sleep(warmup if up else 0)
        if proc.poll() is not None or not up:
            proc.kill()
            drain.join()
            raise SystemExit(f"ecgmon run ended early or did not come up:\n{''.join(err)}")
        result = _measure(beds, proc, sub, seconds, profile, out, err, drain, ward)
    finally:
        if proc.poll() is None:
            proc.kill()
        if ward:
            ward.stop()
    return result


def _measure(beds: int, proc: subprocess.Popen, sub: "Subscriber", seconds: float, profile: float | None,
             out: Path, err: list[str], drain: threading.Thread, ward: "MqttWard | None") -> dict:
    spy = None
    if profile:
        raw = out / f"profile-{beds}.txt"
        # py-spy attaches to the running daemon (ptrace); --nonblocking does not pause it, so the
        # profile does not slow the figures measured alongside.
        spy = subprocess.Popen([shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy"), "record",
                                "--pid", str(proc.pid), "--duration", str(int(profile)), "--rate", "50",
                                "--nonblocking", "--format", "raw", "--output", str(raw)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    c0, w0, t0 = process_cpu(proc.pid), time.monotonic(), time.time()
    o0 = ward.cpu() if ward else {}
    time.sleep(seconds)
    cpu, wall, t1 = process_cpu(proc.pid) - c0, time.monotonic() - w0, time.time()
    others = {k: round((v - o0[k]) / wall, 2) for k, v in ward.cpu().items()} if ward else {}
    rss = rss_mb(proc.pid)
    proc.send_signal(signal.SIGINT)
    _, status, usage = os.wait4(proc.pid, 0)
    drain.join()
    time.sleep(1.0)  # the last messages reach the subscriber
    sub.stop()
    if os.waitstatus_to_exitcode(status) not in (0, 130):
        raise SystemExit(f"ecgmon run failed:\n{''.join(err)}")
    top = None
    if spy is not None:
        _, spy_err = spy.communicate()
        top = top_functions(out / f"profile-{beds}.txt") if spy.returncode == 0 else f"py-spy failed: {spy_err.strip()}"
    result = summarise(beds, sub, cpu, wall, t0, t1, rss, usage.ru_maxrss / 1024, top)
    if ward and (device_t0 := ward.devices_t0()) is not None:
        result.update(device_latency(sub.waves, device_t0, ward.slots, t0, t1))
    if ward:
        result["other_cores"] = others
        result["broker_rss_mb"] = round(rss_mb(ward.broker.pid), 1)
        print(f"  cores outside the daemon: {others}; the daemon's source faults: {sub.faults or 'none'}",
              flush=True)
    return result


def device_latency(waves: list[tuple[str, float, float]], device_t0: float, slots: int, t0: float,
                   t1: float) -> dict:
    """From a device's send to a subscriber's reception, for the wave frames received in the
    window: a frame is complete with the device chunk holding its last sample, which the bed
    sent CHUNK_S x its index plus its phase after ``device_t0``. Unlike the beats' latency this
    counts the time a message waited at the broker and in the daemon's client."""
    def sent(stream: str, end: float) -> float:
        return device_t0 + (math.ceil(end / CHUNK_S - 1e-6) - 1) * CHUNK_S + phase_s(int(stream[3:]), slots)

    lat = np.array([(recv - sent(stream, end)) * 1000.0 for stream, end, recv in waves if t0 <= recv <= t1])
    if not lat.size:
        return {}
    out = {"device_to_subscriber_ms_p50": round(float(np.percentile(lat, 50)), 1),
           "device_to_subscriber_ms_p99": round(float(np.percentile(lat, 99)), 1),
           "device_to_subscriber_in_time_share": round(float((lat <= DEADLINE_MS).mean()), 3)}
    print(f"  wave frames, device send to subscriber: p50 {out['device_to_subscriber_ms_p50']} ms, p99 "
          f"{out['device_to_subscriber_ms_p99']} ms, {out['device_to_subscriber_in_time_share']:.1%} within "
          f"{DEADLINE_MS:.0f} ms", flush=True)
    return out


def summarise(beds: int, sub: Subscriber, cpu: float, wall: float, t0: float, t1: float, rss: float,
              peak_rss: float, top: object) -> dict:
    # Lag of each beat: publication wall time minus signal time, less the stream's smallest lag
    # (its start offset). Beats published in the measured window count.
    by_stream: dict[str, list[tuple[float, float, float]]] = defaultdict(list)
    for stream, time_s, pub_wall, lat in sub.beats:
        by_stream[stream].append((time_s, pub_wall, lat))
    latency, raw = [], []
    for rows in by_stream.values():
        rows.sort()
        for (_, wall_i, lat_i), (_, wall_j, lat_j) in zip(rows, rows[1:]):
            if not t0 <= wall_i <= t1:
                continue
            raw.append(lat_i)
            # A classified beat waits for its successor: it is released by the chunk in which the
            # successor was detected, which arrived at the successor's publication less its own
            # latency. Arrival of that chunk to publication is the figure a ward cares about.
            # (A beat released by the classifier's longest wait, before any successor, is left out.)
            released = wall_j - lat_j / 1000.0
            if released <= wall_i:
                latency.append((wall_i - released) * 1000.0)
    behind = []
    third = (t1 - t0) / 3
    for rows in by_stream.values():
        # How much later the stream's beats come out at the end of the window than at its start:
        # the least lag of the last third against that of the first. The least, because one
        # beat may wait up to the classifier's longest wait for a successor that a pause holds
        # back (published late once, not a stream falling behind).
        first = [wall - time_s for time_s, wall, _ in rows if t0 <= wall < t0 + third]
        last = [wall - time_s for time_s, wall, _ in rows if t1 - third < wall <= t1]
        if first and last:
            behind.append(min(last) - min(first))
    lat, raw_lat = np.asarray(latency), np.asarray(raw)
    # Signal actually processed: a stream that slipped by b seconds processed wall - b of it, so
    # an overloaded daemon's CPU is not spread over signal it never handled.
    hours = max(beds * wall - sum(min(b, wall) for b in behind if b > 0), 1e-9) / 3600
    out = {
        "beds": beds,
        "measured_s": round(wall, 1),
        "daemon_cpu_cores": round(cpu / wall, 2),
        "signal_hours": round(hours, 3),
        "cpu_s_per_stream_hour": round(cpu / hours, 1),
        "streams_per_core_by_cpu": int(3600 * hours / cpu) if cpu else None,
        "beats": int(raw_lat.size),
        "beats_per_bed_per_s": round(raw_lat.size / beds / wall, 2),
        "latency_ms_p50": round(float(np.percentile(lat, 50)), 1) if lat.size else None,
        "latency_ms_p99": round(float(np.percentile(lat, 99)), 1) if lat.size else None,
        "in_time_share": round(float((lat <= DEADLINE_MS).mean()), 3) if lat.size else None,
        # The daemon's own latency_ms: from the chunk holding the beat's detection, so it includes
        # the wait for the successor beat (about one RR interval).
        "detection_latency_ms_p50": round(float(np.percentile(raw_lat, 50)), 1) if raw_lat.size else None,
        "detection_latency_ms_p99": round(float(np.percentile(raw_lat, 99)), 1) if raw_lat.size else None,
        "streams_with_beats": len(behind),
        "streams_behind": int(sum(b > BEHIND_S for b in behind)),
        "behind_s_max": round(max(behind), 2) if behind else None,
        "dropped_seq_gaps": sub.gaps,
        "dropped_by_publisher": (sub.last_status or {}).get("dropped"),
        "messages": dict(sub.counts),
        "rss_mb": round(rss, 1),
        "peak_rss_mb": round(peak_rss, 1),
        "rss_mb_per_stream": round(rss / beds, 2),
    }
    if top is not None:
        out["profile_top"] = top
    keeps_up = out["streams_behind"] == 0 and (out["latency_ms_p99"] or 1e9) <= DEADLINE_MS
    out["keeps_up"] = keeps_up
    print(f"{beds} beds: {out['daemon_cpu_cores']} cores, {out['cpu_s_per_stream_hour']} CPU s per stream-hour "
          f"(~{out['streams_per_core_by_cpu']} streams/core by CPU); beats {out['beats']}: latency p50 "
          f"{out['latency_ms_p50']} ms p99 {out['latency_ms_p99']} ms, {out['in_time_share']:.1%} in "
          f"{DEADLINE_MS:.0f} ms; {out['streams_behind']}/{beds} streams behind (max {out['behind_s_max']} s); "
          f"dropped {sub.gaps} (publisher {out['dropped_by_publisher']}); RSS {out['rss_mb']} MB "
          f"({out['rss_mb_per_stream']} per stream), peak {out['peak_rss_mb']} MB; "
          f"{'keeps up' if keeps_up else 'does NOT keep up'}", flush=True)
    return out


def top_functions(raw: Path, n: int = 25) -> dict:
    """The ``n`` functions with most own samples and most cumulative samples in py-spy's
    collapsed stacks (``frame;frame;... count`` per line), as shares of all samples."""
    own: Counter[str] = Counter()
    cum: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        k = int(count)
        # Frames name a line ("f (file.py:12)"); one function's lines count together.
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")]
        total += k
        own[frames[-1]] += k
        for f in set(frames):
            cum[f] += k
    share = lambda c: [(f, round(v / total, 3)) for f, v in c.most_common(n)]  # noqa: E731
    return {"samples": total, "own": share(own), "cumulative": share(cum)}


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--devices-only":  # the devices' own process
        ap = argparse.ArgumentParser()
        ap.add_argument("port", type=int)
        ap.add_argument("beds", type=int)
        ap.add_argument("--data", type=Path)
        ap.add_argument("--t0-file", type=Path)
        ap.add_argument("--slots", type=int, default=1)
        a = ap.parse_args(sys.argv[2:])
        run_devices(a.port, a.beds, a.data, a.t0_file, a.slots)
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default = Path(os.environ.get("ECGMON_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
    ap.add_argument("--data", type=Path, default=default)
    ap.add_argument("--beds", type=int, nargs="+", default=[32, 100, 200])
    ap.add_argument("--via", choices=["sim", "mqtt"], default="sim",
                    help="sim: the beds are sources inside the daemon; mqtt: devices publish through mosquitto")
    ap.add_argument("--stagger", type=int, default=1, metavar="SLOTS",
                    help="mqtt: the devices send in SLOTS steps spread over each 0.1 s, as unsynchronised "
                         "devices do (default 1: every device at the same instant, the worst case)")
    ap.add_argument("--source", nargs="+", default=["sim"], help="sim, or MIT-BIH record names replayed in turn")
    ap.add_argument("--warmup", type=float, default=30.0, help="seconds left out: start-up, models, first beats")
    ap.add_argument("--seconds", type=float, default=30.0, help="seconds measured after the warm-up")
    ap.add_argument("--archive", action="store_true", help="archive the streams too (default: --no-archive)")
    ap.add_argument("--profile", type=float, default=None, help="py-spy the daemon for this many seconds")
    ap.add_argument("--out", type=Path, default=Path("bench/results/ward"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    runs = [run_ward(args.data, n, args.source, args.warmup, args.seconds, args.archive, args.profile, args.out,
                     args.via, args.stagger) for n in args.beds]
    result = {"command": "nice -n 10 .venv/bin/python bench/ward.py " + " ".join(sys.argv[1:]),
              "cores": os.cpu_count(), "deadline_ms": DEADLINE_MS, "runs": runs}
    path = args.out / ("ward-mqtt.json" if args.via == "mqtt" else "ward.json")
    path.write_text(json.dumps(result, indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())