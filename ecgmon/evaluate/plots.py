"""PNG figures of a model evaluation: confusion matrices, one-vs-rest ROC and PR curves,
attention over example 10 s segments and Grad-CAM maps of example beats.

Figures are drawn on matplotlib's Agg canvas directly (no pyplot), so plotting never
needs a display and never touches global state.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ecgmon.scores import Curve

DPI = 110
# One colour per class, the same in every figure (tab10 is readable in print and on screen).
_COLOURS = ("tab:blue", "tab:orange", "tab:red", "tab:green", "tab:purple", "tab:brown", "tab:pink")


def _colour(c: int) -> str:
    return _COLOURS[c % len(_COLOURS)]


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=DPI)
    return path


def _matrix(ax, values: np.ndarray, text: list[list[str]], classes: Sequence[str], title: str) -> None:
    image = ax.imshow(values, cmap="Blues", vmin=0, vmax=max(float(values.max()), 1e-9))
    threshold = 0.55 * values.max()
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            ax.text(j, i, text[i][j], ha="center", va="center", fontsize=9,
                    color="white" if values[i, j] > threshold else "black")
    ticks = np.arange(len(classes))
    ax.set_xticks(ticks, classes)
    ax.set_yticks(ticks, classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("reference")
    ax.set_title(title)
    ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)


def confusion_png(cm: np.ndarray, classes: Sequence[str], path: Path, title: str) -> Path:
    """Counts beside the row-normalised matrix (each reference class's share per prediction)."""
    cm = np.asarray(cm)
    rows = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, rows, out=np.zeros(cm.shape), where=rows > 0)
    fig = Figure(figsize=(5.2 * 2 + 0.6, 4.8), layout="constrained")
    fig.suptitle(title)
    left, right = fig.subplots(1, 2)
    labels = [f"{c}\n(n={int(n)})" for c, n in zip(classes, rows[:, 0])]
    _matrix(left, cm.astype(float), [[str(int(v)) for v in row] for row in cm], classes, "counts")
    left.set_yticks(np.arange(len(classes)), labels)
    _matrix(right, share, [[f"{v:.0%}" if r else "–" for v in row] for row, r in zip(share, rows[:, 0])],
            classes, "share of each reference class (rows sum to 100 %)")
    return _save(fig, path)


def _curves_png(
    curves: Sequence[Curve | None], classes: Sequence[str], path: Path, title: str, kind: str,
    prevalence: Sequence[float],
) -> Path:
    fig = Figure(figsize=(9.0, 5.6), layout="constrained")
    ax = fig.subplots()
    for c, (name, curve) in enumerate(zip(classes, curves)):
        if curve is None:  # no reference example of this class (or nothing else): no curve exists
            ax.plot([], [], " ", label=f"{name}  none in these records")
            continue
        if kind == "roc":
            label = f"{name}  AUC {curve.area:.3f}"
            ax.plot(curve.x, curve.y, color=_colour(c), lw=1.6, label=label)
        else:
            label = f"{name}  AP {curve.area:.3f} (chance {prevalence[c]:.3f})"
            ax.step(curve.x, curve.y, where="pre", color=_colour(c), lw=1.6, label=label)
            ax.axhline(prevalence[c], color=_colour(c), lw=0.8, ls=":")
    if kind == "roc":
        ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--", label="chance")
        ax.set_xlabel("false-positive rate (1 - specificity)")
        ax.set_ylabel("sensitivity")
    else:
        ax.set_xlabel("recall (sensitivity)")
        ax.set_ylabel("precision (+P)")
    # Outside the axes: inside, it hides the low curves of rare classes (PR) or the steep start (ROC).
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), title="one vs rest", frameon=False)
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.grid(alpha=0.3)
    ax.set_title(title)
    return _save(fig, path)


def roc_png(curves: Sequence[Curve | None], classes: Sequence[str], path: Path, title: str) -> Path:
    return _curves_png(curves, classes, path, title, "roc", [0.0] * len(classes))


def pr_png(
    curves: Sequence[Curve | None], classes: Sequence[str], prevalence: Sequence[float], path: Path, title: str
) -> Path:
    """PR curves, each with its class's prevalence (the precision of a guess) dotted."""
    return _curves_png(curves, classes, path, title, "pr", prevalence)


@dataclass(frozen=True)
class Example:
    """One evaluated item drawn in a figure: its signal, what it is and what the model said."""

    signal: np.ndarray  # the model's input window, mV
    reference: str | None  # None: an upload, which has no reference label
    predicted: str
    probability: float
    where: str  # e.g. "record 106 at 12:34.5"


def _caption(ex: Example) -> str:
    verdict = "correct" if ex.reference == ex.predicted else "wrong"
    return f"{ex.where}: reference {ex.reference}, predicted {ex.predicted} (p={ex.probability:.2f}, {verdict})"


def attention_png(examples: Sequence[Example], attention: np.ndarray, fs: float, path: Path, title: str) -> Path:
    """Each example segment with the attention its steps receive (``attention [k, T]``, the
    mean over queries of the model's head-averaged weights) shaded behind the trace and
    drawn below it."""
    rows = [(ex.signal, attention[i], _caption(ex)) for i, ex in enumerate(examples)]
    return _save(attention_figure(rows, fs, title), path)


