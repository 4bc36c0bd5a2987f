"""Benchmark: the inference batcher serving a CNN-BiLSTM beat model on the CPU (or cuda with
``--device``) for batch limits 1, 16, 64 and 256: beats per second and submit → result
latency percentiles, with many simulated streams submitting concurrently.

Two loads per batch limit: *flood*, every beat of every stream submitted as fast as
possible (the most the batcher can serve: beats per second); and *paced*, the streams'
beats arriving at a steady total rate, as in a ward (the latency a beat sees). The network
is ``ecgmon.models.networks.BeatCNNBiLSTM`` with random weights (its cost does not depend on
them nor on the input values), or a stand-in of the same shape if that is not importable.
The figures depend on what else runs on the cores: with torch's default of one intra-op
thread per core, a busy neighbour process stalls every parallel region of the model.

    python bench/inference.py [--beats 4000] [--streams 32] [--rate 1000] [--delay-ms 20]
                              [--batches 1 16 64 256] [--device auto|cpu|cuda] [--threads 1 2]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import random
import time
import warnings

import numpy as np
from rich.console import Console
from rich.table import Table
import torch
from torch import Tensor, nn

from ecgmon.monitor.batcher import InferenceBatcher
from ecgmon.monitor.model_loader import resolve_device

WINDOW = 252  # samples: 0.7 s at 360 Hz around the R peak
RR_FEATURES = 4


class StandInBeatNet(nn.Module):
    """A CNN-BiLSTM beat network of the shipped model's shape, used when it is not importable."""

    def __init__(self) -> None:
        super().__init__()

        def block(cin: int, cout: int, k: int) -> nn.Sequential:
            conv = nn.Conv1d(cin, cout, k, padding=k // 2)
            return nn.Sequential(conv, nn.BatchNorm1d(cout), nn.ReLU(), nn.MaxPool1d(2))

        self.conv = nn.Sequential(block(1, 16, 7), block(16, 32, 5), block(32, 48, 3))
        self.lstm = nn.LSTM(48, 32, batch_first=True, bidirectional=True)
        self.rr = nn.Sequential(nn.Linear(RR_FEATURES, 16), nn.ReLU())
        self.head = nn.Sequential(nn.Linear(128 + 16, 64), nn.ReLU(), nn.Linear(64, 5))

    def forward(self, window: Tensor, rr: Tensor) -> Tensor:
        x = (window - window.mean(dim=1, keepdim=True)) / (window.std(dim=1, keepdim=True) + 1e-6)
        seq, _ = self.lstm(self.conv(x.unsqueeze(1)).transpose(1, 2))
        pooled = torch.cat([seq.mean(dim=1), seq.amax(dim=1)], dim=1)
        return self.head(torch.cat([pooled, self.rr(rr)], dim=1))


def build_model(device: torch.device) -> tuple[torch.jit.ScriptModule, str]:
    try:
        from ecgmon.models.networks import BeatCNNBiLSTM

        net, source = BeatCNNBiLSTM(), "ecgmon.models.networks.BeatCNNBiLSTM"
    except Exception as err:  # noqa: BLE001 - any failure: fall back to the stand-in
        net, source = StandInBeatNet(), f"inline stand-in ({type(err).__name__})"
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch 2.13 deprecates jit.script
        scripted = torch.jit.script(net.eval()).to(device)
    params = sum(p.numel() for p in net.parameters())
    return scripted, f"{source}, {params:,} parameters, TorchScript"


def beats(n: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    windows = rng.standard_normal((n, WINDOW)).astype(np.float32)
    rr = (0.8 + 0.1 * rng.standard_normal((n, RR_FEATURES))).astype(np.float32)
    return list(zip(windows, rr))


async def drive(
    batcher: InferenceBatcher, items: list[tuple[np.ndarray, np.ndarray]], streams: int, rate: float | None
) -> tuple[float, np.ndarray]:
    """Feed ``items`` from ``streams`` concurrent streams; → (seconds, per-beat latencies in s).

    Each beat is its own task, as a pipeline does not wait for one beat's class before
    detecting the next. ``rate`` None: as fast as possible; else beats per second in total,
    each stream at rate/streams with a random phase and ±10 % jitter.
    """
    latencies: list[float] = []

    async def one(window: np.ndarray, rr: np.ndarray) -> None:
        t = time.perf_counter()
        await batcher.submit(window, rr)
        latencies.append(time.perf_counter() - t)

    async def stream(k: int) -> None:
        mine = items[k::streams]
        tasks = []
        period = streams / rate if rate else 0.0
        next_t = time.perf_counter() + random.uniform(0, period)
        for window, rr in mine:
            if rate:
                await asyncio.sleep(max(0.0, next_t - time.perf_counter()))
                next_t += period * random.uniform(0.9, 1.1)
            else:
                await asyncio.sleep(0)  # let the other streams in
            tasks.append(asyncio.create_task(one(window, rr)))
        await asyncio.gather(*tasks)

    t0 = time.perf_counter()
    await asyncio.gather(*(stream(k) for k in range(streams)))
    return time.perf_counter() - t0, np.array(latencies)


async def measure(
    model: torch.jit.ScriptModule, device: torch.device, max_batch: int, args: argparse.Namespace
) -> list[dict[str, float]]:
    rows = []
    for load, rate, n in (("flood", None, args.beats), ("paced", args.rate, args.paced_beats)):
        async with InferenceBatcher(model, max_batch, args.delay_ms, device, name=f"beat-{max_batch}") as batcher:
            # Warm-up, untimed: TorchScript profiles and optimises the graph on its first calls.
            await drive(batcher, beats(3 * max_batch + 8, seed=1), streams=min(args.streams, 8), rate=None)
            before = batcher.stats()
            seconds, lat = await drive(batcher, beats(n, seed=2), args.streams, rate)
            after = batcher.stats()
        batches = after["batches"] - before["batches"]
        p50, p95, p99 = np.percentile(lat * 1000.0, [50, 95, 99])
        rows.append(
            {
                "max_batch": max_batch,
                "load": "flood" if rate is None else f"{rate:g}/s",
                "beats_s": n / seconds,
                "mean_batch": (after["items"] - before["items"]) / batches,
                "p50": p50,
                "p95": p95,
                "p99": p99,
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--beats", type=int, default=4000, help="beats of the flood load")
    parser.add_argument("--paced-beats", type=int, default=3000, help="beats of the paced load")
    parser.add_argument("--streams", type=int, default=32)
    parser.add_argument("--rate", type=float, default=1000.0, help="paced load: beats per second in total")
    parser.add_argument("--delay-ms", type=float, default=20.0, help="max_batch_delay_ms (config default 20)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64, 256], help="max_batch values")
    parser.add_argument("--device", default="cpu", help="auto, cpu or cuda (default cpu)")
    parser.add_argument(
        "--threads", type=int, nargs="+", default=[torch.get_num_threads()],
        help="torch intra-op thread counts to measure (default: torch's own, one per core)",
    )
    args = parser.parse_args()

    console = Console()
    device = resolve_device(args.device)
    model, description = build_model(device)
    load = os.getloadavg()[0]
    console.print(
        f"torch {torch.__version__} · device [bold]{device}[/] · {os.cpu_count()} cores · intra-op threads "
        f"{torch.get_num_threads()} by default, measured with {', '.join(map(str, args.threads))} · inter-op "
        f"threads {torch.get_num_interop_threads()}\n"
        f"load average before the run {load:.2f}"
        + (" [yellow](other processes use the cores: figures will be lower and vary)[/]" if load > 0.5 else "")
        + "\n"
        f"model: {description}\n"
        f"{args.streams} streams · max_batch_delay_ms {args.delay_ms:g} · flood: {args.beats} beats as fast "
        f"as possible · paced: {args.paced_beats} beats at {args.rate:g} beats/s in total\n"
        "latency = submit → result (queue wait + compute)"
    )
    random.seed(0)
    table = Table(title="inference batcher: beat model")
    table.caption = (
        "flood latency is mostly the backlog of beats submitted at once; paced latency is what a beat sees"
    )
    for col in ("threads", "max_batch", "load", "beats/s", "mean batch", "p50 ms", "p95 ms", "p99 ms"):
        table.add_column(col, justify="left" if col == "load" else "right")
    for threads, max_batch in itertools.product(args.threads, args.batches):
        torch.set_num_threads(threads)
        rows = asyncio.run(measure(model, device, max_batch, args))
        for row in rows:
            table.add_row(
                str(threads),
                str(row["max_batch"]),
                row["load"],
                f"{row['beats_s']:,.0f}",
                f"{row['mean_batch']:.1f}",
                f"{row['p50']:.1f}",
                f"{row['p95']:.1f}",
                f"{row['p99']:.1f}",
            )
        table.add_section()
    console.print(table)


if __name__ == "__main__":
    main()
