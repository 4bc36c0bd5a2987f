"""Pacing of replayed samples against the monotonic clock, with a speed factor."""

from __future__ import annotations

import asyncio
import time


class Pacer:
    """Sleeps until sample ``index`` is due: ``index / (fs * speed)`` after the first call.

    ``speed`` 1 is real time, N is N times faster, 0 is as fast as possible (never sleeps,
    but still yields to the event loop so other streams are served).
    """

    def __init__(self, fs: float, speed: float) -> None:
        if speed < 0:
            raise ValueError("speed must be >= 0")
        self.fs = fs
        self.speed = speed
        self._t0: float | None = None

    async def wait_until(self, index: int) -> None:
        now = time.monotonic()
        if self._t0 is None:
            self._t0 = now
        if self.speed == 0:
            await asyncio.sleep(0)
            return
        due = self._t0 + index / (self.fs * self.speed)
        await asyncio.sleep(max(0.0, due - now))
