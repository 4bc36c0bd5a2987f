"""The alarm engine of one stream: signal analysis per chunk, beat logic per classified
beat, and the alarm book that turns both into published alarms.

Everything runs on the signal clock: analysis windows end at fixed multiples of
``STEP_S`` from the stream's start, beat decisions are dated when the live pipeline would
have made them, so the alarms do not depend on how the stream was chunked or how late the
classifier answered. The one wall-clock condition is signal loss (no samples at all).
"""

from __future__ import annotations

from collections import deque
import time

import numpy as np

from ecgmon.config import AlarmsConfig
from ecgmon.monitor.alarms import fibrillation
from ecgmon.monitor.alarms.beats import CLEAN_AGREEMENT, BeatInfo, BeatRhythm, is_ventricular
from ecgmon.monitor.alarms.book import AlarmBook
from ecgmon.monitor.alarms.kinds import KINDS, TECHNICAL
from ecgmon.monitor.alarms.observation import Observation
from ecgmon.monitor.alarms.quality import NOISE_AGREEMENT, BeatAgreement
from ecgmon.monitor.dsp.beat_template import BeatTemplate
from ecgmon.monitor.dsp.qrs import LEARN_S
from ecgmon.monitor.alarms.technical import TechnicalMonitor
# A beat is classified once the next beat is detected or this long after its R peak: the
# pipeline's rule, which the alarms date their beat decisions by.
from ecgmon.monitor.classification import MAX_WAIT_S
from ecgmon.schema import AlarmMessage, BeatMessage

STEP_S = 1.0  # analysis windows every second
BUFFER_S = 10.0  # signal kept: the analysis window plus room for late morphology
BEAT_KINDS = ("vtach", "pvc_run", "couplet", "bigeminy", "trigeminy", "brady", "tachy", "hr_low", "hr_high", "afib")
SIGNAL_KINDS = ("asystole", "vfib") + TECHNICAL
MAX_PENDING = 64
# Normal beats that teach the template: regular, i.e. RR within this fraction of the last one.
REGULAR_RR = 0.2
# A detected beat whose class has not come back after this much signal time is given up on
# (its job failed or was dropped); until then beat alarms are not cleared past it.
UNCLASSIFIED_STALE_S = 30.0


