"""One closed segment: a complete WFDB record (``.hea`` + ``.dat``, format 16) written to a
scratch name, fsynced and renamed, the header last, so a segment header on disk always
means a complete segment."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
import re

import numpy as np
import wfdb

from ecgmon.archive.fsio import publish_files, scratch_dir
from ecgmon.archive.layout import SignalSpec

INVALID = -32768  # WFDB format 16's invalid sample (NaN when read back physically)
DIGITAL_MAX = 32767


def to_digital(samples: np.ndarray, spec: SignalSpec) -> tuple[np.ndarray, int]:
    """Physical ``(n, ch)`` samples as format-16 integers with the spec's gains and
    baselines, and how many had to be clipped; NaN becomes WFDB's invalid sample.

    A replayed record keeps its own gain and baseline, so its digital values come back
    exactly (float32 holds them to far better than half a step)."""
    x = samples.astype(np.float64) * np.asarray(spec.gains) + np.asarray(spec.baselines)
    bad = ~np.isfinite(x)
    x = np.where(bad, 0.0, np.rint(x))
    over = np.abs(x) > DIGITAL_MAX
    d = np.clip(x, -DIGITAL_MAX, DIGITAL_MAX).astype(np.int16)
    d[bad] = INVALID
    return d, int(over.sum())


def write_segment(
    folder: Path, name: str, spec: SignalSpec, digital: np.ndarray, start_wall: float,
    comments: dict[str, str | int | float],
) -> int:
    """Write segment ``folder/name`` (``digital``: int16 ``(n, ch)``), durably; its size in bytes.

    ``start_wall`` (Unix seconds of the first sample) goes into the header's base date and
    time (UTC), ``comments`` into ``# ecgmon key=value`` lines for the archive's own use."""
    scratch = scratch_dir(folder)
    when = datetime.fromtimestamp(start_wall, tz=timezone.utc).replace(tzinfo=None)
    wfdb.wrsamp(
        name, fs=spec.fs, units=list(spec.units), sig_name=list(spec.channels),
        d_signal=digital, fmt=["16"] * len(spec.channels), adc_gain=list(spec.gains),
        baseline=list(spec.baselines),
        comments=["ecgmon " + " ".join(f"{k}={v}" for k, v in comments.items())],
        base_datetime=when, write_dir=str(scratch),
    )
    publish_files(scratch, folder, [f"{name}.dat", f"{name}.hea"])
    return (folder / f"{name}.dat").stat().st_size + (folder / f"{name}.hea").stat().st_size


def segment_comments(folder: Path, name: str) -> dict[str, str]:
    """The ``# ecgmon key=value`` fields of a segment header ({} if it has none)."""
    out: dict[str, str] = {}
    for ln in (folder / f"{name}.hea").read_text(encoding="utf-8").splitlines():
        if ln.startswith("#") and "ecgmon" in ln:
            out.update(re.findall(r"(\w+)=(\S+)", ln))
    return out
