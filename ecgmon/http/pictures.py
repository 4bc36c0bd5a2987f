"""The PNG links of ``?explain=true``: each analysed segment drawn with the attention the
segment model gave it, and each explained beat with the spectrogram model's Grad-CAM (the
pictures ``ecgmon evaluate model`` draws for its examples). The analysis keeps what the
pictures need for a while (``ExplainStore``); a picture is drawn only when its link is
fetched, in the analysis pool, off the event loop."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
import io
from typing import Any

import numpy as np

# Analyses whose pictures can still be fetched; older ones are forgotten (their links 404).
KEEP = 16


@dataclass(frozen=True)
class SegmentPicture:
    """One segment to draw: its samples (the analysed lead, mV), rate, attention and verdict."""

    name: str
    fs: float
    start: int
    samples: np.ndarray
    attention: np.ndarray
    label: str
    probability: float


@dataclass(frozen=True)
class BeatPicture:
    """One explained beat to draw: the spectrogram model's inputs (the filtered window the
    daemon's beat model saw, mV, and its RR features), its class index and probability; the
    Grad-CAM is computed again when drawn (kilobytes kept per beat, not a map)."""

    where: str
    window: np.ndarray
    rr: np.ndarray
    target: int
    probability: float


@dataclass
class Explained:
    """What an explained analysis leaves for its pictures: the lead and each segment's
    (start sample, window length in samples, label, probability, attention), and each
    explained beat's picture."""

    name: str
    fs: float
    lead: np.ndarray
    segments: list[tuple[int, int, str, float, np.ndarray]]
    beats: list[BeatPicture] = field(default_factory=list)

    def picture(self, k: int) -> SegmentPicture | None:
        if not 0 <= k < len(self.segments):
            return None
        start, n, label, prob, att = self.segments[k]
        return SegmentPicture(self.name, self.fs, start, self.lead[start : start + n], att, label, prob)

    def beat(self, k: int) -> BeatPicture | None:
        return self.beats[k] if 0 <= k < len(self.beats) else None


class ExplainStore:
    """The last KEEP explained analyses by id (memory stays bounded: a 1-hour record's lead
    is 5 MB)."""

    def __init__(self, keep: int = KEEP) -> None:
        self.keep = keep
        self._items: OrderedDict[str, Explained] = OrderedDict()

    def put(self, key: str, item: Explained) -> None:
        self._items[key] = item
        while len(self._items) > self.keep:
            self._items.popitem(last=False)

    def get(self, key: str) -> Explained | None:
        return self._items.get(key)


def draw_segment(picture: SegmentPicture, ctx: Any = None) -> bytes:
    """The PNG of one segment (a pool job): the trace with the attention its steps received
    shaded behind it and drawn below, as ``evaluate model`` draws its examples."""
    from ecgmon.evaluate.plots import attention_figure

    caption = (f"{picture.name} from {picture.start / picture.fs:.1f} s: segment model says {picture.label} "
               f"(p={picture.probability:.2f}); shading: attention each step received")
    return png_bytes(attention_figure([(picture.samples.astype(np.float64), picture.attention, caption)],
                                      picture.fs, None))


def png_bytes(fig: Any) -> bytes:
    """A matplotlib figure as PNG bytes at 100 dpi."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()
