"""Benchmark: ecgmon's streaming R-peak detector against wfdb's XQRS (and neurokit2's
default method when installed) on the MIT-BIH records in $ECGMON_DATA/mitdb.

Prints gross Se and +P (EC57, 150 ms window, VF episodes excluded), throughput as a
multiple of real time and the throughput ratios, all measured in the same run on the same
records. ecgmon runs as it streams, chunk by chunk (its beats do not depend on the chunk
length, so a faster-than-real-time replay may use long chunks); it is measured at the
live chunk length (0.1 s, per-chunk latency percentiles printed) and at long chunks (10 s).

    ECGMON_DATA=../shared/data python bench/qrs.py [--records 100 101 ...]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
import resource
import time
from typing import Callable

import numpy as np
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from ecgmon.config import DataConfig
from ecgmon.monitor.dsp.qrs import QRSDetector
from ecgmon.evaluate.matching import QRSScore, score_beats
from ecgmon.replay.records import load_record
from ecgmon.replay.reference import reference_beats


def ecgmon_stream(x: np.ndarray, fs: float, chunk: int, latencies: list[float]) -> np.ndarray:
    det = QRSDetector(fs)
    beats = []
    for i in range(0, len(x), chunk):
        t = time.perf_counter()
        beats += det.process(x[i : i + chunk])
        latencies.append(time.perf_counter() - t)
    return np.array([b.sample for b in beats], dtype=np.int64)


def xqrs(x: np.ndarray, fs: float) -> np.ndarray:
    from wfdb.processing import XQRS

    detector = XQRS(sig=x, fs=fs)
    detector.detect(verbose=False)
    return np.asarray(detector.qrs_inds, dtype=np.int64)


def neurokit(x: np.ndarray, fs: float) -> np.ndarray:
    import neurokit2 as nk

    _, info = nk.ecg_peaks(x, sampling_rate=int(fs))
    return np.asarray(info["ECG_R_Peaks"], dtype=np.int64)


def main() -> None:
    data = Path(os.environ.get("ECGMON_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", nargs="*", help="record names (default: all in mitdb/RECORDS)")
    parser.add_argument("--chunk-s", type=float, nargs="+", default=[0.1, 10.0],
                        help="ecgmon chunk lengths to measure (seconds)")
    parser.add_argument("--no-neurokit", action="store_true")
    args = parser.parse_args()
    records = args.records or (data / "mitdb" / "RECORDS").read_text().split()

    detectors: dict[str, Callable[[np.ndarray, float], np.ndarray]] = {}
    latencies: dict[float, list[float]] = {c: [] for c in args.chunk_s}
    for chunk_s in args.chunk_s:
        detectors[f"ecgmon, {chunk_s:g} s chunks"] = (
            lambda x, fs, c=chunk_s: ecgmon_stream(x, fs, max(1, round(c * fs)), latencies[c])
        )
    detectors["wfdb XQRS (offline)"] = xqrs
    if not args.no_neurokit:
        try:
            import neurokit2  # noqa: F401

            detectors["neurokit2 default (offline, non-causal)"] = neurokit
        except ImportError:
            pass

    scores = {name: QRSScore(0, 0, 0) for name in detectors}
    elapsed = {name: 0.0 for name in detectors}
    signal_s = 0.0
    console = Console()
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("records", total=len(records))
        for name in records:
            rec = load_record(f"mitdb:{name}", DataConfig(folder=str(data)))
            x = rec.signal[:, 0].astype(np.float64)
            ref = reference_beats(rec.ann_samples, rec.ann_symbols, rec.n_samples)
            signal_s += rec.n_samples / rec.fs
            for det_name, detect in detectors.items():
                t = time.perf_counter()
                found = detect(x, rec.fs)
                elapsed[det_name] += time.perf_counter() - t
                scores[det_name] += score_beats(ref, found, rec.fs)
            progress.advance(task)

    table = Table(title=f"R-peak detection on {len(records)} MIT-BIH records ({signal_s / 3600:.1f} h)")
    for col in ("detector", "TP", "FP", "FN", "Se %", "+P %", "× real time", "÷ XQRS"):
        table.add_column(col, justify="right")
    xqrs_speed = signal_s / elapsed["wfdb XQRS (offline)"]
    for det_name, s in scores.items():
        speed = signal_s / elapsed[det_name]
        table.add_row(
            det_name, str(s.tp), str(s.fp), str(s.fn), f"{100 * s.se:.2f}", f"{100 * s.ppv:.2f}",
            f"{speed:,.0f}", f"{speed / xqrs_speed:,.1f}",
        )
    console.print(table)
    for chunk_s, lat in latencies.items():
        us = np.array(lat) * 1e6
        console.print(
            f"ecgmon per-chunk processing, {chunk_s:g} s chunks: p50 {np.percentile(us, 50):,.0f} µs, "
            f"p99 {np.percentile(us, 99):,.0f} µs, max {us.max():,.0f} µs"
        )
    console.print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
