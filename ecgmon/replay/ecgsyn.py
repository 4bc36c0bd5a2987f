"""Built-in ECG simulator after ECGSYN (McSharry et al. 2003), made streaming: an endless
single-lead ECG in millivolts with known R peaks, so the daemon runs without any download."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
import math

import numpy as np
from scipy import signal

from ecgmon.config import SimulatorConfig

R_PEAK_MV = 1.2
"""Height of a normal beat's R wave above the P-Q level, at the mean rate."""

BASELINE_WANDER_MV = 0.07
COUPLING = (0.60, 0.70)
"""A PVC comes this fraction of the sinus cycle after the preceding beat."""

_SUPPORT_SIGMAS = 5.0  # exp(-12.5) ≈ 4e-6 of a wave's height is cut off at the edges


@dataclass(frozen=True, slots=True)
class _Template:
    """One beat kind's events: angles (rad, relative to the R peak), heights (mV at the mean
    rate), widths (rad); already scaled for the mean heart rate."""

    theta: np.ndarray
    height: np.ndarray
    b: np.ndarray
    lo: float  # support in phase, relative to the R peak
    hi: float
    r_b: float  # width of the tallest event, the R wave


def _template(theta_deg, a, b, theta_exp, hr: float) -> _Template:
    hrfact = math.sqrt(hr / 60.0)
    theta = np.radians(np.asarray(theta_deg, float)) * hrfact ** np.asarray(theta_exp, float)
    b = np.asarray(b, float) * hrfact
    a = np.asarray(a, float)
    # The z-equation integrates to a_i b_i² / ω per event; heights are expressed relative
    # to the normal R wave so that the output is in millivolts.
    height = a * b**2 / (_NORMAL_A[2] * (_NORMAL_B[2] * hrfact) ** 2) * R_PEAK_MV
    # Put the sum's true maximum, not the R event's centre, at the beat time, so that
    # the reported R peaks are exact even where the Q and S waves lean on the R wave.
    grid = np.linspace(-0.3, 0.3, 60001)
    d = grid[None, :] - theta[:, None]
    shape = (height[:, None] * np.exp(-(d * d) / (2 * b[:, None] ** 2))).sum(0)
    theta = theta - grid[int(np.argmax(shape))]
    lo = float(np.min(theta - _SUPPORT_SIGMAS * b))
    hi = float(np.max(theta + _SUPPORT_SIGMAS * b))
    return _Template(theta, height, b, lo, hi, float(b[int(np.argmax(height))]))


# ECGSYN's P, Q, R, S, T: angle (degrees), a_i, b_i (radians), and the exponent of
# sqrt(hr/60) by which the reference implementation scales each angle.
_NORMAL_THETA = (-70.0, -15.0, 0.0, 15.0, 100.0)
_NORMAL_A = (1.2, -5.0, 30.0, -7.5, 0.75)
_NORMAL_B = (0.25, 0.1, 0.1, 0.1, 0.4)
_NORMAL_EXP = (0.5, 1.0, 0.0, 1.0, 0.5)

# A premature ventricular beat in the same terms: no P wave, an R wave 2.5 times as wide
# and about 1.6 times as tall, a broad S, and a large T wave of opposite polarity.
_PVC_THETA = (0.0, 28.0, 105.0)
_PVC_A = (7.7, -2.25, -0.42)
_PVC_B = (0.25, 0.2, 0.45)
_PVC_EXP = (0.0, 1.0, 0.5)


@dataclass(frozen=True, slots=True)
class _Beat:
    t: float  # centre of the beat's waves, s
    r: float  # R-peak time, s
    kind: str  # 'N' or 'V'
    omega: float  # angular velocity of the sinus cycle the beat belongs to, rad/s
    start: float  # support in seconds
    end: float


