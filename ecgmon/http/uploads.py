"""Uploaded files turned into what the pipelines read: an ECG upload (a WFDB record as its
header and signal files or a zip of them, an EDF file, or a CSV with a stated rate and unit)
into a ``Record``, a heart-sound upload (WAV, FLAC) into audio blocks.

Every upload is untrusted: whatever is wrong with it is one ``UploadError`` with an HTTP
status and a one-line reason, never a library's exception. WFDB files go through
``replay.records.load_record`` (the daemon's own reader, with its header, format and
truncation checks) from a private scratch folder.
"""

from __future__ import annotations

from dataclasses import dataclass
import csv
import io
import math
from pathlib import Path
import re
import tempfile
import zipfile

import numpy as np

from ecgmon.config import DataConfig
from ecgmon.rates import ecg_rate_problem
from ecgmon.replay.records import Record, RecordError, load_record

# Millivolts per unit: the pipeline works in mV, as every source delivers.
UNITS_MV = {"mv": 1.0, "uv": 1e-3, "µv": 1e-3, "μv": 1e-3, "v": 1e3, "nv": 1e-6}
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
# A zip may inflate to at most this many times the upload limit (a zip bomb stops there).
ZIP_INFLATE = 4
_TEXT_SUFFIXES = {".csv", ".txt", ".tsv"}
# Column names of a CSV's clock, which is not a signal.
_CLOCK_COLUMNS = {"time", "t", "time_s", "seconds", "sec", "s", "sample", "samples", "index", "elapsed time"}


