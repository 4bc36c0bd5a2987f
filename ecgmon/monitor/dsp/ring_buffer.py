"""A stream's recent filtered samples, addressed by absolute sample index, and windows cut
from them at a model's sample rate (resampled the way training resampled whole records)."""

from __future__ import annotations

from fractions import Fraction
import math

import numpy as np
from scipy.signal import resample_poly


class RingBuffer:
    """The last ``capacity`` samples of a 1-D stream; sample ``i`` (counted from the stream's
    first) lives at ``i % capacity`` until ``capacity`` newer samples have arrived."""

    def __init__(self, capacity: int, dtype: type = np.float32) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, not {capacity}")
        self._buf = np.zeros(int(capacity), dtype=dtype)
        self.end = 0  # index one past the newest sample

    @property
    def capacity(self) -> int:
        return self._buf.size

    def reserve(self, capacity: int) -> None:
        """Grow to hold at least ``capacity`` samples, keeping those held."""
        if capacity <= self._buf.size:
            return
        held = self.get(self.start, self.end)
        self._buf = np.zeros(int(capacity), dtype=self._buf.dtype)
        self.end -= held.size
        self.extend(held)

    @property
    def start(self) -> int:
        """Index of the oldest sample still held."""
        return max(0, self.end - self._buf.size)

    def extend(self, x: np.ndarray) -> None:
        x = np.asarray(x)
        cap = self._buf.size
        total = x.size
        x = x[-cap:]  # a chunk longer than the ring leaves only its tail
        n = x.size
        first = (self.end + total - n) % cap
        head = min(n, cap - first)
        self._buf[first : first + head] = x[:head]
        self._buf[: n - head] = x[head:]
        self.end += total

    def get(self, start: int, stop: int) -> np.ndarray | None:
        """A copy of samples ``start..stop-1``, or None when any of them is gone or not yet here."""
        if start < self.start or stop > self.end or start > stop:
            return None
        return self._buf[np.arange(start, stop) % self._buf.size]


class ModelRateWindows:
    """Windows of a ring-buffered stream at a model's rate ``model_fs``.

    Model-rate sample ``k`` is the stream at time ``k / model_fs`` from the stream's first
    sample, as ``scipy.signal.resample_poly`` of the whole stream would give it (training
    resamples whole records so); each window is resampled from a native stretch with a
    margin that keeps the resampler's edge effects outside it.
    """

    def __init__(self, fs: float, model_fs: float) -> None:
        ratio = Fraction(model_fs / fs).limit_denominator(1000)
        self.up, self.down = ratio.numerator, ratio.denominator
        self.same_rate = self.up == self.down
        # resample_poly's default filter reaches 10 * max(up, down) taps either side at the
        # upsampled rate: this many native samples.
        self._margin = 0 if self.same_rate else math.ceil(10 * max(self.up, self.down) / self.up) + 1

    def to_model(self, native_index: int) -> int:
        """The model-rate index nearest a native index."""
        return native_index if self.same_rate else round(native_index * self.up / self.down)

    def native_stop(self, k0: int, n: int) -> int:
        """The native index up to which samples must have arrived to cut ``[k0, k0 + n)``."""
        if self.same_rate:
            return k0 + n
        return math.ceil((k0 + n) * self.down / self.up) + self._margin

    def cut(self, ring: RingBuffer, k0: int, n: int) -> np.ndarray | None:
        """Model-rate samples ``[k0, k0 + n)``, or None when the ring does not hold them."""
        if k0 < 0:
            return None
        if self.same_rate:
            return ring.get(k0, k0 + n)
        # Start on a native index that maps to a whole model index: s * up / down integral.
        s = (max(0, math.floor(k0 * self.down / self.up) - self._margin) // self.down) * self.down
        native = ring.get(s, self.native_stop(k0, n))
        if native is None:
            return None
        y = resample_poly(native.astype(np.float64), self.up, self.down)
        j = k0 - s * self.up // self.down
        out = y[j : j + n]
        return out.astype(np.float32) if out.size == n else None
