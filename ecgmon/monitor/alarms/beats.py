"""Beat-driven alarms: ventricular runs (V-tach, PVC runs, couplets, bigeminy, trigeminy),
rate alarms over a number of beats (extreme brady/tachy, user HR limits) and atrial
fibrillation from RR irregularity.

Definitions (IEC 60601-2-27 style, as in the PhysioNet/CinC 2015 alarm challenge):
V-tach is at least ``vtach_beats`` consecutive ventricular beats faster than ``vtach_bpm``;
extreme bradycardia a rate below ``brady_bpm`` over ``brady_beats`` beats; extreme
tachycardia above ``tachy_bpm`` over ``tachy_beats`` beats. Rates over a number of beats
use the median RR interval, so one missed or one extra detection cannot make or break a
rate alarm on its own.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from ecgmon.config import AlarmsConfig
from ecgmon.monitor.alarms.observation import Observation
from ecgmon.monitor.dsp.beat_template import Morphology
from ecgmon.monitor.dsp.order_stats import median

# A QRS this much wider than the patient's normal template is wide (V median 5x, normal
# 95th percentile 1.5x on MIT-BIH). A beat the model does not call V still counts as
# ventricular when it correlates this poorly with the template, or is wide and different.
WIDE_RATIO = 1.6
LOW_CORRELATION = 0.6
# A wide beat is clearly ventricular when its shape also differs from the template beyond
# what normal beats show (Morphology.difference). On MIT-BIH the normal beats of clean
# records stay below 0.4 (99th percentile 0.24-0.43 per record), ventricular beats mostly
# above (5th percentile 0.33-0.75). Width alone is not enough: on some leads (record 215)
# the measured width of normal beats flips between 60 and 170 ms as a small S wave crosses
# the width threshold, while their shape stays that of the template.
DIFFERENT = 0.4
# At least this share of a V-tach run's beats must be clearly ventricular (V to the model,
# or wide and different): a shape merely unlike the template (low correlation) fills gaps
# in a run, it does not make one. Clearly ventricular beats the model calls N (slow,
# alternating-morphology V-tach of record 223) still count.
VTACH_STRONG_SHARE = 0.5
# Where the two QRS detectors agree on less than this share of beats (bSQI, quality.py) the
# signal is doubtful: electrode motion makes runs of wide "beats" unlike the template and
# unlike each other, so the morphology cues no longer count and V-tach needs the beat model
# to call at least this share of the run ventricular (V, or F: fusion of V and N). One beat
# in ten missed by either detector is already doubtful: at 0.9, a run at the onset of
# electrode motion in 118 (bSQI 0.9) still counted its wide noise "beats" (chosen on 118/119;
# on the 15 records never used, false V-tach 11 -> 10, and no V-tach lost on MIT-BIH or SVDB).
CLEAN_AGREEMENT = 0.95
DOUBTFUL_V_SHARE = 0.8
# The model's V (or F) call is evidence for V-tach only when that class is more likely than
# all the others together. Beats it calls V at P 0.35-0.5 (its argmax among five classes)
# still count as ventricular, to fill a run, but do not make one: on MIT-BIH, by the fold
# models, such calls on the normal beats of noisy stretches of 203 made 2 of the 6 false
# V-tach alarms, and no true run needed them (see the README's alarm table).
CONFIDENT_P = 0.5
# V-tach repeats one shape at a steady rate; electrode motion and muscle noise make "beats"
# that come irregularly and look unlike each other, and so does AF with wide complexes. A
# fast run whose RR intervals vary beyond IRREGULAR_RUN (std over mean) and whose successive
# complexes correlate below UNALIKE_RUN (median) is not V-tach, unless the model is sure
# (P >= SURE_P) that every beat of it is ventricular: a double detection in a true run
# (mitdb 205 at 1462 s) makes it irregular and unalike too. Chosen on MIT-BIH (the 9 V-tach
# runs by the fold models, electrode-motion noise on 17 records): the true runs stay below
# 0.16 or correlate above 0.6, the false ones mostly do neither.
IRREGULAR_RUN = 0.2
UNALIKE_RUN = 0.5
SURE_P = 0.9
# Beats for the user HR limits (the displayed HR's span).
HR_BEATS = 9
# Atrial fibrillation: irregularity of the RR intervals not touching a ventricular beat.
# nRMSSD (RMSSD over the mean RR) above AF_NRMSSD and most successive differences large
# (pNN50-style share above AF_SHARE): sinus rhythm, even with sinus arrhythmia, changes
# RR smoothly; AF's RR intervals are random from beat to beat.
AF_NRMSSD = 0.10
AF_SHARE = 0.6
AF_DIFF_S = 0.05


@dataclass(frozen=True, slots=True)
class BeatInfo:
    """One classified beat as the alarm logic sees it."""

    t: float  # signal time of the R peak
    label: str | None
    ventricular: bool
    strong: bool = False  # confidently V to the model, or wide and unlike the template (not merely a different shape)
    quality: float | None = None  # bSQI of the signal up to the beat (None: not known yet)
    probability: float | None = None  # the model's probability of ``label`` (None: not given)
    likeness: float | None = None  # correlation of its complex with the previous beat's (None: not known)


def model_calls(label: str | None, probability: float | None, classes: tuple[str, ...]) -> bool:
    """Whether the model calls the beat one of ``classes`` with more than CONFIDENT_P."""
    return label in classes and (probability is None or probability > CONFIDENT_P)


def is_ventricular(
    label: str | None, morph: Morphology | None, probability: float | None = None
) -> tuple[bool, bool]:
    """(ventricular, strong): V to the model or unlike the template; confidently V to the
    model, or wide and unlike the template."""
    called = model_calls(label, probability, ("V",))
    if morph is None or morph.width_ratio is None:
        return label == "V", called
    wide = morph.width_ratio > WIDE_RATIO
    odd = morph.correlation is not None and morph.correlation < LOW_CORRELATION
    different = morph.difference is not None and morph.difference > DIFFERENT
    strong = called or (wide and different)
    return label == "V" or strong or odd, strong


class BeatRhythm:
    """Per-stream beat history and the observations each new beat makes."""

    def __init__(self, config: AlarmsConfig) -> None:
        self.cfg = config
        keep = max(config.tachy_beats, config.brady_beats, config.afib_beats + 2, 3 * config.trigeminy_cycles, HR_BEATS) + 1
        self._beats: deque[BeatInfo] = deque(maxlen=keep)
        self._run: list[BeatInfo] = []  # current run of consecutive ventricular beats
        self._run_was_vtach = False

    def add(self, beat: BeatInfo, t_known: float) -> list[Observation]:
        """Observations at ``t_known`` (when the beat's class became known)."""
        self._beats.append(beat)
        out: list[Observation] = []
        out += self._runs(beat, t_known)
        out += self._patterns(t_known)
        out += self._rates(t_known)
        out += self._afib(t_known)
        return out

    # -- ventricular runs ----------------------------------------------------------------

    def _runs(self, beat: BeatInfo, t: float) -> list[Observation]:
        """V-tach while a qualifying run goes on; couplets and PVC runs once a run has ended."""
        cfg = self.cfg
        if not beat.ventricular:
            ended, was_vtach = self._run, self._run_was_vtach
            self._run, self._run_was_vtach = [], False
            out = [Observation("vtach", t, False)]
            if len(ended) == 2:
                out.append(Observation("couplet", t, True, ended[0].t, "Couplet", 2.0))
            elif len(ended) >= 3 and not was_vtach:
                rate = _rate(ended)
                out.append(Observation("pvc_run", t, True, ended[0].t, f"PVC run {len(ended)} beats, {rate:.0f} bpm", float(len(ended))))
            return out
        self._run.append(beat)
        run = self._run
        n = len(run)
        rate = _rate(run)
        if n >= cfg.vtach_beats and rate > cfg.vtach_bpm and _ventricular_enough(run) and not _noise_like(run):
            self._run_was_vtach = True
            return [Observation("vtach", t, True, run[0].t, f"V-tach {rate:.0f} bpm, {n} beats", round(rate, 1))]
        return []

    def _patterns(self, t: float) -> list[Observation]:
        """Bigeminy (N V repeated) and trigeminy (N N V repeated), ending with the latest beat."""
        v = [b.ventricular for b in self._beats]
        out = []
        for kind, unit, cycles in (
            ("bigeminy", [False, True], self.cfg.bigeminy_cycles),
            ("trigeminy", [False, False, True], self.cfg.trigeminy_cycles),
        ):
            need = unit * cycles
            # No condition on the beat before the window: in an ongoing pattern it is the
            # previous cycle's V, and the alarm must go on seeing the pattern to stay raised.
            if len(v) >= len(need) and v[-len(need):] == need:
                first = self._beats[-len(need)].t
                out.append(Observation(kind, t, True, first, f"{kind.capitalize()}, {cycles} cycles", float(cycles)))
        return out

    # -- rates ---------------------------------------------------------------------------

    def _median_rate(self, beats: int) -> tuple[float, float] | None:
        """(bpm from the median RR of the last ``beats`` beats, time of the first of them)."""
        if len(self._beats) < beats:
            return None
        t = np.fromiter((b.t for b in list(self._beats)[-beats:]), float)
        return 60.0 / median(np.diff(t)), float(t[0])

    def _rates(self, t: float) -> list[Observation]:
        cfg = self.cfg
        out = []
        # The user limits share one span (HR_BEATS), and brady/tachy may share theirs:
        # one median per span and beat.
        rates: dict[int, tuple[float, float] | None] = {}
        for kind, beats, test, title in (
            ("brady", cfg.brady_beats, lambda r: r < cfg.brady_bpm, "Extreme brady"),
            ("tachy", cfg.tachy_beats, lambda r: r > cfg.tachy_bpm, "Extreme tachy"),
            ("hr_low", HR_BEATS, lambda r: r < cfg.hr_low_bpm, "HR low"),
            ("hr_high", HR_BEATS, lambda r: r > cfg.hr_high_bpm, "HR high"),
        ):
            if beats not in rates:
                rates[beats] = self._median_rate(beats)
            got = rates[beats]
            if got is None:
                continue
            rate, first = got
            hold = cfg.hr_limit_s if kind in ("hr_low", "hr_high") else 0.0
            out.append(Observation(kind, t, test(rate), first, f"{title} {rate:.0f} bpm", round(rate, 1), hold))
        return out

    def _afib(self, t: float) -> list[Observation]:
        cfg = self.cfg
        need = cfg.afib_beats
        if len(self._beats) < need + 1:
            return []
        beats = list(self._beats)[-(need + 1):]
        tt = np.fromiter((b.t for b in beats), float)
        v = np.fromiter((b.ventricular for b in beats), bool)
        rr = np.diff(tt)
        clean = ~(v[1:] | v[:-1])  # intervals that do not touch a ventricular beat
        # Successive differences only between two clean, adjacent intervals.
        pair = clean[1:] & clean[:-1]
        if pair.sum() < need // 2:
            return [Observation("afib", t, False)]
        d = np.abs(np.diff(rr))[pair]
        mean_rr = rr[clean].mean()
        nrmssd = float(np.sqrt(np.mean(d**2)) / mean_rr)
        share = float(np.mean(d > AF_DIFF_S))
        present = nrmssd > AF_NRMSSD and share > AF_SHARE
        return [Observation("afib", t, present, float(tt[0]), f"A-fib, irregular RR ({nrmssd:.2f})", round(nrmssd, 3), cfg.afib_hold_s)]


def _ventricular_enough(run: list[BeatInfo]) -> bool:
    """Whether a fast run is V-tach: clearly ventricular beats enough, by the model's word
    alone where the signal is doubtful."""
    quality = min((b.quality for b in run if b.quality is not None), default=None)
    if quality is not None and quality < CLEAN_AGREEMENT:
        return sum(model_calls(b.label, b.probability, ("V", "F")) for b in run) / len(run) >= DOUBTFUL_V_SHARE
    return sum(b.strong for b in run) / len(run) >= VTACH_STRONG_SHARE


def _noise_like(run: list[BeatInfo]) -> bool:
    """Whether a fast run is irregular and its beats unlike each other, with beats the model
    is not sure of: noise or a wide-complex irregular rhythm rather than V-tach."""
    if all(b.label in ("V", "F") and b.probability is not None and b.probability >= SURE_P for b in run):
        return False
    likes = [b.likeness for b in run[1:] if b.likeness is not None]
    if not likes:
        return False
    rr = np.diff(np.fromiter((b.t for b in run), float))
    return float(rr.std() / rr.mean()) > IRREGULAR_RUN and median(np.asarray(likes)) < UNALIKE_RUN


def _rate(run: list[BeatInfo]) -> float:
    """Mean rate over a run of beats, bpm."""
    span = run[-1].t - run[0].t
    return 60.0 * (len(run) - 1) / span if span > 0 else 0.0