class AlarmEngine:
    """Alarms of one ECG stream; the pipeline feeds it, the daemon asks it about people."""

    def __init__(self, stream: str, fs: float, config: AlarmsConfig, book: AlarmBook | None = None) -> None:
        """``book``: the alarms of the stream's previous engine, when the pipeline started again
        (an internal error, a new sample rate): they go on under their ids and end as alarms
        do, rather than vanishing unannounced while new ones reuse their ids."""
        self.stream = stream
        self.fs = float(fs)
        self.cfg = config
        self.book = book if book is not None else AlarmBook(stream, config.clear_s, config.latch)
        self._step = max(1, round(STEP_S * self.fs))
        self._win = round(fibrillation.WINDOW_S * self.fs)
        self._buf_n = max(self._win, round(BUFFER_S * self.fs))
        self._end = 0  # stream index after the last sample fed
        # Detected beats' complexes (with the alignment margin), compared with the template
        # when their class comes back: in beat order, so a beat meets the template its
        # predecessors made however late the classifier answered.
        self._complexes: dict[int, np.ndarray] = {}
        self._detected: dict[int, int] = {}  # R sample -> sample of the next beat's detection
        self._unclassified: dict[int, None] = {}  # R samples detected, class not yet known (in order)
        # Spans of technical trouble (leads off, signal loss, noise, clipping), and of VF, as
        # found, one per analysis window: (start, end), the end being the signal time it became
        # known.
        self._technical: deque[tuple[float, float]] = deque()
        self._fibrillation: deque[tuple[float, float]] = deque()
        self._last_wall: float | None = None
        self._start_signal(0)
        self._start_beats()

    def _start_signal(self, start: int) -> None:
        """Signal state from stream index ``start`` on: made for the first chunk and again at a
        splice (a gap the pipeline could not bridge), after which the buffers, the last beat
        (asystole), the noise baseline and the normal template of before the gap mean nothing."""
        self._since = start  # where the current continuous stretch of signal began
        self._tech = TechnicalMonitor(self.fs, self.cfg)
        self._agreement = BeatAgreement(self.fs, start)  # bSQI: the two QRS detectors' agreement
        self._vf = fibrillation.VFDetector(self.fs)  # P(VF) per window, the run of VF windows
        self._morph = BeatTemplate(self.fs)  # the patient's normal beats, for wide/unlike complexes
        self._raw = np.zeros(0)
        self._filt = np.zeros(0)
        self._buf_start = start  # stream index of the buffers' first sample
        self._next_check = start + self._win
        self._last_beat_s: float | None = None
        self._undone: deque[tuple[int, int]] = deque()  # detected beats waiting for morphology
        self._prev_detected: int | None = None

    def _start_beats(self) -> None:
        """Beat state (rhythm history, last RR) for the stretch of signal begun at ``_since``.
        Made afresh at the first beat after a splice, not at the splice itself: the classes
        of beats from before it may still be on their way, and they come in beat order."""
        self._rhythm = BeatRhythm(self.cfg)
        self._prev_beat_t: float | None = None
        self._prev_rr: float | None = None
        self._prev_complex: np.ndarray | None = None
        self._beats_since = self._since

    # -- signal ----------------------------------------------------------------------

    def feed(
        self, start: int, raw: np.ndarray, filtered: np.ndarray, beats: list[tuple[int, int]], wall: float | None = None
    ) -> list[AlarmMessage]:
        """Samples ``[start, start + n)`` (stream indices; NaN = missing) and the beats
        detected in them as ``(R sample, detection sample)``."""
        return fibrillation.measured_alone(self.feed_steps(start, raw, filtered, beats, wall))

    def feed_steps(
        self, start: int, raw: np.ndarray, filtered: np.ndarray, beats: list[tuple[int, int]], wall: float | None = None
    ) -> fibrillation.WindowSteps[list[AlarmMessage]]:
        """``feed`` as steps: it yields each VF analysis window and waits for its measures
        (``fibrillation.measure``), so that a daemon can measure the windows of all its streams
        in one call; nothing else may feed this engine until the steps have ended."""
        self._last_wall = time.time() if wall is None else wall
        if not self.cfg.enabled or raw.size == 0:
            return []
        if start != self._end:
            self._start_signal(start)  # a splice, or a stream that does not start at 0
        self._end = start + raw.size
        self._raw = np.concatenate([self._raw, np.asarray(raw, dtype=np.float64)])
        self._filt = np.concatenate([self._filt, np.asarray(filtered, dtype=np.float64)])
        out: list[AlarmMessage] = []
        beats = sorted(beats, key=lambda b: b[1])
        self._agreement.feed(filtered, beats)
        for r, det in beats:
            if self._prev_detected is not None:
                self._detected[self._prev_detected] = det
            self._prev_detected = r
            self._undone.append((r, det))
            self._unclassified[r] = None
        while self._next_check <= self._end:
            e = self._next_check
            # Beats known by sample e count for asystole at e.
            while beats and beats[0][1] < e:
                r, _ = beats.pop(0)
                t_r = r / self.fs
                self._last_beat_s = t_r if self._last_beat_s is None else max(self._last_beat_s, t_r)
            out += yield from self._check_window(e)
            self._next_check += self._step
        for r, _ in beats:
            t_r = r / self.fs
            self._last_beat_s = t_r if self._last_beat_s is None else max(self._last_beat_s, t_r)
        self._keep_complexes()
        self._trim()
        return out

    def _window(self, e: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        a = max(0, e - n - self._buf_start)
        b = e - self._buf_start
        return self._raw[a:b], self._filt[a:b]

    def _check_window(self, e: int) -> fibrillation.WindowSteps[list[AlarmMessage]]:
        t = e / self.fs
        raw, filt = self._window(e, self._win)
        state = self._tech.assess(raw, filt, self._step)
        agreement = self._agreement.check(e)
        vf = vf_exempt = False
        if filt.size == self._win and np.isfinite(filt).all() and not (state.leads_off or state.signal_loss):
            measured = yield fibrillation.analysis_window(filt, self.fs)
            _, vf_exempt, vf = self._vf.decide(measured)  # VF-like by the network and its noise veto
        else:
            self._vf.skip()
        # Noise: a busy baseline (median slope), or QRS detectors of two kinds that no longer
        # agree on the beats (electrode motion makes beat-like artefacts, the slope hardly rises).
        # A VF-like window is fast and busy, as noise is: VF is not "noise: cannot analyse".
        busy = state.noise_ratio is not None and state.noise_ratio >= self.cfg.noise_ratio
        disagree = agreement is not None and agreement < NOISE_AGREEMENT
        # Where both detectors found the same beats, and beats go on, the signal is analysable
        # however busy or clipped: the fast wide complexes of V-tach raise the slope and may
        # touch the rails (SVDB 861, 869), and calling them noise would suppress the V-tach
        # alarm. The agreement looks back 10 s; beats that stop (a pause, or an artefact that
        # hides them) end the exemption.
        beating = self._last_beat_s is not None and t - self._last_beat_s < self.cfg.asystole_s / 2
        agreed = agreement is not None and agreement >= CLEAN_AGREEMENT and beating
        noisy = ((busy and not agreed) or disagree) and not vf_exempt
        why = f"{state.noise_ratio or 0:.1f}x" if busy or not disagree else f"QRS detectors agree on {agreement:.0%}"
        start = t - raw.size / self.fs
        obs = [
            Observation("leads_off", t, state.leads_off, t - 2.0, "Leads off / flat line"),
            Observation("signal_loss", t, state.signal_loss, t - STEP_S, "Signal loss: samples missing"),
            Observation("clipping", t, state.clipping, start, "Signal clipped"),
            Observation(
                "noise", t, noisy, start, f"Noise: cannot analyse ({why})",
                round(state.noise_ratio, 2) if state.noise_ratio else None,
            ),
        ]
        if state.leads_off or state.signal_loss or noisy or (state.clipping and not agreed):
            self._mark(self._technical, start, t)
        # VF holds over the detector's run of windows, which began at the first one's start;
        # the alarm waits until that run spans vfib_s (the run itself already spans at least
        # WINDOW_S, one flutter-rule window: the default vfib_s of 4 s is met at once).
        run_start = t - fibrillation.WINDOW_S - (self._vf.run_windows - 1) * STEP_S
        if vf:
            self._mark(self._fibrillation, run_start, t)
        obs.append(Observation("vfib", t, vf, run_start, "V-fib/flutter", None, self.cfg.vfib_s))
        if self._last_beat_s is not None:
            pause_from, limit = self._last_beat_s, self.cfg.asystole_s
        else:
            # No beat since the signal began (a patient connected in asystole, or a pipeline
            # started again during one): the pause is dated from the signal's start, and the
            # detector is given its learning period, within which it names no beat however
            # many there are. Flat lines and noise are suppressed as for any pause.
            pause_from, limit = self._since / self.fs, self.cfg.asystole_s + LEARN_S
        gap = t - pause_from
        obs.append(Observation("asystole", t, gap >= limit, pause_from, f"Asystole {gap:.0f} s", round(gap, 1)))
        out = self._apply(obs)
        out += self.book.tick(t, SIGNAL_KINDS)
        # Beat kinds clear on the signal clock too (no beats: nothing else would end them),
        # but never past a beat whose class is still on its way: the classifier may answer
        # seconds late (a busy batcher, a fast replay), and that beat may carry the condition on.
        out += self.book.tick(min(t - MAX_WAIT_S, self._oldest_unclassified(t)), BEAT_KINDS)
        return out

    def _oldest_unclassified(self, t: float) -> float:
        """Signal time of the oldest beat still waiting for its class (``inf`` if none)."""
        stale = round((t - UNCLASSIFIED_STALE_S) * self.fs)
        while self._unclassified:
            r = next(iter(self._unclassified))
            if r >= stale:
                return r / self.fs
            del self._unclassified[r]
        return float("inf")

    def _mark(self, spans: deque[tuple[float, float]], a: float, b: float) -> None:
        """Trouble or VF over signal times ``[a, b]``, found at ``b`` (an analysis window's end)."""
        spans.append((a, b))
        # Kept as long as a beat decision may still ask about them (its class may come up to
        # UNCLASSIFIED_STALE_S late, and asks within clear_s of its time).
        while spans[0][1] < b - UNCLASSIFIED_STALE_S - MAX_WAIT_S - self.cfg.clear_s:
            spans.popleft()

    def _near(self, spans: deque[tuple[float, float]], t: float, known_by: float) -> bool:
        """Did a span known by ``known_by`` come within ``clear_s`` of signal time ``t``?"""
        margin = self.cfg.clear_s
        return any(a - margin <= t <= b + margin and b <= known_by for a, b in spans)

    def suppressed_at(self, t: float, known_by: float | None = None) -> bool:
        """Did a technical condition hold within ``clear_s`` of signal time ``t``, as known at
        signal time ``known_by`` (default ``t``)? A beat decision is dated when the live
        pipeline knows the beat's class (``t_known``) and must see only the trouble found by
        then: trouble found later, while the class was on its way, would make the decision
        depend on how late the classifier answered (``evaluate`` hands classes back up to 10 s
        late, the daemon within a fraction of a second, and they suppressed different V-tach
        alarms; mitdb 118 under electrode motion)."""
        if not self.cfg.suppress:
            return False
        return self._near(self._technical, t, t if known_by is None else known_by)

    def superseded_at(self, t: float) -> bool:
        """Was VF found within ``clear_s`` of signal time ``t`` (as known at ``t``)? A beat
        alarm there is part of the VF alarm, not news of its own: the "beats" of fibrillation
        waves make extreme tachycardia, V-tach, A-fib and the rest, and raised alongside the
        V-fib alarm they only add alarms to silence (cudb cu07's 5 min of VF: 8 extreme
        tachycardia alarms with the shipped beat model, 27 beat alarms in all without one). As
        monitors chain arrhythmia alarms, the V-fib alarm is announced and they are published
        suppressed; one whose condition outlives the VF is announced then."""
        return self.cfg.suppress and self._near(self._fibrillation, t, t)

    def _apply(self, obs: list[Observation]) -> list[AlarmMessage]:
        out: list[AlarmMessage] = []
        for o in obs:
            physiological = KINDS[o.kind].category == "physiological"
            sup = physiological and o.present and (
                self.suppressed_at(o.t) or (o.kind in BEAT_KINDS and self.superseded_at(o.t))
            )
            out += self.book.observe(
                o.kind, o.t, o.present, onset_s=o.onset_s, text=o.text, value=o.value, hold_s=o.hold_s, suppressed=sup
            )
        return out

    def _keep_complexes(self) -> None:
        """Keep detected beats' complexes once they are in the buffer (whole and finite: one
        cut short or across a gap is not compared with anything)."""
        before, after = self._morph.span
        while self._undone and self._undone[0][0] + after <= self._end:
            r, _ = self._undone.popleft()
            i = r - self._buf_start - before
            complex_ = self._filt[i : i + before + after] if i >= 0 else None
            if complex_ is not None and np.isfinite(complex_).all():
                self._complexes[r] = complex_.copy()
        while len(self._complexes) > MAX_PENDING:
            self._complexes.pop(next(iter(self._complexes)))
        while len(self._detected) > MAX_PENDING:
            self._detected.pop(next(iter(self._detected)))

    def _trim(self) -> None:
        drop = self._raw.size - self._buf_n
        if drop > 0:
            self._raw, self._filt = self._raw[drop:], self._filt[drop:]
            self._buf_start += drop

    # -- beats -----------------------------------------------------------------------

    def beat_done(self, msg: BeatMessage) -> list[AlarmMessage]:
        """A beat whose class is known (label None without a beat model)."""
        if not self.cfg.enabled:
            return []
        complex_ = self._complexes.pop(msg.sample, None)
        current = msg.sample >= self._since  # not a late beat from before a splice
        # A late beat from before a splice is not compared with the template made after it.
        shape = self._morph.measure(complex_, self._morph.span[0]) if current and complex_ is not None else None
        morph = shape[0] if shape else None
        if current and self._beats_since != self._since:
            self._start_beats()  # the first beat after a splice
        t = msg.time_s
        nxt = self._detected.pop(msg.sample, None)
        # When the live pipeline knows the class: at the next beat's detection, or after the wait.
        t_known = min(nxt / self.fs, t + MAX_WAIT_S) if nxt is not None else t + MAX_WAIT_S
        ventricular, strong = is_ventricular(msg.label, morph, msg.probability)
        quality = self._agreement.at(msg.sample) if current else None
        rr = t - self._prev_beat_t if self._prev_beat_t is not None else None
        # The template learns from normal beats of a regular rhythm.
        regular = rr is not None and self._prev_rr is not None and abs(rr - self._prev_rr) < REGULAR_RR * self._prev_rr
        if current and shape is not None and regular and msg.label in ("N", None) and not ventricular and not self.suppressed_at(t, t_known):
            self._morph.learn(shape[1])
        # Only a ventricular beat's likeness is ever read (within a run of them, ``_noise_like``).
        likeness = None
        if ventricular and current and complex_ is not None and self._prev_complex is not None:
            likeness = self._morph.likeness(self._prev_complex, complex_)
        self._prev_beat_t, self._prev_rr = t, rr
        self._prev_complex = complex_ if current else None
        self._unclassified.pop(msg.sample, None)
        obs = self._rhythm.add(BeatInfo(t, msg.label, ventricular, strong, quality, msg.probability, likeness), t_known)
        # Beat conditions end on the beats' own clock, however late the classes came.
        return self._apply(obs) + self.book.tick(t_known - MAX_WAIT_S, BEAT_KINDS)

    # -- wall clock and people ---------------------------------------------------------

    def check_signal_loss(self, now_wall: float | None = None) -> list[AlarmMessage]:
        """Signal loss: no samples at all for ``signal_loss_s`` of wall time."""
        if not self.cfg.enabled or self._last_wall is None:
            return []
        now = time.time() if now_wall is None else now_wall
        silent = now - self._last_wall
        t = self._end / self.fs
        if silent >= self.cfg.signal_loss_s:
            self._mark(self._technical, t, t)
            return self.book.observe("signal_loss", t, True, onset_s=t, text="Signal loss: no samples", value=round(silent, 1))
        return []

    def acknowledge(self, alarm_id: str, by: str) -> AlarmMessage:
        """The acknowledged alarm; raises AlarmRefused saying why not (see AlarmBook)."""
        return self.book.acknowledge(alarm_id, by)

    def silence(self, alarm_id: str, seconds: float, by: str) -> AlarmMessage:
        """The silenced alarm; raises AlarmRefused saying why not."""
        return self.book.silence(alarm_id, seconds, by)

    def active(self) -> list[AlarmMessage]:
        return self.book.active()
