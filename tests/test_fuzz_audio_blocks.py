"""Fuzzing the audio block handler (``AudioChunker``) that every heart-sound source feeds:
arrays of any shape and dtype, with NaN, infinities and values far beyond full scale, give
chunks of finite float32 samples within full scale (±1), numbered without gaps, or a counted
fault;
never an exception.

Budget: tests/fuzz_settings.py (``ECGMON_FUZZ_EXAMPLES=N`` for a long run).
"""

from __future__ import annotations

import warnings

from hypothesis import given, strategies as st
from hypothesis.extra import numpy as hnp
import numpy as np

from ecgmon.chunk import Chunk, SourceEvent
from ecgmon.config import AudioConfig
from ecgmon.monitor.sources.audio_blocks import PCG_FS, AudioChunker
from fuzz_settings import fuzz_settings

dtypes = st.sampled_from(["float32", "float64", "float16", "int16", "int32", "uint8", "int8", "bool",
                          "complex64", "<U3", "object"])


@st.composite
def blocks(draw) -> np.ndarray:
    dtype = np.dtype(draw(dtypes))
    # Mostly what sources give, (n,) and (n, channels); sometimes no or too many dimensions.
    shape = draw(st.tuples(st.integers(0, 4000)) | st.tuples(st.integers(0, 2000), st.integers(0, 3))
                 | hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=8))
    if dtype.kind == "f":
        elements = st.floats(allow_nan=True, allow_infinity=True, width=dtype.itemsize * 8)
        big = float(np.finfo(dtype).max)
        elements = elements | st.sampled_from([v for v in (1e30, -1e30, 1e300, big, -big, 1.0, -1.0) if abs(v) <= big])
    elif dtype.kind in "iub":
        elements = None  # hypothesis's full range of the type
    elif dtype.kind == "c":
        elements = st.complex_numbers(allow_nan=True, allow_infinity=True, width=64)
    elif dtype.kind == "U":
        elements = st.text(alphabet="ab1.-", max_size=3)
    else:
        elements = st.sampled_from([None, "x", 1.5, [1]])
    return draw(hnp.arrays(dtype, shape, elements=elements))


@fuzz_settings(300)
@given(st.sampled_from([44100.0, 4000.0, 2000.0, 300.0]), st.integers(1, 3), st.lists(blocks(), min_size=1, max_size=6))
def test_fuzz_audio_blocks(in_fs: float, channels: int, sequence: list[np.ndarray]) -> None:
    chunker = AudioChunker("fuzz", in_fs, channels, AudioConfig(), "fuzz input")
    position = 0
    out: list = list(chunker.take_events())
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no overflow or invalid-value casts either
        for i, block in enumerate(sequence):
            out += chunker.process(block, last=i == len(sequence) - 1)
    for item in out:
        if isinstance(item, SourceEvent):
            assert item.stream == "fuzz" and item.level in ("info", "warning", "error")
            continue
        assert isinstance(item, Chunk) and item.fs == PCG_FS and item.start == position
        assert item.samples.dtype == np.float32 and item.samples.shape == (item.n, 1)
        assert np.isfinite(item.samples).all() and np.abs(item.samples).max() <= 1.0
        position = item.end
    assert chunker.position == position
    assert all(isinstance(v, int) and v >= 0 for v in chunker.counts.values())
