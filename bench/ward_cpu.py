"""Benchmark: the CPU of one daemon serving N simulated beds, measured inside its own process
(``time.process_time``: the event loop and the model thread), with no subscriber and no
subprocess, so that two commits can be compared with less noise than ``bench/ward.py``'s
whole-system figures. Also prints how many VF analysis windows the daemon measured per call
(``fibrillation.measure``: the windows of every stream fed in one turn of the event loop).

    ECGMON_DATA=../shared/data OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python bench/ward_cpu.py
                                   [--beds 64] [--seconds 30] [--warmup 10]

Run it at each commit, alternating, a few times: the machine's other load moves each figure.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from ecgmon.config import Config
from ecgmon.monitor.alarms import fibrillation
from ecgmon.monitor.daemon import Daemon
from ecgmon.monitor.model_set import load_models
from ecgmon.monitor.publisher import Publisher
from ecgmon.monitor.sources.factory import open_source


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
        return measure(windows)

    fibrillation.measure = counted
    pub = Publisher("tcp://127.0.0.1:0", 100_000)
    daemon = asyncio.create_task(Daemon(config, sources, pub, models).run())
    try:
        await asyncio.sleep(warmup)
        batches.clear()
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
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--beds", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--warmup", type=float, default=10.0)
    args = ap.parse_args()
    r = asyncio.run(measure_ward(args.beds, args.seconds, args.warmup))
    print(f"{r['beds']} beds: {r['cores']:.3f} cores, {r['cpu_s_per_stream_hour']:.1f} CPU s per stream-hour; "
          f"VF windows {r['vf_windows']} in {r['vf_calls']} calls (mean batch {r['vf_mean_batch']:.1f})")


if __name__ == "__main__":
    main()
