"""What every audio source does with the blocks it reads, whatever they come from: pick the
stethoscope channel, watch for silence and clipping, resample to the heart-sound rate as a
stream, and number the samples, giving Chunks and SourceEvents.

The resampler is ``soxr.ResampleStream``: one filter state across blocks, so block edges
leave no clicks, unlike resampling each block on its own.
"""

from __future__ import annotations

import numpy as np
import soxr

from ecgmon.chunk import Chunk, SourceEvent
from ecgmon.config import AudioConfig
from ecgmon.monitor.sources.base import SourceError

PCG_FS = 2000.0
PCG_CHANNEL = "pcg"
# Below this a recording cannot hold heart sounds (S1 and S2 reach 150 Hz and more).
MIN_RATE_HZ = 300.0
# The analysis band reaches 400 Hz: a rate under twice that loses its top.
FULL_BAND_RATE_HZ = 800.0


class StreamResampler:
    """Mono float32 audio from ``in_fs`` to ``out_fs``, block by block, with one filter state."""

    def __init__(self, in_fs: float, out_fs: float = PCG_FS) -> None:
        self.in_fs, self.out_fs = float(in_fs), float(out_fs)
        self._soxr = None if self.in_fs == self.out_fs else soxr.ResampleStream(
            self.in_fs, self.out_fs, 1, dtype="float32", quality="HQ"
        )

    def __call__(self, x: np.ndarray, last: bool = False) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if self._soxr is None:
            return x
        return self._soxr.resample_chunk(x, last=last)


