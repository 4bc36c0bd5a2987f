"""Reading an archive back: its streams and their layout records, the segments with where
each begins, and the annotations of a whole stream at archive indices (or, through the
segments' ``stream_start``, at the stream's own indices: a replayed record's)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ecgmon.archive.annotations import read_annotations
from ecgmon.archive.layout import NULL, SEGMENT_NAME, Layout
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


# -- listing ------------------------------------------------------------------------------


@dataclass(frozen=True)
class StreamSummary:
    stream: str
    record: str  # the layout record's name
    header: Path
    fs: float
    channels: tuple[str, ...]
    segments: int
    gaps: int
    signal_s: float  # recorded signal, gaps left out
    span_s: float  # the record's length, gaps included
    first_wall: float | None
    last_wall: float | None  # wall time of the end of the last segment
    size_bytes: int


def summarise(layout: Layout) -> StreamSummary:
    segs = segments(layout)
    real = [s for s in segs if s.name != NULL]
    fs = layout.spec.fs
    size = sum(p.stat().st_size for p in layout.folder.glob(f"{layout.name}*") if p.is_file())
    last = real[-1] if real else None
    return StreamSummary(
        stream=layout.folder.name, record=layout.name, header=layout.header_path, fs=fs,
        channels=layout.spec.channels, segments=len(real), gaps=len(segs) - len(real),
        signal_s=sum(s.length for s in real) / fs, span_s=layout.length / fs,
        first_wall=real[0].start_wall if real else None,
        last_wall=(last.start_wall + last.length / fs) if last and last.start_wall is not None else None,
        size_bytes=size,
    )


# -- verifying ----------------------------------------------------------------------------


def verify(layout: Layout) -> list[str]:
    """The problems of one layout record: a listed segment missing, unreadable, of another
    length, rate or signals than listed, a signal file whose checksum or size does not match
    its header, an unreadable annotation file, and segments on disk the layout does not list.
    [] when everything reads back."""
    import wfdb

    from ecgmon.archive.annotations import BEAT_EXT, EVENT_EXT

    problems = []
    listed = set()
    for name, n in layout.entries:
        if name == NULL:
            continue
        listed.add(name)
        base = layout.folder / name
        try:
            rec = wfdb.rdrecord(str(base), physical=False)
        except Exception as err:  # a missing or corrupt file: wfdb raises many types
            problems.append(f"{name}: cannot be read ({type(err).__name__}: {err})")
            continue
        if rec.sig_len != n:
            problems.append(f"{name}: {rec.sig_len} samples, the layout lists {n}")
        if rec.fs != layout.spec.fs or tuple(rec.sig_name) != layout.spec.channels:
            problems.append(f"{name}: rate or signals differ from the layout's")
        expected = rec.sig_len * rec.n_sig * 2
        size = (layout.folder / f"{name}.dat").stat().st_size
        if size != expected:
            problems.append(f"{name}.dat: {size} bytes, its header implies {expected}")
        # WFDB's checksum: the 16-bit sum of each signal's samples, stored in the header.
        got = [int(np.sum(rec.d_signal[:, c].astype(np.int64))) & 0xFFFF for c in range(rec.n_sig)]
        want = [int(c) & 0xFFFF for c in rec.checksum]
        if got != want:
            problems.append(f"{name}: checksum mismatch (header {want}, samples {got})")
        for ext in (BEAT_EXT, EVENT_EXT):
            if (layout.folder / f"{name}.{ext}").exists():
                try:
                    ann = wfdb.rdann(str(base), ext)
                    if len(ann.sample) and (ann.sample.min() < 0 or ann.sample.max() >= rec.sig_len + 1):
                        problems.append(f"{name}.{ext}: annotations outside the segment")
                except Exception as err:
                    problems.append(f"{name}.{ext}: cannot be read ({type(err).__name__}: {err})")
    for path in layout.folder.glob(f"{layout.name}_*.hea"):
        m = SEGMENT_NAME.match(path.stem)  # (not another record's: bed3_p2_000001 is bed3_p2's)
        if m and m["base"] == layout.name and path.stem not in listed:
            problems.append(f"{path.stem}: on disk but not listed in {layout.header_path.name}")
    try:
        whole = wfdb.rdheader(str(layout.folder / layout.name))
        if whole.sig_len != layout.length:
            problems.append(f"{layout.name}.hea: length {whole.sig_len}, its segments add up to {layout.length}")
    except Exception as err:
        problems.append(f"{layout.name}.hea: not a valid WFDB header ({type(err).__name__}: {err})")
    return problems


# -- exporting ----------------------------------------------------------------------------


def export(layout: Layout, sampfrom: int, sampto: int, out: Path) -> dict[str, int]:
    """Samples ``[sampfrom, sampto)`` of the layout record (indices from its first listed
    sample) as one plain WFDB record ``out`` (``out.hea``, ``out.dat``) with the beats and
    events in ``out.ecgmon`` and ``out.event``; gaps are WFDB's invalid sample. The counts
    of what was written."""
    import wfdb

    from ecgmon.archive.annotations import BEAT_EXT, EVENT_EXT
    from ecgmon.archive.segment import to_digital

    sampto = min(sampto, layout.length)
    if not 0 <= sampfrom < sampto:
        raise ValueError(f"nothing to export between samples {sampfrom} and {sampto} (the record has {layout.length})")
    rec = wfdb.rdrecord(str(layout.folder / layout.name), sampfrom=sampfrom, sampto=sampto)
    # Back to the archive's own digital values with the layout's gains (gaps stay invalid).
    digital, _ = to_digital(rec.p_signal, layout.spec)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    spec = layout.spec
    wfdb.wrsamp(out.name, fs=spec.fs, units=list(spec.units), sig_name=list(spec.channels), d_signal=digital,
                fmt=["16"] * len(spec.channels), adc_gain=list(spec.gains), baseline=list(spec.baselines),
                comments=[f"ecgmon export of {layout.folder.name}/{layout.name} samples {sampfrom}-{sampto}"],
                write_dir=str(out.parent))
    written = {"samples": sampto - sampfrom}
    for ext in (BEAT_EXT, EVENT_EXT):
        samples, symbols, aux = annotations(layout, ext)
        keep = (samples >= sampfrom) & (samples < sampto)
        written[ext] = int(keep.sum())
        if keep.any():
            idx = np.flatnonzero(keep)
            notes = [aux[i] for i in idx]
            wfdb.wrann(out.name, ext, samples[idx] - sampfrom, symbol=[symbols[i] for i in idx],
                       aux_note=notes if any(notes) else None, fs=spec.fs, write_dir=str(out.parent))
    return written


def time_index(layout: Layout, when: str) -> int:
    """A ``--from``/``--to`` value as a sample index of the layout record: seconds from its
    start (``90``, ``1.5``), or a UTC date and time (``2026-12-06T14:03:00``) found through
    the segments' start times."""
    from datetime import datetime, timezone

    try:
        return round(float(when) * layout.spec.fs)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(when.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"'{when}' is neither seconds from the start nor a date and time like "
                         f"2026-12-06T14:03:00") from None
    wall = (dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)).timestamp()
    fs = layout.spec.fs
    best, prev_end = 0, None
    for seg in segments(layout):
        if seg.start_wall is None:
            continue
        rel = seg.start - layout.first_sample
        if wall < seg.start_wall:
            # Inside the previous segment, or in the gap before this one: then its start.
            return best if prev_end is not None and wall < prev_end else rel
        best = rel + min(round((wall - seg.start_wall) * fs), seg.length)
        prev_end = seg.start_wall + seg.length / fs
    return best


# -- heart sounds -------------------------------------------------------------------------


def verify_pcg(folder: Path) -> tuple[int, list[str]]:
    """The heart-sound segments of ``<stream>/pcg`` and their problems: a JSON file that does
    not read, its FLAC missing, unreadable or of another length than the JSON says."""
    import json

    import soundfile as sf

    problems = []
    metas = sorted(Path(folder).glob("*_pcg_*.json"))
    for meta in metas:
        try:
            info = json.loads(meta.read_text(encoding="utf-8"))
            # Decoded, not the header's count: a cut file still claims its full length.
            frames = sf.read(str(meta.parent / info["audio"]), dtype="int16")[0].shape[0]
        except (OSError, ValueError, KeyError, RuntimeError) as err:  # soundfile raises RuntimeError
            problems.append(f"{meta.stem}: cannot be read ({type(err).__name__}: {err})")
            continue
        if frames != info.get("samples"):
            problems.append(f"{meta.stem}.flac: {frames} samples, its JSON says {info.get('samples')}")
    return len(metas), problems
