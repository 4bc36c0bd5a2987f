"""Heart rate from beat times the way bedside monitors compute it (pure, no I/O).

The method, with the defaults of ``[heart_rate]``:

- the rate is 60 / the mean of the last 12 RR intervals without the single largest and
  the single smallest (one premature beat or one missed beat does not move it);
- when that mean exceeds ``long_rr_s`` (1.2 s, below 50 bpm) the plain mean of the last 4
  RR intervals is used instead, so that a falling rate in bradycardia shows within 4 beats;
- there is no rate (``None``) until ``short_intervals`` RR intervals (5 beats) are known;
  until 12 are, the same trimmed mean runs over those there are;
- a pause counts before it ends: once the time since the last beat exceeds twice the
  estimated RR (so a single missed beat does not flicker the display), that open
  interval is a lower bound of the next RR and the rate shown is 60 / that interval —
  it falls steadily during asystole;
- after ``silence_s`` (6 s) without a beat the rate is ``None`` again (as the published
  ``hr_bpm`` documents): no beats, no rate; the asystole alarm, not this number, tells what
  happened. When beats return, the pause is one RR among the last 12, trimmed as the largest.
"""

from __future__ import annotations

from collections import deque

from ecgmon.config import HeartRateConfig

SILENCE_S = 6.0
"""Without a beat for this long there is no heart rate (asystole or no signal)."""

PAUSE_FACTOR = 2.0
"""An open interval longer than this many estimated RRs lowers the rate."""


def describe_method(config: HeartRateConfig, silence_s: float = SILENCE_S) -> str:
    """One line naming the method with its parameters, for messages and the README."""
    return (
        f"mean of last {config.intervals} RR without largest and smallest; "
        f"mean of last {config.short_intervals} RR when above {config.long_rr_s:g} s; "
        f"a pause over {PAUSE_FACTOR:g} RR counts as an RR; "
        f"none after {silence_s:g} s without a beat"
    )


HR_METHOD = describe_method(HeartRateConfig())


class HeartRateMeter:
    """Feed R-peak times (signal seconds, increasing) with ``add_beat``; ask ``rate(now_s)``."""

    def __init__(self, config: HeartRateConfig | None = None, silence_s: float = SILENCE_S) -> None:
        self.config = config or HeartRateConfig()
        self.silence_s = silence_s
        self.method = describe_method(self.config, silence_s)
        keep = max(self.config.intervals, self.config.short_intervals)
        self._rr: deque[float] = deque(maxlen=keep)
        self._last: float | None = None

    def reset(self) -> None:
        """Forget all beats: after a spliced gap the old intervals mean nothing (the pipeline's restart)."""
        self._rr.clear()
        self._last = None

    def add_beat(self, time_s: float) -> None:
        if self._last is not None:
            if time_s <= self._last:
                raise ValueError(
                    f"beat at {time_s} s is not after the previous one at {self._last} s"
                )
            self._rr.append(time_s - self._last)
        self._last = time_s

    @property
    def rr_s(self) -> float | None:
        """The last RR interval, seconds."""
        return self._rr[-1] if self._rr else None

    @property
    def last_beat_s(self) -> float | None:
        return self._last

    def rr_estimate(self) -> float | None:
        """The current mean RR by the bedside method, ignoring the open interval."""
        cfg = self.config
        if len(self._rr) < min(cfg.short_intervals, cfg.intervals):
            return None
        rr = list(self._rr)[-cfg.intervals :]
        if len(rr) >= 3:
            mean = (sum(rr) - max(rr) - min(rr)) / (len(rr) - 2)
        else:
            mean = sum(rr) / len(rr)
        if mean > cfg.long_rr_s:
            short = list(self._rr)[-cfg.short_intervals :]
            mean = sum(short) / len(short)
        return mean

    def rate(self, now_s: float) -> float | None:
        """Heart rate in bpm at signal time ``now_s``, or None (too few beats, or silence)."""
        rr = self.rr_estimate()
        if rr is None or self._last is None:
            return None
        open_s = now_s - self._last
        if open_s > self.silence_s:
            return None
        if open_s > PAUSE_FACTOR * rr:
            return 60.0 / open_s
        return 60.0 / rr
