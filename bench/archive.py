"""Benchmark: what the archive (ecgmon.archive) costs per stream-hour, beside the daemon's own
work on the same stream in the same run.

Per record: the daemon's CPU seconds per hour of signal (the stream pipeline with the shipped
beat and segment models, live-sized chunks, as ``record_run`` drives it), then the archive's:
an ArchiveWriter fed the same chunks and every published message (queue puts on the caller's
side and the writer thread's WFDB segments, annotation files, fsyncs and audit entries;
process CPU time counts both threads), its share of the daemon's CPU, and the bytes on disk
per stream-hour (signal, annotations, headers). One process, one thread for torch.

    ECGMON_DATA=../shared/data nice -n 10 .venv/bin/python bench/archive.py [--records 100 119]
                                  [--minutes 30] [--segment-s 60] [--no-models]
"""

from __future__ import annotations

import argparse
from pathlib import Path
import shutil
import sys
import tempfile
import time

import numpy as np
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ecgmon.archive.adc import source_adc  # noqa: E402
from ecgmon.archive.writer import ArchiveWriter  # noqa: E402
from ecgmon.chunk import Chunk  # noqa: E402
from ecgmon.config import Config  # noqa: E402
from ecgmon.evaluate.record_run import run_record  # noqa: E402
from ecgmon.monitor.model_set import load_models  # noqa: E402
from ecgmon.monitor.sources.record import RecordSource  # noqa: E402
from ecgmon.replay.records import load_record  # noqa: E402

LIVE_CHUNK_S = 0.1  # the replay's default chunk: what a live stream hands the daemon


def bench_record(name: str, minutes: float, segment_s: float, models: dict, root: Path) -> dict:
    config = Config()
    rec = load_record(f"mitdb:{name}", config.data, annotations=False)
    n = min(rec.n_samples, int(minutes * 60 * rec.fs))
    rec.signal = rec.signal[:n]
    source = RecordSource(f"mitdb:{name}", config, stream=f"b{name}", record=rec)
    hours = n / rec.fs / 3600

    t = time.process_time()
    msgs = run_record(f"mitdb:{name}", config, models, chunk_s=LIVE_CHUNK_S, record=rec)
    daemon_cpu = time.process_time() - t

    step = max(1, round(LIVE_CHUNK_S * rec.fs))
    samples = rec.signal[:, source.columns]
    chunks = [Chunk(source.stream, rec.fs, source.channels, s, samples[s : s + step].copy())
              for s in range(0, n, step)]
    for m in msgs:  # the messages of the stream under the archive's stream id
        m.stream = source.stream
    # Messages interleaved with the chunks by the signal time they were known at.
    known = np.array([getattr(m, "sample", None) or round(getattr(m, "time_s", 0.0) * rec.fs) for m in msgs])
    order = np.searchsorted(np.array([c.end for c in chunks]), known)
    by_chunk: dict[int, list] = {}
    for i, m in zip(order, msgs):
        by_chunk.setdefault(int(i), []).append(m)
    folder = root / name
    writer = ArchiveWriter(folder, segment_s=segment_s, queue_items=len(chunks) + len(msgs) + 10,
                           sources=[source.spec])
    t = time.process_time()
    writer.start()
    for i, chunk in enumerate(chunks):
        writer.feed(chunk, source)
        for m in by_chunk.get(i, ()):
            writer.message(m)
    for m in by_chunk.get(len(chunks), ()):
        writer.message(m)
    writer.close(timeout_s=600)
    archive_cpu = time.process_time() - t
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    beats = sum(1 for m in msgs if m.kind == "beat")
    return {
        "record": name, "hours": hours, "daemon_cpu_s_per_h": daemon_cpu / hours,
        "archive_cpu_s_per_h": archive_cpu / hours, "share": archive_cpu / daemon_cpu,
        "mb_per_h": size / 1e6 / hours, "beats": beats, "dropped": writer.dropped,
        "segments": len(list((folder / source.stream).glob(f"{source.stream}_*.dat"))),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", nargs="+", default=["100", "119"])
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--segment-s", type=float, default=60.0)
    ap.add_argument("--no-models", action="store_true", help="the pipeline alone as the daemon's figure")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    config = Config()
    if args.no_models:
        config.models.beat = config.models.segment = config.models.pcg = ""
    models, errors = load_models(config.models)
    for e in errors:
        print("model:", e)
    root = Path(tempfile.mkdtemp(prefix="ecgmon-bench-archive-"))
    rows = []
    try:
        for name in args.records:
            rows.append(bench_record(name, args.minutes, args.segment_s, models, root))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    table = Table(title=f"archive cost per stream-hour (segments of {args.segment_s:g} s, "
                        f"{'no models' if args.no_models else 'beat + segment models'}; 1 core)")
    for col in ("record", "signal h", "beats", "daemon CPU s/h", "archive CPU s/h", "archive/daemon",
                "disk MB/h", "segments", "dropped"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(r["record"], f"{r['hours']:.2f}", str(r["beats"]), f"{r['daemon_cpu_s_per_h']:.1f}",
                      f"{r['archive_cpu_s_per_h']:.2f}", f"{100 * r['share']:.1f} %", f"{r['mb_per_h']:.2f}",
                      str(r["segments"]), str(r["dropped"]))
    Console(width=160).print(table)


if __name__ == "__main__":
    main()
