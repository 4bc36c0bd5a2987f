"""Heart-sound recordings (PhysioNet/CinC 2016 layout) as the PCG model's 5-second windows.

A *database* is a folder of ``*.flac``/``*.wav`` recordings with a ``REFERENCE.csv`` of
``name,label`` lines (1 abnormal, -1 normal), such as ``pcg2016/training-a``. Every
recording becomes full-scale float32 mono audio at 2 kHz and is cut into 10000-sample
windows every 5000 samples (50 % overlap); the model takes those windows raw. Splits are
by whole database (a stethoscope and a site never seen), never by recording or window.

Malformed input never stops a load: a bad line or file is a one-line warning naming it
and the rest is read; only a folder without any usable recording is a :class:`PcgDataError`.
"""

from __future__ import annotations

import csv
import hashlib
import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FS = 2000
WINDOW = 10000  # 5 s
HOP = 5000  # 50 % overlap
CLASSES: tuple[str, ...] = ("normal", "abnormal")
# REFERENCE.csv label -> class index.
LABELS = {-1: 0, 1: 1}
AUDIO_SUFFIXES = (".flac", ".wav")

Warn = Callable[[str], None]


class PcgDataError(ValueError):
    """A folder or file that cannot be used at all; the message is one line."""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


# --------------------------------------------------------------------------- files


def read_reference(folder: Path, warn: Warn) -> dict[str, int]:
    """``name -> class index`` from ``folder/REFERENCE.csv``; bad lines are warned and skipped."""
    path = folder / "REFERENCE.csv"
    if not path.is_file():
        raise PcgDataError(f"{folder}: no REFERENCE.csv (lines 'name,label' with label 1 abnormal, -1 normal)")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise PcgDataError(f"{path}: not a readable text file ({_first_line(exc)})") from exc
    labels: dict[str, int] = {}
    for n, row in enumerate(csv.reader(text.splitlines()), start=1):
        if not row or not "".join(row).strip():
            continue
        if len(row) < 2:
            warn(f"{path}:{n}: expected 'name,label', got {','.join(row)!r}; line skipped")
            continue
        name, value = row[0].strip(), row[1].strip()
        try:
            label = LABELS[int(value)]
        except (ValueError, KeyError):
            warn(f"{path}:{n}: label {value!r} for {name} is not 1 (abnormal) or -1 (normal); line skipped")
            continue
        if name in labels:
            warn(f"{path}:{n}: {name} listed twice; the first label is kept")
            continue
        labels[name] = label
    return labels


def read_audio(path: Path, fs: int = FS) -> tuple[np.ndarray, list[str]]:
    """Full-scale float32 mono audio at ``fs`` and notes on what was changed to get there.

    Stereo is averaged to mono and another rate is resampled (soxr, as the daemon's audio
    sources do); a file that cannot be decoded is a PcgDataError.
    """
    import soundfile as sf

    try:
        audio, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:  # soundfile raises LibsndfileError, RuntimeError, OSError
        raise PcgDataError(f"{path}: not a readable audio file ({_first_line(exc)})") from exc
    notes = []
    if audio.shape[1] > 1:
        notes.append(f"{audio.shape[1]} channels averaged to mono")
    audio = audio.mean(axis=1, dtype=np.float32)
    if rate != fs:
        import soxr

        notes.append(f"resampled from {rate} Hz to {fs} Hz")
        audio = soxr.resample(audio, rate, fs).astype(np.float32)
    if not np.isfinite(audio).all():
        raise PcgDataError(f"{path}: the audio holds NaN or inf samples")
    return np.ascontiguousarray(audio), notes


def window_starts(n: int, window: int = WINDOW, hop: int = HOP) -> np.ndarray:
    """Start samples of the windows of an ``n``-sample recording (none if shorter than one)."""
    return np.arange(0, max(n - window + 1, 0), hop)


def windows(audio: np.ndarray, window: int = WINDOW, hop: int = HOP) -> np.ndarray:
    """``[k, window]`` float32 windows every ``hop`` samples (a copy)."""
    starts = window_starts(len(audio), window, hop)
    if not len(starts):
        return np.zeros((0, window), dtype=np.float32)
    view = np.lib.stride_tricks.sliding_window_view(audio, window)
    return np.ascontiguousarray(view[starts], dtype=np.float32)


# --------------------------------------------------------------------------- sets


@dataclass
class PcgSet:
    """Whole recordings: one row each, audio kept as 16-bit integers (as the files hold it)."""

    names: np.ndarray  # str
    databases: np.ndarray  # str: the folder name, e.g. "training-a"
    labels: np.ndarray  # int64 class index (CLASSES)
    offsets: np.ndarray  # int64 [n + 1]: recording i is pcm[offsets[i]:offsets[i + 1]]
    pcm: np.ndarray  # int16, every recording end to end

    def __len__(self) -> int:
        return len(self.names)

    def audio(self, i: int) -> np.ndarray:
        """Recording ``i`` as full-scale float32."""
        return self.pcm[self.offsets[i] : self.offsets[i + 1]].astype(np.float32) / 32768.0

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def of_databases(self, databases: Iterable[str]) -> PcgSet:
        keep = np.flatnonzero(np.isin(self.databases, list(databases)))
        parts = [self.pcm[self.offsets[i] : self.offsets[i + 1]] for i in keep]
        offsets = np.concatenate([[0], np.cumsum([len(p) for p in parts], dtype=np.int64)])
        pcm = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int16)
        return PcgSet(self.names[keep], self.databases[keep], self.labels[keep], offsets, pcm)

    def windows(self) -> tuple[np.ndarray, np.ndarray]:
        """Every recording's windows ``[k, WINDOW]`` and the recording index of each row."""
        parts = [windows(self.audio(i)) for i in range(len(self))]
        rows = np.concatenate([np.full(len(p), i) for i, p in enumerate(parts)]) if parts else np.zeros(0, int)
        return (np.concatenate(parts) if parts else np.zeros((0, WINDOW), np.float32)), rows.astype(np.int64)

    def counts(self) -> dict[str, dict[str, int]]:
        """Recordings per database and class."""
        return {
            str(db): {c: int(np.sum((self.databases == db) & (self.labels == k))) for k, c in enumerate(CLASSES)}
            for db in sorted(set(self.databases.tolist()))
        }


