"""What a stream pipeline asks of its models: a job per beat once the beat's next RR interval
is known (its window, RR features and patient-adaptive features computed exactly as training
computed them), and a job per
10-second segment every 5 seconds; their results become the beat and segment messages."""

from __future__ import annotations

from collections import deque
from functools import partial
import time
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from ecgmon.monitor.dsp.beat_features import (
    BEAT_FEATURES, FIRST_LEAD2, LEAD2_FEATURES, LOCAL_N, RECORD_WINDOW_S, RR_FEATURES, TEMPLATE_COLUMNS,
    AdaptiveFeatures, beat_rr_row,
)
from ecgmon.monitor.dsp.beat_clusters import MorphologyVote
from ecgmon.monitor.dsp.ring_buffer import ModelRateWindows, RingBuffer
from ecgmon.monitor.inference_job import InferenceJob
from ecgmon.schema import BeatMessage, Message, SegmentMessage

if TYPE_CHECKING:
    from ecgmon.monitor.model_loader import LoadedModel

# A beat followed by no other for this long is classified without its next RR (taken equal
# to the previous one, as training does for a record's last beat), so a pause or an
# asystole never holds back the last beat's message.
MAX_WAIT_S = 2.0


def softmax(output: Any) -> np.ndarray:
    """The class probabilities from a model's output row(s)."""
    logits = np.asarray(output[0] if isinstance(output, tuple) else output, dtype=np.float64)
    z = np.exp(logits - logits.max())
    return z / z.sum()


def softmax_label(output: Any, classes: tuple[str, ...]) -> tuple[str, float, np.ndarray]:
    """The class, its probability and all probabilities from a model's output row(s)."""
    p = softmax(output)
    return (*most_likely(p, classes), p)


def most_likely(p: np.ndarray, classes: tuple[str, ...]) -> tuple[str, float]:
    """The class of the highest probability in ``p``, and that probability."""
    i = int(p.argmax())
    return classes[i], float(p[i])


def check_beat_model(model: LoadedModel) -> None:
    """Raise ValueError when the pipeline cannot compute what a beat model's card asks for."""
    unknown = [n for n in model.rr_features if n not in BEAT_FEATURES]
    if unknown:
        raise ValueError(
            f"{model.name}: its card asks for RR features {unknown} that ecgmon does not compute "
            f"(known: {', '.join(BEAT_FEATURES)})"
        )
    if model.before is None or not 0 <= model.before < model.window:
        raise ValueError(f"{model.name}: its card's window/before do not describe a beat window")


class BeatClassification:
    """Holds a stream's detected beats until each can be classified; ``jobs()`` hands them out.

    A beat is due once the beat after it has been detected (or ``MAX_WAIT_S`` passed) and
    its window has fully arrived. Sample indices are the pipeline's internal ones (counted
    from the stream's first sample, gaps included).
    """

    def __init__(
        self, model: LoadedModel, fs: float, ring: RingBuffer, done: Callable[[BeatMessage], list[Message]],
        ring2: RingBuffer | None = None, vote: bool = True,
    ) -> None:
        check_beat_model(model)
        self.classes = model.classes
        self.fs = fs
        self._ring = ring
        self._windows = ModelRateWindows(fs, model.fs)
        self._before = int(model.before or 0)
        self._n = model.window
        self._columns = [BEAT_FEATURES.index(n) for n in model.rr_features]
        # The patient-adaptive inputs follow every beat of the stream in order (a template of
        # the stream's own dominant beat): kept only when the model asks for one of them.
        self._adaptive = (
            AdaptiveFeatures(self._before, model.fs)
            if any(c >= len(RR_FEATURES) for c in self._columns) else None
        )
        # The second lead (``ring2``, the pipeline's filtered second column) against its own template.
        self._ring2 = ring2
        self._adaptive2 = AdaptiveFeatures(self._before, model.fs) if any(c >= FIRST_LEAD2 for c in self._columns) else None
        # The model's P(V) pooled over the stream's beats of the same shape (``[models] vote``).
        self._vote = MorphologyVote(self._before, model.fs, self.classes) if vote else None
        self._done = done
        self._wait = round(MAX_WAIT_S * fs)
        self._keep = RECORD_WINDOW_S * fs
        self._history: deque[int] = deque()  # R samples: the RR features' memory
        self._pending: deque[tuple[int, BeatMessage, float]] = deque()  # (R, message, received)

    def add(self, r: int, msg: BeatMessage, received: float) -> None:
        self._history.append(r)
        self._pending.append((r, msg, received))

    def jobs(self, end: int, flush: bool = False) -> list[InferenceJob]:
        """Jobs for the beats due once samples up to ``end`` have arrived; all of them with ``flush``."""
        out: list[InferenceJob] = []
        while self._pending:
            r, msg, received = self._pending[0]
            has_next = len(self._pending) > 1
            k0 = self._windows.to_model(r) - self._before
            complete = end >= self._windows.native_stop(k0, self._n)
            if not flush and not (complete and (has_next or end >= r + self._wait)):
                break
            self._pending.popleft()
            i = len(self._history) - len(self._pending) - 1  # the beat's place in the history
            rr = beat_rr_row(np.fromiter(self._history, np.int64)[: i + 1 + has_next], self.fs, i)
            window = self._windows.cut(self._ring, k0, self._n)
            window2 = self._window2(k0)
            if self._adaptive is not None:
                parts = [rr, self._adaptive.step(window, rr)]
                if self._adaptive2 is not None:
                    parts.append(self._lead2(window2, rr))
                rr = np.concatenate(parts).astype(np.float32)
            inputs = None if window is None else (window, rr[self._columns])
            out.append(InferenceJob("beat", inputs, partial(self._finish, msg, received, window, window2)))
            self._forget(r)
        return out

    def _window2(self, k0: int) -> np.ndarray | None:
        """The second lead's window starting at ``k0``; None where the stream has none."""
        window = None if self._ring2 is None else self._windows.cut(self._ring2, k0, self._n)
        return window if window is not None and np.isfinite(window).all() else None

    def _lead2(self, window: np.ndarray | None, rr: np.ndarray) -> np.ndarray:
        """The second lead's template inputs for a beat; NaN (unknown, as the model was
        trained to expect) when the stream has no second lead there."""
        measured = self._adaptive2.step(window, rr)[TEMPLATE_COLUMNS]
        return measured if window is not None else np.full(len(LEAD2_FEATURES), np.nan)

    def _forget(self, oldest_needed: int) -> None:
        # Keep the beats the RR features of the next due beat still use: the last LOCAL_N
        # intervals and every interval ending inside the long-run window.
        h = self._history
        while len(h) > LOCAL_N + 2 and h[1] <= oldest_needed - self._keep:
            h.popleft()

    def _finish(
        self, msg: BeatMessage, received: float, window: np.ndarray | None, window2: np.ndarray | None, output: Any,
    ) -> list[Message]:
        if output is not None:
            p = softmax(output)
            if self._vote is not None:
                p = self._vote(window, p, window2)
            msg.label, msg.probability = most_likely(p, self.classes)
        msg.latency_ms = (time.time() - received) * 1000.0
        return self._done(msg)


