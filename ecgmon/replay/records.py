"""WFDB records: resolve a spec (``mitdb:100`` or a local ``.hea``) to files, and load them.

``db:record`` is looked up in ``$ECGMON_DATA/<db>``, then the configured data folder, then
the user cache; if it is in none of them it is downloaded from PhysioNet with ``wfdb`` into
the cache. Every failure (bad spec, offline, missing, corrupt or truncated file) is one
``RecordError`` whose message says what is wrong and what to do; no wfdb traceback escapes.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
import math
import numbers
import os
from pathlib import Path
import re
import shutil
import tempfile

import numpy as np
import wfdb

from ecgmon.config import DataConfig


def record_id(name: str) -> str:
    """The id a record is known by in sets and splits: ``"mitdb:101"`` and ``"101"`` → ``"101"``."""
    name = name.strip()
    if name.startswith("mitdb:"):
        return name[len("mitdb:"):]
    if name.endswith(".hea"):
        return Path(name).stem
    return name


class RecordError(Exception):
    """A record that cannot be found or read; the message says what to do."""


_DB_SPEC = re.compile(r"^(?P<db>[^:/\\]+):(?P<record>.*)$")
_DB_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
# Records may sit in subfolders of a database (``ptbdb:patient001/s0010_re``).
_RECORD_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*(/[A-Za-z0-9_-][A-Za-z0-9_.-]*)*$")
_SPEC_FORMS = "expected db:record (e.g. mitdb:100) or a path to a local .hea file"

# Bytes per sample of the WFDB storage formats whose size follows from the header; the
# FLAC formats (508, 516, 524) are compressed and cannot be checked this way.
_BYTES_PER_SAMPLE = {
    "8": 1, "16": 2, "24": 3, "32": 4, "61": 2, "80": 1, "160": 2,
    "212": 1.5, "310": 4 / 3, "311": 4 / 3,
}
_COMPRESSED_FORMATS = {"508", "516", "524"}
# The highest sampling frequency a header may state (audio-rate WFDB records stay below it).
MAX_HEADER_FS = 1e6


# --------------------------------------------------------------------------- resolution


def _parse_db_spec(spec: str) -> tuple[str, str] | None:
    """``(db, record)`` for a ``db:record`` spec, None for a path; RecordError if malformed."""
    if spec.endswith(".hea") or os.path.exists(spec):
        return None
    m = _DB_SPEC.match(spec)
    if m is None:
        return None
    db, record = m["db"], m["record"]
    if not _DB_NAME.match(db):
        raise RecordError(
            f"bad record spec '{spec}': database name '{db}' may hold only letters, digits, "
            f"'-' and '_'; {_SPEC_FORMS}"
        )
    if not record:
        raise RecordError(f"bad record spec '{spec}': no record name after ':'; {_SPEC_FORMS}")
    if not _RECORD_NAME.match(record) or ".." in record.split("/"):
        raise RecordError(
            f"bad record spec '{spec}': record name '{record}' may hold only letters, digits, "
            f"'-', '_', '.' and '/' between subfolders; {_SPEC_FORMS}"
        )
    return db, record


def _hea(base: Path) -> Path:
    return base.with_name(base.name + ".hea")


def _candidate_dirs(data: DataConfig) -> list[tuple[str, Path | None]]:
    """The places a ``db:record`` is looked for, in order (None: not configured)."""
    env = os.environ.get("ECGMON_DATA")
    folder = data.folder
    return [
        ("$ECGMON_DATA", Path(env).expanduser() if env else None),
        ("data.folder", Path(folder).expanduser() if folder else None),
        ("cache", data.cache_dir()),
    ]


def resolve_record(spec: str, data: DataConfig) -> Path:
    """The record path without extension (``…/mitdb/100``) for ``spec``, downloading if needed."""
    spec = spec.strip()
    if not spec:
        raise RecordError(f"empty record spec; {_SPEC_FORMS}")
    parsed = _parse_db_spec(spec)
    if parsed is None:
        return _resolve_path(spec)
    db, record = parsed
    looked: list[str] = []
    for label, root in _candidate_dirs(data):
        if root is None:
            looked.append(f"{label} (not set)")
            continue
        base = root / db / record
        if _hea(base).is_file():
            return base
        looked.append(f"{label} {_hea(base)}")
    cache_db = data.cache_dir() / db
    try:
        _download(spec, db, record, cache_db)
    except RecordError as err:
        raise RecordError(
            f"record {spec} is not available: {err}. Looked in: {'; '.join(looked)}. "
            f"To provide it, put {Path(record).name}.hea and its .dat (and .atr) under "
            f"<folder>/{db}/ and set ECGMON_DATA=<folder> or [data] folder in config.toml, "
            f"or go online so ecgmon can download it from PhysioNet into the cache."
        ) from None
    return cache_db / record


def database_record_names(db: str, data: DataConfig) -> list[str]:
    """The records of a database: its local ``RECORDS`` file, else PhysioNet's list."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", db):
        raise RecordError(f"'{db}' is not a PhysioNet database name (such as mitdb)")
    looked = []
    for label, root in _candidate_dirs(data):
        if root is None:
            continue
        listing = root / db / "RECORDS"
        if listing.is_file():
            try:
                return listing.read_text(encoding="utf-8").split()
            except (OSError, UnicodeDecodeError) as err:
                raise RecordError(f"cannot read the list of records {listing} ({err}); name the records instead") from None
        looked.append(f"{label} {listing}")
    try:
        return list(wfdb.io.get_record_list(db))
    except Exception as err:  # offline or unknown database: requests/HTTP errors
        raise RecordError(
            f"cannot list the records of {db}: no RECORDS file (looked in {'; '.join(looked)}) "
            f"and PhysioNet is not reachable ({_describe_download_error(err)}); name the records instead"
        ) from None


