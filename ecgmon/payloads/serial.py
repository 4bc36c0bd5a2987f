"""The two serial wire formats, encoder and decoder side by side: ASCII lines (one sample time
per line, Arduino style) and ecgmon's binary frame. No I/O; decoders never raise on any input.

Binary frame (all multi-byte fields little-endian)::

    offset  size      field
    0       2         sync bytes 0xA5 0x5A
    2       1         version/flags: high nibble version (1), low nibble flags (0, reserved)
    3       2         sequence counter, u16, +1 per frame, wraps 65535 -> 0
    5       1         n, samples per channel (1..255)
    6       1         c, channels (1..16)
    7       2*n*c     samples, int16, interleaved: s0c0 s0c1 .. s1c0 s1c1 ..
    7+2nc   2         CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF) of bytes 2 .. 7+2nc-1

Values on the wire are device units; millivolts = (value - offset) * scale_mv.

Both decoders select one channel (``channel``) and optionally a second (``lead2``, a second ECG
lead). The second lead never costs the first: a line or frame without it, or a value of it that
is no number, gives NaN there (counted in ``lead2_missing``) and the first lead as usual.
"""

from __future__ import annotations

import binascii
import re
import struct
from typing import NamedTuple

import numpy as np

# ---------------------------------------------------------------------------- ASCII lines