class UploadError(Exception):
    """An upload that cannot be analysed: ``status`` (4xx) and a one-line ``text``."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(status, text)  # both in args: the error crosses a process pool pickled
        self.status = status
        self.text = text

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class Part:
    """One uploaded file: the name the client gave and its bytes."""

    name: str
    data: bytes

    @property
    def suffix(self) -> str:
        return Path(self.name).suffix.lower()


def unit_scale(unit: str, where: str) -> float:
    """Millivolts per ``unit``; 422 for anything that is not a voltage."""
    scale = UNITS_MV.get(unit.strip().casefold())
    if scale is None:
        raise UploadError(422, f"{where}: unit {unit!r} is not an ECG voltage; give mV, uV or V")
    return scale


def _check_rate_and_length(record: Record, max_duration_s: float) -> Record:
    problem = ecg_rate_problem(record.fs)
    if problem:
        raise UploadError(422, f"{record.name}: unsupported rate: {problem}")
    if record.n_samples == 0:
        raise UploadError(422, f"{record.name}: the recording holds no samples")
    duration = record.n_samples / record.fs
    if duration > max_duration_s:
        raise UploadError(413, f"{record.name}: {duration:.0f} s of signal is longer than the limit of "
                               f"{max_duration_s:g} s ([http] max_duration_s)")
    if not np.isfinite(record.signal).all():
        raise UploadError(422, f"{record.name}: the signal holds values that are not numbers")
    return record


# --------------------------------------------------------------------------- ECG


def read_ecg(parts: list[Part], max_bytes: int, max_duration_s: float, fs: float | None = None,
             unit: str | None = None) -> Record:
    """The ECG of an upload, by what its files are: ``.zip``, ``.hea`` + signal files, ``.edf``
    (or ``.bdf``), ``.csv`` (with ``fs`` and ``unit``)."""
    if not parts:
        raise UploadError(400, "no file uploaded: send the recording as form field 'file'")
    suffixes = {p.suffix for p in parts}
    if len(parts) == 1 and (parts[0].suffix == ".zip" or parts[0].data[:4] == b"PK\x03\x04"):
        parts = _unzip(parts[0], max_bytes * ZIP_INFLATE)
        suffixes = {p.suffix for p in parts}
    if ".hea" in suffixes:
        record = _read_wfdb(parts)
    elif suffixes & {".edf", ".bdf", ".rec"}:
        record = _read_edf(_only(parts, "an EDF upload"), unit)
    elif suffixes & _TEXT_SUFFIXES:
        record = _read_csv(_only(parts, "a CSV upload"), fs, unit)
    elif suffixes & {".dat", ".mat", ".atr"}:
        raise UploadError(422, "missing header: a WFDB record needs its .hea file beside its signal file(s)")
    else:
        names = ", ".join(p.name for p in parts)
        raise UploadError(415, f"unsupported file type ({names}): send a WFDB record (.hea and its signal "
                               f"files, or a .zip of them), an .edf, or a .csv with ?fs=HZ&unit=mV")
    # A file that states its own rate wins only if ?fs agrees: a silent choice would mislabel every time.
    if fs is not None and not suffixes & _TEXT_SUFFIXES and not math.isclose(fs, record.fs):
        raise UploadError(422, f"{record.name}: ?fs={fs:g} but the file says {record.fs:g} Hz; leave fs out")
    return _check_rate_and_length(record, max_duration_s)


def _only(parts: list[Part], what: str) -> Part:
    if len(parts) != 1:
        raise UploadError(400, f"{what} is one file, got {len(parts)}: {', '.join(p.name for p in parts)}")
    return parts[0]


def _unzip(part: Part, max_inflated: int) -> list[Part]:
    try:
        with zipfile.ZipFile(io.BytesIO(part.data)) as zf:
            infos = [i for i in zf.infolist() if not i.is_dir() and not Path(i.filename).name.startswith(".")]
            if sum(i.file_size for i in infos) > max_inflated:
                raise UploadError(413, f"{part.name} inflates to more than {max_inflated / 1e6:.0f} MB")
            # Folders inside the zip are ignored: only the files' own names count.
            return [Part(Path(i.filename).name, zf.read(i)) for i in infos if not i.filename.startswith("__MACOSX")]
    except UploadError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError, NotImplementedError) as err:
        raise UploadError(422, f"{part.name} is not a readable zip ({type(err).__name__}: {err})") from None


def _read_wfdb(parts: list[Part]) -> Record:
    headers = [p for p in parts if p.suffix == ".hea"]
    if len(headers) != 1:
        raise UploadError(400, f"the upload holds {len(headers)} WFDB headers "
                               f"({', '.join(p.name for p in headers)}): send one record at a time")
    for p in parts:
        if not _SAFE_NAME.match(p.name):
            raise UploadError(400, f"file name {p.name!r} may hold only letters, digits, '_', '-' and '.'")
    header = headers[0]
    _check_header_files(header, {p.name for p in parts})
    with tempfile.TemporaryDirectory(prefix="ecgmon-upload-") as tmp:
        for p in parts:
            (Path(tmp) / p.name).write_bytes(p.data)
        try:
            # No annotations: a reference .atr is for evaluators, and a bad one must not fail the upload.
            record = load_record(str(Path(tmp) / header.name), DataConfig(), annotations=False)
        except RecordError as err:
            raise UploadError(422, str(err).replace(tmp + "/", "").replace(tmp, "upload")) from None
    record.name = Path(header.name).stem
    record.path = None
    return record


def _check_header_files(header: Part, uploaded: set[str]) -> None:
    """The signal files a header names must be plain names among the uploaded files: a header
    must never make the reader open a path of the server's own (``../../etc/…``)."""
    try:
        text = header.data.decode("ascii")
    except UnicodeDecodeError:
        raise UploadError(422, f"{header.name} is not a WFDB header (not ASCII text)") from None
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not lines:
        raise UploadError(422, f"{header.name} is empty: not a WFDB header")
    first = lines[0].split()
    if "/" in first[0]:
        raise UploadError(422, f"{header.name} is a multi-segment record header: send a single-segment record")
    try:
        n_sig = int(first[1]) if len(first) > 1 else 0
    except ValueError:
        raise UploadError(422, f"{header.name}: the record line's signal count {first[1]!r} is not a number") from None
    for line in lines[1 : 1 + n_sig]:
        name = line.split()[0]
        if name == "~":
            continue
        if name not in uploaded:
            raise UploadError(422, f"{header.name} names signal file {name!r}, which was not uploaded: "
                                   f"send it with the header (or a .zip of both)")


def _read_edf(part: Part, unit: str | None) -> Record:
    import pyedflib  # only for EDF uploads

    with tempfile.NamedTemporaryFile(suffix=part.suffix or ".edf") as tmp:
        tmp.write(part.data)
        tmp.flush()
        try:
            reader = pyedflib.EdfReader(tmp.name)
        except (OSError, ValueError, RuntimeError) as err:
            raise UploadError(422, f"{part.name} is not a readable EDF file "
                                   f"({str(err).replace(tmp.name + ': ', '').replace(tmp.name, part.name)})") from None
        try:
            labels = [str(s).strip() or f"ch{i}" for i, s in enumerate(reader.getSignalLabels())]
            rates = [float(r) for r in reader.getSampleFrequencies()]
            dims = [str(reader.getPhysicalDimension(i)).strip() for i in range(len(labels))]
            # EDF+ stores its annotations as a signal; it is no ECG.
            keep = [i for i, lab in enumerate(labels) if "annotations" not in lab.casefold()]
            if not keep:
                raise UploadError(422, f"{part.name} holds no signals")
            fs = rates[keep[0]]
            # One record has one rate: the signals at the first signal's rate.
            keep = [i for i in keep if rates[i] == fs]
            columns = []
            for i in keep:
                scale = unit_scale(unit or dims[i] or "?", f"{part.name} signal {labels[i]!r}")
                columns.append(np.asarray(reader.readSignal(i), dtype=np.float64) * scale)
        except UploadError:
            raise
        except Exception as err:  # pyedflib raises assorted errors on damaged files
            raise UploadError(422, f"{part.name}: the EDF signals cannot be read ({type(err).__name__}: {err})") from None
        finally:
            reader.close()
    n = min(c.size for c in columns)
    signal = np.ascontiguousarray(np.stack([c[:n] for c in columns], axis=1), dtype=np.float32)
    return Record(name=Path(part.name).stem, fs=fs, channels=tuple(labels[i] for i in keep), signal=signal,
                  units=tuple("mV" for _ in keep))