def _resolve_path(spec: str) -> Path:
    path = Path(spec).expanduser()
    if path.suffix == ".dat":
        hea = path.with_suffix(".hea")
        raise RecordError(f"'{spec}' is a signal file; give its header ({hea})")
    base = path.with_suffix("") if path.suffix == ".hea" else path
    if not _hea(base).is_file():
        raise RecordError(f"record '{spec}' not found: no header file {_hea(base)}; {_SPEC_FORMS}")
    return base


# --------------------------------------------------------------------------- download


def _download(spec: str, db: str, record: str, cache_db: Path) -> None:
    """Download ``record`` of PhysioNet database ``db`` into ``cache_db``, with a spinner.

    Files land in a scratch folder first and are moved into place only once all of them
    arrived, so an interrupted download never leaves a half record in the cache.
    """
    from rich.console import Console  # only needed when something is downloaded

    console = Console(stderr=True)
    message = f"Downloading {spec} from PhysioNet into {cache_db}"
    if not console.is_terminal:
        console.print(message, highlight=False)
    try:
        cache_db.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=".download-", dir=cache_db))
    except OSError as err:
        raise RecordError(f"cannot create the cache folder {cache_db} ({err.strerror})") from None
    try:
        with console.status(message) as status:
            # wfdb reports progress by printing; show its lines in the spinner instead.
            with contextlib.redirect_stdout(_StatusWriter(status, message)):
                _dl_with_optional_atr(db, record, scratch)
        files = sorted(p for p in scratch.rglob("*") if p.is_file())
        if not _hea(scratch / record).is_file():
            raise RecordError(f"PhysioNet sent no header {record}.hea for {db}")
        for f in files:
            target = cache_db / f.relative_to(scratch)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(f, target)
    except OSError as err:  # e.g. a full disk while moving files into place
        raise RecordError(f"cannot store the download in {cache_db} ({err})") from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        with contextlib.suppress(OSError):  # leave no empty folder for a failed download
            cache_db.rmdir()
    listing = ", ".join(f"{f.name} ({_size(f.stat().st_size)})" for f in
                        (cache_db / p.relative_to(scratch) for p in files))
    console.print(f"Downloaded {spec}: {listing}", highlight=False)


def _size(n_bytes: int) -> str:
    return f"{n_bytes / 1e6:.1f} MB" if n_bytes >= 100_000 else f"{n_bytes / 1e3:.1f} kB"


def _dl_with_optional_atr(db: str, record: str, dest: Path) -> None:
    """``wfdb.dl_database`` with the 'atr' annotator, or none if the database has no atr."""
    try:
        try:
            wfdb.dl_database(db, dl_dir=str(dest), records=[record], annotators=["atr"])
        except ValueError as err:
            # wfdb raises ValueError when the database lists no (atr) annotators,
            # e.g. nstdb's noise records: fetch the signals alone.
            if "annotat" not in str(err):
                raise
            wfdb.dl_database(db, dl_dir=str(dest), records=[record], annotators=None)
    except Exception as err:  # wfdb/requests raise many types; all mean "not downloaded"
        raise RecordError(f"the download failed ({_describe_download_error(err)})") from None


def _describe_download_error(err: Exception) -> str:
    if isinstance(err, FileNotFoundError):
        return "PhysioNet has no such database or record"
    name = type(err).__name__
    if type(err).__module__.startswith(("requests", "urllib3")) or isinstance(err, ConnectionError):
        return f"cannot reach physionet.org: {name}"
    text = str(err).splitlines()[0] if str(err) else ""
    return f"{name}: {text[:160]}" if text else name


