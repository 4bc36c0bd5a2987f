"""A vectorised Unicode braille canvas for traces: each character cell holds 2×4 dots, so a
trace of ``w`` cells by ``h`` rows has ``2w × 4h`` pixels. The whole canvas is built with numpy
per redraw (no per-pixel Python), so a dashboard of many panels stays cheap at 10 Hz."""

from __future__ import annotations

import numpy as np

BLANK = "\u2800"
# Bit of each dot in a braille cell, indexed [row 0..3, column 0..1] (Unicode dot numbering).
_DOT_BITS = np.array([[0x01, 0x08], [0x02, 0x10], [0x04, 0x20], [0x40, 0x80]], dtype=np.uint16)


def column_extents(
    t: np.ndarray, y: np.ndarray, t0: float, t1: float, columns: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel column over ``[t0, t1)``, the min and max of the samples that fall in it
    (NaN where none do). Min and max, not one sample per column, so a QRS narrower than a
    column still reaches its full height, as on a monitor."""
    lo = np.full(columns, np.nan)
    hi = np.full(columns, np.nan)
    if len(t) == 0 or t1 <= t0:
        return lo, hi
    col = np.floor((t - t0) / (t1 - t0) * columns).astype(np.int64)
    keep = (col >= 0) & (col < columns) & np.isfinite(y)
    col, v = col[keep], y[keep]
    np.fmin.at(lo, col, v)
    np.fmax.at(hi, col, v)
    return lo, hi


def render_trace(
    lo: np.ndarray, hi: np.ndarray, rows: int, vmin: float, vmax: float
) -> list[str]:
    """Braille lines (``rows`` of them, ``len(lo) // 2`` cells wide) drawing a trace whose
    pixel column ``i`` spans values ``lo[i]..hi[i]``; neighbouring columns are joined so the
    line is continuous, and columns without data (NaN) stay blank."""
    width_px = len(lo) - len(lo) % 2
    height_px = rows * 4
    if width_px == 0 or rows <= 0:
        return [""] * max(rows, 0)
    lo, hi = lo[:width_px].astype(float), hi[:width_px].astype(float)
    span = vmax - vmin if vmax > vmin else 1.0
    # Value → pixel row, 0 at the top; out-of-range values stick to the edge.
    top = np.clip(np.round((vmax - hi) / span * (height_px - 1)), 0, height_px - 1)
    bottom = np.clip(np.round((vmax - lo) / span * (height_px - 1)), 0, height_px - 1)
    # Join each column to its left neighbour: where they do not overlap, stretch this one to
    # the row next to the neighbour's nearest end (fmin/fmax skip a neighbour without data).
    prev_top, prev_bottom = np.roll(top, 1), np.roll(bottom, 1)
    prev_top[0] = prev_bottom[0] = np.nan
    data = np.isfinite(top)
    top = np.where(data, np.fmin(top, prev_bottom + 1), np.nan)
    bottom = np.where(data, np.fmax(bottom, prev_top - 1), np.nan)
    pix_rows = np.arange(height_px)[:, None]
    on = (pix_rows >= top[None, :]) & (pix_rows <= bottom[None, :])  # NaN compares False
    return encode(on, rows)


def encode(on: np.ndarray, rows: int) -> list[str]:
    """Braille lines of a boolean pixel grid of shape ``(4 * rows, 2 * cells)``."""
    cells = on.shape[1] // 2
    grid = on[: rows * 4, : cells * 2].reshape(rows, 4, cells, 2)
    codes = np.einsum("rycx,yx->rc", grid.astype(np.uint16), _DOT_BITS) + 0x2800
    return ["".join(map(chr, line)) for line in codes.tolist()]


def marks_line(times: list[float], letters: list[str], t0: float, t1: float, cells: int) -> list[tuple[int, str]]:
    """(cell, letter) of each mark at time ``times[i]`` within ``[t0, t1)`` on a line of
    ``cells`` characters; a later mark in the same cell wins."""
    out: dict[int, str] = {}
    if t1 <= t0 or cells <= 0:
        return []
    for t, letter in zip(times, letters):
        cell = int((t - t0) / (t1 - t0) * cells)
        if 0 <= cell < cells:
            out[cell] = letter
    return sorted(out.items())