def database_folders(root: Path) -> list[Path]:
    """``root`` itself if it holds a REFERENCE.csv, else its subfolders that do."""
    root = Path(root)
    if not root.is_dir():
        raise PcgDataError(f"{root}: not a folder of recordings (expected *.flac/*.wav with a REFERENCE.csv)")
    if (root / "REFERENCE.csv").is_file():
        return [root]
    found = sorted(p for p in root.iterdir() if p.is_dir() and (p / "REFERENCE.csv").is_file())
    if not found:
        raise PcgDataError(f"{root}: no REFERENCE.csv in it or in any folder directly below it")
    return found


def folder_recordings(folder: Path, warn: Warn) -> list[tuple[str, Path, int]]:
    """``(name, file, class index)`` of the recordings both on disk and in REFERENCE.csv."""
    labels = read_reference(folder, warn)
    files = {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in AUDIO_SUFFIXES}
    for name in sorted(set(labels) - set(files)):
        warn(f"{folder}: {name} is in REFERENCE.csv but has no .flac/.wav file; skipped")
    for name in sorted(set(files) - set(labels)):
        warn(f"{folder}: {files[name].name} has no label in REFERENCE.csv; skipped")
    return [(name, files[name], labels[name]) for name in sorted(set(labels) & set(files))]


def progress_bar(enabled: bool):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=Console(stderr=True), transient=True, disable=not enabled,
    )


def _read_folders(folders: Sequence[Path], warn: Warn, progress: bool) -> PcgSet:
    listing = [(folder.name, rec) for folder in folders for rec in folder_recordings(folder, warn)]
    names, dbs, labels, parts = [], [], [], []
    with progress_bar(progress) as bar:
        task = bar.add_task("reading recordings", total=len(listing))
        for db, (name, path, label) in listing:
            bar.update(task, description=f"reading {db}/{name}")
            try:
                audio, notes = read_audio(path)
            except PcgDataError as err:
                warn(f"{err}; skipped")
            else:
                for note in notes:
                    warn(f"{path}: {note}")
                names.append(name)
                dbs.append(db)
                labels.append(label)
                parts.append(np.clip(np.round(audio * 32768.0), -32768, 32767).astype(np.int16))
            bar.advance(task)
    if not names:
        raise PcgDataError(f"no usable recording in {', '.join(str(f) for f in folders)}")
    offsets = np.concatenate([[0], np.cumsum([len(p) for p in parts], dtype=np.int64)])
    return PcgSet(np.array(names), np.array(dbs), np.array(labels, dtype=np.int64), offsets, np.concatenate(parts))


def _cache_file(folders: Sequence[Path]) -> Path:
    """A name that changes when any file of the folders changes (path, size, mtime)."""
    digest = hashlib.sha256()
    for folder in folders:
        for p in sorted(folder.iterdir()):
            st = p.stat()
            digest.update(f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return Path(tempfile.gettempdir()) / "ecgmon-pcg-cache" / f"{digest.hexdigest()[:24]}.npz"


def load_pcg(folders: Sequence[Path], warn: Warn, progress: bool = True, cache: bool = True) -> PcgSet:
    """The recordings of these database folders, cached (in the temp folder, never the repo)."""
    folders = [Path(f) for f in folders]
    path = _cache_file(folders) if cache else None
    if path is not None and path.is_file():
        with np.load(path, allow_pickle=False) as z:
            return PcgSet(z["names"], z["databases"], z["labels"], z["offsets"], z["pcm"])
    data = _read_folders(folders, warn, progress)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
        np.savez(tmp, names=data.names, databases=data.databases, labels=data.labels,
                 offsets=data.offsets, pcm=data.pcm)
        os.replace(tmp, path)
    return data


# --------------------------------------------------------------------------- splits


def leave_one_database_out(databases: Sequence[str]) -> list[tuple[list[str], str]]:
    """``(training databases, held-out database)`` for each database in turn."""
    names = sorted(set(databases))
    if len(names) < 2:
        raise PcgDataError(f"leave-one-database-out needs at least two databases, got {names}")
    return [([d for d in names if d != held], held) for held in names]


def assert_disjoint(train: PcgSet, held_out: PcgSet) -> None:
    """No recording (database/name) may be on both sides of a split."""
    a = {f"{d}/{n}" for d, n in zip(train.databases, train.names)}
    b = {f"{d}/{n}" for d, n in zip(held_out.databases, held_out.names)}
    both = a & b
    if both:
        raise ValueError(f"recordings in both training and held-out data: {', '.join(sorted(both)[:5])}")