MAX_LINE = 256  # bytes; a longer run without a newline is garbage, never buffered further
_PRINTABLE = bytes(range(0x20, 0x7F)) + b"\t\r\n"
_SEPARATORS = re.compile(rb"[,;\s]+")
# Plain decimal numbers only: float() alone would also take "nan", "inf" and "1_000".
_NUMBER = re.compile(rb"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
# A new column count is believed once this many well-formed lines in a row agree on it.
_COLUMN_RUN = 4


def encode_ascii(values: np.ndarray, newline: bytes = b"\r\n") -> bytes:
    """One line per row of ``values`` (1-D: one number per line), columns joined by commas.

    Integer arrays are written as integers (device units, as an ADC prints them)."""
    arr = np.asarray(values)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.shape[0] == 0:
        return b""
    rows = arr.tolist()
    text = newline.decode().join(",".join(map(str, row)) for row in rows)
    return text.encode() + newline


class AsciiDecoder:
    """Incremental decoder of ASCII lines: ``feed`` returns column ``channel`` of every complete
    line, as float64 device units; ``feed_leads`` returns ``(n, 2)``, column ``lead2`` beside it,
    when a second lead is asked for.

    A complete line that holds no usable value (letters, NaN, inf, too few or a changed number
    of columns, control bytes) still stands for one sample time: it comes out as NaN so that
    the stream's clock stays true, and is counted in ``bad_lines``. Blank lines are ignored.
    A run of more than ``MAX_LINE`` bytes without a newline is dropped (``overlong_lines``).
    A usable line whose ``lead2`` column is missing or no number keeps its first value; the
    second is NaN and counted in ``lead2_missing``.
    """

    def __init__(self, channel: int = 0, lead2: int | None = None) -> None:
        self.channel = channel
        self.lead2 = lead2
        self.lead2_missing = 0  # usable lines without a usable second-lead value
        self.lines = 0  # complete non-blank lines, usable or not
        self.bad_lines = 0
        self.overlong_lines = 0
        self.garbage_bytes = 0  # bytes outside printable ASCII, tab, CR, LF
        self.columns: int | None = None  # column count of the well-formed lines
        self._run_columns = 0
        self._run = 0
        self._partial = b""
        self._skipping = False

    def reset(self, resync: bool = True) -> None:
        """Forget the partial line (a new connection); with ``resync``, drop the next line too,
        since a port opened mid-stream starts inside a line."""
        self._partial = b""
        self._skipping = resync

    def counts(self) -> dict[str, int]:
        counts = {
            "lines": self.lines,
            "bad_lines": self.bad_lines,
            "overlong_lines": self.overlong_lines,
            "garbage_bytes": self.garbage_bytes,
        }
        if self.lead2 is not None:  # only a source that asked for a second lead can miss it
            counts["lead2_missing"] = self.lead2_missing
        return counts

    def feed(self, data: bytes) -> np.ndarray:
        """The first lead of every complete line in ``data``, shape ``(n,)``."""
        return self.feed_leads(data)[:, 0]

    def feed_leads(self, data: bytes) -> np.ndarray:
        """Every complete line in ``data``: shape ``(n, 2)`` with ``lead2`` set, else ``(n, 1)``."""
        self.garbage_bytes += len(data.translate(None, _PRINTABLE))
        parts = (self._partial + data).split(b"\n")
        partial = parts.pop()
        out: list[tuple[float, float]] = []
        for line in parts:
            if self._skipping:
                self._skipping = False
                continue
            if len(line) > MAX_LINE:
                self.overlong_lines += 1
                continue
            line = line.strip()
            if not line:
                continue
            self.lines += 1
            value, second = self._parse(line)
            if value is None:
                self.bad_lines += 1
                out.append((np.nan, np.nan))
            else:
                if second is None and self.lead2 is not None:
                    self.lead2_missing += 1
                out.append((value, np.nan if second is None else second))
        if len(partial) > MAX_LINE:
            self.overlong_lines += not self._skipping
            partial = b""
            self._skipping = True  # the rest of this line, up to its newline, goes too
        self._partial = partial
        leads = 1 if self.lead2 is None else 2
        return np.array(out, dtype=np.float64).reshape(-1, 2)[:, :leads]

    def _parse(self, line: bytes) -> tuple[float | None, float | None]:
        """``(first lead, second lead)`` of a line; None where there is no usable value."""
        if line.translate(None, _PRINTABLE):
            return None, None
        tokens = _SEPARATORS.split(line.strip(b",; \t"))
        # Every column but the second lead's must be a number: a token that is not is a sign of
        # a damaged line, whose first value cannot be trusted either. A bad second-lead value
        # (a device printing "nan" for a lead that is off) costs only the second lead.
        lead2 = self.lead2 if self.lead2 is not None and self.lead2 < len(tokens) else None
        if not all(_NUMBER.fullmatch(t) for i, t in enumerate(tokens) if i != lead2):
            return None, None
        if not self._columns_ok(len(tokens)) or len(tokens) <= self.channel:
            return None, None
        value = float(tokens[self.channel])
        if not np.isfinite(value):  # 1e999 parses as inf
            return None, None
        if lead2 is None or not _NUMBER.fullmatch(tokens[lead2]):
            return value, None
        second = float(tokens[lead2])
        return value, second if np.isfinite(second) else None

    def _columns_ok(self, n: int) -> bool:
        """Lines merged or cut by lost bytes change the column count: reject them, but adopt a
        new count that persists (the device was reconfigured)."""
        if n == self._run_columns:
            self._run += 1
        else:
            self._run_columns, self._run = n, 1
        if self.columns is None or self._run >= _COLUMN_RUN:
            self.columns = n
        return n == self.columns


# ---------------------------------------------------------------------------- binary frames

SYNC = b"\xa5\x5a"
VERSION = 1
MAX_CHANNELS = 16
MAX_SAMPLES = 255
_HEADER = struct.Struct("<2sBHBB")  # sync, version/flags, seq, n, channels
HEADER_SIZE = _HEADER.size  # 7
CRC_SIZE = 2


def frame_size(n: int, channels: int) -> int:
    return HEADER_SIZE + 2 * n * channels + CRC_SIZE


def crc16(data: bytes) -> int:
    """CRC-16/CCITT-FALSE: ``binascii.crc_hqx`` is CRC-CCITT, and init 0xFFFF makes it -FALSE."""
    return binascii.crc_hqx(data, 0xFFFF)


def encode_frame(seq: int, samples: np.ndarray) -> bytes:
    """One frame of ``samples`` (int16 device units, shape ``(n, channels)`` or ``(n,)``)."""
    arr = np.asarray(samples)
    if arr.ndim == 1:
        arr = arr[:, None]
    n, ch = arr.shape
    if not 1 <= n <= MAX_SAMPLES or not 1 <= ch <= MAX_CHANNELS:
        raise ValueError(f"a frame holds 1..{MAX_SAMPLES} samples of 1..{MAX_CHANNELS} channels, not {arr.shape}")
    if arr.dtype != np.int16:
        if not np.issubdtype(arr.dtype, np.integer) or arr.min() < -32768 or arr.max() > 32767:
            raise ValueError("frame samples must be integers in the int16 range")
    body = struct.pack("<BHBB", VERSION << 4, seq & 0xFFFF, n, ch) + arr.astype("<i2").tobytes()
    return SYNC + body + crc16(body).to_bytes(2, "little")


class Frame(NamedTuple):
    seq: int
    samples: np.ndarray  # float64 device units of the selected channel
    lost: int  # samples missing before this frame (sequence gap x samples per frame)
    # float64 device units of channel ``lead2`` (NaN if the frame has no such channel), or
    # None when no second lead was asked for.
    samples2: np.ndarray | None = None


class FrameDecoder:
    """Incremental frame decoder: finds sync bytes, checks the header and CRC, and on any
    failure skips one byte and searches again, so it resynchronises after garbage.

    Sequence gaps count ``lost_frames`` and ``lost_samples`` (lost frames times the previous
    frame's sample count: senders keep n constant); a backward jump (the device restarted its
    counter) counts ``seq_restarts``. The buffer never holds more than one maximal frame.
    """

    def __init__(self, channel: int = 0, lead2: int | None = None) -> None:
        self.channel = channel
        self.lead2 = lead2
        self.lead2_missing = 0  # samples of frames that have no channel ``lead2``
        self.frames = 0
        self.crc_errors = 0
        self.bad_frames = 0  # impossible version, n or channel count; or no channel `channel`
        self.garbage_bytes = 0  # bytes skipped while searching for a frame
        self.lost_frames = 0
        self.lost_samples = 0
        self.seq_restarts = 0
        self.channels: int | None = None  # channel count of the last good frame
        self._buf = bytearray()
        self._expect: int | None = None
        self._last_n = 0

    def reset(self) -> None:
        """Forget buffered bytes and the expected sequence number (a new connection)."""
        self._buf.clear()
        self._expect = None

    def counts(self) -> dict[str, int]:
        counts = {
            "frames": self.frames,
            "crc_errors": self.crc_errors,
            "bad_frames": self.bad_frames,
            "garbage_bytes": self.garbage_bytes,
            "lost_frames": self.lost_frames,
            "lost_samples": self.lost_samples,
            "seq_restarts": self.seq_restarts,
        }
        if self.lead2 is not None:
            counts["lead2_missing"] = self.lead2_missing
        return counts

    def feed(self, data: bytes) -> list[Frame]:
        buf = self._buf
        buf += data
        out: list[Frame] = []
        pos = 0
        while True:
            i = buf.find(SYNC, pos)
            if i < 0:
                # A last 0xA5 may be the first half of the next sync.
                keep = 1 if len(buf) > pos and buf[-1] == SYNC[0] else 0
                self.garbage_bytes += len(buf) - pos - keep
                pos = len(buf) - keep
                break
            self.garbage_bytes += i - pos
            pos = i
            if len(buf) - pos < HEADER_SIZE:
                break
            _, vf, seq, n, ch = _HEADER.unpack_from(buf, pos)
            if vf >> 4 != VERSION or n == 0 or not 1 <= ch <= MAX_CHANNELS:
                self.bad_frames += 1
                self.garbage_bytes += 1
                pos += 1
                continue
            size = frame_size(n, ch)
            if len(buf) - pos < size:
                break
            body = bytes(buf[pos + 2 : pos + size - CRC_SIZE])
            if crc16(body) != int.from_bytes(buf[pos + size - CRC_SIZE : pos + size], "little"):
                self.crc_errors += 1
                self.garbage_bytes += 1
                pos += 1
                continue
            pos += size
            self.frames += 1
            self.channels = ch
            lost = self._sequence(seq, n)
            if self.channel >= ch:
                self.bad_frames += 1
                continue
            samples = np.frombuffer(body, "<i2", offset=HEADER_SIZE - 2).reshape(n, ch)
            second = None
            if self.lead2 is not None:
                # A frame without the second lead's channel still carries the first in full.
                if self.lead2 < ch:
                    second = samples[:, self.lead2].astype(np.float64)
                else:
                    second = np.full(n, np.nan)
                    self.lead2_missing += n
            out.append(Frame(seq, samples[:, self.channel].astype(np.float64), lost, second))
        del buf[:pos]
        return out

    def _sequence(self, seq: int, n: int) -> int:
        lost = 0
        if self._expect is not None and seq != self._expect:
            gap = (seq - self._expect) & 0xFFFF
            if gap < 0x8000:
                self.lost_frames += gap
                lost = gap * (self._last_n or n)
                self.lost_samples += lost
            else:
                self.seq_restarts += 1
        self._expect = (seq + 1) & 0xFFFF
        self._last_n = n
        return lost


def to_wire(mv: np.ndarray, scale_mv: float, offset: float) -> np.ndarray:
    """Millivolts to integer device units, ``round(mv / scale_mv + offset)``; NaN becomes offset."""
    units = np.asarray(mv, dtype=np.float64) / scale_mv + offset
    units = np.nan_to_num(units, nan=offset, posinf=offset, neginf=offset)
    return np.rint(np.clip(units, -(2**31), 2**31 - 1)).astype(np.int64)


def from_wire(units: np.ndarray, scale_mv: float, offset: float) -> np.ndarray:
    """Device units to float32 millivolts, ``(units - offset) * scale_mv``."""
    return ((np.asarray(units, dtype=np.float64) - offset) * scale_mv).astype(np.float32)
