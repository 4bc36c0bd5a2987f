"""What the cycle verdict ([models] pcg_cycles) costs a heart-sound stream: the pipeline's feed
on the event loop with and without the rule, and the rule's job (segmenting the last 60 s of
audio), which the daemon runs in the batcher's thread, and how late the event loop's 1 ms
ticks come while that thread computes jobs back to back (the GIL it holds in between numpy's
calls), against an idle thread.

    ECGMON_DATA=../shared/data OMP_NUM_THREADS=1 python bench/pcg_cycles_cost.py [RECORDING.flac]

Feeds the recording (default pcg2016 e01313, 101.7 s: the span fills) in 0.05 s blocks, as the
microphone source hands them over, then runs every job it cut once on the CPU.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from ecgmon.chunk import Chunk
from ecgmon.config import Config
from ecgmon.monitor.batcher import InferenceBatcher
from ecgmon.monitor.model_set import model_path
from ecgmon.monitor.pcg_cycle_model import CycleModel
from ecgmon.monitor.pcg_pipeline import PcgPipeline

BLOCK = 100  # samples at 2 kHz: 0.05 s
TICK_S, TICKING_S = 0.001, 10.0


async def lateness(model: CycleModel, item: tuple[np.ndarray, ...], busy: bool) -> np.ndarray:
    """The lateness (s) of TICKING_S of 1 ms sleeps on the loop, with the rule's batcher
    computing ``item`` back to back (``busy``) or idle."""
    batcher = InferenceBatcher(model, 8, 5.0, model.device, "pcg_cycles",
                               item_shapes=[s[1:] for s in model.input_shapes(1)])

    async def work() -> None:
        while busy:
            await batcher.submit(*item)

    worker = asyncio.create_task(work())
    late = []
    end = time.perf_counter() + TICKING_S
    while time.perf_counter() < end:
        t = time.perf_counter()
        await asyncio.sleep(TICK_S)
        late.append(time.perf_counter() - t - TICK_S)
    worker.cancel()
    await batcher.close()
    return np.array(late)


def main() -> None:
    default = Path(os.environ.get("ECGMON_DATA", "../shared/data")) / "pcg2016" / "training-e" / "e01313.flac"
    x, fs = sf.read(sys.argv[1] if len(sys.argv) > 1 else default, dtype="float32")
    assert fs == 2000, "a 2 kHz recording (pcg2016)"
    model = CycleModel.load(model_path("pcg-cycles.json"))
    jobs: list = []
    for label, cycles in (("without the rule", None), ("with the rule", model)):
        pipe = PcgPipeline("s", fs, Config(), None, cycles)
        worst, t0 = 0.0, time.perf_counter()
        for i in range(0, len(x), BLOCK):
            t1 = time.perf_counter()
            pipe.feed(Chunk("s", fs, ("pcg",), i, x[i:i + BLOCK].reshape(-1, 1)))
            jobs += pipe.take_jobs()
            worst = max(worst, time.perf_counter() - t1)
        total = time.perf_counter() - t0
        print(f"feed {label}: {total * 1000 / (len(x) / fs):.2f} ms per s of audio, slowest block {worst * 1000:.2f} ms")
    cpu = []
    for job in jobs:
        t = time.process_time()
        model(*[np.stack([c]) for c in job.inputs])
        cpu.append(time.process_time() - t)
    full = np.array(cpu[int(model.rule.span_s / model.rule.update_s) - 1:])  # the jobs whose span is full
    print(f"rule job ({len(cpu)} jobs, {model.rule.span_s:g} s span): median {np.median(cpu):.3f} s CPU, "
          f"max {max(cpu):.3f} s; span full: {full.mean():.3f} s = {full.mean() * 3600 / model.rule.update_s:.0f} "
          f"CPU s per stream-hour")
    for busy in (False, True):
        late = asyncio.run(lateness(model, model.item(x), busy)) * 1000
        print(f"event loop, rule thread {'busy back to back' if busy else 'idle'}: 1 ms ticks late by p50 "
              f"{np.median(late):.2f} ms, p99 {np.percentile(late, 99):.2f} ms, max {late.max():.2f} ms")


if __name__ == "__main__":
    main()