class AudioChunker:
    """Blocks ``(n, channels)`` at the device or file rate in; Chunks at 2 kHz and events out.

    Channel 0 is the stethoscope: a second channel is, on the devices that have one, another
    sensor (an ECG lead, an ambient microphone), and mixing it in would blur the heart sounds.
    Silence and clipping are judged on the audio as it came, before resampling smooths it.
    """

    def __init__(self, stream: str, in_fs: float, channels: int, config: AudioConfig, origin: str) -> None:
        if not np.isfinite(in_fs) or in_fs < MIN_RATE_HZ:
            raise SourceError(
                f"{origin}: sample rate {in_fs:g} Hz is too low for heart sounds; need {MIN_RATE_HZ:g} Hz "
                f"or more (2000 Hz or more keeps the whole 25-400 Hz band)"
            )
        if channels < 1:
            raise SourceError(f"{origin}: no audio channel")
        self.stream = stream
        self.in_fs = float(in_fs)
        self.config = config
        self.origin = origin
        self._resampler = StreamResampler(self.in_fs)
        self.position = 0  # next output sample index at PCG_FS
        self.counts: dict[str, int] = {}
        self._silence_rms = 10 ** (config.silence_dbfs / 20)
        self._silent_n = 0  # input samples of the current silent run
        self._silent_reported = False
        # Clipping is judged per second of input: (samples, clipped) of the current second.
        self._clip_window = (0, 0)
        self._clipping = False
        self.pending: list[SourceEvent] = self._start_events(channels)

    def _event(self, level: str, code: str, text: str) -> SourceEvent:
        return SourceEvent(self.stream, level, code, text, dict(self.counts))  # type: ignore[arg-type]

    def _count(self, key: str, n: int = 1) -> None:
        self.counts[key] = self.counts.get(key, 0) + n

    def _start_events(self, channels: int) -> list[SourceEvent]:
        out = []
        if channels > 1:
            out.append(self._event("warning", "multichannel_input",
                                   f"{self.origin} has {channels} channels; using channel 0 as the stethoscope"))
        if self.in_fs != PCG_FS:
            out.append(self._event("info", "resampling", f"{self.origin} at {self.in_fs:g} Hz, resampled to {PCG_FS:g} Hz"))
        if self.in_fs < FULL_BAND_RATE_HZ:
            out.append(self._event(
                "warning", "low_rate",
                f"{self.origin} at {self.in_fs:g} Hz holds nothing above {self.in_fs / 2:g} Hz; "
                f"heart sounds are analysed in 25-400 Hz",
            ))
        return out

    def take_events(self) -> list[SourceEvent]:
        out, self.pending = self.pending, []
        return out

    def process(self, block: np.ndarray, last: bool = False) -> list[Chunk | SourceEvent]:
        """One block of float samples at full scale ±1, ``(n,)`` or ``(n, channels)``;
        ``last`` flushes the resampler. Anything else is dropped and counted (``bad_blocks``)."""
        x = self._channel_0(np.asarray(block))
        if x is None:
            x = np.zeros(0, dtype=np.float32)
        bad = ~np.isfinite(x)
        if bad.any():
            self._count("invalid_samples", int(bad.sum()))
            self.pending.append(self._event("warning", "invalid_samples",
                                            f"{int(bad.sum())} NaN/inf audio samples replaced by silence"))
            x = np.where(bad, 0.0, x)
        # Beyond full scale is clipping (counted as such below); float32 keeps it finite.
        x = np.clip(x, -1.0, 1.0).astype(np.float32)
        self._check_silence(x)
        self._check_clipping(x)
        # Resampling full-scale input can overshoot (up to 2.5 on a worst-case ±1 sequence):
        # what leaves here stays within full scale, as every consumer expects.
        y = np.clip(self._resampler(x, last=last), -1.0, 1.0)
        out: list[Chunk | SourceEvent] = list(self.take_events())
        if y.size:
            out.append(Chunk(self.stream, PCG_FS, (PCG_CHANNEL,), self.position, y.reshape(-1, 1)))
            self.position += y.size
        return out

    def _channel_0(self, block: np.ndarray) -> np.ndarray | None:
        """The stethoscope's samples of ``block``, or None for a block that holds no float
        audio (a counted fault, reported the first time)."""
        if block.dtype.kind == "f" and (block.ndim == 1 or (block.ndim == 2 and block.shape[1] > 0)):
            return block if block.ndim == 1 else block[:, 0]
        self._count("bad_blocks")
        if self.counts["bad_blocks"] == 1:
            self.pending.append(self._event(
                "warning", "corrupt_input",
                f"{self.origin}: a block of shape {block.shape} and type {block.dtype} is no audio; "
                f"dropped (such blocks are counted in bad_blocks)",
            ))
        return None

    def _check_silence(self, x: np.ndarray) -> None:
        if x.size == 0:
            return
        silent = float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) < self._silence_rms
        if not silent:
            if self._silent_reported:
                self.pending.append(self._event("info", "sound_restored",
                                                f"sound again after {self._silent_n / self.in_fs:.1f} s of silence"))
            self._silent_n, self._silent_reported = 0, False
            return
        self._silent_n += x.size
        if not self._silent_reported and self._silent_n >= self.config.silence_s * self.in_fs:
            self._silent_reported = True
            self._count("silences")
            if not np.any(x):
                text = (f"no signal: {self._silent_n / self.in_fs:.1f} s of exact zeros from {self.origin} "
                        f"(unplugged, muted or ended?)")
                self.pending.append(self._event("warning", "signal_lost", text))
            else:
                text = (f"silence: {self._silent_n / self.in_fs:.1f} s below {self.config.silence_dbfs:g} dBFS "
                        f"from {self.origin} (is the stethoscope on the chest?)")
                self.pending.append(self._event("warning", "silence", text))

    def _check_clipping(self, x: np.ndarray) -> None:
        n, clipped = self._clip_window
        hits = int(np.count_nonzero(np.abs(x) >= 0.999))
        n, clipped = n + x.size, clipped + hits
        if hits:
            self._count("clipped_samples", hits)
        if n < self.in_fs:
            self._clip_window = (n, clipped)
            return
        self._clip_window = (0, 0)
        fraction = clipped / n
        if fraction > self.config.clip_fraction and not self._clipping:
            self._clipping = True
            self.pending.append(self._event(
                "warning", "clipping",
                f"clipping: {100 * fraction:.1f} % of the last second at full scale; lower the input gain",
            ))
        elif clipped == 0 and self._clipping:
            self._clipping = False
            self.pending.append(self._event("info", "clipping_ended", "no more clipping"))
