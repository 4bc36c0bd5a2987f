"""A live microphone (a digital stethoscope) through PortAudio: ``mic`` (the default input)
or ``mic:DEVICE`` (a device index or a unique part of its name; ``ecgmon devices`` lists them).

PortAudio calls ``_callback`` on its own thread for every block; the block is copied and
handed to the event loop with ``call_soon_threadsafe``. At most ``MAX_PENDING_S`` of audio
waits there: when the loop falls that far behind, the callback waits for room, and a real
device then overruns its buffer, which PortAudio reports as an input overflow (an event).
A device that is missing or cannot be opened (none plugged in, busy, no audio input on the
machine) or that stops delivering (unplugged, stream error) is an event, and the source tries
to open it again every ``[audio] reconnect_s``: a stethoscope plugged in later is picked up,
and the other streams never stop for it. Only what can never work is an error at start: no
PortAudio, a ``mic:DEVICE`` that matches several devices, a configured rate too low.

``sounddevice`` is imported only here, when a microphone is asked for, so the daemon runs
without PortAudio for every other source.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
from typing import Any, AsyncIterator

import numpy as np

from ecgmon.chunk import Chunk, SourceEvent
from ecgmon.config import Config
from ecgmon.monitor.sources.audio_blocks import PCG_CHANNEL, PCG_FS, AudioChunker
from ecgmon.monitor.sources.base import SourceError

log = logging.getLogger("ecgmon.audio")

# Audio handed to the loop but not yet processed, at most (seconds).
MAX_PENDING_S = 2.0
# A callback waits at most this long for room before it drops its block (counted and
# reported). A real device overruns its own buffer sooner (PortAudio reports the overflow);
# a device with no clock of its own (ALSA's file plugin in the tests) is paced by this wait.
CALLBACK_WAIT_S = 5.0
# Closing a stream whose device hangs must not hang the daemon.
CLOSE_TIMEOUT_S = 3.0
# Overflows are reported once, then at most every this many seconds with the count.
OVERFLOW_REPORT_S = 10.0

_FINISHED = object()  # put on the queue when PortAudio ends the stream by itself
# Input streams of this process open now (opened and closed on the event loop's thread).
_open_streams = 0


def import_sounddevice() -> Any:
    """The sounddevice module, or a SourceError saying how to get PortAudio."""
    try:
        import sounddevice
    except OSError as err:  # sounddevice raises OSError when libportaudio is missing
        raise SourceError(
            f"microphone input needs PortAudio ({err}); install libportaudio2 "
            f"(scripts/system-deps.sh does)"
        ) from None
    return sounddevice


def is_mic_spec(spec: str) -> bool:
    return spec == "mic" or spec.startswith("mic:")


def mic_stream_id(spec: str) -> str:
    """``mic`` → ``mic``; ``mic:USB Stethoscope`` → ``mic-USB-Stethoscope``; ``mic:3`` → ``mic-3``."""
    device = spec.partition(":")[2].strip()
    tail = re.sub(r"[^A-Za-z0-9_-]+", "-", device).strip("-")
    return f"mic-{tail}" if tail else "mic"


def input_devices(sd: Any) -> list[dict]:
    """PortAudio's input devices, each a dict of sounddevice's with its ``index``."""
    return [d for d in sd.query_devices() if d["max_input_channels"] > 0]


def _rescan(sd: Any) -> None:
    """Have PortAudio list the devices afresh, to see one plugged in since it started: it
    lists them once per initialisation. Re-initialising closes every open stream, so it is
    done only while this process has none."""
    if _open_streams == 0:
        sd._terminate()
        sd._initialize()


class DeviceUnavailable(SourceError):
    """No input device matches (yet): reported as an event, and looked for again."""


def resolve_device(sd: Any, device: str) -> dict:
    """The input device of ``device`` ('' default, an index, an exact or unique partial name);
    DeviceUnavailable if none matches, SourceError if several do."""
    devices = input_devices(sd)
    names = ", ".join(f"{d['index']}: {d['name']}" for d in devices) or "none"
    if not device:
        index = sd.default.device[0]
        match = [d for d in devices if d["index"] == index] or devices[:1]
        if not match:
            raise DeviceUnavailable("no audio input device found (ecgmon devices lists them)")
        return match[0]
    if device.isdigit():
        match = [d for d in devices if d["index"] == int(device)]
    else:
        match = [d for d in devices if d["name"] == device]
        match = match or [d for d in devices if device.lower() in d["name"].lower()]
    if not match:
        raise DeviceUnavailable(f"mic:{device} is no input device; input devices: {names}")
    if len(match) > 1:
        raise SourceError(f"mic:{device} matches several input devices; input devices: {names}")
    return match[0]


class MicSource:
    """Live audio from one PortAudio input device, as stream ``stream`` at 2 kHz."""

    modality = "pcg"

    def __init__(self, spec: str, config: Config, stream: str | None = None) -> None:
        if not is_mic_spec(spec):
            raise SourceError(f"'{spec}' is not a microphone spec: write mic or mic:DEVICE")
        self.spec = spec
        self.config = config
        self.stream = stream or mic_stream_id(spec)
        self.device = spec.partition(":")[2].strip()
        self._sd = import_sounddevice()
        self.fs = PCG_FS
        self.lead = PCG_CHANNEL
        # Set once the device is found (now, or when chunks() looks for it again).
        self.device_name = self.device or "default input"
        self.in_fs = float(config.audio.samplerate)
        self._chunker: AudioChunker | None = None
        try:
            self._found(resolve_device(self._sd, self.device))
        except DeviceUnavailable:  # an event once the stream runs, and looked for again
            if config.audio.samplerate:  # but a configured rate too low is refused now
                AudioChunker(self.stream, config.audio.samplerate, 1, config.audio, spec)
        self._room = threading.Semaphore(1)  # remade per stream in _open
        self._closing = threading.Event()
        self.dropped_blocks = 0

    def _found(self, info: dict) -> None:
        """The device, once found: its name, and its rate for the whole stream (a stream's
        samples are numbered at one rate; a device found again later is opened at it)."""
        self.device_name = str(info["name"])
        self.in_fs = float(self.config.audio.samplerate or info["default_samplerate"])
        self._chunker = AudioChunker(self.stream, self.in_fs, 1, self.config.audio,
                                     f"input device '{self.device_name}'")

    # -- PortAudio side (its callback thread) --------------------------------------------

    def _open(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue) -> Any:
        sd = self._sd
        if self._chunker is None:  # not found yet
            _rescan(sd)
            self._found(resolve_device(sd, self.device))
        # Found again by name: after a replug its index may differ.
        info = resolve_device(sd, self.device_name)
        blocksize = max(1, round(self.config.audio.block_s * self.in_fs))
        self._room = threading.Semaphore(max(2, round(MAX_PENDING_S / self.config.audio.block_s)))
        self._closing.clear()
        room, closing = self._room, self._closing

        def callback(indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
            if closing.is_set():
                return
            if not room.acquire(timeout=CALLBACK_WAIT_S):
                self.dropped_blocks += 1
                return
            block = indata[:, 0].astype(np.float32) / np.float32(32768.0)
            loop.call_soon_threadsafe(queue.put_nowait, (block, bool(status.input_overflow)))

        def finished() -> None:
            if not closing.is_set():
                loop.call_soon_threadsafe(queue.put_nowait, _FINISHED)

        # 16-bit, what stethoscopes and USB sound cards deliver: PortAudio then converts
        # nothing (its float path through ALSA's plug layer can skip input on some plugins).
        stream = sd.InputStream(
            device=info["index"], channels=1, samplerate=self.in_fs, dtype="int16",
            blocksize=blocksize, callback=callback, finished_callback=finished,
        )
        global _open_streams
        _open_streams += 1
        try:
            stream.start()
        except sd.PortAudioError:
            _open_streams -= 1
            stream.close(True)
            raise
        return stream

    async def _close(self, stream: Any) -> None:
        global _open_streams
        self._closing.set()
        for _ in range(4):  # wake a callback waiting for room, so the stream can stop
            self._room.release()
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_S):  # not wait_for: on 3.11 it can swallow a cancellation
                await asyncio.to_thread(stream.close, True)
        except (TimeoutError, self._sd.PortAudioError) as err:
            log.warning("%s: closing input device '%s' failed: %s", self.stream, self.device_name, err or "timeout")
        finally:
            _open_streams -= 1

    # -- event-loop side ------------------------------------------------------------------

    def _event(self, level: str, code: str, text: str) -> SourceEvent:
        counts = dict(self._chunker.counts) if self._chunker else {}
        if self.dropped_blocks:
            counts["dropped_blocks"] = self.dropped_blocks
        return SourceEvent(self.stream, level, code, text, counts)  # type: ignore[arg-type]

    async def chunks(self) -> AsyncIterator[Chunk | SourceEvent]:
        loop = asyncio.get_running_loop()
        audio = self.config.audio
        opened_before = False
        unavailable_since: float | None = None
        last_overflow_report = -OVERFLOW_REPORT_S
        reported_lost = 0
        while True:
            queue: asyncio.Queue = asyncio.Queue()
            try:
                stream = self._open(loop, queue)
            except (self._sd.PortAudioError, SourceError) as err:
                # Once per outage, not per attempt; the device_lost event already said it.
                if unavailable_since is None:
                    unavailable_since = loop.time()
                    if not opened_before:
                        yield self._event("error", "device_unavailable",
                                          f"mic: cannot open input device '{self.device_name}': {err}; "
                                          f"trying again every {audio.reconnect_s:g} s")
                await asyncio.sleep(audio.reconnect_s)
                continue
            chunker = self._chunker
            assert chunker is not None  # set by _open
            for ev in chunker.take_events():
                yield ev
            if unavailable_since is not None:
                yield self._event("info", "reconnected", f"input device '{self.device_name}' opened after "
                                                         f"{loop.time() - unavailable_since:.1f} s unavailable")
            elif opened_before:
                yield self._event("info", "reconnected", f"input device '{self.device_name}' is back")
            opened_before, unavailable_since = True, None
            try:
                while True:
                    try:
                        # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a
                        # cancellation when the queue is never empty, and the daemon would not stop.
                        async with asyncio.timeout(audio.stall_s):
                            item = await queue.get()
                    except TimeoutError:
                        yield self._event("error", "device_lost",
                                          f"no audio from input device '{self.device_name}' for "
                                          f"{audio.stall_s:g} s (unplugged?); reopening it")
                        break
                    if item is _FINISHED:
                        yield self._event("error", "device_lost",
                                          f"input device '{self.device_name}' stopped (unplugged?); reopening it")
                        break
                    self._room.release()
                    block, overflow = item
                    if overflow:
                        chunker.counts["overflows"] = chunker.counts.get("overflows", 0) + 1
                    lost = chunker.counts.get("overflows", 0) + self.dropped_blocks
                    if lost > reported_lost and loop.time() - last_overflow_report >= OVERFLOW_REPORT_S:
                        last_overflow_report, reported_lost = loop.time(), lost
                        yield self._event("warning", "overflow",
                                          f"audio lost: {chunker.counts.get('overflows', 0)} device overflows, "
                                          f"{self.dropped_blocks} blocks dropped while the daemon was behind")
                    for out in chunker.process(block):
                        yield out
                    # A device that delivers faster than real time (or a backlog) keeps the
                    # queue full; give the loop's other tasks their turn every block.
                    await asyncio.sleep(0)
            finally:
                await self._close(stream)
            await asyncio.sleep(audio.reconnect_s)