def attention_figure(rows: Sequence[tuple[np.ndarray, np.ndarray, str]], fs: float, title: str | None) -> Figure:
    """One pair of panels per ``(signal, attention weights, caption)``: the trace with the
    weights shaded behind it, and the weights drawn below it (also the HTTP face's picture of
    an explained segment)."""
    k = len(rows)
    fig = Figure(figsize=(12, 3.0 * k + 0.6), layout="constrained")
    if title:
        fig.suptitle(title)
    axes = fig.subplots(2 * k, 1, height_ratios=[3, 1] * k, squeeze=False)[:, 0]
    for i, (signal, weights, caption) in enumerate(rows):
        trace, bar = axes[2 * i], axes[2 * i + 1]
        t = np.arange(signal.size) / fs
        duration = signal.size / fs
        lo, hi = float(signal.min()), float(signal.max())
        pad = 0.05 * (hi - lo or 1.0)
        trace.imshow(weights[None, :], aspect="auto", cmap="Oranges", alpha=0.55,
                     extent=(0, duration, lo - pad, hi + pad), vmin=0, vmax=float(weights.max()) or 1.0)
        trace.plot(t, signal, color="black", lw=0.7)
        trace.set_xlim(0, duration)
        trace.set_ylabel("mV")
        trace.set_title(caption, fontsize=10, loc="left")
        trace.tick_params(labelbottom=False)
        steps = (np.arange(weights.size) + 0.5) * duration / weights.size
        bar.fill_between(steps, weights, color="tab:orange", alpha=0.8, step="mid")
        bar.set_xlim(0, duration)
        bar.set_ylim(0, float(weights.max()) * 1.1 or 1.0)
        bar.set_ylabel("attention", fontsize=8)
        bar.set_xlabel("time in the segment (s)")
    return fig


@dataclass(frozen=True)
class GradCamPanel:
    """A beat's log spectrogram and its Grad-CAM map (both ``[n_freq, ...]``), for one row."""

    example: Example
    spectrogram: np.ndarray  # [n_freq, n_frames]
    frame_centres: np.ndarray  # sample index of each spectrogram column
    cam: np.ndarray  # [n_freq, window] in [0, 1]
    frequencies: np.ndarray  # Hz of each row


def gradcam_png(panels: Sequence[GradCamPanel], fs: float, before: int, path: Path, title: str) -> Path:
    """One row per example beat: the window, its STFT, and the Grad-CAM map of the predicted
    class with the beat drawn over it; time in ms from the R peak."""
    return _save(gradcam_figure(panels, fs, before, title), path)


def gradcam_figure(panels: Sequence[GradCamPanel], fs: float, before: int, title: str) -> Figure:
    """The figure of ``gradcam_png`` (the HTTP face saves it into its answer instead of a file)."""
    k = len(panels)
    fig = Figure(figsize=(13, 2.9 * k + 0.6), layout="constrained")
    fig.suptitle(title)
    axes = fig.subplots(k, 3, squeeze=False)
    for i, p in enumerate(panels):
        beat, spec_ax, cam_ax = axes[i]
        ms = (np.arange(p.example.signal.size) - before) / fs * 1000
        f_top = float(p.frequencies[-1])
        beat.plot(ms, p.example.signal, color="black", lw=0.9)
        beat.axvline(0, color="grey", lw=0.6, ls=":")
        beat.set_xlim(ms[0], ms[-1])
        beat.set_ylabel("mV")
        said = f"reference {p.example.reference}, predicted" if p.example.reference is not None else "predicted"
        beat.set_title(f"{p.example.where}\n{said} {p.example.predicted} (p={p.example.probability:.2f})",
                       fontsize=9, loc="left")
        # Each column spans one hop around its centre; rows likewise one bin around theirs.
        frame_ms = (p.frame_centres - before) / fs * 1000
        half_hop = (frame_ms[1] - frame_ms[0]) / 2 if frame_ms.size > 1 else 0.0
        half_bin = (p.frequencies[1] - p.frequencies[0]) / 2 if p.frequencies.size > 1 else 0.0
        spec_ax.imshow(p.spectrogram, aspect="auto", origin="lower", cmap="magma",
                       extent=(frame_ms[0] - half_hop, frame_ms[-1] + half_hop, -half_bin, f_top + half_bin))
        spec_ax.set_xlim(ms[0], ms[-1])
        spec_ax.set_ylim(0, f_top)
        spec_ax.set_ylabel("Hz")
        spec_ax.set_title("log |STFT| (model input)", fontsize=9)
        cam_ax.imshow(p.cam, aspect="auto", origin="lower", cmap="jet", vmin=0, vmax=1,
                      extent=(ms[0], ms[-1], 0, f_top))
        # The beat over the map, scaled into the frequency axis, to show where the model looked.
        s = p.example.signal
        scaled = (s - s.min()) / (np.ptp(s) or 1.0) * 0.8 * f_top + 0.1 * f_top
        cam_ax.plot(ms, scaled, color="white", lw=1.0)
        cam_ax.set_title(f"Grad-CAM for {p.example.predicted}", fontsize=9)
        for ax in (beat, spec_ax, cam_ax):
            ax.set_xlabel("ms from R peak")
    return fig
