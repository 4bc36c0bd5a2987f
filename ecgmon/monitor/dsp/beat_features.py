"""Beat features shared by training and the live daemon: RR intervals and the beat window.

Pure numpy, and causal except for the next RR interval (the live pipeline gets it by
waiting one beat before classifying), so the daemon can compute exactly what a model was
trained on. It lives in dsp/ because the daemon may not import the training code in models/.
"""

from __future__ import annotations

import numpy as np

# Models run at one rate: MIT-BIH's own, so its 27 training records need no resampling;
# other sources are resampled to it.
FS_MODEL = 360.0

# The beat window around the R peak. 0.25 s before holds the P wave (PR interval up to
# 0.20 s plus the P wave's onset), whose absence or early arrival marks S beats; 0.45 s
# after holds the QRS and the T wave (QT about 0.35-0.45 s at ordinary rates), whose
# width and polarity separate V and F beats from N. 0.7 s in all: at high rates it shows a
# piece of the neighbouring beats, which the RR features describe anyway.
WINDOW_BEFORE_S = 0.25
WINDOW_AFTER_S = 0.45
BEFORE = round(WINDOW_BEFORE_S * FS_MODEL)  # 90 samples
AFTER = round(WINDOW_AFTER_S * FS_MODEL)  # 162 samples
WINDOW = BEFORE + AFTER  # 252 samples; the R peak is at index BEFORE

# Local average over the previous 10 RRs, long-run average over the previous 5 minutes:
# de Chazal's "local" and "average" RR, the latter made causal so a live stream has it.
LOCAL_N = 10
RECORD_WINDOW_S = 300.0

RR_NAMES: tuple[str, ...] = ("pre_rr", "post_rr", "local_rr", "avg_rr")
RR_NORM_NAMES: tuple[str, ...] = ("pre_rr_norm", "post_rr_norm", "local_rr_norm")
# The columns of ``beat_rr_features``: the 4 intervals in seconds, then the first 3 divided
# by the long-run average.
RR_FEATURES: tuple[str, ...] = RR_NAMES + RR_NORM_NAMES


def rr_features(
    r_samples: np.ndarray,
    fs: float,
    local_n: int = LOCAL_N,
    record_window_s: float = RECORD_WINDOW_S,
) -> np.ndarray:
    """``(n, 4)`` float64 RR features in seconds for beats at ``r_samples``: ``RR_NAMES``.

    - ``pre_rr``: from the previous beat to this one;
    - ``post_rr``: from this beat to the next (the one non-causal feature);
    - ``local_rr``: mean of the last ``local_n`` pre-RRs up to and including this beat's;
    - ``avg_rr``: mean of the pre-RRs of the beats in the last ``record_window_s`` seconds
      up to and including this one (a causal stand-in for de Chazal's whole-record mean).

    Beat ``i``'s features depend only on beats ``0..i+1``. Undefined values take their
    nearest causal estimate: the first beat's ``pre_rr``, ``local_rr`` and ``avg_rr`` are
    its ``post_rr``; the last beat's ``post_rr`` is its ``pre_rr`` (a regular rhythm is
    assumed). With fewer than 2 beats there is no interval at all and every value is NaN.
    """
    r = np.asarray(r_samples, dtype=np.int64)
    if r.ndim != 1:
        raise ValueError(f"r_samples must be 1-D, not shape {r.shape}")
    if fs <= 0:
        raise ValueError(f"fs must be positive, not {fs}")
    if local_n < 1:
        raise ValueError(f"local_n must be at least 1, not {local_n}")
    n = r.size
    out = np.full((n, 4), np.nan)
    if n < 2:
        return out
    d = np.diff(r) / fs  # d[j] = RR from beat j to beat j+1
    if np.any(d <= 0):
        raise ValueError("r_samples must be strictly increasing")
    pre = np.concatenate([d[:1], d])  # beat 0 borrows its post-RR
    post = np.concatenate([d, d[-1:]])  # the last beat repeats its pre-RR
    # Pre-RR of beat i is d[i-1]; csum[k] = sum of d[:k], so sums over d[a:b] are O(1).
    csum = np.concatenate([[0.0], np.cumsum(d)])
    i = np.arange(n)
    lo = np.maximum(i - local_n, 0)
    count = i - lo
    with np.errstate(invalid="ignore", divide="ignore"):
        local = (csum[i] - csum[lo]) / count
        # Beats j with r[j] > r[i] - window contribute their pre-RR d[j-1] (j >= 1).
        first = np.searchsorted(r, r - record_window_s * fs, side="right")
        first = np.maximum(first, 1)
        n_avg = i - first + 1
        avg = (csum[i] - csum[first - 1]) / n_avg
    local[0] = pre[0]
    avg[n_avg < 1] = pre[n_avg < 1]  # only beat 0 (the window always holds beat i >= 1)
    out[:, 0], out[:, 1], out[:, 2], out[:, 3] = pre, post, local, avg
    return out


def normalise_rr(rr: np.ndarray) -> np.ndarray:
    """``(n, 3)``: pre, post and local RR divided by the long-run average (``RR_NORM_NAMES``).

    The ratios describe prematurity and compensatory pauses whatever the patient's own
    rate, which is what carries S and V beats across patients; the raw intervals alone
    confuse a fast normal rhythm with premature beats.
    """
    rr = np.asarray(rr, dtype=np.float64)
    return rr[:, :3] / rr[:, 3:4]


def beat_rr_features(
    r_samples: np.ndarray,
    fs: float,
    local_n: int = LOCAL_N,
    record_window_s: float = RECORD_WINDOW_S,
) -> np.ndarray:
    """``(n, 7)`` float32: ``rr_features`` then ``normalise_rr`` (columns ``RR_FEATURES``)."""
    rr = rr_features(r_samples, fs, local_n, record_window_s)
    return np.hstack([rr, normalise_rr(rr)]).astype(np.float32)


def beat_window(
    signal: np.ndarray, r: int, before: int = BEFORE, after: int = AFTER
) -> np.ndarray | None:
    """``signal[r - before : r + after]`` (R at index ``before``), or None if it does not fit.

    No padding: a padded window is an input the models never saw in training (training
    drops such edge beats), and live the ring buffer only lacks samples at a stream's start.
    """
    r = int(r)
    if r - before < 0 or r + after > signal.shape[0]:
        return None
    return signal[r - before : r + after]


def beat_windows(
    signal: np.ndarray, r_samples: np.ndarray, before: int = BEFORE, after: int = AFTER
) -> tuple[np.ndarray, np.ndarray]:
    """The windows of many beats at once: ``(windows (m, before + after), fits (n,) bool)``.

    ``windows`` holds the beats for which ``fits`` is True, in order; the others reach past
    an end of ``signal`` and are left out, as ``beat_window`` returns None for them.
    """
    r = np.asarray(r_samples, dtype=np.int64)
    fits = (r - before >= 0) & (r + after <= signal.shape[0])
    index = r[fits, None] + np.arange(-before, after)
    return signal[index], fits
