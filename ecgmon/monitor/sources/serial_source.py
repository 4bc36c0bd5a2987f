"""A serial ECG device as a live source: ASCII lines or binary frames read without blocking the
event loop, decoded into Chunks (one lead, or two with ``lead2=N``), with corruption, signal loss
and disconnects as SourceEvents."""

from __future__ import annotations

import asyncio
from contextlib import aclosing
import errno
import os
import select
import stat
import time
from typing import AsyncIterator, Literal

import numpy as np
import serial

from ecgmon.chunk import Chunk, SourceEvent
from ecgmon.config import Config, SerialConfig
from ecgmon.fd_wait import fd_ready
from ecgmon.monitor.sources.base import SourceError
from ecgmon.monitor.sources.event_throttle import EventThrottle
from ecgmon.monitor.sources.spec_query import apply_query
from ecgmon.payloads.serial import AsciiDecoder, FrameDecoder, from_wire

# Spec parameters and the [serial] config fields they override.
SPEC_PARAMS = {
    "fs": "fs",
    "baud": "baud",
    "format": "format",
    "channel": "channel",
    "lead2": "lead2",
    "scale": "scale_mv",
    "offset": "offset",
}
READ_SIZE = 65536
NO_DATA_S = 3.0  # an open device silent this long is reported (ECG devices send 50+ samples/s)
# Readable yet empty this many times in a row: the device is at end of file for good (a single
# empty read can be a wake-up with nothing to read).
MAX_EMPTY_READS = 3
# Fault counters whose increase is worth a corrupt_input event (lines and frames are not).
_FAULTS = ("bad_lines", "overlong_lines", "garbage_bytes", "crc_errors", "bad_frames", "seq_restarts")


def parse_serial_spec(spec: str, base: SerialConfig) -> tuple[str, SerialConfig]:
    """``serial:PORT?fs=250&baud=115200&format=ascii&channel=0&lead2=1&scale=0.001&offset=0`` →
    ``(PORT, base with those overrides)``, each parameter validated and named in errors."""
    if not spec.startswith("serial:"):
        raise SourceError(f"'{spec}' is not a serial spec: write serial:/dev/ttyUSB0?fs=250")
    port, _, query = spec.removeprefix("serial:").partition("?")
    if not port:
        raise SourceError(f"'{spec}': no port after 'serial:'; e.g. serial:/dev/ttyUSB0?fs=250")
    return port, apply_query(spec, query, base, SPEC_PARAMS, "serial")


def _open_hint(err: Exception) -> str:
    code = getattr(err, "errno", None)
    if code == errno.ENOENT:
        return "no such device: is it plugged in? (ls /dev/ttyUSB* /dev/ttyACM* /dev/serial/by-id/)"
    if code in (errno.EACCES, errno.EPERM):
        return "permission denied: add your user to the 'dialout' group (then log in again)"
    if code == errno.EBUSY:
        return "the device is busy: another program has it open"
    return str(err)


