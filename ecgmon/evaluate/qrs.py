"""`ecgmon evaluate qrs`: replay records through the streaming pipeline as fast as possible
and score its beats against the reference annotations, ANSI/AAMI EC57 style.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import numpy as np

from ecgmon.config import Config
from ecgmon.monitor.pipeline import StreamPipeline
from ecgmon.evaluate.matching import MATCH_WINDOW_S, QRSScore, score_beats
from ecgmon.monitor.sources.base import SourceError
from ecgmon.monitor.sources.record import RecordSource
from ecgmon.replay.records import RecordError, load_record
from ecgmon.replay.reference import reference_beats
from ecgmon.schema import BeatMessage

DELAY_PERCENTILES = (5, 25, 50, 75, 95, 99)


@dataclass
class RecordResult:
    record: str
    fs: float
    duration_s: float
    score: QRSScore
    delays_ms: np.ndarray = field(repr=False)
    excluded_s: float = 0.0

    def as_dict(self) -> dict:
        return {
            "record": self.record,
            "fs": self.fs,
            "duration_s": round(self.duration_s, 3),
            "excluded_vf_s": round(self.excluded_s, 3),
            "tp": self.score.tp,
            "fp": self.score.fp,
            "fn": self.score.fn,
            "se": round(self.score.se, 6),
            "ppv": round(self.score.ppv, 6),
            "median_delay_ms": round(float(np.median(self.delays_ms)), 1) if self.delays_ms.size else None,
        }


def delay_summary(delays_ms: np.ndarray) -> dict:
    if delays_ms.size == 0:
        return {}
    out = {f"p{p}": round(float(np.percentile(delays_ms, p)), 1) for p in DELAY_PERCENTILES}
    out["mean"] = round(float(delays_ms.mean()), 1)
    out["max"] = round(float(delays_ms.max()), 1)
    return out


async def _replay_beats(source: RecordSource, config: Config) -> list[BeatMessage]:
    pipeline = StreamPipeline(source.stream, source.fs, source.lead, config)
    beats = []
    async for chunk in source.chunks():
        beats.extend(m for m in pipeline.feed(chunk) if isinstance(m, BeatMessage))
        pipeline.take_jobs()  # the alarms' beats: not scored here
    return beats


def evaluate_record(spec: str, config: Config) -> RecordResult:
    """Replay one record at ``config.replay`` settings and score its beats.

    Raises SourceError when the record cannot be read or has no reference annotations.
    """
    try:
        rec = load_record(spec, config.data)
    except RecordError as err:
        raise SourceError(str(err)) from None
    source = RecordSource(spec, config, record=rec)
    if rec.ann_samples is None or rec.ann_symbols is None:
        raise SourceError(f"{spec} has no reference beat annotations ('atr') to score against")
    ref = reference_beats(rec.ann_samples, rec.ann_symbols, rec.n_samples)
    beats = asyncio.run(_replay_beats(source, config))
    detected = np.array([b.sample for b in beats], dtype=np.int64)
    delays = np.array([b.delay_ms for b in beats])
    return RecordResult(
        record=spec,
        fs=rec.fs,
        duration_s=rec.n_samples / rec.fs,
        score=score_beats(ref, detected, rec.fs, MATCH_WINDOW_S),
        delays_ms=delays[ref.keep(detected)] if detected.size else delays,
        excluded_s=sum(b - a for a, b in ref.excluded) / rec.fs,
    )


def summary(results: list[RecordResult]) -> dict:
    gross = sum((r.score for r in results), QRSScore(0, 0, 0))
    delays = np.concatenate([r.delays_ms for r in results]) if results else np.array([])
    return {
        "standard": "ANSI/AAMI EC57 beat detection, 150 ms match window, VF/flutter episodes excluded",
        "records": [r.as_dict() for r in results],
        "gross": {
            "tp": gross.tp, "fp": gross.fp, "fn": gross.fn,
            "se": round(gross.se, 6), "ppv": round(gross.ppv, 6),
        },
        "average": {
            "se": round(float(np.mean([r.score.se for r in results])), 6) if results else None,
            "ppv": round(float(np.mean([r.score.ppv for r in results])), 6) if results else None,
        },
        "delay_ms": delay_summary(delays),
    }


def render(result: dict):
    """The EC57-style report of ``summary()`` as Rich renderables: per-record table, delays."""
    from rich.table import Table

    table = Table(title=result["standard"], show_footer=True)
    gross, avg = result["gross"], result["average"]
    columns = [
        ("Record", "Gross", "left"),
        ("TP", str(gross["tp"]), "right"),
        ("FP", str(gross["fp"]), "right"),
        ("FN", str(gross["fn"]), "right"),
        ("Se %", f"{100 * gross['se']:.2f}", "right"),
        ("+P %", f"{100 * gross['ppv']:.2f}", "right"),
        ("median delay ms", "", "right"),
    ]
    for name, footer, justify in columns:
        table.add_column(name, footer=footer, justify=justify)
    for r in result["records"]:
        table.add_row(
            r["record"], str(r["tp"]), str(r["fp"]), str(r["fn"]),
            f"{100 * r['se']:.2f}", f"{100 * r['ppv']:.2f}",
            "" if r["median_delay_ms"] is None else f"{r['median_delay_ms']:.0f}",
        )
    lines = [table]
    if avg["se"] is not None:
        lines.append(f"Average over records: Se {100 * avg['se']:.2f} %, +P {100 * avg['ppv']:.2f} %")
    d = result["delay_ms"]
    if d:
        lines.append(
            "Detection delay (R peak to decision, signal time): "
            + ", ".join(f"{k} {v:.0f} ms" for k, v in d.items())
        )
    return lines