class _StatusWriter:
    """A stdout stand-in that shows the last complete line printed in a rich status."""

    def __init__(self, status, prefix: str) -> None:
        self._status = status
        self._prefix = prefix
        self._partial = ""

    def write(self, text: str) -> int:
        # print() writes its arguments piecewise; show whole lines only.
        *lines, self._partial = (self._partial + text).split("\n")
        done = [ln.strip() for ln in lines if ln.strip()]
        if done:
            self._status.update(f"{self._prefix}: {done[-1]}")
        return len(text)

    def flush(self) -> None:
        pass


# --------------------------------------------------------------------------- loading


@dataclass
class Record:
    """A loaded record: samples in physical units, and reference annotations if any.

    ``signal`` is float32 ``(n_samples, len(channels))`` without NaN: invalid samples are
    replaced by the previous valid value of their channel (0 at the start) and counted in
    ``invalid_samples``, because a detector must never see NaN.
    """

    name: str
    fs: float
    channels: tuple[str, ...]
    signal: np.ndarray
    units: tuple[str, ...]
    ann_samples: np.ndarray | None = None
    ann_symbols: list[str] | None = None
    invalid_samples: int = 0
    path: Path | None = None

    @property
    def n_samples(self) -> int:
        return int(self.signal.shape[0])

    def second_channel(self, primary: int) -> int | None:
        """The lead beside ``primary`` that beat models may use as their second view of the
        heart (MIT-BIH's V1/V2/V4/V5 beside MLII, SVDB's ECG2): the first other column in the
        same unit (a blood-pressure, respiration or EEG signal beside the ECG is no lead), or
        None when there is none."""
        unit = self.units[primary].casefold()
        return next((i for i, u in enumerate(self.units) if i != primary and u.casefold() == unit), None)

    def channel_index(self, channel: int | str) -> int:
        """The column of ``channel``: an index, or a name (exact, else case-insensitive)."""
        n = len(self.channels)
        if isinstance(channel, str):
            if channel in self.channels:
                return self.channels.index(channel)
            folded = [c.casefold() for c in self.channels]
            if channel.casefold() in folded:
                return folded.index(channel.casefold())
            if not channel.strip().isdigit():
                raise RecordError(
                    f"{self.name} has no channel '{channel}'; its channels are "
                    f"{', '.join(self.channels)} (or an index 0..{n - 1})"
                )
            channel = int(channel)
        if isinstance(channel, bool) or not isinstance(channel, (int, np.integer)):
            raise RecordError(f"channel must be an index or a name, not {channel!r}")
        if not 0 <= channel < n:
            raise RecordError(
                f"{self.name} has no channel {channel}: indices run 0..{n - 1} "
                f"({', '.join(self.channels)})"
            )
        return int(channel)


def load_record(spec: str, data: DataConfig, annotations: bool = True) -> Record:
    """Resolve ``spec`` and read it; the 'atr' annotations too if present and asked for."""
    base = resolve_record(spec, data)
    header = _read_header(base)
    _check_signal_files(base, header)
    try:
        raw = wfdb.rdrecord(str(base), physical=True)
    except Exception as err:  # wfdb raises ValueError/KeyError/... for bad signal data
        raise RecordError(
            f"cannot read the signals of {_hea(base)} ({type(err).__name__}: {err}); "
            f"the record's files are corrupt: fetch them again"
        ) from None
    signal = raw.p_signal
    if signal is None or signal.ndim != 2 or signal.shape[1] == 0:
        raise RecordError(f"{_hea(base)} describes no signals to replay")
    if header.sig_len and signal.shape[0] != header.sig_len:
        raise RecordError(
            f"{base.name}: read {signal.shape[0]} samples but {_hea(base)} says {header.sig_len}; "
            f"the signal file is truncated: fetch it again"
        )
    signal, invalid = _fill_invalid(signal)
    n_ch = signal.shape[1]
    names = tuple(str(s) for s in (raw.sig_name or [f"ch{i}" for i in range(n_ch)]))
    units = tuple(str(u) for u in (raw.units or ["mV"] * n_ch))
    record = Record(
        name=spec.strip(), fs=float(raw.fs), channels=names, signal=signal, units=units,
        invalid_samples=invalid, path=base,
    )
    if annotations:
        record.ann_samples, record.ann_symbols = _read_atr(base)
    return record


