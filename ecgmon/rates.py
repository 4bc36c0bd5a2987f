"""The ECG sample rates ecgmon can analyse: one range, checked wherever a rate enters (config,
source specs, MQTT payloads) and by the QRS detector itself, so that they cannot drift apart.

A leaf module: it imports nothing of ecgmon.
"""

from __future__ import annotations

from numbers import Real

# The QRS detector's filters and windows are validated from 125 to 1000 Hz (README, "QRS
# detection"); below, its 5-15 Hz band and 150 ms integration lose their shape; above, nothing
# is gained and the pipeline's per-sample cost grows.
MIN_ECG_FS = 125.0
MAX_ECG_FS = 1000.0


def ecg_rate_problem(fs: object) -> str | None:
    """Why ``fs`` cannot be an ECG sample rate, or None if it can."""
    if isinstance(fs, bool) or not isinstance(fs, Real):
        return f"sample rate must be a number, not {type(fs).__name__}"
    if not MIN_ECG_FS <= fs <= MAX_ECG_FS:  # also false for NaN
        # A huge int would overflow the float formatting: its first digits say enough.
        shown = f"{fs:g}" if isinstance(fs, float) or abs(fs) < 10**12 else f"{str(fs)[:8]}..."
        return f"sample rate {shown} Hz is outside the detector's range ({MIN_ECG_FS:g}-{MAX_ECG_FS:g} Hz)"
    return None


def check_ecg_rate(fs: float) -> float:
    """``fs`` if it is a supported ECG rate; ValueError saying why not."""
    problem = ecg_rate_problem(fs)
    if problem:
        raise ValueError(problem)
    return fs