def _read_csv(part: Part, fs: float | None, unit: str | None) -> Record:
    if fs is None or unit is None:
        raise UploadError(400, f"{part.name}: a CSV says neither its rate nor its unit: add ?fs=HZ&unit=mV (or uV, V)")
    scale = unit_scale(unit, part.name)
    try:
        text = part.data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise UploadError(422, f"{part.name} is not UTF-8 text (byte {err.start}): not a CSV") from None
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not lines:
        raise UploadError(422, f"{part.name} holds no rows")
    try:
        dialect = csv.Sniffer().sniff(lines[0], delimiters=",;\t ")
        delimiter = dialect.delimiter
    except csv.Error:
        delimiter = ","
    rows = list(csv.reader(lines, delimiter=delimiter, skipinitialspace=True))
    names: list[str] | None = None
    if rows and not _numeric_row(rows[0]):
        names = [c.strip() for c in rows[0]]
        rows = rows[1:]
    width = len(names) if names else len(rows[0]) if rows else 0
    try:
        data = np.array([[float(c) for c in r] for r in rows], dtype=np.float64)
    except ValueError as err:
        raise UploadError(422, f"{part.name}: not numeric data ({err})") from None
    if data.ndim != 2 or data.shape[0] == 0 or data.shape[1] != width:
        raise UploadError(422, f"{part.name}: rows of different lengths, or no rows: not a table of samples")
    names = names or [f"ch{i}" for i in range(width)]
    keep = [i for i, n in enumerate(names) if n.casefold() not in _CLOCK_COLUMNS]
    if not keep:
        raise UploadError(422, f"{part.name}: no signal column (only {', '.join(names)})")
    signal = np.ascontiguousarray(data[:, keep] * scale, dtype=np.float32)
    return Record(name=Path(part.name).stem, fs=float(fs), channels=tuple(names[i] for i in keep), signal=signal,
                  units=tuple("mV" for _ in keep))


def _numeric_row(row: list[str]) -> bool:
    try:
        [float(c) for c in row]
    except ValueError:
        return False
    return True


# --------------------------------------------------------------------------- heart sounds

AUDIO_SUFFIXES = {".wav", ".flac"}


@dataclass
class Audio:
    """A decoded heart-sound upload: ``(frames, channels)`` float32 full scale at ``fs``."""

    name: str
    fs: float
    samples: np.ndarray


def read_audio(part: Part, max_duration_s: float) -> Audio:
    import soundfile as sf

    if part.suffix not in AUDIO_SUFFIXES and part.data[:4] not in (b"RIFF", b"fLaC"):
        raise UploadError(415, f"unsupported file type ({part.name}): send a WAV or FLAC recording")
    try:
        with sf.SoundFile(io.BytesIO(part.data)) as f:
            fs, frames = float(f.samplerate), f.frames
            if frames / fs > max_duration_s:
                raise UploadError(413, f"{part.name}: {frames / fs:.0f} s of audio is longer than the limit of "
                                       f"{max_duration_s:g} s ([http] max_duration_s)")
            samples = f.read(dtype="float32", always_2d=True)
    except UploadError:
        raise
    except Exception as err:  # libsndfile's errors: unknown format, a frame that does not decode
        raise UploadError(422, f"{part.name} is not a readable WAV/FLAC recording ({err})") from None
    if samples.shape[0] == 0:
        raise UploadError(422, f"{part.name}: the recording holds no samples")
    if not np.isfinite(samples).all():
        raise UploadError(422, f"{part.name}: the audio holds values that are not numbers")
    return Audio(Path(part.name).stem, fs, samples)