def _read_header(base: Path):
    hea = _hea(base)
    try:
        if hea.stat().st_size == 0:
            raise RecordError(f"header {hea} is empty: fetch the record again")
        header = wfdb.rdheader(str(base))
    except RecordError:
        raise
    except OSError as err:
        raise RecordError(f"cannot read header {hea} ({err.strerror or err})") from None
    except Exception as err:  # HeaderSyntaxError, IndexError, UnicodeDecodeError, ...
        raise RecordError(
            f"{hea} is not a valid WFDB header ({type(err).__name__}: {err}): "
            f"fetch the record again"
        ) from None
    # wfdb takes any number as the rate (0, and what it makes of a malformed field); the
    # filters downstream would divide by it.
    fs = header.fs
    if not isinstance(fs, numbers.Real) or not 0 < fs <= MAX_HEADER_FS:
        raise RecordError(
            f"{hea}: sampling frequency {fs!r} Hz is not valid (a WFDB header needs 0 < fs <= "
            f"{MAX_HEADER_FS:g}): fix the header or fetch the record again"
        )
    return header


def _check_signal_files(base: Path, header) -> None:
    """Every signal file the header names exists, has a known format and is long enough.

    wfdb fails on a short file with an obscure broadcasting error, so the size implied by
    the header is checked first to say plainly which file is truncated.
    """
    files = getattr(header, "file_name", None)
    if not files:  # a multi-segment header: wfdb checks the segments when reading
        return
    need: dict[str, float] = {}
    offsets: dict[str, int] = {}
    for i, (fname, fmt) in enumerate(zip(files, header.fmt)):
        fmt = str(fmt)
        if fmt not in _BYTES_PER_SAMPLE and fmt not in _COMPRESSED_FORMATS:
            raise RecordError(
                f"{_hea(base)}: signal format {fmt} is not supported; supported formats are "
                f"{', '.join(sorted({*_BYTES_PER_SAMPLE, *_COMPRESSED_FORMATS}, key=int))}"
            )
        path = base.parent / fname
        if not path.is_file():
            raise RecordError(
                f"{_hea(base)} refers to signal file {path}, which does not exist: "
                f"put it next to the header or fetch the record again"
            )
        if fmt in _COMPRESSED_FORMATS or not header.sig_len:
            continue
        spf = (header.samps_per_frame or [1] * len(files))[i] or 1
        need[fname] = need.get(fname, 0.0) + header.sig_len * spf * _BYTES_PER_SAMPLE[fmt]
        offsets[fname] = int((header.byte_offset or [0] * len(files))[i] or 0)
    for fname, n_bytes in need.items():
        path = base.parent / fname
        expected = offsets[fname] + math.floor(n_bytes)
        size = path.stat().st_size
        if size < expected:
            raise RecordError(
                f"signal file {path} is truncated: {size} bytes, but {_hea(base)} implies "
                f"{expected}; fetch the record again"
            )


def _fill_invalid(signal: np.ndarray) -> tuple[np.ndarray, int]:
    """float32 copy with each NaN replaced by its channel's previous valid value (0 first)."""
    bad = np.isnan(signal)
    n_bad = int(bad.sum())
    out = signal.astype(np.float32)
    if n_bad:
        rows = np.arange(signal.shape[0])[:, None]
        last_valid = np.maximum.accumulate(np.where(bad, -1, rows), axis=0)
        filled = np.take_along_axis(out, np.maximum(last_valid, 0), axis=0)
        out = np.where(last_valid < 0, np.float32(0), filled).astype(np.float32)
    return np.ascontiguousarray(out), n_bad


def _read_atr(base: Path) -> tuple[np.ndarray | None, list[str] | None]:
    atr = base.with_name(base.name + ".atr")
    if not atr.is_file():
        return None, None
    try:
        if atr.stat().st_size == 0:
            raise ValueError("the file is empty")
        ann = wfdb.rdann(str(base), "atr")
    except Exception as err:  # wfdb raises assorted errors on a corrupt annotation file
        raise RecordError(
            f"annotation file {atr} cannot be read ({type(err).__name__}: {err}): "
            f"fetch it again, or delete it to replay without reference annotations"
        ) from None
    return np.asarray(ann.sample, dtype=np.int64), [str(s) for s in ann.symbol]


# --------------------------------------------------------------------------- stream ids


def record_stream_id(spec: str) -> str:
    """A topic-safe stream id (``[A-Za-z0-9_-]+``).

    ``mitdb:100`` → ``mitdb-100``; a path → the record name (``/x/y/rec.hea`` → ``rec``).
    """
    spec = spec.strip()
    try:
        parsed = _parse_db_spec(spec) if spec else None
    except RecordError:
        parsed = None
    if parsed is not None:
        raw = f"{parsed[0]}-{parsed[1]}"
    else:
        path = Path(spec)
        raw = path.with_suffix("").name if path.suffix == ".hea" else path.name
    stream = re.sub(r"[^A-Za-z0-9_-]+", "-", raw).strip("-")
    return stream or "record"
