"""A running maximum of a 1-D float64 signal (``scipy.ndimage.maximum_filter1d``) without the
wrapper's per-call cost.

The QRS detectors call ``maximum_filter1d`` on a few hundred samples at every 0.1 s chunk of
every stream (two calls in ``qrs.QRSDetector``, one in ``curve_length_qrs``); on arrays that
short the wrapper's checks and output allocation (``_get_output`` spells out the dtype's name)
cost about four times the compiled filter (bench/ward.py's profile at 100 beds:
``maximum_filter1d`` 5.3 % of the daemon, its compiled part 1 %). As ``filters.StatefulSOS``
does for ``sosfilt``, ``maximum_filter1d`` here calls the compiled routine the wrapper ends in,
with the same arguments, so the output is the same array (tests/test_max_filter.py checks it);
where that private routine is missing it is the public function.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

try:  # the compiled routine behind ndimage.maximum_filter1d / minimum_filter1d
    from scipy.ndimage._nd_image import min_or_max_filter1d as _kernel
except ImportError:  # pragma: no cover - another scipy layout: the public wrapper does it all
    _kernel = None

# ndimage's boundary mode codes (scipy.ndimage._ni_support._extend_mode_to_code).
_MODES = {"nearest": 0, "constant": 4}


def maximum_filter1d(x: np.ndarray, size: int, mode: str = "constant") -> np.ndarray:
    """``scipy.ndimage.maximum_filter1d(x, size, mode=mode)`` (cval 0, origin 0) of a 1-D
    float64 array; ``mode`` is "constant" or "nearest"."""
    x = np.asarray(x)
    if _kernel is None or x.ndim != 1 or x.dtype != np.float64 or size < 1:
        return ndimage.maximum_filter1d(x, size, mode=mode)
    out = np.empty_like(x)  # every element is written by the filter
    _kernel(x, size, 0, out, _MODES[mode], 0.0, 0, 0)
    return out
