"""Benchmark: the whole per-stream ECG pipeline (filters, R-peak detection, vitals, alarm
engine, wave frames, beat and segment windows) fed a record in live-sized chunks, with the
shipped beat and segment models run on its windows; how many live streams one core serves.

Per record: CPU seconds per hour of signal for the pipeline alone and split into its alarm
engine and the rest (and, of the rest, the per-beat work of cutting the beats' windows and
computing their RR and patient-adaptive inputs, also per beat), for the models (batches of up to 512 windows, as ``record_run`` does;
the daemon's batcher is measured by bench/inference.py), per-chunk latency percentiles of
``StreamPipeline.feed``, and, as a peer measured in the same run, wfdb's XQRS detecting the
same record offline. One process, one thread (torch too): figures are per core.

    ECGMON_DATA=../shared/data nice -n 10 .venv/bin/python bench/pipeline.py [--records 100 119 ...]
                                  [--chunk-s 0.1] [--out bench/results/pipeline]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
import resource
import sys
import time
from typing import Any, Callable

import numpy as np
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ecgmon.chunk import Chunk  # noqa: E402
from ecgmon.config import Config, DataConfig  # noqa: E402
from ecgmon.monitor.inference_job import InferenceJob  # noqa: E402
from ecgmon.monitor.model_set import load_models  # noqa: E402
from ecgmon.monitor.pipeline import StreamPipeline  # noqa: E402
from ecgmon.evaluate.record_run import run_jobs  # noqa: E402
from ecgmon.replay.records import load_record  # noqa: E402

# Records with clean sinus rhythm (100), noise (108, 203), ectopy and runs (106, 119, 208),
# atrial fibrillation (201, 203) and ventricular flutter (207).
RECORDS = ("100", "106", "108", "119", "201", "203", "207", "208")
MODEL_EVERY_S = 10.0  # model results at most this much signal late, as in record_run


def _timed(obj: Any, name: str, spent: list[float]) -> None:
    """Wrap ``obj.name`` so the CPU time of its calls adds up in ``spent[0]``."""
    f: Callable = getattr(obj, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t = time.process_time()
        try:
            return f(*args, **kwargs)
        finally:
            spent[0] += time.process_time() - t

    setattr(obj, name, wrapper)


def _timed_steps(obj: Any, name: str, spent: list[float]) -> None:
    """``_timed`` for a generator method (the alarm engine's ``feed_steps``), counting the time
    it waits at each yield: its caller measures the yielded VF windows there."""
    f: Callable = getattr(obj, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t = time.process_time()
        try:
            return (yield from f(*args, **kwargs))
        finally:
            spent[0] += time.process_time() - t

    setattr(obj, name, wrapper)


def run(spec: str, config: Config, data: DataConfig, models: dict, chunk_s: float) -> dict:
    rec = load_record(f"mitdb:{spec}", data)
    x = rec.signal[:, :1]
    pipe = StreamPipeline(spec, rec.fs, rec.channels[0], config, models.get("beat"), models.get("segment"))
    alarms, inputs = [0.0], [0.0]
    _timed_steps(pipe.alarms, "feed_steps", alarms)  # what the pipeline's feed runs, VF measures included
    # Per beat, not per chunk: cutting the beat windows and computing the RR and patient-adaptive inputs.
    _timed(pipe._beat_jobs, "jobs", inputs)
    _timed(pipe.alarms, "beat_done", alarms)
    step = max(1, round(chunk_s * rec.fs))
    every = max(1, round(MODEL_EVERY_S / chunk_s))
    latency: list[float] = []
    jobs: list[InferenceJob] = []
    # CPU of feed (alarm checks included) and of run_jobs (the beats' alarm checks included:
    # finishing a beat's job hands it to the alarm engine).
    cpu = {"feed": 0.0, "run_jobs": 0.0, "alarms_in_run_jobs": 0.0}

    def model_run(batch: list[InferenceJob]) -> None:
        c, a = time.process_time(), alarms[0]
        run_jobs(batch, models)
        cpu["run_jobs"] += time.process_time() - c
        cpu["alarms_in_run_jobs"] += alarms[0] - a

    for n, pos in enumerate(range(0, x.shape[0], step), 1):
        chunk = Chunk(spec, rec.fs, (rec.channels[0],), pos, x[pos : pos + step].copy())
        t, c = time.perf_counter(), time.process_time()
        pipe.feed(chunk)
        jobs.extend(pipe.take_jobs())
        latency.append(time.perf_counter() - t)
        cpu["feed"] += time.process_time() - c
        if n % every == 0:
            model_run(jobs)
            jobs = []
    model_run(jobs + pipe.finish())
    hours = x.shape[0] / rec.fs / 3600
    total = cpu["feed"] + cpu["run_jobs"]
    model_cpu = cpu["run_jobs"] - cpu["alarms_in_run_jobs"]

    from wfdb.processing import XQRS

    c = time.process_time()
    XQRS(sig=x[:, 0].astype(np.float64), fs=rec.fs).detect(verbose=False)
    xqrs_cpu = time.process_time() - c
    lat = np.array(latency) * 1e3
    return {
        "record": spec, "hours": round(hours, 4), "chunks": len(latency), "beats": pipe.beats,
        "cpu_s_per_h": {"all": round(total / hours, 2), "alarms": round(alarms[0] / hours, 2),
                        "models": round(model_cpu / hours, 2),
                        "rest_of_pipeline": round((total - alarms[0] - model_cpu) / hours, 2),
                        "beat_inputs": round(inputs[0] / hours, 2),
                        "xqrs_offline": round(xqrs_cpu / hours, 2)},
        "times_real_time": round(hours * 3600 / total, 1),
        "feed_ms": {"p50": round(float(np.percentile(lat, 50)), 3), "p99": round(float(np.percentile(lat, 99)), 3),
                    "max": round(float(lat.max()), 3)},
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default = Path(os.environ.get("ECGMON_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
    ap.add_argument("--data", type=Path, default=default)
    ap.add_argument("--records", nargs="+", default=list(RECORDS))
    ap.add_argument("--chunk-s", type=float, default=Config().replay.chunk_s)
    ap.add_argument("--out", type=Path, default=Path("bench/results/pipeline"))
    args = ap.parse_args()
    config = Config()
    data = DataConfig(folder=str(args.data), cache="/nonexistent")
    models, errors = load_models(config.models)
    for line in errors:
        print(line, file=sys.stderr)
    rows = []
    with Progress(console=Console(stderr=True)) as progress:
        task = progress.add_task("records", total=len(args.records))
        for spec in args.records:
            rows.append(run(spec, config, data, models, args.chunk_s))
            progress.advance(task)
    hours = sum(r["hours"] for r in rows)
    per_h = {k: round(sum(r["cpu_s_per_h"][k] * r["hours"] for r in rows) / hours, 2) for k in rows[0]["cpu_s_per_h"]}
    summary = {
        "command": "nice -n 10 .venv/bin/python bench/pipeline.py", "chunk_s": args.chunk_s,
        "models": sorted(models), "hours": round(hours, 3), "cpu_s_per_h": per_h,
        "streams_per_core": int(3600 / per_h["all"]),
        "xqrs_cpu_over_pipeline_cpu": round(per_h["xqrs_offline"] / per_h["all"], 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "records": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "pipeline.json").write_text(json.dumps(summary, indent=1))

    table = Table(title=f"one ECG stream, {args.chunk_s:g} s chunks, models: {', '.join(sorted(models)) or 'none'}")
    # CPU seconds per hour of signal: all, then split; XQRS: the peer, detection alone, offline.
    for col in ("record", "×RT", "CPU s/h", "alarms", "models", "rest", "XQRS", "p50 ms", "p99 ms", "max ms"):
        table.add_column(col, justify="right")
    for r in rows:
        c, f = r["cpu_s_per_h"], r["feed_ms"]
        table.add_row(r["record"], f"{r['times_real_time']:,.0f}", f"{c['all']:.1f}", f"{c['alarms']:.1f}",
                      f"{c['models']:.1f}", f"{c['rest_of_pipeline']:.1f}", f"{c['xqrs_offline']:.1f}",
                      f"{f['p50']:.3f}", f"{f['p99']:.3f}", f"{f['max']:.1f}")
    Console(width=max(100, Console().width)).print(table)
    print(f"all records: {per_h['all']:.1f} CPU s per hour of signal (alarms {per_h['alarms']:.1f}, models "
          f"{per_h['models']:.1f}, rest {per_h['rest_of_pipeline']:.1f}); one core serves about "
          f"{summary['streams_per_core']} live streams; XQRS alone offline costs "
          f"{summary['xqrs_cpu_over_pipeline_cpu']:.2f}× the whole pipeline; peak RSS {summary['peak_rss_mb']} MB")
    beats = sum(r["beats"] for r in rows)
    print(f"of the rest, the beats' model inputs (windows, RR and patient-adaptive inputs): "
          f"{per_h['beat_inputs']:.1f} CPU s per hour, {1e6 * per_h['beat_inputs'] * hours / beats:.0f} µs a beat "
          f"({beats / hours / 3600:.2f} beats/s)")
    print(f"wrote {args.out / 'pipeline.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
