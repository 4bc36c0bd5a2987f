"""Serial device simulator: a paced source written out of a new pseudo-terminal (optionally
linked at a stable path, like socat's ``link=``) or a given port, as ASCII lines or binary frames;
every lead of the source's chunks goes out (a record's second lead as the second column or
channel, unless ``replay.second_lead`` is off)."""

from __future__ import annotations

import asyncio
from contextlib import aclosing
import fcntl
import logging
import os
import select
import stat
import struct
import termios
import time
import tty
from typing import AsyncIterator, Callable, Protocol
from urllib.parse import parse_qsl

import numpy as np

from ecgmon.chunk import Chunk
from ecgmon.config import Config, ConfigError, SerialConfig
from ecgmon.fd_wait import fd_ready
from ecgmon.payloads.serial import MAX_SAMPLES, encode_ascii, encode_frame, to_wire

log = logging.getLogger("ecgmon.replay.serial")

READER_POLL_S = 0.05
# A reader's pyserial open flushes its input just after the open that we notice: let it finish.
SETTLE_S = 0.2
DRAIN_STALL_S = 2.0


class PacedSource(Protocol):
    """What the emitter needs of a source (RecordSource, SimulatorSource): its rate and paced chunks."""

    fs: float

    def chunks(self) -> AsyncIterator[object]: ...


class EmitterError(ConfigError):
    """A ``--to serial`` target that cannot be used; the message says what to do.

    A ConfigError, so the command line reports it as one line like any bad value."""


def parse_target(target: str, base_baud: int) -> tuple[str | None, int]:
    """``serial`` → (None, baud): a new pty; ``serial:PATH?baud=N`` → (PATH, N)."""
    if target == "serial":
        return None, base_baud
    if not target.startswith("serial:"):
        raise EmitterError(f"target '{target}': use serial or serial:PATH")
    path, _, query = target.removeprefix("serial:").partition("?")
    if not path:
        raise EmitterError(f"target '{target}': no path after 'serial:'")
    baud = base_baud
    try:
        for key, value in parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)):
            if key != "baud":
                raise EmitterError(f"target '{target}': unknown parameter '{key}' (known: baud)")
            baud = SerialConfig(baud=int(value)).baud
    except EmitterError:
        raise
    except ValueError:
        raise EmitterError(f"target '{target}': baud must be a whole number from 300 to 4000000") from None
    return path, baud


class _Pty:
    """A pseudo-terminal whose slave is for the reader. The slave is left closed here, so the
    master reports POLLHUP exactly while no reader has it open."""

    def __init__(self, link: str | None) -> None:
        master, slave = os.openpty()
        try:
            tty.setraw(slave)  # no echo, no line editing, no CR/LF translation: bytes pass as-is
            self.name = os.ttyname(slave)
        finally:
            os.close(slave)
        os.set_blocking(master, False)
        self.fd = master
        self.link = link
        if link is not None:
            try:
                _replace_symlink(link, self.name)
            except OSError as err:
                os.close(master)
                raise EmitterError(f"cannot make {link} a link to {self.name}: {err.strerror}") from None

    @property
    def path(self) -> str:
        return self.link or self.name

    def has_reader(self) -> bool:
        poll = select.poll()
        poll.register(self.fd, select.POLLOUT)
        return not any(ev & select.POLLHUP for _, ev in poll.poll(0))

    async def wait_reader(self) -> None:
        while not self.has_reader():
            await asyncio.sleep(READER_POLL_S)
        await asyncio.sleep(SETTLE_S)

    async def drain(self) -> None:
        """Wait until the reader has taken what is in flight: closing the master discards it."""
        if not self.has_reader():
            return
        fd = os.open(self.name, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK)
        try:
            last, since, idle = -1, time.monotonic(), 0
            while idle < 3:
                queued = _queued(fd, termios.FIONREAD)
                idle = idle + 1 if queued == 0 else 0
                if queued != last:
                    last, since = queued, time.monotonic()
                elif queued and time.monotonic() - since > DRAIN_STALL_S:
                    log.warning("the reader stopped reading: %d bytes not delivered", queued)
                    return
                await asyncio.sleep(READER_POLL_S)
        finally:
            os.close(fd)

    def close(self) -> None:
        if self.link is not None:
            try:
                # Only our own link: a newer emitter may have taken the path over.
                if os.readlink(self.link) == self.name:
                    os.unlink(self.link)
            except OSError:
                pass
        os.close(self.fd)


def _replace_symlink(link: str, target: str) -> None:
    tmp = os.path.join(os.path.dirname(os.path.abspath(link)), f".{os.path.basename(link)}.{os.getpid()}.tmp")
    if os.path.lexists(tmp):
        os.unlink(tmp)
    os.symlink(target, tmp)
    os.replace(tmp, link)  # atomic: a reader never sees the path missing in between


def _wants_pty(path: str) -> bool:
    """A new path, or a link to a pty or to nothing, gets a pty; an existing device is written to."""
    if os.path.islink(path):
        real = os.path.realpath(path)
        return not os.path.exists(real) or real.startswith("/dev/pts/")
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return True
    if stat.S_ISCHR(mode):
        return False
    raise EmitterError(f"{path} exists and is neither a serial device nor a symlink: choose another path")