class ECGSynth:
    """An endless ECGSYN-style ECG: each ``generate(n)`` continues where the last ended.

    ``r_peaks`` holds the absolute sample index of every R peak generated so far and
    ``kinds`` its beat kind ('N' normal, 'V' premature ventricular), oldest first, up to
    ``history`` beats (a day at 70 bpm is about 100 000). Two synths with the same
    ``config.seed`` produce identical output however the calls are split.

    The model. ECGSYN moves a point round the unit circle with angular velocity ``ω = 2π/RR``;
    its height ``z`` obeys ``dz/dt = -Σ a_i Δθ_i exp(-Δθ_i² / 2b_i²) - (z - z0)`` with P, Q, R,
    S, T events at angles ``θ_i``. Within one beat the phase advances linearly, so the forcing
    is the time derivative of ``u = Σ (a_i b_i² / ω) exp(-Δθ_i² / 2b_i²)``; ``z`` is therefore
    ``u`` passed through the first-order high-pass ``s / (s + 1)`` that the damping term makes
    (plus ``z0``). That is what is computed here: per beat, a sum of Gaussians in phase
    evaluated on the beat's samples with numpy, then one stateful IIR filter over the block — no
    per-sample Python loop, and the output does not depend on how the stream is cut into
    ``generate`` calls.

    Rate dependence follows the ECGSYN reference implementation: ``b_i`` scale with
    ``sqrt(hr/60)``; ``θ_i`` of Q and S with ``sqrt(hr/60)``, of P and T with ``(hr/60)^¼``, R
    stays at 0 (scaling T by the square root too would push it past 180° above about 190 bpm,
    into the next beat). The RR process is an AR(1) process plus respiratory sinus arrhythmia,
    mean ``60/heart_rate_bpm``, standard deviation matching ``hr_std_bpm``. Premature
    ventricular beats (fraction ``ectopic_fraction`` of all beats) come at 0.60–0.70 of the
    sinus cycle, have no P wave, a wide tall QRS and a discordant T wave, and are followed by a
    full compensatory pause (the sinus node keeps its rhythm; the discharge the PVC pre-empted
    is not conducted). Baseline wander at the respiration rate (ECGSYN's ``z0``, added at the
    output so that its amplitude is the one set here) and white Gaussian noise come last.
    """

    def __init__(self, config: SimulatorConfig, history: int | None = 100_000) -> None:
        self.config = config
        self.fs = float(config.fs)
        hr = float(config.heart_rate_bpm)
        self._rr_mean = 60.0 / hr
        # hr_std is given in bpm; dHR = 60 dRR / RR², so sd(RR) ≈ 60 sd(HR) / HR².
        self._rr_sd = 60.0 * float(config.hr_std_bpm) / hr**2
        self._rr_lo, self._rr_hi = 0.5 * self._rr_mean, 1.5 * self._rr_mean
        self._omega_mean = 2 * math.pi / self._rr_mean
        p = float(config.ectopic_fraction)
        # A PVC can follow only a normal beat; deciding with probability q after each normal
        # beat makes the PVCs' share of all beats q / (1 + q) = p.
        self._p_pvc = p / (1.0 - p)

        self._templates = {
            "N": _template(_NORMAL_THETA, _NORMAL_A, _NORMAL_B, _NORMAL_EXP, hr),
            "V": _template(_PVC_THETA, _PVC_A, _PVC_B, _PVC_EXP, hr),
        }
        lo = min(t.lo for t in self._templates.values())
        # How far before its R peak the earliest possible beat can reach.
        self._reach_back = -lo * self._rr_hi / (2 * math.pi)

        # Beat timing and noise use separate generators so that the random sequence of the
        # beats does not depend on how many noise samples were drawn in between.
        seq = np.random.SeedSequence(config.seed)
        beat_seed, noise_seed = seq.spawn(2)
        self._rng = np.random.default_rng(beat_seed)
        self._noise_rng = np.random.default_rng(noise_seed)

        self._resp_hz = float(self._rng.uniform(0.2, 0.3))
        self._resp_phase = float(self._rng.uniform(0, 2 * math.pi))
        self._ar = float(self._rng.standard_normal())
        self._sinus_rr = self._next_rr(0.0)
        self._sinus_t = float(self._rng.uniform(0.25, 0.75)) * self._sinus_rr
        self._last_t = self._sinus_t - self._sinus_rr
        self._last_kind = "N"

        self._pending: deque[_Beat] = deque()  # scheduled beats still able to contribute
        self._unrecorded: deque[_Beat] = deque()  # scheduled beats whose R peak is not out yet
        self.r_peaks: deque[int] = deque(maxlen=history)
        self.kinds: deque[str] = deque(maxlen=history)
        self._pos = 0

        # ECGSYN's damping term -(z - z0) with unit rate: z = u + v, dv/dt = -u - v, the
        # exact discretisation for input held over a sample.
        decay = math.exp(-1.0 / self.fs)
        self._lp_b = np.array([1.0 - decay])
        self._lp_a = np.array([1.0, -decay])
        normal = self._templates["N"]
        # Start v at its mean steady state (minus the mean of u over a cycle) so that the
        # stream does not open with a one-second drift.
        mean_u = float(np.sum(normal.height * normal.b)) / math.sqrt(2 * math.pi)
        self._lp_zi = np.array([-mean_u * decay])

    @property
    def position(self) -> int:
        """Samples generated so far; the next ``generate`` starts at this index."""
        return self._pos

    # -- the RR process and the beat schedule -----------------------------------------

    def _next_rr(self, t: float) -> float:
        phi = 0.6
        self._ar = phi * self._ar + math.sqrt(1 - phi * phi) * float(self._rng.standard_normal())
        # Half of the variance is respiratory sinus arrhythmia, locked to the same breathing
        # as the baseline wander; half a random drift over a few beats.
        rsa = -math.sqrt(2.0) * math.sin(2 * math.pi * self._resp_hz * t + self._resp_phase)
        rr = self._rr_mean + self._rr_sd * math.sqrt(0.5) * (self._ar + rsa)
        return min(max(rr, self._rr_lo), self._rr_hi)

    def _schedule_next(self) -> None:
        if self._last_kind == "N" and self._rng.random() < self._p_pvc:
            coupling = float(self._rng.uniform(*COUPLING))
            t = self._last_t + coupling * (self._sinus_t - self._last_t)
            kind = "V"
            # The sinus discharge at _sinus_t then finds the ventricles refractory: it is
            # not conducted, and the next conducted one comes a full sinus cycle later.
        else:
            t = self._sinus_t
            kind = "N"
        # A beat's waves keep the sinus cycle's pace, so a PVC or the beat after the
        # pause is not stretched or squeezed by its own RR.
        omega = 2 * math.pi / self._sinus_rr
        self._sinus_rr = self._next_rr(self._sinus_t)
        self._sinus_t += self._sinus_rr
        tpl = self._templates[kind]
        # The damping term tilts the R wave by -u(t) per second; that moves its maximum
        # earlier by about sigma² (sigma the R wave's width in seconds): 1.6 ms for a PVC
        # at 60 bpm, which is already two samples at 1 kHz.
        r = t - (tpl.r_b / omega) ** 2
        beat = _Beat(t, r, kind, omega, t + tpl.lo / omega, t + tpl.hi / omega)
        self._pending.append(beat)
        self._unrecorded.append(beat)
        self._last_t, self._last_kind = t, kind

    # -- samples ----------------------------------------------------------------------

    def generate(self, n: int) -> np.ndarray:
        """The next ``n`` samples (float32 mV, 1-D); records their R peaks in ``r_peaks``."""
        if n < 0:
            raise ValueError("n must be >= 0")
        s0, s1 = self._pos, self._pos + n
        if n == 0:
            return np.zeros(0, np.float32)
        t_last = (s1 - 1) / self.fs
        while self._last_t - self._reach_back <= t_last:
            self._schedule_next()

        idx = np.arange(s0, s1)
        t = idx / self.fs
        u = np.zeros(n)
        for beat in self._pending:
            i0 = max(s0, math.ceil(beat.start * self.fs))
            i1 = min(s1, math.floor(beat.end * self.fs) + 1)
            if i1 <= i0:
                continue
            tpl = self._templates[beat.kind]
            phase = (t[i0 - s0 : i1 - s0] - beat.t) * beat.omega
            d = phase[None, :] - tpl.theta[:, None]
            height = tpl.height * (self._omega_mean / beat.omega)
            waves = height[:, None] * np.exp(-(d * d) / (2 * tpl.b[:, None] ** 2))
            u[i0 - s0 : i1 - s0] += waves.sum(0)

        v, self._lp_zi = signal.lfilter(self._lp_b, self._lp_a, -u, zi=self._lp_zi)
        wander = BASELINE_WANDER_MV * np.sin(2 * math.pi * self._resp_hz * t + self._resp_phase)
        z = u + v + wander
        if self.config.noise_mv > 0:
            z += self.config.noise_mv * self._noise_rng.standard_normal(n)

        while self._unrecorded and round(self._unrecorded[0].r * self.fs) < s1:
            beat = self._unrecorded.popleft()
            self.r_peaks.append(int(round(beat.r * self.fs)))
            self.kinds.append(beat.kind)
        next_t = s1 / self.fs
        # A beat is dropped once its waves are over and its R peak has been recorded.
        while self._pending:
            first = self._pending[0]
            if first.end >= next_t or round(first.r * self.fs) >= s1:
                break
            self._pending.popleft()
        self._pos = s1
        return z.astype(np.float32)
