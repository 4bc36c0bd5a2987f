"""A stethoscope recording (WAV, FLAC or any format libsndfile reads) replayed as a live
audio stream: read block by block, paced to the monotonic clock like a record replay
(``replay.speed``, ``replay.chunk_s``, ``replay.loop``), resampled to 2 kHz as a stream.

A file that cannot be opened is a SourceError before anything starts; a file that goes bad
part-way (a FLAC frame that does not decode, a WAV shorter than its header says) is an
event, and the stream ends with what could be read.
"""

from __future__ import annotations

from pathlib import Path
import re
import struct
from typing import AsyncIterator

import numpy as np
import soundfile as sf

from ecgmon.chunk import Chunk, SourceEvent
from ecgmon.config import Config
from ecgmon.monitor.sources.audio_blocks import PCG_CHANNEL, PCG_FS, AudioChunker
from ecgmon.monitor.sources.base import SourceError
from ecgmon.replay.pacing import Pacer

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".aiff", ".aif")


def is_audio_file_spec(spec: str) -> bool:
    return Path(spec).suffix.lower() in AUDIO_SUFFIXES


def audio_file_stream_id(spec: str) -> str:
    """``recordings/a0001.flac`` → ``a0001``: the file name without suffix, topic-safe."""
    return re.sub(r"[^A-Za-z0-9_-]+", "-", Path(spec).stem).strip("-") or "pcg"


def wav_declared_frames(path: Path) -> int | None:
    """Frames a RIFF/WAVE header declares for its data chunk (None if not a plain WAV).

    libsndfile quietly shortens a truncated WAV to what is there; the header still says how
    long it was meant to be.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(12)
            if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
                return None
            block_align = None
            while True:
                hdr = f.read(8)
                if len(hdr) < 8:
                    return None
                cid, size = hdr[:4], struct.unpack("<I", hdr[4:])[0]
                if cid == b"fmt ":
                    fmt = f.read(size)
                    if len(fmt) < 14:
                        return None
                    block_align = struct.unpack("<H", fmt[12:14])[0]
                    f.seek(size % 2, 1)
                elif cid == b"data":
                    return size // block_align if block_align else None
                else:
                    f.seek(size + size % 2, 1)
    except OSError:
        return None


class AudioFileSource:
    """Replays an audio file as stream ``stream`` (default: the file's name) at 2 kHz."""

    modality = "pcg"

    def __init__(self, spec: str, config: Config, stream: str | None = None) -> None:
        self.spec = spec
        self.config = config
        self.stream = stream or audio_file_stream_id(spec)
        self.path = Path(spec).expanduser()
        if not self.path.is_file():
            raise SourceError(f"audio file {spec} not found")
        try:
            with sf.SoundFile(self.path) as f:
                self.in_fs = float(f.samplerate)
                self.channels = f.channels
                self.frames = f.frames
        except (sf.SoundFileError, RuntimeError) as err:
            raise SourceError(f"{spec}: not a readable audio file ({err}); use WAV or FLAC") from None
        if self.frames == 0:
            raise SourceError(f"{spec}: the audio file holds no samples")
        self.fs = PCG_FS
        self.lead = PCG_CHANNEL
        self._chunker = AudioChunker(self.stream, self.in_fs, self.channels, config.audio, self.path.name)
        declared = wav_declared_frames(self.path)
        if declared is not None and declared > self.frames:
            self._chunker.pending.append(SourceEvent(
                self.stream, "warning", "truncated_file",
                f"{self.path.name} is truncated: its header promises "
                f"{declared / self.in_fs:.1f} s, the file holds {self.frames / self.in_fs:.1f} s",
            ))

    async def chunks(self) -> AsyncIterator[Chunk | SourceEvent]:
        replay = self.config.replay
        pacer = Pacer(self.in_fs, replay.speed)
        step = max(1, round(replay.chunk_s * self.in_fs))
        chunker = self._chunker
        for ev in chunker.take_events():
            yield ev
        done = 0  # input frames delivered, over every loop
        while True:
            read = 0
            with sf.SoundFile(self.path) as f:
                while True:
                    try:
                        block = f.read(step, dtype="float32", always_2d=True)
                    except (sf.SoundFileError, RuntimeError) as err:
                        yield SourceEvent(
                            self.stream, "error", "corrupt_input",
                            f"{self.path.name} cannot be decoded after "
                            f"{read / self.in_fs:.1f} s ({err}); the replay ends there",
                        )
                        break
                    if block.shape[0] == 0:
                        break
                    read += block.shape[0]
                    await pacer.wait_until(done + read)
                    for item in chunker.process(block):
                        yield item
            done += read
            if not replay.loop or read == 0 or read < self.frames:
                break
        for item in chunker.process(np.zeros(0, dtype=np.float32), last=True):
            yield item