class _Encoder:
    """Chunks of millivolts to wire bytes; binary frames carry a sequence counter across chunks."""

    def __init__(self, fmt: str, settings: SerialConfig) -> None:
        if fmt not in ("ascii", "binary"):
            raise EmitterError(f"serial format '{fmt}': use ascii or binary")
        self.fmt = fmt
        self.scale, self.offset = settings.scale_mv, settings.offset
        self.seq = 0
        self.clipped = 0

    def __call__(self, chunk: Chunk) -> bytes:
        units = to_wire(chunk.samples, self.scale, self.offset)
        if self.fmt == "ascii":
            return encode_ascii(units)
        clipped = np.clip(units, -32768, 32767)
        if self.clipped == 0 and (clipped != units).any():
            log.warning("values beyond the int16 range at scale_mv %g are clipped: raise scale_mv", self.scale)
        self.clipped += int((clipped != units).sum())
        frames = []
        for i in range(0, clipped.shape[0], MAX_SAMPLES):
            frames.append(encode_frame(self.seq, clipped[i : i + MAX_SAMPLES].astype(np.int16)))
            self.seq = (self.seq + 1) & 0xFFFF
        return b"".join(frames)


async def _write_all(fd: int, data: bytes, gone: Callable[[], bool]) -> int:
    """Write ``data`` without blocking the loop, waiting while the reader is slow (nothing is
    dropped for slowness); returns the bytes not written because the reader went away."""
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:
            if gone():
                return len(view)
            await fd_ready(fd, 1.0, write=True)
    return 0


def _spec_hint(path: str, fs: float, fmt: str, settings: SerialConfig, leads: int = 1) -> str:
    params = [f"fs={fs:g}", f"format={fmt}"]
    default = SerialConfig()
    if settings.scale_mv != default.scale_mv:
        params.append(f"scale={settings.scale_mv:g}")
    if settings.offset != default.offset:
        params.append(f"offset={settings.offset:g}")
    if settings.channel != 0:
        params.append("channel=0")
    if leads > 1:  # a record's second lead goes out as the second column or channel
        params.append("lead2=1")
    return f"serial:{path}?{'&'.join(params)}"


async def emit_serial(
    source: PacedSource, target: str, config: Config, fmt: str, *, corrupt: Callable[[bytes], bytes] | None = None
) -> None:
    """Write the chunks of ``source`` (any object with ``fs`` and async ``chunks()``, paced by
    itself) to ``target`` in format ``fmt`` until the source ends or the task is cancelled.

    On a pty, sending starts once a reader has opened it; while no reader is attached the
    samples are dropped (a device nobody listens to), while a slow reader makes writes wait.
    ``corrupt`` (tests only) may alter the bytes of each write.
    """
    settings = config.serial
    path, baud = parse_target(target, settings.baud)
    encode = _Encoder(fmt, settings)
    if path is None or _wants_pty(path):
        port = _Pty(path)
        try:
            print(f"serial device: {port.name}" + (f" (linked as {path})" if path else ""), flush=True)
            leads = len(getattr(source, "channels", ()) or ())
            print(f"read it with: ecgmon run --source '{_spec_hint(port.path, source.fs, fmt, settings, leads)}'",
                  flush=True)
            await _stream_pty(source, port, encode, corrupt)
        finally:
            port.close()
    else:
        await _stream_device(source, path, baud, encode, corrupt)


def _queued(fd: int, request: int) -> int:
    return struct.unpack("i", fcntl.ioctl(fd, request, b"\0\0\0\0"))[0]


async def _drain_output(fd: int) -> None:
    """Wait until the device has sent its output queue; tcdrain could block forever (and in
    a thread it would outlive a cancel), so poll the queue and give up when it stalls."""
    last, since = -1, time.monotonic()
    while queued := _queued(fd, termios.TIOCOUTQ):
        if queued != last:
            last, since = queued, time.monotonic()
        elif time.monotonic() - since > DRAIN_STALL_S:
            log.warning("%d bytes still queued for the device: not delivered", queued)
            return
        await asyncio.sleep(READER_POLL_S)


async def _stream_pty(source: PacedSource, port: _Pty, encode: _Encoder, corrupt: Callable | None) -> None:
    log.info("waiting for a reader to open %s", port.path)
    await port.wait_reader()
    log.info("reader attached: sending")
    attached, dropped = True, 0
    async with aclosing(source.chunks()) as chunks:
        async for chunk in chunks:
            if not isinstance(chunk, Chunk):
                continue  # a source's technical events are not device data
            if not port.has_reader():
                if attached:
                    log.warning("the reader went away: samples are dropped until one attaches again")
                attached = False
                dropped += chunk.n
                continue
            if not attached:
                log.info("a reader attached again; %d samples were dropped meanwhile", dropped)
                attached, dropped = True, 0
            data = encode(chunk)
            if corrupt is not None:
                data = corrupt(data)
            if await _write_all(port.fd, data, lambda: not port.has_reader()):
                log.warning("the reader went away during a write")
    await port.drain()
    log.info("replay ended")


async def _stream_device(
    source: PacedSource, path: str, baud: int, encode: _Encoder, corrupt: Callable | None
) -> None:
    import serial  # only this path needs pyserial

    try:
        dev = serial.Serial(path, baud, timeout=0)
    except (serial.SerialException, OSError) as err:
        raise EmitterError(f"cannot open {path}: {err}") from None
    print(f"serial device: {path} at {baud} baud", flush=True)
    try:
        async with aclosing(source.chunks()) as chunks:
            async for chunk in chunks:
                if not isinstance(chunk, Chunk):
                    continue
                data = encode(chunk)
                if corrupt is not None:
                    data = corrupt(data)
                try:
                    await _write_all(dev.fileno(), data, lambda: False)
                except OSError as err:
                    raise EmitterError(f"writing to {path} failed: {err.strerror}; was it unplugged?") from None
        await _drain_output(dev.fileno())
    finally:
        dev.close()
