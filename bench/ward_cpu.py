"""Benchmark: the CPU of one daemon serving N simulated beds, measured inside its own process
(``time.process_time``: the event loop and the model thread), with no subscriber and no
subprocess, so that two commits can be compared with less noise than ``bench/ward.py``'s
whole-system figures. Also prints how many VF analysis windows the daemon measured per call
(``fibrillation.measure``: the windows of every stream fed in one turn of the event loop).

``--split`` also says where that CPU goes, per stream-hour, each part timed in its own thread
(``time.thread_time``): the pipelines' feed (the per-chunk work, and of it the beats' model
inputs), the VF windows' measures, finishing the classified beats (the vote, the alarm engine's
per-beat rules), the models (the batcher's thread), publishing, the simulated
beds' signal (the benchmark's devices, not the daemon's work), and the rest (the event loop,
the sources).

    ECGMON_DATA=../shared/data OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python bench/ward_cpu.py
                                   [--beds 64] [--seconds 30] [--warmup 10] [--split]

Run it at each commit, alternating, a few times: the machine's other load moves each figure.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any, Callable

from ecgmon.config import Config
from ecgmon.monitor.alarms import fibrillation
from ecgmon.monitor.classification import BeatClassification
from ecgmon.monitor.daemon import Daemon
from ecgmon.monitor.model_loader import LoadedModel
from ecgmon.monitor.model_set import load_models
from ecgmon.monitor.pipeline import StreamPipeline
from ecgmon.monitor.publisher import Publisher
from ecgmon.monitor.sources.factory import open_source
from ecgmon.replay.ecgsyn import ECGSynth

# What --split times: (class, method, part).
PARTS = ((BeatClassification, "jobs", "beat inputs"), (BeatClassification, "_finish", "finishing beats"),
         (LoadedModel, "__call__", "models"), (Publisher, "publish", "publishing"),
         (ECGSynth, "generate", "simulated beds"))
SPENT: dict[str, float] = {}


def _timed(cls: type, name: str, part: str) -> None:
    f: Callable = getattr(cls, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t = time.thread_time()
        try:
            return f(*args, **kwargs)
        finally:
            SPENT[part] = SPENT.get(part, 0.0) + time.thread_time() - t

    setattr(cls, name, wrapper)


def _timed_feed() -> None:
    """The pipelines' ``feed_steps``, counting only the time it runs, not the time it waits at
    each yield while the daemon measures the VF windows of every stream (``fibrillation.measure``,
    timed on its own)."""
    steps = StreamPipeline.feed_steps

    def wrapper(self: StreamPipeline, chunk: Any) -> Any:
        gen, sent = steps(self, chunk), None
        while True:
            t = time.thread_time()
            try:
                window = gen.send(sent)
            except StopIteration as done:
                return done.value
            finally:
                SPENT["feed"] = SPENT.get("feed", 0.0) + time.thread_time() - t
            sent = yield window

    StreamPipeline.feed_steps = wrapper  # type: ignore[method-assign]


def split_timers() -> None:
    """Install the --split timers (once, before the daemon starts)."""
    _timed_feed()
    for cls, name, part in PARTS:
        _timed(cls, name, part)


async def measure_ward(beds: int, seconds: float, warmup: float) -> dict:
    config = Config()
    config.replay.chunk_s = 0.1
    models, errors = load_models(config.models.model_copy(update={"segment": "", "pcg": "", "pcg_cycles": ""}))
    if errors:
        raise SystemExit("; ".join(errors))
    sources = [open_source(f"bed{i}=sim?seed={i + 1}", config) for i in range(beds)]
    batches: list[int] = []
    measure = fibrillation.measure

    def counted(windows):
        batches.append(len(windows))
        t = time.thread_time()
        try:
            return measure(windows)
        finally:
            SPENT["VF measures"] = SPENT.get("VF measures", 0.0) + time.thread_time() - t

    fibrillation.measure = counted
    pub = Publisher("tcp://127.0.0.1:0", 100_000)
    daemon = asyncio.create_task(Daemon(config, sources, pub, models).run())
    try:
        await asyncio.sleep(warmup)
        batches.clear()
        SPENT.clear()
        cpu0, wall0 = time.process_time(), time.monotonic()
        await asyncio.sleep(seconds)
        cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
    finally:
        daemon.cancel()
        await asyncio.gather(daemon, return_exceptions=True)
        fibrillation.measure = measure
    return {
        "beds": beds, "cores": cpu / wall, "cpu_s_per_stream_hour": cpu / wall * 3600 / beds,
        "vf_windows": sum(batches), "vf_calls": len(batches),
        "vf_mean_batch": sum(batches) / len(batches) if batches else 0.0,
        "split_s_per_stream_hour": {k: v / wall * 3600 / beds for k, v in SPENT.items()},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--beds", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--warmup", type=float, default=10.0)
    ap.add_argument("--split", action="store_true", help="also time the daemon's parts")
    args = ap.parse_args()
    if args.split:
        split_timers()
    r = asyncio.run(measure_ward(args.beds, args.seconds, args.warmup))
    print(f"{r['beds']} beds: {r['cores']:.3f} cores, {r['cpu_s_per_stream_hour']:.1f} CPU s per stream-hour; "
          f"VF windows {r['vf_windows']} in {r['vf_calls']} calls (mean batch {r['vf_mean_batch']:.1f})")
    if args.split:
        parts = r["split_s_per_stream_hour"]
        # The beats' inputs are cut inside the feed: a part of it, not beside it.
        parts["the rest"] = r["cpu_s_per_stream_hour"] - sum(parts.values()) + parts.get("beat inputs", 0.0)
        order = ("feed", "beat inputs", "VF measures", "finishing beats", "models", "publishing", "the rest",
                 "simulated beds")
        print("CPU s per stream-hour: " + ", ".join(
            f"{k} {parts.get(k, 0.0):.1f}" + (" (within the feed)" if k == "beat inputs" else "") for k in order))


if __name__ == "__main__":
    main()
