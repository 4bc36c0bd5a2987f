"""The per-stream heart-sound pipeline: fed 2 kHz stethoscope Chunks, it filters, finds S1
and S2, measures the rate and the signal quality, and publishes them with a decimated
envelope for displays (PcgMessage); it cuts 5-second windows with 50 % overlap for the
heart-sound model (InferenceJobs) and turns the window probabilities into a verdict on the
recording so far (PcgClassMessage): normal, abnormal, or uncertain when the quality is low,
the windows disagree or the probability is near the threshold. It never blocks and never sleeps.

With a cycle rule (``[models] pcg_cycles``, the default; monitor/pcg_cycle_model.py) the
verdict is the rule's instead, and the CNN's windows are not cut (the rate and quality above do
not depend on them): every ``update_s`` of signal (and once more when the stream ends) the last
``span_s`` seconds of audio go to the rule's batcher as one job, which segments the cardiac
cycle and returns the cycle features off the event loop; the device's calibration standardises
them and ``pcg_decision.decide_cycles`` says normal, abnormal or uncertain (too few cycles,
device not calibrated, near the threshold).

Every output is placed on the signal clock (sample indices), so the messages do not depend
on how the audio was chunked.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ecgmon.chunk import Chunk
from ecgmon.config import Config
from ecgmon.monitor.classification import softmax_label
from ecgmon.monitor.dsp.pcg_decision import Calibration, CycleCalibration, decide, decide_cycles, device_rule
from ecgmon.monitor.dsp.pcg_segment import FEATURE_NAMES, MIN_SECONDS
from ecgmon.monitor.dsp.pcg_envelope import PCG_FS, HomomorphicEnvelope, PcgBandpass, envelope_delay_s
from ecgmon.monitor.dsp.pcg_quality import QUALITY_WINDOW_S, quality_index
from ecgmon.monitor.dsp.pcg_rate import RATE_SPAN_S, envelope_rate_bpm
from ecgmon.monitor.dsp.pcg_sounds import HeartSound, HeartSoundDetector
from ecgmon.monitor.dsp.ring_buffer import RingBuffer
from ecgmon.monitor.inference_job import InferenceJob
from ecgmon.schema import EventMessage, Message, PcgClassMessage, PcgMessage, StreamStatus

if TYPE_CHECKING:
    from ecgmon.monitor.model_loader import LoadedModel
    from ecgmon.monitor.pcg_cycle_model import CycleModel

# Without a model, windows are still cut for their quality at the model's usual size.
DEFAULT_WINDOW_S, DEFAULT_HOP_S = 5.0, 2.5
# Gaps up to this long are filled with silence so the clock stays right; longer ones are spliced.
MAX_FILL_S = 10.0
# With no heart sound for this long (stethoscope lifted, silence) the rate is unknown.
RATE_GONE_S = 3.0
ENVELOPE_DECIMALS = 6


class PcgPipeline:
    """All per-stream state of one heart-sound stream; ``feed`` returns messages to publish,
    ``take_jobs`` the model windows cut since the last call."""

    def __init__(self, stream: str, fs: float, config: Config, model: LoadedModel | None = None,
                 cycles: CycleModel | None = None) -> None:
        if fs != PCG_FS:
            raise ValueError(f"heart-sound audio must arrive at {PCG_FS:g} Hz (sources resample it), got {fs:g}")
        self.stream = stream
        self.fs = float(fs)
        self.lead = "pcg"
        audio = config.audio
        self.min_quality = audio.min_quality
        self._bandpass = PcgBandpass(self.fs)
        self._envelope = HomomorphicEnvelope(self.fs, float(audio.envelope_fs))
        self.env_fs = self._envelope.fs
        self._dec = self._envelope.decimation
        self._detector = HeartSoundDetector(self.env_fs, envelope_delay_s())
        # The cycle rule, when there is one, gives the verdict: the CNN is then not run at all.
        self.cycles = cycles
        model = None if cycles is not None else model
        self.model = model
        if model is not None and model.fs != self.fs:
            raise ValueError(f"heart-sound model {model.name} expects {model.fs:g} Hz audio, the stream is {self.fs:g} Hz")
        inputs = model.card["input"] if model is not None else {}
        self.window = int(model.window) if model is not None else int(DEFAULT_WINDOW_S * self.fs)
        self.hop = int(inputs.get("hop") or self.window // 2) if model is not None else int(DEFAULT_HOP_S * self.fs)
        decision = model.card.get("decision", {}) if model is not None else {}
        # The card's threshold, margin and agreement (chosen on training databases) and the
        # config's quality floor: when a verdict is 'uncertain'. A card ruling on the calibrated
        # score needs the device's calibration ([audio] calibration; refused if it was fitted
        # for another model file), else every verdict is "uncertain: device not calibrated".
        self.calibration = (Calibration.load(audio.calibration, model.card["sha256"]).check_quality(self.min_quality)
                            if model is not None and audio.calibration else None)
        self.rule = device_rule(decision, self.calibration, self.min_quality)
        self.threshold = self.rule.threshold
        # The cycle rule's part of the device's calibration (refused if fitted for another rule
        # file; a file without one leaves every cycle verdict "uncertain: device not calibrated").
        self.cycle_calibration: CycleCalibration | None = None
        cycle_n, self._cycle_step = 0, 0
        if cycles is not None:
            cal = Calibration.load(audio.calibration) if audio.calibration else None
            self.cycle_calibration = CycleCalibration.from_calibration(cal, audio.calibration, cycles.rule.sha256)
            cycle_n = cycles.span
            self._cycle_step = int(round(cycles.rule.update_s * self.fs))
        self._next_cycles = self._cycle_step if cycles is not None else None
        self._cycles_done = 0  # the stream position of the last cycle job
        quality_n = int(QUALITY_WINDOW_S * self.fs)
        self._audio = RingBuffer(max(self.window, quality_n, cycle_n) + self.hop + int(self.fs), np.float32)
        env_n = max(self.window + self.hop, quality_n, int(RATE_SPAN_S * self.fs)) // self._dec
        self._env = RingBuffer(env_n + 2 * int(self.env_fs), np.float64)
        self._update_n = max(self._dec, int(round(audio.update_s * self.fs)) // self._dec * self._dec)
        self._next_update = self._update_n
        self._next_window = self.window
        self._frame_start = 0  # envelope index of the next PcgMessage's first sample
        self._s1: list[float] = []
        self._s2: list[float] = []
        self._jobs: list[InferenceJob] = []
        self._window_p: list[tuple[float, float]] = []  # (P(abnormal), quality) of every window
        self.samples = 0  # samples fed, counted from the stream's first chunk
        self._offset: int | None = None  # stream index of internal sample 0
        self.hr_bpm: float | None = None
        self.quality: float | None = None
        self.sounds = 0

    @property
    def position(self) -> int:
        return self.samples + (self._offset or 0)

    # -- feeding ------------------------------------------------------------------------

    def feed(self, chunk: Chunk) -> list[Message]:
        """Process one chunk; gaps are filled with silence (and said), overlaps dropped."""
        out: list[Message] = []
        if self._offset is None:
            self._offset = chunk.start
        x = chunk.samples[:, 0].astype(np.float32)
        gap = chunk.start - self.position
        if gap < 0:
            x = x[-gap:]
            out.append(self._gap_event(chunk, "overlap: the repeated samples were dropped"))
        elif gap > MAX_FILL_S * self.fs:
            out.append(self._gap_event(chunk, "spliced: the gap is too long to fill"))
            self._offset += gap  # after the event, which names the sample that was expected
        elif gap > 0:
            x = np.concatenate([np.zeros(gap, dtype=np.float32), x])
            out.append(self._gap_event(chunk, "filled with silence"))
        while x.size:
            # Split at the next update or window boundary, so each is computed exactly there.
            due = min(self._next_update, self._next_window, self._next_cycles or self._next_window) - self.samples
            take = x[: max(1, due)]
            x = x[take.size :]
            out.extend(self._process(take))
        return out

    def _process(self, x: np.ndarray) -> list[Message]:
        env = self._envelope(self._bandpass(x))
        self._audio.extend(x)
        self._env.extend(env)
        self.samples += x.size
        for sound in self._detector.feed(env):
            self._sound(sound)
        out: list[Message] = []
        if self.samples >= self._next_window:
            self._cut_window(self._next_window)
            self._next_window += self.hop
        if self._next_cycles is not None and self.samples >= self._next_cycles:
            self._cut_cycles(self._next_cycles)
            self._next_cycles += self._cycle_step
        if self.samples >= self._next_update:
            out.append(self._update_message(self._next_update))
            self._next_update += self._update_n
        return out

    def _sound(self, sound: HeartSound) -> None:
        self.sounds += 1
        t = sound.time_s + (self._offset or 0) / self.fs
        (self._s1 if sound.kind == "S1" else self._s2).append(round(t, 3))

    def _window_quality(self, end: int) -> float:
        n = int(QUALITY_WINDOW_S * self.fs)
        audio = self._audio.get(max(0, end - n), end)
        env = self._env.get(max(0, end - n) // self._dec, end // self._dec)
        if audio is None or env is None or env.size < 2:
            return 0.0
        return quality_index(audio, env, self.env_fs)

    def _rate(self, end: int) -> float | None:
        last = self._detector.last_sound_s
        if last is None or end / self.fs - last > RATE_GONE_S:
            return None
        env = self._env.get(max(0, (end - int(RATE_SPAN_S * self.fs)) // self._dec), end // self._dec)
        return None if env is None else envelope_rate_bpm(env, self.env_fs)

    def _update_message(self, due: int) -> PcgMessage:
        self.hr_bpm = self._rate(due)
        self.quality = round(self._window_quality(due), 3)
        end = due // self._dec
        env = self._env.get(self._frame_start, end)
        env = np.zeros(0) if env is None else env
        start = self._frame_start
        self._frame_start = end
        msg = PcgMessage(
            stream=self.stream, fs=self.env_fs, start=start + (self._offset or 0) // self._dec,
            time_s=start / self.env_fs + (self._offset or 0) / self.fs,
            envelope=np.round(env, ENVELOPE_DECIMALS).tolist(), s1_s=self._s1, s2_s=self._s2,
            hr_bpm=None if self.hr_bpm is None else round(self.hr_bpm, 1), quality=self.quality,
        )
        self._s1, self._s2 = [], []
        return msg

    # -- the heart-sound model ----------------------------------------------------------

    def _cut_window(self, end: int) -> None:
        if self.model is None:
            return
        window = self._audio.get(end - self.window, end)
        quality = self._window_quality(end)
        end_s = (end + (self._offset or 0)) / self.fs
        self._jobs.append(InferenceJob(
            "pcg", None if window is None else (window.astype(np.float32),),
            lambda output, q=quality, t=end_s: self._verdict(output, q, t),
        ))

    def _verdict(self, output: Any, quality: float, end_s: float) -> list[Message]:
        """The recording's verdict after one more window (``pcg_decision.decide``: the mean
        P(abnormal) of the windows of acceptable quality, or uncertain)."""
        if output is None:
            return []
        assert self.model is not None
        classes = self.model.classes
        _, _, p = softmax_label(output, classes)
        p_abnormal = float(p[classes.index("abnormal")]) if "abnormal" in classes else float(p[-1])
        self._window_p.append((p_abnormal, quality))
        v = decide(np.array([pa for pa, _ in self._window_p]), np.array([q for _, q in self._window_p]), self.rule)
        probability = None
        # On a calibrated device the verdict rests on where the score lies among that device's
        # recordings, not on P(abnormal) itself, which is no probability there: none is shown.
        if v.label != "uncertain" and v.p_abnormal is not None and self.calibration is None:
            probability = round(v.p_abnormal if v.label == "abnormal" else 1.0 - v.p_abnormal, 4)
        return [PcgClassMessage(
            stream=self.stream, time_s=round(end_s, 3), label=v.label, reason=v.reason,  # type: ignore[arg-type]
            probability=probability,
            p_abnormal=None if v.p_abnormal is None else round(v.p_abnormal, 4),
            threshold=round(self.rule.threshold, 6), calibrated=self.calibration is not None,
            window_probability=round(p_abnormal, 4), windows=v.windows,
            window_quality=round(quality, 3), rejected=v.rejected,
        )]

    # -- the cycle rule -----------------------------------------------------------------

    def _cut_cycles(self, end: int) -> None:
        """One cycle job on the audio up to ``end`` (its last ``span_s`` seconds)."""
        assert self.cycles is not None
        self._cycles_done = end
        if end < MIN_SECONDS * self.fs:
            return  # too short to find a heart cycle in: no verdict yet
        audio = self._audio.get(max(0, end - self.cycles.span), end)
        end_s = (end + (self._offset or 0)) / self.fs
        self._jobs.append(InferenceJob(
            "pcg_cycles", None if audio is None else self.cycles.item(audio),
            lambda output, t=end_s: self._cycle_verdict(output, t),
        ))

    def _cycle_verdict(self, output: Any, end_s: float) -> list[Message]:
        """The cycle rule's verdict on the last ``span_s`` seconds (``pcg_decision.decide_cycles``).
        The message keeps the CNN's fields: p_abnormal and window_probability carry the cycle
        score (no probability), threshold the z-threshold on this device's score scale, windows
        the complete cycles analysed."""
        if output is None:
            return []
        assert self.cycles is not None
        row = np.asarray(output, dtype=np.float64)
        rule = self.cycles.rule
        n = len(FEATURE_NAMES)
        v = decide_cycles(row[:n], int(row[n]), rule.columns, rule.signs, rule.z_threshold, rule.z_margin,
                          self.cycle_calibration)
        score = None if v.score is None else round(v.score, 4)
        return [PcgClassMessage(
            stream=self.stream, method="cycles", time_s=round(end_s, 3), label=v.label,
            reason=v.reason,  # type: ignore[arg-type]
            probability=None, p_abnormal=score,
            threshold=round(rule.z_threshold if v.threshold is None else v.threshold, 6),
            calibrated=self.cycle_calibration is not None, window_probability=0.0 if score is None else score,
            windows=v.cycles, window_quality=None, rejected=0,
        )]

    def take_jobs(self) -> list[InferenceJob]:
        jobs, self._jobs = self._jobs, []
        return jobs

    def finish(self) -> list[InferenceJob]:
        """The jobs still to run when the stream ends (windows are only cut whole; the cycle
        rule judges the audio up to the end once more, as evaluate pcg --cycles does)."""
        if self.cycles is not None and self.samples > self._cycles_done:
            self._cut_cycles(self.samples)
        return self.take_jobs()

    # -- status -------------------------------------------------------------------------

    def _gap_event(self, chunk: Chunk, how: str) -> EventMessage:
        return EventMessage(
            stream=self.stream, level="warning", code="discontinuity",
            text=f"{self.stream}: audio chunk starts at sample {chunk.start}, expected {self.position}; {how}",
        )

    def status(self, source_spec: str, state: str) -> StreamStatus:
        return StreamStatus(
            stream=self.stream, source=source_spec, fs=self.fs, lead=self.lead, state=state,
            samples=self.position, time_s=self.position / self.fs, beats=self.sounds, hr_bpm=self.hr_bpm,
        )
