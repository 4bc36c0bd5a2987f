"""Training sets from WFDB records: AAMI-labelled beats with RR features, labelled
10-second segments, and patient-wise (record-wise) splits — never a random split of beats.

Every window is cut from the daemon's own preprocessing: the ``ECGFilter`` bandpass run
causally over the whole raw channel at the record's rate, then resampled to ``FS_MODEL``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from fractions import Fraction
from typing import Self
import os
from pathlib import Path

import numpy as np
from scipy.signal import resample_poly
import wfdb

from ecgmon.config import DataConfig, DspConfig
from ecgmon.models.aami import CLASSES, CLASS_INDEX, aami_index
from ecgmon.monitor.dsp.beat_features import (
    AFTER, BEFORE, BEAT_FEATURES, FS_MODEL, adaptive_features, beat_rr_features, beat_windows, lead2_features,
)
from ecgmon.monitor.dsp.filters import ECGFilter
from ecgmon.replay.records import Record, RecordError, load_record, record_id  # noqa: F401 (record_id: the sets' ids)
from ecgmon.replay.reference import is_beat_symbol, vf_episodes

SEGMENT_S = 10.0
SEGMENT_STEP_S = 5.0  # 50 % overlap
SEGMENT = round(SEGMENT_S * FS_MODEL)  # 3600 samples
SEGMENT_STEP = round(SEGMENT_STEP_S * FS_MODEL)  # 1800 samples
SEGMENT_CLASSES: tuple[str, ...] = ("normal", "abnormal")
NORMAL_RHYTHM = "(N"

Channel = int | str | Sequence[int | str]


# --------------------------------------------------------------------------- record ids


def record_spec(name: str) -> str:
    """A loadable spec: a bare MIT-BIH name (``"101"``) becomes ``"mitdb:101"``."""
    name = name.strip()
    if ":" in name or name.endswith(".hea") or os.sep in name or "/" in name:
        return name
    return f"mitdb:{name}"


# --------------------------------------------------------------------------- signals


@dataclass(frozen=True)
class _Loaded:
    record: Record
    signal: np.ndarray  # filtered channel at FS_MODEL, float32 mV
    signal2: np.ndarray | None  # the record's second lead (Record.second_channel) filtered alike
    ann_samples: np.ndarray  # reference annotations at FS_MODEL
    ann_symbols: list[str]


def _pick_channel(record: Record, channel: Channel) -> int:
    """The column for ``channel``; a sequence is a list of preferences (first present wins)."""
    if isinstance(channel, (str, int, np.integer)):
        return record.channel_index(channel)
    for choice in channel:
        try:
            return record.channel_index(choice)
        except RecordError:
            continue
    raise RecordError(
        f"{record.name} has none of the channels {list(channel)}; its channels are "
        f"{', '.join(record.channels)}"
    )


def _resample_ratio(fs: float) -> tuple[int, int]:
    ratio = Fraction(FS_MODEL / fs).limit_denominator(1000)
    return ratio.numerator, ratio.denominator


def filtered_channel(record: Record, channel: Channel = 0, dsp: DspConfig | None = None) -> np.ndarray:
    """The daemon's filtered view of one channel, at ``FS_MODEL``: float32 mV.

    The filter runs at the record's own rate, causally from the first sample, exactly as a
    stream pipeline filters a live source; only then is the result resampled.
    """
    x = ECGFilter.configured(record.fs, dsp or DspConfig())(record.signal[:, _pick_channel(record, channel)])
    if record.fs != FS_MODEL:
        up, down = _resample_ratio(record.fs)
        x = resample_poly(x, up, down)
    return x.astype(np.float32)


def _load(spec: str, data: DataConfig, channel: Channel, dsp: DspConfig | None) -> _Loaded:
    record = load_record(record_spec(spec), data)
    if record.ann_samples is None or record.ann_symbols is None:
        raise RecordError(
            f"{record.name} has no reference annotations (.atr); labelled sets need them"
        )
    samples = record.ann_samples
    if record.fs != FS_MODEL:
        samples = np.round(samples * (FS_MODEL / record.fs)).astype(np.int64)
    primary = _pick_channel(record, channel)
    second = record.second_channel(primary)
    signal2 = None if second is None else filtered_channel(record, second, dsp)
    return _Loaded(record, filtered_channel(record, primary, dsp), signal2, samples, record.ann_symbols)


def _progress(enabled: bool):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=Console(stderr=True), transient=True, disable=not enabled,
    )


def _each_record(
    records: Iterable[str], data: DataConfig, channel: Channel, dsp: DspConfig | None,
    what: str, progress: bool,
) -> Iterable[tuple[str, _Loaded]]:
    records = list(records)
    ids = _check_unique([record_id(r) for r in records])
    with _progress(progress) as bar:
        task = bar.add_task(what, total=len(records))
        for spec, rid in zip(records, ids):
            bar.update(task, description=f"{what} {rid}")
            yield rid, _load(spec, data, channel, dsp)
            bar.advance(task)


# --------------------------------------------------------------------------- beats


class _RowArrays:
    """Arrays with one row per item and a ``records`` column: selection by rows or records."""

    labels: np.ndarray
    records: np.ndarray

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def take(self, index: np.ndarray) -> Self:
        """The rows selected by a boolean mask or an index array."""
        return type(self)(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    def of_records(self, records: Iterable[str]) -> Self:
        """The rows of these records (a split's train or validation part)."""
        return self.take(np.isin(self.records, [record_id(r) for r in records]))

    @classmethod
    def concat(cls, sets: Sequence[Self]) -> Self:
        return cls(**{f.name: np.concatenate([getattr(s, f.name) for s in sets]) for f in fields(cls)})


@dataclass(frozen=True)
class BeatSet(_RowArrays):
    """Labelled beats: one row per beat in every array.

    ``windows`` (n, WINDOW) float32 filtered mV, R at index ``BEFORE``; ``rr`` (n, len(BEAT_FEATURES)) float32
    RR, patient-adaptive and second-lead features (columns ``beat_features.BEAT_FEATURES``); ``labels`` (n,) int64 index into ``CLASSES``;
    ``records`` (n,) str record id; ``samples`` (n,) int64 R sample at ``FS_MODEL``.
    """

    windows: np.ndarray
    rr: np.ndarray
    labels: np.ndarray
    records: np.ndarray
    samples: np.ndarray

    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(self.labels, minlength=len(CLASSES))
        return {c: int(k) for c, k in zip(CLASSES, counts)}


def _empty_beats(margin: int = 0) -> BeatSet:
    return BeatSet(
        np.zeros((0, BEFORE + AFTER + 2 * margin), np.float32), np.zeros((0, len(BEAT_FEATURES)), np.float32),
        np.zeros(0, np.int64), np.zeros(0, dtype=str), np.zeros(0, np.int64),
    )


def _record_beats(rid: str, rec: _Loaded, margin: int = 0) -> BeatSet:
    samples, symbols = rec.ann_samples, rec.ann_symbols
    # RR intervals run over every QRS annotation (flutter waves and unclassifiable beats
    # included), as the live detector's beat sequence would, not only the labelled beats.
    is_qrs = np.fromiter((is_beat_symbol(s) for s in symbols), bool, len(symbols))
    qrs_samples = samples[is_qrs]
    qrs_labels = np.array([aami_index(s) for s, q in zip(symbols, is_qrs) if q], np.int64)
    rr = beat_rr_features(qrs_samples, FS_MODEL)
    # The adaptive inputs follow every beat in order, as live, whether or not it is a row here.
    rr = np.hstack([rr, adaptive_features(rec.signal, qrs_samples, rr), lead2_features(rec.signal2, qrs_samples, rr)])
    keep = qrs_labels >= 0
    # EC57 leaves ventricular flutter/fibrillation episodes out of beat classification.
    for start, end in vf_episodes(samples, symbols, rec.signal.shape[0]):
        keep &= ~((qrs_samples >= start) & (qrs_samples <= end))
    # The first beat's pre-RR is borrowed and the last one's post-RR guessed: drop them
    # (they are edge beats anyway), so every training row has true intervals.
    if keep.size:
        keep[0] = keep[-1] = False
    windows, fits = beat_windows(rec.signal, qrs_samples[keep], BEFORE + margin, AFTER + margin)
    chosen = np.flatnonzero(keep)[fits]
    return BeatSet(
        windows=windows.astype(np.float32, copy=False),
        rr=rr[chosen],
        labels=qrs_labels[chosen],
        records=np.full(chosen.size, rid),
        samples=qrs_samples[chosen],
    )


def load_beats(
    records: Sequence[str],
    data: DataConfig,
    channel: Channel = 0,
    dsp: DspConfig | None = None,
    progress: bool = True,
    margin: int = 0,
) -> BeatSet:
    """The AAMI-labelled beats of ``records`` at their reference R peaks.

    ``records`` are MIT-BIH names (``"101"``) or any record spec (``"mitdb:101"``).
    ``channel`` is an index, a name, or a list of preferences (``("MLII", 0)``: note that
    MIT-BIH 114 has V5 in column 0 and MLII in column 1, and 102/104 have no MLII).
    ``dsp`` is the daemon's filter configuration (default: the default config's).
    Beats in ventricular flutter/fibrillation episodes, non-beat annotations and flutter
    waves are left out, and so are the first and last beat of a record and beats whose
    window reaches past either end. Q beats are kept as their own class.

    The detector places R at the peak of the filtered signal, 1-3 samples (3-8 ms at 360 Hz)
    after the reference annotation; train with a few samples of random shift to absorb it:
    ``margin`` widens every window by that many samples on each side (R then at
    ``BEFORE + margin``), so that training can cut shifted windows
    (``ecgmon.models.augment``). Beats whose wider window does not fit are left out.
    """
    sets = [_record_beats(rid, rec, margin) for rid, rec in _each_record(
        records, data, channel, dsp, "beats", progress)]
    return BeatSet.concat(sets) if sets else _empty_beats(margin)


# --------------------------------------------------------------------------- segments


@dataclass(frozen=True)
class SegmentSet(_RowArrays):
    """Labelled 10-second windows: one row per window in every array.

    ``windows`` (n, SEGMENT) float32 filtered mV; ``labels`` (n,) int64, 0 normal,
    1 abnormal (``SEGMENT_CLASSES``); ``records`` (n,) str; ``starts`` (n,) int64 first
    sample at ``FS_MODEL``; ``rhythms`` (n,) str the rhythm annotation in force at the
    window's centre (``"(N"``, ``"(AFIB"``, ...), for reports.
    """

    windows: np.ndarray
    labels: np.ndarray
    records: np.ndarray
    starts: np.ndarray
    rhythms: np.ndarray



def rhythm_annotations(record: Record) -> tuple[np.ndarray, np.ndarray]:
    """``(samples, labels)`` of the record's rhythm changes ('+' annotations, e.g. ``"(AFIB"``)."""
    if record.path is None:
        raise RecordError(f"{record.name} has no files to read rhythm annotations from")
    try:
        ann = wfdb.rdann(str(record.path), "atr")
    except Exception as err:  # wfdb raises assorted errors on a bad annotation file
        raise RecordError(
            f"cannot read the annotations of {record.name} ({type(err).__name__}: {err})"
        ) from None
    aux = ann.aux_note or [""] * len(ann.symbol)
    picked = [
        (int(s), a.strip("\x00 \t"))
        for s, sym, a in zip(ann.sample, ann.symbol, aux)
        if sym == "+" and a.strip("\x00 \t").startswith("(")
    ]
    samples = np.array([p[0] for p in picked], np.int64)
    labels = np.array([p[1] for p in picked], dtype=str)
    return samples, labels


def _record_segments(rid: str, rec: _Loaded) -> SegmentSet:
    n = rec.signal.shape[0]
    starts = np.arange(0, n - SEGMENT + 1, SEGMENT_STEP, dtype=np.int64)
    ends = starts + SEGMENT  # exclusive
    if n >= SEGMENT:
        windows = np.lib.stride_tricks.sliding_window_view(rec.signal, SEGMENT)[starts]
    else:  # a record shorter than one window has none
        windows = np.zeros((0, SEGMENT), np.float32)

    # Beats: any non-N AAMI beat (S, V, F, Q) inside the window makes it abnormal.
    labels = np.array([aami_index(s) for s in rec.ann_symbols], np.int64)
    odd = np.sort(rec.ann_samples[labels > CLASS_INDEX["N"]])
    n_odd = np.searchsorted(odd, ends, "left") - np.searchsorted(odd, starts, "left")

    # Rhythm: each annotation holds until the next; the first also covers the samples
    # before it (MIT-BIH opens every record with one within its first second).
    r_samples, r_labels = rhythm_annotations(rec.record)
    if rec.record.fs != FS_MODEL:
        r_samples = np.round(r_samples * (FS_MODEL / rec.record.fs)).astype(np.int64)
    if r_samples.size:
        abnormal = (r_labels != NORMAL_RHYTHM).astype(np.int64)
        cum = np.concatenate([[0], np.cumsum(abnormal)])
        first = np.maximum(np.searchsorted(r_samples, starts, "right") - 1, 0)
        last = np.maximum(np.searchsorted(r_samples, ends - 1, "right") - 1, 0)
        bad_rhythm = cum[last + 1] - cum[first] > 0
        centre = np.maximum(np.searchsorted(r_samples, starts + SEGMENT // 2, "right") - 1, 0)
        rhythms = r_labels[centre]
    else:  # no rhythm annotations: the beats alone decide
        bad_rhythm = np.zeros(starts.size, bool)
        rhythms = np.full(starts.size, "")

    return SegmentSet(
        windows=np.ascontiguousarray(windows, dtype=np.float32),
        labels=((n_odd > 0) | bad_rhythm).astype(np.int64),
        records=np.full(starts.size, rid),
        starts=starts,
        rhythms=rhythms.astype(str),
    )


def load_segments(
    records: Sequence[str],
    data: DataConfig,
    channel: Channel = 0,
    dsp: DspConfig | None = None,
    progress: bool = True,
) -> SegmentSet:
    """10-second windows with 50 % overlap of ``records``, labelled normal or abnormal.

    A window is normal (0) only if every rhythm annotation in force during it is normal
    sinus rhythm ``(N`` and every AAMI-classified beat in it is N; otherwise it is abnormal
    (1): any S, V, F or Q beat, or any other rhythm — AFIB, AFL, VT, VFL, SVTA, bigeminy,
    trigeminy, paced ``(P`` and the rest alike. Paced records are therefore all abnormal.
    Windows cover whole records from sample 0; the incomplete tail is left out.
    """
    sets = [_record_segments(rid, rec) for rid, rec in _each_record(
        records, data, channel, dsp, "segments", progress)]
    if sets:
        return SegmentSet.concat(sets)
    return SegmentSet(
        np.zeros((0, SEGMENT), np.float32), np.zeros(0, np.int64), np.zeros(0, dtype=str),
        np.zeros(0, np.int64), np.zeros(0, dtype=str),
    )


# --------------------------------------------------------------------------- splits


def _check_unique(ids: list[str]) -> list[str]:
    if len(set(ids)) != len(ids):
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        raise ValueError(f"records named more than once: {', '.join(dupes)}")
    return ids


def _unique_ids(records: Iterable[str]) -> list[str]:
    # Sorted first, so the split depends on the seed and the set, not the list's order.
    return sorted(_check_unique([record_id(r) for r in records]))


def leave_records_out(records: Sequence[str], n_val: int, seed: int) -> tuple[list[str], list[str]]:
    """``(train, val)`` record ids: ``n_val`` whole records held out, chosen by ``seed``."""
    ids = _unique_ids(records)
    if not 1 <= n_val < len(ids):
        raise ValueError(
            f"n_val must be between 1 and {len(ids) - 1} for {len(ids)} records, not {n_val}"
        )
    order = np.random.default_rng(seed).permutation(len(ids))
    val = sorted(ids[i] for i in order[:n_val])
    train = [r for r in ids if r not in val]
    return train, val


def database_of(record: str) -> str:
    """The database a record id belongs to: ``"svdb:800"`` → ``"svdb"``, ``"101"`` → ``"mitdb"``."""
    rid = record_id(record)
    return rid.split(":", 1)[0] if ":" in rid else "mitdb"


def by_database(records: Iterable[str]) -> dict[str, list[str]]:
    """Record ids grouped by database, databases and records sorted."""
    groups: dict[str, list[str]] = {}
    for rid in _unique_ids(records):
        groups.setdefault(database_of(rid), []).append(rid)
    return dict(sorted(groups.items()))


def record_folds(records: Sequence[str], k: int, seed: int) -> list[tuple[list[str], list[str]]]:
    """``k`` ``(train, val)`` splits; every record is held out in exactly one of them.

    Records of several databases are dealt out per database (each database's records in a
    seeded order, split into ``k`` parts dealt to the folds in turn), so every fold holds out
    patients of every database it can; with one database this is a plain seeded ``k``-way split.
    """
    ids = _unique_ids(records)
    if not 2 <= k <= len(ids):
        raise ValueError(f"k must be between 2 and {len(ids)} for {len(ids)} records, not {k}")
    rng = np.random.default_rng(seed)
    held: list[list[str]] = [[] for _ in range(k)]
    dealt = 0
    for group in by_database(ids).values():
        order = rng.permutation(len(group))
        # array_split makes its first parts the larger: each database starts where the last
        # left off, so that no fold is left empty when databases are small.
        for i, part in enumerate(np.array_split(order, k)):
            held[(i + dealt) % k] += [group[j] for j in part]
        dealt += len(group)
    return [([r for r in ids if r not in set(val)], sorted(val)) for val in held]


def assert_disjoint(train_records: Iterable[str], test_records: Iterable[str]) -> None:
    """Raise ValueError if any record is on both sides (``"mitdb:101"`` is ``"101"``).

    A ValueError rather than ``assert``, so that it also guards under ``python -O``.
    """
    shared = sorted({record_id(r) for r in train_records} & {record_id(r) for r in test_records})
    if shared:
        raise ValueError(
            f"records in both the training and the test side: {', '.join(shared)}; "
            f"split by record, never by beat"
        )