class UnclassifiedBeats:
    """Without a beat model: each beat goes to ``done`` (the alarm engine) when a model's
    class would have come back, once the beat after it has been detected or ``MAX_WAIT_S``
    passed, as a job with nothing to compute. Handing it over at its own detection made the
    rhythm alarms depend on how the stream was chunked (the beat's complex, the next beat,
    may or may not have arrived in the same chunk). Its message is published at detection:
    there is no class to wait for."""

    def __init__(self, fs: float, done: Callable[[BeatMessage], list[Message]]) -> None:
        self._wait = round(MAX_WAIT_S * fs)
        self._done = done
        self._pending: deque[tuple[int, BeatMessage]] = deque()

    def add(self, r: int, msg: BeatMessage, received: float) -> None:
        self._pending.append((r, msg))

    def jobs(self, end: int, flush: bool = False) -> list[InferenceJob]:
        """Jobs for the beats due once samples up to ``end`` have arrived; all of them with ``flush``."""
        out: list[InferenceJob] = []
        while self._pending and (flush or len(self._pending) > 1 or end >= self._pending[0][0] + self._wait):
            _, msg = self._pending.popleft()
            out.append(InferenceJob("beat", None, lambda _output, msg=msg: self._done(msg)))
        return out


class SegmentClassification:
    """A job for every model window of the stream, hopping by half a window (50 % overlap,
    as the training segments), from the stream's first sample."""

    def __init__(
        self, model: LoadedModel, stream: str, fs: float, ring: RingBuffer, offset: Callable[[], int],
        done: Callable[[SegmentMessage], list[Message]],
    ) -> None:
        self.classes = model.classes
        self.stream = stream
        self.fs = fs
        self._ring = ring
        self._windows = ModelRateWindows(fs, model.fs)
        self._n = model.window
        self._hop = model.window // 2
        self._model_fs = model.fs
        self._offset = offset
        self._done = done
        self._next = 0  # model-rate index of the next segment's first sample

    def jobs(self, end: int) -> list[InferenceJob]:
        out: list[InferenceJob] = []
        while end >= self._windows.native_stop(self._next, self._n):
            k0 = self._next
            self._next += self._hop
            window = self._windows.cut(self._ring, k0, self._n)
            if window is None or not np.isfinite(window).all():
                continue  # fell out of the ring (a long splice) or not a usable signal
            start = round(k0 * self._windows.down / self._windows.up) + self._offset()
            out.append(InferenceJob("segment", (window,), partial(self._finish, start)))
        return out

    def _finish(self, start: int, output: Any) -> list[Message]:
        if output is None:
            return []
        label, prob, probs = softmax_label(output, self.classes)
        msg = SegmentMessage(
            stream=self.stream, start=start, time_s=start / self.fs, duration_s=self._n / self._model_fs,
            label=label, probability=prob, probabilities=dict(zip(self.classes, map(float, probs))),
        )
        return self._done(msg)
