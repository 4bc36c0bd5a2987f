"""Reading an archive back: its streams and their layout records, the segments with where
each begins, and the annotations of a whole stream at archive indices (or, through the
segments' ``stream_start``, at the stream's own indices: a replayed record's)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ecgmon.archive.annotations import read_annotations
from ecgmon.archive.layout import NULL, Layout
from ecgmon.archive.segment import segment_comments


@dataclass(frozen=True)
class SegmentInfo:
    name: str  # NULL for a gap
    start: int  # archive index of its first sample
    length: int
    stream_start: int | None  # the stream's index of its first sample (None for a gap)
    start_wall: float | None
    run: str | None


def layouts(root: Path) -> list[Layout]:
    """Every layout record under ``root`` (one folder per stream), readable or not skipped."""
    out = []
    for hea in sorted(Path(root).glob("*/*_layout.hea")):
        name = hea.name[: -len("_layout.hea")]
        if (hea.parent / f"{name}.hea").exists():
            out.append(Layout.load(hea.parent, name))
    return out


def open_layout(path: Path) -> Layout:
    """A layout record from its folder (``DIR/STREAM``) or its header (``DIR/STREAM/NAME.hea``)."""
    path = Path(path)
    if path.is_dir():
        names = sorted(p.name[: -len("_layout.hea")] for p in path.glob("*_layout.hea"))
        if not names:
            raise FileNotFoundError(f"{path} holds no ecgmon archive (no *_layout.hea)")
        name = path.name if path.name in names else names[-1]
        return Layout.load(path, name)
    base = path.with_suffix("") if path.suffix == ".hea" else path
    return Layout.load(base.parent, base.name)


def segments(layout: Layout) -> list[SegmentInfo]:
    out, pos = [], layout.first_sample
    for name, n in layout.entries:
        if name == NULL:
            out.append(SegmentInfo(NULL, pos, n, None, None, None))
        else:
            c = segment_comments(layout.folder, name)
            out.append(SegmentInfo(name, pos, n, int(c["stream_start"]) if "stream_start" in c else None,
                                   float(c["start_wall"]) if "start_wall" in c else None, c.get("run")))
        pos += n
    return out


def annotations(layout: Layout, ext: str, stream_indices: bool = False, run: str | None = None
                ) -> tuple[np.ndarray, list[str], list[str]]:
    """The annotations ``ext`` of every segment, in order, at archive indices (from the first
    listed sample), or with ``stream_indices`` at the stream's own (a replayed record's), and
    with ``run`` only those of one daemon run."""
    samples: list[int] = []
    symbols: list[str] = []
    aux: list[str] = []
    for seg in segments(layout):
        if seg.name == NULL or (run is not None and seg.run != run):
            continue
        base = (seg.stream_start or 0) if stream_indices else seg.start - layout.first_sample
        for s, sym, a in read_annotations(layout.folder, seg.name, ext):
            samples.append(base + s)
            symbols.append(sym)
            aux.append(a)
    return np.asarray(samples, dtype=np.int64), symbols, aux
