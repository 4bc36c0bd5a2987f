"""The per-stream pipeline: fed Chunks, it filters, detects beats, measures heart rate and
cuts display frames, returning the messages to publish; it also hands out inference jobs
(``take_jobs``) whose results become classified beats and segments, and which hand the beats
to the alarm engine (without a beat model, jobs with nothing to compute). It never blocks and
never sleeps.

Every output is placed on the signal clock (sample indices), so the messages do not depend
on how the stream was chunked.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np

from ecgmon.chunk import Chunk
from ecgmon.config import Config
from ecgmon.monitor.classification import MAX_WAIT_S, BeatClassification, SegmentClassification, UnclassifiedBeats
from ecgmon.monitor.alarms import AlarmEngine
from ecgmon.monitor.alarms.fibrillation import WindowSteps, measured_alone
from ecgmon.monitor.dsp.beat_features import LEAD2_FEATURES
from ecgmon.monitor.dsp.filters import ECGFilter
from ecgmon.monitor.dsp.heart_rate import HeartRateMeter
from ecgmon.monitor.dsp.qrs import Beat, QRSDetector
from ecgmon.monitor.dsp.ring_buffer import RingBuffer
from ecgmon.monitor.inference_job import InferenceJob
from ecgmon.schema import (
    BeatMessage,
    EventMessage,
    Message,
    SegmentMessage,
    StreamStatus,
    VitalsMessage,
    WaveMessage,
)

if TYPE_CHECKING:
    from ecgmon.monitor.alarms.book import AlarmBook
    from ecgmon.monitor.model_loader import LoadedModel

# Gaps in a stream up to this long are bridged so detection keeps its state; longer ones are spliced.
MAX_FILL_S = 10.0
# Wave samples are rounded to 0.1 µV: far below ECG noise, and it keeps the JSON short.
WAVE_DECIMALS = 4


class StreamPipeline:
    """All per-stream state of one ECG stream: display filter, detector, heart rate, counters,
    and the beats and segments waiting for their models.

    ``beat_model`` / ``segment_model`` are loaded model files (their cards say the window and
    rate); a beat model that asks for inputs the pipeline cannot compute raises ValueError.
    """

    def __init__(
        self,
        stream: str,
        fs: float,
        lead: str,
        config: Config,
        beat_model: LoadedModel | None = None,
        segment_model: LoadedModel | None = None,
        alarm_book: AlarmBook | None = None,
    ) -> None:
        self.stream = stream
        self.fs = float(fs)
        self.lead = lead
        self.config = config
        self._beat_model = beat_model
        self._segment_model = segment_model
        self._hr = HeartRateMeter(config.heart_rate)
        # The alarm engine (ecgmon.monitor.alarms): the daemon's control socket reaches it here.
        self.alarms = AlarmEngine(stream, self.fs, config.alarms, alarm_book)
        # Vitals fall due every `_vitals_every` samples, counted from the stream's start (or a splice).
        self._vitals_every = max(1, round(config.heart_rate.update_s * self.fs))
        # Wave frames: every k-th filtered sample (the bandpass already stops at 40 Hz),
        # `_frame_len` decimated samples per frame; indices are absolute, so phase survives chunks.
        self._k = max(1, round(self.fs / config.publisher.wave_fs))
        self.wave_fs = self.fs / self._k
        self._frame_len = max(1, round(config.publisher.wave_period_s * self.wave_fs))
        # Stream index of internal sample 0: the first chunk's start, or a splice's.
        self._offset: int | None = None
        self.beats = 0
        self.hr_bpm: float | None = None
        self._jobs: list[InferenceJob] = []
        self._ring_span = 0
        # A beat model that reads the second lead: the chunks' second column, filtered alike.
        self._wants_lead2 = beat_model is not None and any(n in LEAD2_FEATURES for n in beat_model.rr_features)
        if beat_model is not None or segment_model is not None:
            # The filtered signal the models' windows are cut from: a beat's window while
            # the beat waits for its successor, or one segment window and a half.
            spans = [MAX_WAIT_S + m.window / m.fs for m in (beat_model,) if m is not None]
            spans += [1.5 * m.window / m.fs for m in (segment_model,) if m is not None]
            self._ring_span = round((max(spans) + 1.0) * self.fs)
        self._start()

    def _start(self) -> None:
        """The state of one continuous stretch of signal, from internal sample 0: made at the
        stream's start and again at a splice, after which nothing from before the gap (filter
        and detector state, RR, heart rate, the models' context) may shape what follows."""
        self._filter = ECGFilter.configured(self.fs, self.config.dsp)
        self._filter2 = ECGFilter.configured(self.fs, self.config.dsp) if self._wants_lead2 else None
        self._detector = QRSDetector(self.fs, self.config.detector)
        self._hr.reset()
        self.hr_bpm = None
        self.samples = 0  # samples fed since the (re)start; the detector counts from the same origin
        self._next_vitals = self._vitals_every
        self._frame_start = 0  # decimated index of the frame being filled
        self._frame: list[np.ndarray] = []
        self._frame_n = 0
        self._last_beat_sample: int | None = None
        self._ring = RingBuffer(self._ring_span) if self._ring_span else None
        self._ring2 = RingBuffer(self._ring_span) if self._wants_lead2 else None
        self._beat_jobs: BeatClassification | UnclassifiedBeats
        self._segment_jobs: SegmentClassification | None = None
        if self._beat_model is not None:
            self._beat_jobs = BeatClassification(
                self._beat_model, self.fs, self._ring, self.beat_done, self._ring2, self.config.models.vote
            )
        else:
            self._beat_jobs = UnclassifiedBeats(self.fs, self.alarms.beat_done)
        if self._segment_model is not None:
            self._segment_jobs = SegmentClassification(
                self._segment_model, self.stream, self.fs, self._ring, lambda: self._offset or 0, self.segment_done
            )

    # -- feeding ------------------------------------------------------------------------

    @property
    def position(self) -> int:
        """Stream index of the next sample expected (the sources' sample clock)."""
        return self.samples + (self._offset or 0)

    def feed(self, chunk: Chunk) -> list[Message]:
        """Process one chunk; the messages come out in signal-time order of when they were known.
        (``feed_steps`` is the same, its VF windows measured by the caller.)

        Indices published are the source's (``chunk.start`` based). A gap of up to
        ``MAX_FILL_S`` is bridged with invalid samples, which the filters hold at the last
        value, so detection goes on in step with the stream clock; a longer gap is spliced:
        the stream starts afresh at the chunk (see ``_splice``). Data that overlaps what was
        already fed (a resend) is dropped. Either way an event says so.
        """
        return measured_alone(self.feed_steps(chunk))

    def feed_steps(self, chunk: Chunk) -> WindowSteps[list[Message]]:
        """``feed`` as steps: the alarm engine's VF analysis windows are yielded to the caller,
        which sends back their measures (``fibrillation.measure``, for the windows of many
        streams at once); nothing else may feed or finish this pipeline until they end."""
        head: list[Message] = []  # what the stretch before a splice leaves, before all else
        timed: list[tuple[int, int, Message]] = []  # (known at sample, tie order, message)
        if self._offset is None:
            self._offset = chunk.start
        block = chunk.samples
        gap = chunk.start - self.position
        if gap < 0:
            block = block[-gap:]  # already fed: keep only what is new
            timed.append((self.samples, 0, self._gap_event(chunk, "overlap: the repeated samples were dropped")))
        elif 0 < gap <= MAX_FILL_S * self.fs:
            block = np.concatenate([np.full((gap, block.shape[1]), np.nan, dtype=block.dtype), block])
            timed.append((self.samples, 0, self._gap_event(chunk, "bridged with held samples")))
        elif gap > 0:
            head = self._splice(chunk)
        x = block[:, 0]
        if x.size == 0:
            return head + [m for _, _, m in timed]
        start = self.samples
        end = start + x.size
        filtered = self._filter(x)
        if self._ring is not None:
            # Beats early in a long chunk still need their windows once the chunk is in.
            self._ring.reserve(self._ring_span + filtered.size)
            self._ring.extend(filtered)
        if self._ring2 is not None:
            self._ring2.reserve(self._ring_span + x.size)
            # A chunk without a second lead leaves a gap (NaN) there: its beats get no lead-2 inputs.
            lead2 = self._filter2(block[:, 1]) if block.shape[1] > 1 else np.full(x.size, np.nan, np.float32)
            if block.shape[1] > 1:
                # The filter holds a missing sample at the last value (one NaN would poison its
                # state); the ring must still say unknown there, or a device's missing second
                # lead would reach the model as a flat line instead of as no second lead.
                lead2[~np.isfinite(block[:, 1])] = np.nan
            self._ring2.extend(lead2)
        beats = self._detector.process(x)  # the detector filters raw samples itself
        self.samples = end

        # The alarm engine takes the samples and detections first: a beat's complex and the
        # next beat's detection must be known to it before the beat is done.
        detected = [(b.sample + self._offset, b.detected_at + self._offset) for b in beats]
        alarms = yield from self.alarms.feed_steps(start + self._offset, x, filtered, detected, chunk.received)
        timed.extend((end, 3, m) for m in alarms)
        timed.extend(self._beats_and_vitals(beats, end, chunk.received))
        timed.extend(self._wave_frames(filtered, start))
        timed.sort(key=lambda t: (t[0], t[1]))
        self._jobs.extend(self._beat_jobs.jobs(end))
        if self._segment_jobs is not None:
            self._jobs.extend(self._segment_jobs.jobs(end))
        return head + [m for _, _, m in timed]

    def _splice(self, chunk: Chunk) -> list[Message]:
        """A gap too long to bridge: what the stretch before it still owes (its last, partial
        wave frame; jobs for its beats still waiting for a successor, classified without one)
        and the event, then the stream starts afresh at ``chunk`` as a new stream would: no RR
        to the first beat after, no heart rate until enough new beats, the models' RR context
        and the rhythm alarms (the alarm engine sees the splice) begin again."""
        out: list[Message] = [self._emit_frame()[2]] if self._frame_n else []
        out.append(self._gap_event(
            chunk, "spliced: the gap is too long to bridge; detection, heart rate and rhythm start afresh"
        ))
        self._jobs.extend(self._beat_jobs.jobs(self.samples, flush=True))
        self._offset = chunk.start
        self._start()
        return out

    def take_jobs(self) -> list[InferenceJob]:
        """The model jobs made since the last call, in the order their results must be finished."""
        jobs, self._jobs = self._jobs, []
        return jobs

    def finish(self) -> list[InferenceJob]:
        """Jobs for every beat still waiting for a successor, classified without it: at the
        stream's end, or when its samples stopped coming (a live source gone quiet)."""
        self._jobs.extend(self._beat_jobs.jobs(self.samples, flush=True))
        return self.take_jobs()

    def beat_done(self, msg: BeatMessage) -> list[Message]:
        """A beat whose class is now known (None without a beat model), in beat order: the
        messages it gives, itself first."""
        return [msg, *self.alarms.beat_done(msg)]

    def segment_done(self, msg: SegmentMessage) -> list[Message]:
        """A segment the segment model has classified: the messages it gives, itself first."""
        return [msg]

    def _beats_and_vitals(
        self, beats: list[Beat], end: int, received: float
    ) -> list[tuple[int, int, Message]]:
        """Beat messages, and vitals at each due sample counting only beats known by then."""
        out: list[tuple[int, int, Message]] = []
        i = 0
        while True:
            due = self._next_vitals if self._next_vitals <= end else None
            # A beat is known once sample `detected_at` has arrived, i.e. at index detected_at + 1.
            while i < len(beats) and (due is None or beats[i].detected_at + 1 <= due):
                msg = self._beat(beats[i], received)
                self._beat_jobs.add(beats[i].sample, msg, received)
                if self._beat_model is None:  # no class to wait for: published at once
                    out.append((beats[i].detected_at + 1, 1, msg))
                i += 1
            if due is None:
                return out
            out.append((due, 2, self._vitals(due)))
            self._next_vitals += self._vitals_every

    def _beat(self, beat: Beat, received: float) -> BeatMessage:
        rr_ms = None
        sample = beat.sample + self._offset
        if self._last_beat_sample is not None:
            rr_ms = (sample - self._last_beat_sample) / self.fs * 1000.0
        self._last_beat_sample = sample
        time_s = sample / self.fs
        if self._hr.last_beat_s is None or time_s > self._hr.last_beat_s:
            self._hr.add_beat(time_s)
        self.beats += 1
        return BeatMessage(
            stream=self.stream,
            sample=sample,
            time_s=time_s,
            fs=self.fs,
            delay_ms=(beat.detected_at - beat.sample) / self.fs * 1000.0,
            rr_ms=rr_ms,
            amplitude_mv=float(beat.amplitude),
            latency_ms=(time.time() - received) * 1000.0,
        )

    def _vitals(self, due: int) -> VitalsMessage:
        now_s = (due + self._offset) / self.fs
        self.hr_bpm = self._hr.rate(now_s)
        return VitalsMessage(
            stream=self.stream,
            time_s=now_s,
            hr_bpm=self.hr_bpm,
            hr_method=self._hr.method,
            beats=self.beats,
        )

    def _wave_frames(self, filtered: np.ndarray, start: int) -> list[tuple[int, int, Message]]:
        """Append every k-th filtered sample (absolute index multiple of k); emit full frames."""
        first = (-start) % self._k
        picked = filtered[first :: self._k]
        out: list[tuple[int, int, Message]] = []
        while picked.size:
            take = min(picked.size, self._frame_len - self._frame_n)
            self._frame.append(picked[:take])
            self._frame_n += take
            picked = picked[take:]
            if self._frame_n == self._frame_len:
                out.append(self._emit_frame())
        return out

    def _emit_frame(self) -> tuple[int, int, Message]:
        samples = np.round(np.concatenate(self._frame), WAVE_DECIMALS)
        first = self._frame_start
        last_raw = (first + self._frame_len - 1) * self._k  # raw index of the frame's last sample
        msg = WaveMessage(
            stream=self.stream,
            fs=self.wave_fs,
            start=(first * self._k + self._offset) // self._k,
            time_s=(first * self._k + self._offset) / self.fs,
            lead=self.lead,
            samples_mv=samples.tolist(),
        )
        self._frame_start += self._frame_len
        self._frame = []
        self._frame_n = 0
        return (last_raw + 1, 0, msg)

    def _gap_event(self, chunk: Chunk, how: str) -> EventMessage:
        return EventMessage(
            stream=self.stream,
            level="warning",
            code="discontinuity",
            text=f"{self.stream}: chunk starts at sample {chunk.start}, expected {self.position}; {how}",
        )

    # -- status -------------------------------------------------------------------------

    def status(self, source_spec: str, state: str) -> StreamStatus:
        return StreamStatus(
            stream=self.stream,
            source=source_spec,
            fs=self.fs,
            lead=self.lead,
            state=state,
            samples=self.position,
            time_s=self.position / self.fs,
            beats=self.beats,
            hr_bpm=self.hr_bpm,
        )