class SerialSource:
    """Reads ``serial:PORT?...`` and yields ``(n, 1)`` float32 mV chunks of at most
    ``replay.chunk_s``, never holding a sample back longer than that; ``(n, 2)`` with ``lead2``,
    the second column NaN wherever the device gave no usable second-lead value.

    Sample indices are the stream's clock: a binary sequence gap advances ``start`` by the lost
    samples, and a disconnect by the time the device was away times ``fs`` (an estimate: a
    serial line carries no clock). A device missing at start or gone later is retried with
    exponential backoff between ``reconnect_min_s`` and ``reconnect_max_s``.
    """

    def __init__(self, spec: str, config: Config, stream: str) -> None:
        self.spec = spec
        self.stream = stream
        self.port, self.settings = parse_serial_spec(spec, config.serial)
        self.fs = float(self.settings.fs)
        self.lead = "serial"
        s = self.settings
        # The chunks' channel names: the pipeline reads the second column as a second lead.
        self.channels: tuple[str, ...] = (self.lead,) if s.lead2 is None else (self.lead, f"serial{s.lead2}")
        self.chunk_s = config.replay.chunk_s
        self.chunk_n = max(1, round(self.chunk_s * self.fs))
        self._check_port()
        self.decoder: AsciiDecoder | FrameDecoder = (
            AsciiDecoder(s.channel, s.lead2) if s.format == "ascii" else FrameDecoder(s.channel, s.lead2)
        )
        self._lead2_reported = False  # the missing second lead is told once, then only counted
        self.disconnects = 0
        self.offline_samples = 0  # samples estimated lost while the device was away
        self._next = 0  # index of the next sample of the stream
        self._pending: list[np.ndarray] = []
        self._pending_n = 0
        self._pending_since = 0.0
        self._received = 0.0
        # corrupt_input and signal_loss at most once a second, with the counts of that moment.
        self._events = EventThrottle(stream, self.counts)
        self._faults_seen = 0
        self._gaps = 0  # sequence gaps so far

    def _check_port(self) -> None:
        """A path that exists but is no device cannot become one: that is a spec error."""
        try:
            mode = os.stat(self.port).st_mode
        except OSError:
            return  # not there yet: wait for it
        if not stat.S_ISCHR(mode):
            raise SourceError(f"'{self.spec}': {self.port} is not a serial device (not a character device)")

    def counts(self) -> dict[str, int]:
        return {**self.decoder.counts(), "disconnects": self.disconnects, "offline_samples": self.offline_samples}

    def _event(self, level: Literal["info", "warning", "error"], code: str, text: str) -> SourceEvent:
        return SourceEvent(self.stream, level, code, text, self.counts())

    # -- connection ---------------------------------------------------------------------

    def _open(self) -> serial.Serial:
        self._check_port()
        # timeout=0: pyserial keeps the descriptor non-blocking; reads are driven by the loop.
        return serial.Serial(self.port, self.settings.baud, timeout=0)

    async def chunks(self) -> AsyncIterator[Chunk | SourceEvent]:
        s = self.settings
        backoff = s.reconnect_min_s
        away_since: float | None = None
        while True:
            try:
                port = self._open()
            except (serial.SerialException, OSError) as err:
                if away_since is None:
                    away_since = time.monotonic()
                    self.disconnects += 1
                    yield self._event("error", "disconnected",
                                      f"cannot open {self.port}: {_open_hint(err)}; retrying every "
                                      f"{s.reconnect_min_s:g} to {s.reconnect_max_s:g} s")
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, s.reconnect_max_s)
                continue
            backoff = s.reconnect_min_s
            if isinstance(self.decoder, AsciiDecoder):
                self.decoder.reset(resync=True)
            else:
                self.decoder.reset()
            if away_since is not None:
                away = time.monotonic() - away_since
                if self._next > 0:  # a device that was never there has lost nothing
                    lost = round(away * self.fs)
                    self._next += lost
                    self.offline_samples += lost
                yield self._event("info", "reconnected", f"{self.port} opened after {away:.1f} s away")
            try:
                async with aclosing(self._read(port)) as items:
                    async for item in items:
                        yield item
            finally:
                port.close()
            away_since = time.monotonic()
            self.disconnects += 1
            for item in self._flush():
                yield item
            yield self._event("error", "disconnected",
                              f"{self.port} went away (end of data or read error); reconnecting")
            await asyncio.sleep(backoff)

    async def _read(self, port: serial.Serial) -> AsyncIterator[Chunk | SourceEvent]:
        """Chunks and events until the device reads EOF or fails."""
        fd = port.fileno()
        last_data, silent = time.monotonic(), False
        empty = 0  # empty reads in a row
        while True:
            if await fd_ready(fd, self._timeout(None if silent else last_data + NO_DATA_S)):
                try:
                    data = os.read(fd, READ_SIZE)
                except BlockingIOError:
                    data = None
                except OSError:
                    return  # EIO: the device (or the other end of a pty) is gone
                if data == b"":
                    # With pyserial's VMIN=0 an empty read may also mean "nothing to read": the
                    # device is gone when it hung up (a USB adapter pulled) or reads nothing
                    # again and again (a device at permanent end of file).
                    empty += 1
                    if empty >= MAX_EMPTY_READS or _hung_up(fd):
                        return
                    data = None
                else:
                    empty = 0
                if data:
                    last_data = time.monotonic()
                    if silent:
                        silent = False
                        yield self._event("info", "data_resumed", f"data from {self.port} again")
                    for item in self._decode(data):
                        yield item
            for item in self._due():
                yield item
            if not silent and time.monotonic() - last_data >= NO_DATA_S:
                # A device can stay open and say nothing; without samples no alarm can fire.
                silent = True
                yield self._event("warning", "no_data",
                                  f"no data from {self.port} for {NO_DATA_S:g} s: is the device sending?")

    def _timeout(self, silence_at: float | None) -> float | None:
        """Seconds until the next thing falls due without new data: a chunk, a report, silence."""
        due = [self._pending_since + self.chunk_s if self._pending else None,
               self._events.next_flush(), silence_at]
        deadline = min((t for t in due if t is not None), default=None)
        return None if deadline is None else max(0.0, deadline - time.monotonic())

    # -- decoding and batching ----------------------------------------------------------

    def _decode(self, data: bytes) -> list[Chunk | SourceEvent]:
        now = time.monotonic()
        self._received = time.time()
        out: list[Chunk | SourceEvent] = []
        s = self.settings
        if isinstance(self.decoder, AsciiDecoder):
            pieces = [(0, self.decoder.feed_leads(data))]
        else:
            pieces = [(f.lost, _columns(f.samples, f.samples2)) for f in self.decoder.feed(data)]
        gaps = self._gaps
        for lost, values in pieces:
            if lost:
                out.extend(self._flush())  # chunks stay contiguous: the gap falls between two
                self._next += lost
                self._gaps += 1
            if values.shape[0]:
                if not self._pending:
                    self._pending_since = now
                self._pending.append(from_wire(values, s.scale_mv, s.offset))  # NaN stays NaN
                self._pending_n += values.shape[0]
        if self._pending_n >= self.chunk_n:
            out.extend(self._flush(full_only=True))
        c = self.decoder.counts()
        if self._gaps > gaps:
            lost = c["lost_samples"]
            out += self._offer("warning", "signal_loss",
                               f"{lost} samples ({lost / self.fs:.2f} s) lost in {self._gaps} sequence "
                               f"gap{'s' if self._gaps > 1 else ''} so far", now)
        faults = sum(c.get(k, 0) for k in _FAULTS)
        if faults > self._faults_seen:
            self._faults_seen = faults
            what = ", ".join(f"{c[k]} {k.replace('_', ' ')}" for k in _FAULTS if c.get(k))
            out += self._offer("warning", "corrupt_input",
                               f"corrupt input from {self.port}: {what} so far{self._hint()}", now)
        if c.get("lead2_missing") and not self._lead2_reported:
            self._lead2_reported = True
            out.append(self._event("warning", "lead2_missing", self._lead2_text()))
        return out

    def _lead2_text(self) -> str:
        dec, lead2 = self.decoder, self.settings.lead2
        have = dec.columns if isinstance(dec, AsciiDecoder) else dec.channels
        why = (f"the device sends {have} {'column' if isinstance(dec, AsciiDecoder) else 'channel'}"
               f"{'s' if have != 1 else ''}" if have is not None and have <= (lead2 or 0)
               else "a value that is not a number")
        return (f"no second lead from {self.port} (lead2={lead2}: {why}); its samples are NaN in the "
                f"second lead (counted as lead2_missing), the first lead and monitoring go on")

    def _offer(self, level: Literal["info", "warning", "error"], code: str, text: str,
               now: float) -> list[SourceEvent]:
        """The event now, or nothing if one of its code went out within the last second: then
        it comes out of ``_due`` once due, with the latest text."""
        ev = self._events.event(code, level, text, now)
        return [ev] if ev else []

    def _flush(self, full_only: bool = False) -> list[Chunk]:
        """Pending samples as chunks of ``chunk_n``, and the remainder too unless ``full_only``."""
        if not self._pending_n:
            return []
        x = np.concatenate(self._pending)
        size = x.shape[0]
        end = (size // self.chunk_n) * self.chunk_n if full_only else size
        chunks = []
        for i in range(0, end, self.chunk_n):
            block = x[i : min(i + self.chunk_n, end)]
            chunks.append(Chunk(self.stream, self.fs, self.channels, self._next, block, self._received))
            self._next += block.shape[0]
        rest = x[end:]
        self._pending = [rest] if rest.shape[0] else []
        self._pending_n = rest.shape[0]
        self._pending_since = time.monotonic()
        return chunks

    def _due(self) -> list[Chunk | SourceEvent]:
        now = time.monotonic()
        out: list[Chunk | SourceEvent] = []
        if self._pending and now - self._pending_since >= self.chunk_s:
            out.extend(self._flush())
        out.extend(self._events.flush(now))
        return out

    def _hint(self) -> str:
        """The likely cause when nothing at all is usable."""
        dec, ch = self.decoder, self.settings.channel
        have = dec.columns if isinstance(dec, AsciiDecoder) else dec.channels
        if have is not None and ch >= have:
            return f" (the device sends {have} channel{'s' if have > 1 else ''}; channel={ch} selects none)"
        good = dec.lines - dec.bad_lines if isinstance(dec, AsciiDecoder) else dec.frames
        if good == 0:
            return f" (nothing decodable yet: check baud={self.settings.baud} and format={self.settings.format})"
        return ""


def _columns(first: np.ndarray, second: np.ndarray | None) -> np.ndarray:
    """A frame's leads as the ``(n, leads)`` array chunks are made of."""
    return first[:, None] if second is None else np.column_stack((first, second))


def _hung_up(fd: int) -> bool:
    poll = select.poll()
    poll.register(fd, select.POLLIN)
    return any(ev & (select.POLLHUP | select.POLLERR | select.POLLNVAL) for _, ev in poll.poll(0))
