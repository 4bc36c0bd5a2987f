"""Heart-sound verdicts from the segmented cardiac cycle, leave one database out (issue 14,
attempts I, I-f (--family-mean) and pcg9's --choose-method of docs/pcg-attempts.md). It writes
the rule the daemon's default verdict reads (--write-rule; ecgmon/monitor/dsp/pcg_cycles.py).

1. Every pcg2016 recording is segmented (ecgmon/monitor/dsp/pcg_segment.py) with the round-0
   envelope emission; for each database, a round-1 emission (multinomial logistic regression
   over the envelopes) is fitted on the OTHER three databases' round-0 state sequences (no hand
   segmentation exists here and no class label is read), and the database is segmented again
   with it.
2. Each recording gets pcg_segment's 116 features (ratios between states of one recording in one
   band: a stethoscope's gain and linear frequency response cancel), each standardised per
   database on that database's own unlabelled recordings (median/IQR), as a device calibration
   from >= 20 recordings would.
3. Score (attempt I): the features whose within-database ROC AUC lies above 0.5 + DELTA in every
   training database, or below 0.5 - DELTA in every one, are kept with that sign; the score is
   the mean of the kept signed features - no fitted weight, so nothing can learn one database's
   stethoscope. ('lr': balanced logistic regression on the kept features, for comparison.)
4. The score is calibrated on the held-out database's own recordings ((s - median) / IQR); the
   z-threshold is the one with the best mean MAcc over the inner databases (leave one training
   database out, the same rule refitted on the other two), ties nearest 0; the margin (abstain
   within it) the widest that keeps >= 80 % coverage on every inner database; the feature pool
   (32 per-state, 84 cells, both) chosen per outer fold by that inner mean MAcc. Nothing is
   chosen on the held-out database.

Prevalence-robust calibration (pcg7, offline; ``--calibration``, default ``median`` as above):
the databases' abnormal share differs (a 71 %, b 21 %, d 51 %, e 9 %), so a device median sits
in the abnormal population of a and among the normal ones of e. ``mixture``: a two-Gaussian
EM on the device's z (after the median calibration), the threshold's origin moved to where the
two components' densities are equal (equal priors); ``sld``: Saerens, Latinne & Decaestecker
(2002): class-conditional Gaussians of the score fitted on the training databases (each
standardised with label-balanced weights), EM on the held-out device's prior, the device's
features and score re-standardised with posterior-balanced weights, five rounds, origin at the
equal-prior boundary. ``--zero-threshold``: z-threshold fixed at 0 (only the margin chosen on
the inner databases). Every recording of the held-out database is still unlabelled to all of
them; the estimated abnormal share is printed next to the true one (never used). Result
(docs/pcg-attempts.md, pcg7): the shares are not recovered (the score is one skewed hump), and
no variant reaches 0.70; ``--zero-threshold`` alone gives 0.654 against I's 0.635.

Extra cycle features (pcg8, offline; ``--extra-features``): 72 more ratios within one recording
(:data:`EXTRA_NAMES`), from the same segmentation (each database re-segmented with its fold's
round-1 emission from the cache, the X columns checked against it): consistency from cycle to
cycle (mid-systole and mid-diastole energy over the mean of S1 and S2 per band, its 25th
percentile and SD over cycles, the share of cycles with mid-systole above S - 10 dB, the
leave-one-out correlation of each cycle's time-normalised systolic/diastolic log envelope with
the other cycles' mean), per-state spectral shape relative to S1/S2 (centroid, flatness, entropy
of systole and diastole minus those of S1, S2), and the per-state skewness/kurtosis of Liu et al.
(2016)'s baseline features; the pools ``extra`` (the 72) and ``all`` (116 + 72) join I's three.
Prints each extra feature's AUC in every database first. Result (docs/pcg-attempts.md, pcg8):
held-out mean MAcc 0.645 with the pool chosen on the inner databases (I 0.635 on the same run);
with a pool fixed, extra 0.673 and all 0.677 (AUC 0.706 / 0.728; I's best, cells84, 0.664 /
0.719); not issue 14's 0.70. The extra columns are computed once (about 6 minutes) into --cache.
``--family-mean`` (pcg8, P8f): no pool chosen; the score is the mean over the feature families
(state32, cells84, and with --extra-features the three extra ones) of each family's signed mean
of its kept features. I's 116 alone: 0.692 held out (threshold at 0: 0.690), above I at every
--delta (0.01-0.05); with the extra families 0.625.

``--choose-method`` (pcg9): the scoring method itself chosen per outer fold on the inner
databases, from :data:`METHODS` declared up front: {I's pool choice, the families' mean} x
{z-threshold chosen, 0} x delta {0.01, 0.02, 0.03}. Each candidate is judged as a whole
procedure: each inner database left out in turn, the candidate learnt on the other two (its
pool, threshold and margin chosen leaving each of those out, a rule fitted on one database) and
scored on it with its threshold and margin; the highest mean of those MAcc wins among the
candidates with Sp >= 0.5 and coverage >= 0.7 on every inner database (among all if none has).
Then the chosen method is learnt on the three and scored on the held-out database. Prints the
inner table, the held-out rows and each candidate fixed (looks), and what the protocol picks on
all four. Result (docs/pcg-attempts.md, pcg9): held-out mean MAcc 0.642 (every fold picks
delta 0.01); the 0.692 of P8f does not survive the nested choice. About 50 s from --cache.

Prints the markdown rows of docs/pcg-attempts.md (Se, Sp, MAcc on the recordings given a
verdict; AUC over every recording; coverage), then the rule refitted on all four databases.

Rule files for the daemon (monitor/dsp/pcg_cycles.py, ``[models] pcg_cycles``):
``--fold-rule HELD_OUT JSON`` writes the rule of the outer fold without HELD_OUT (its emission
fitted on the other three databases), ``--write-rule JSON`` the rule refitted on all four: a
round-1 emission fitted on every database's round-0 states (one more pass over the audio, kept
in the cache), the features of every recording segmented with it, pool, kept features,
z-threshold and margin chosen as for one outer fold with all four databases as the inner ones.
Both record the command and the held-out figures of the outer folds (this table's I rows).

    ECGMON_DATA=../shared/data OMP_NUM_THREADS=1 nice -n 10 python bench/pcg_cycles.py [--cache F.npz]

About 25 minutes on the shared 2-core machine (two segmentation passes over 18.7 h of audio);
--cache keeps the features for another run (--delta) in seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from ecgmon.models.pcg_data import database_folders, load_pcg
from ecgmon.monitor.dsp import pcg_segment as P
from ecgmon.monitor.dsp.pcg_cycles import RULE_FORMAT, SPAN_S, UPDATE_S
from ecgmon.scores import auc

COVER = 0.8
POOLS = {"state32": list(range(P.STATE_FEATURES)), "cells84": list(range(P.STATE_FEATURES, len(P.FEATURE_NAMES))),
         "both": list(range(len(P.FEATURE_NAMES)))}
# feature families for --family-mean (the extra ones join with --extra-features)
FAMILIES = {"state32": POOLS["state32"], "cells84": POOLS["cells84"]}


def fit_emission(F: np.ndarray, s: np.ndarray, iters: int = 300, lr: float = 0.5, l2: float = 1e-3) -> P.Emission:
    """Multinomial logistic regression [F, F**2, 1] -> state, every state weighted equally
    (log_emission divides by a flat prior), full-batch gradient descent."""
    A = np.c_[F, F ** 2, np.ones(len(F))]
    Y = np.eye(4)[s]
    W = np.zeros((A.shape[1], 4))
    sw = (1 / Y.mean(0))[s]
    sw /= sw.mean()
    for _ in range(iters):
        z = A @ W
        z -= z.max(1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(1, keepdims=True)
        W -= lr * (A.T @ ((p - Y) * sw[:, None]) / len(A) + l2 * W)
    return P.Emission(W)


def round0(data, log) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Every recording's envelopes and round-0 states, every 4th 50 Hz sample."""
    frames, states = [], []
    t0 = time.time()
    for i in range(len(data)):
        _, F, seg = P.segment(data.audio(i))
        n = min(len(F), len(seg.states))
        j = np.arange(0, n, 4)
        frames.append(F[j].astype(np.float32).astype(np.float64))
        states.append(seg.states[j].astype(int))
        if i % 500 == 0:
            log(f"round 0: {i}/{len(data)} ({time.time() - t0:.0f} s)")
    return frames, states


def all_four(data, log) -> tuple[np.ndarray, np.ndarray]:
    """(features of every recording, emission weights) with the emission fitted on every
    database's round-0 states: what the shipped rule segments with."""
    frames, states = round0(data, log)
    F, s = np.concatenate(frames), np.concatenate(states)
    pick = np.random.default_rng(0).choice(len(F), size=min(len(F), 300000), replace=False)
    emission = fit_emission(F[pick], s[pick])
    log("emission fitted on all four databases' round-0 states")
    X = np.full((len(data), len(P.FEATURE_NAMES)), np.nan)
    t0 = time.time()
    for i in range(len(data)):
        X[i], _ = P.recording_features(data.audio(i), emission)
        if i % 500 == 0:
            log(f"round 1 (all four): {i}/{len(data)} ({time.time() - t0:.0f} s)")
    return X, emission.weights


def features(data, log) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    dbs = data.databases
    names = sorted(set(dbs.tolist()))
    frames, states = round0(data, log)
    rng = np.random.default_rng(0)
    emission = {}
    for held in names:
        k = np.flatnonzero(dbs != held)
        F = np.concatenate([frames[i] for i in k])
        s = np.concatenate([states[i] for i in k])
        pick = rng.choice(len(F), size=min(len(F), 300000), replace=False)
        emission[held] = fit_emission(F[pick], s[pick])
        log(f"emission for {held} fitted on the other databases' round-0 states")
    X = np.full((len(data), len(P.FEATURE_NAMES)), np.nan)
    t0 = time.time()
    for i in range(len(data)):
        X[i], _ = P.recording_features(data.audio(i), emission[dbs[i]])
        if i % 500 == 0:
            log(f"round 1: {i}/{len(data)} ({time.time() - t0:.0f} s)")
    return X, {db: e.weights for db, e in emission.items()}


_EXTRA_BANDS = [f"{lo}-{hi}" for lo, hi in P.STATE_BANDS] + ["broad"]
_PAIRS = ((P.SYSTOLE, P.S1), (P.SYSTOLE, P.S2), (P.DIASTOLE, P.S1), (P.DIASTOLE, P.S2), (P.SYSTOLE, P.DIASTOLE))
EXTRA_NAMES: tuple[str, ...] = tuple(
    [f"{m} {b}" for m in ("midsys/S", "q25 midsys/S", "middia/S", "sys corr", "dia corr", "share sys>S-10dB",
                          "SD midsys/S") for b in _EXTRA_BANDS]
    + [f"{m} {'sys' if i == P.SYSTOLE else 'dia'}-{('S1', 'sys', 'S2', 'dia')[j]}"
       for m in ("centroid", "flatness", "entropy") for i, j in _PAIRS]
    + [f"{m} {st}" for m in ("skew", "kurt") for st in ("S1", "sys", "S2", "dia")])
EXTRA_FAMILIES = {"consistency": list(range(0, 49)), "spectral": list(range(49, 64)), "liu": list(range(64, 72))}
_NB = 6  # time-normalised bins of systole and diastole


def _loo_corr(V: np.ndarray) -> float:
    """Median over cycles of the correlation between a cycle's shape (V [cycles, bins], each
    row's mean removed) and the mean shape of the other cycles."""
    V = V - V.mean(1, keepdims=True)
    S = V.sum(0)
    out = []
    for c in range(len(V)):
        t = (S - V[c]) / (len(V) - 1)
        t = t - t.mean()
        den = np.sqrt((V[c] ** 2).sum() * (t ** 2).sum())
        out.append((V[c] * t).sum() / den if den > 0 else 0.0)
    return float(np.median(out))


def extra_features(audio: np.ndarray, y: np.ndarray, seg: P.Segmentation) -> np.ndarray:
    """EXTRA_NAMES' 72 values of one recording (NaN below MIN_CYCLES complete cycles): ``y`` the
    band-limited audio and ``seg`` the segmentation of :func:`pcg_segment.segment`."""
    from scipy import signal

    out = np.full(len(EXTRA_NAMES), np.nan)
    cyc = seg.cycles()
    if len(cyc) < P.MIN_CYCLES:
        return out
    power = np.stack([signal.sosfiltfilt(s, y) ** 2 for s in P._SOS_BANDS] + [y ** 2])
    C = np.concatenate([np.zeros((power.shape[0], 1)), np.cumsum(power, 1)], 1)

    def mean(a, b):
        return (C[:, b] - C[:, a]) / max(b - a, 1)

    S, SYS, DIA, moments = [], [], [], []
    for c in cyc:
        a, s, b, d, e = (v * P._DEC for v in c)
        S.append(0.5 * (mean(a, s) + mean(b, d)))
        sb = np.linspace(s, b, _NB + 1).round().astype(int)
        db = np.linspace(d, e, _NB + 1).round().astype(int)
        SYS.append(np.stack([mean(sb[i], sb[i + 1]) for i in range(_NB)], 1))
        DIA.append(np.stack([mean(db[i], db[i + 1]) for i in range(_NB)], 1))
        row = []
        for lo, hi in ((a, s), (s, b), (b, d), (d, e)):
            x = y[lo:hi] - y[lo:hi].mean()
            v = (x ** 2).mean() + 1e-20
            row.append([(x ** 3).mean() / v ** 1.5, (x ** 4).mean() / v ** 2])
        moments.append(row)
    S, SYS, DIA, moments = np.array(S), np.array(SYS), np.array(DIA), np.array(moments)
    LS = np.log(S + 1e-14)
    mid = np.log(SYS[:, :, 2:4].mean(2) + 1e-14) - LS  # [cycles, 7 bands]
    midd = np.log(DIA[:, :, 2:4].mean(2) + 1e-14) - LS
    out[0:7] = np.median(mid, 0)
    out[7:14] = np.percentile(mid, 25, 0)
    out[14:21] = np.median(midd, 0)
    out[21:28] = [_loo_corr(np.log(SYS[:, k] + 1e-14)) for k in range(7)]
    out[28:35] = [_loo_corr(np.log(DIA[:, k] + 1e-14)) for k in range(7)]
    out[35:42] = (mid > np.log(0.1)).mean(0)
    out[42:49] = mid.std(0)
    # per-state spectra (the STFT of cell_features), pooled over the complete cycles' frames
    x = signal.sosfiltfilt(P._SOS_HP25, audio.astype(np.float64))
    f, _, spec = signal.stft(x, fs=P.FS, nperseg=160, noverlap=120, boundary=None, padded=False)
    band = (f >= 25) & (f <= 800)
    Pw, fb = np.abs(spec[band]) ** 2, f[band]
    T = len(seg.states)
    centre = np.arange(Pw.shape[1]) + 2  # STFT frame k is centred on 50 Hz sample k + 2
    inside = np.zeros(T, bool)
    for c in cyc:
        inside[c[0]:c[4]] = True
    lab = np.full(Pw.shape[1], -1)
    ok = centre < T
    lab[ok] = np.where(inside[centre[ok]], seg.states[centre[ok]], -1)
    shape = {}
    for st in range(4):
        k = lab == st
        if k.sum() < 2:
            return out
        p = Pw[:, k].mean(1) + 1e-20
        q = p / p.sum()
        shape[st] = (np.sum(q * np.log2(fb)), np.log(np.exp(np.mean(np.log(p))) / p.mean()),
                     -np.sum(q * np.log(q)) / np.log(len(q)))
    out[49:64] = [shape[i][m] - shape[j][m] for m in range(3) for i, j in _PAIRS]
    out[64:72] = np.r_[np.median(moments[:, :, 0], 0), np.median(moments[:, :, 1], 0)]
    return out


def extra_matrix(data, emission: dict[str, np.ndarray], X: np.ndarray, log) -> np.ndarray:
    """EXTRA_NAMES of every recording, each database segmented again with its fold's round-1
    emission (as :func:`features`); the per-state features are checked against X on the way."""
    out = np.full((len(data), len(EXTRA_NAMES)), np.nan)
    t0 = time.time()
    for i in range(len(data)):
        a = data.audio(i)
        if len(a) < P.MIN_SECONDS * P.FS:
            continue
        y, _, seg = P.segment(a, P.Emission(emission[data.databases[i]]))
        if seg.contrast < P.MIN_CONTRAST:
            continue
        if i % 100 == 0:
            sf = P.state_features(y, seg)
            assert (sf is None and np.isnan(X[i, 0])) or np.allclose(sf, X[i, :P.STATE_FEATURES], equal_nan=True), i
        out[i] = extra_features(a, y, seg)
        if i % 500 == 0:
            log(f"extra features: {i}/{len(data)} ({time.time() - t0:.0f} s)")
    return out


def per_database(X: np.ndarray, dbs: np.ndarray) -> np.ndarray:
    """Each feature standardised on each database's own recordings (median / IQR), clipped to +-5."""
    Z = np.full_like(X, np.nan)
    for n in set(dbs.tolist()):
        k = dbs == n
        med = np.nanmedian(X[k], 0)
        q75, q25 = np.nanpercentile(X[k], [75, 25], 0)
        Z[k] = (X[k] - med) / np.maximum(q75 - q25, 1e-9)
    return np.clip(Z, -5, 5)


def calibrate(s: np.ndarray) -> np.ndarray:
    ok = np.isfinite(s)
    q25, m, q75 = np.percentile(s[ok], [25, 50, 75])
    return (s - m) / max(q75 - q25, 1e-9)


def weighted_quantiles(X: np.ndarray, w: np.ndarray, qs: list[float]) -> np.ndarray:
    """[len(qs), columns] weighted quantiles of each column of X (NaN ignored; midpoint rule)."""
    X = X.reshape(len(X), -1)
    out = np.full((len(qs), X.shape[1]), np.nan)
    for j in range(X.shape[1]):
        ok = np.isfinite(X[:, j])
        if ok.sum() >= 2:
            o = np.argsort(X[ok, j])
            xs, ws = X[ok, j][o], w[ok][o]
            c = (np.cumsum(ws) - 0.5 * ws) / ws.sum()
            out[:, j] = np.interp(qs, c, xs)
    return out


def _norm_logpdf(x, m, s):
    return -0.5 * ((x - m) / s) ** 2 - np.log(s) - 0.5 * np.log(2 * np.pi)


def _posterior(x, pi1, m0, s0, m1, s1):
    d = (np.log(1 - pi1) + _norm_logpdf(x, m0, s0)) - (np.log(pi1) + _norm_logpdf(x, m1, s1))
    return 1 / (1 + np.exp(np.clip(d, -50, 50)))


def two_gaussians(x: np.ndarray, iters: int = 150) -> tuple[float, float, float, float, float]:
    """(share of the higher component, m0, s0, m1, s1): two-Gaussian EM on 1-D x, the best of
    three starts (shares 0.3, 0.5, 0.7 at the quartiles); m1 >= m0."""
    q25, q75 = np.percentile(x, [25, 75])
    best = None
    for pi1 in (0.5, 0.3, 0.7):
        m0, m1 = q25, q75
        s0 = s1 = max(np.std(x) / 2, 1e-6)
        floor = 1e-3 * np.var(x)
        for _ in range(iters):
            r = _posterior(x, pi1, m0, s0, m1, s1)
            pi1 = float(np.clip(r.mean(), 0.01, 0.99))
            m0, m1 = np.sum((1 - r) * x) / np.sum(1 - r), np.sum(r * x) / np.sum(r)
            s0 = np.sqrt(max(np.sum((1 - r) * (x - m0) ** 2) / np.sum(1 - r), floor))
            s1 = np.sqrt(max(np.sum(r * (x - m1) ** 2) / np.sum(r), floor))
        l0, l1 = np.log(1 - pi1) + _norm_logpdf(x, m0, s0), np.log(pi1) + _norm_logpdf(x, m1, s1)
        ll = np.sum(np.logaddexp(l0, l1))
        if m1 < m0:
            pi1, m0, s0, m1, s1 = 1 - pi1, m1, s1, m0, s0
        if best is None or ll > best[0]:
            best = (ll, pi1, m0, s0, m1, s1)
    assert best is not None
    return best[1:]


def equal_density(m0: float, s0: float, m1: float, s1: float) -> float:
    """Where N(m0, s0) and N(m1, s1) are equal between the means (equal priors); the midpoint
    when they do not cross there."""
    if abs(s0 - s1) < 1e-9 * max(s0, s1):
        return (m0 + m1) / 2
    a = 1 / s0 ** 2 - 1 / s1 ** 2
    b = -2 * (m0 / s0 ** 2 - m1 / s1 ** 2)
    c = m0 ** 2 / s0 ** 2 - m1 ** 2 / s1 ** 2 + 2 * np.log(s0 / s1)
    disc = b * b - 4 * a * c
    if disc < 0:
        return (m0 + m1) / 2
    roots = [(-b + sg * np.sqrt(disc)) / (2 * a) for sg in (1, -1)]
    inside = [r for r in roots if min(m0, m1) <= r <= max(m0, m1)]
    return inside[0] if inside else min(roots, key=lambda r: abs(r - (m0 + m1) / 2))


def report(lab, z, thr, margin):
    called = np.isfinite(z) & (np.abs(z - thr) >= margin)
    ab = z >= thr
    tp, fn = np.sum(called & ab & (lab == 1)), np.sum(called & ~ab & (lab == 1))
    tn, fp = np.sum(called & ~ab & (lab == 0)), np.sum(called & ab & (lab == 0))
    se, sp = tp / max(tp + fn, 1), tn / max(tn + fp, 1)
    return se, sp, (se + sp) / 2, called.mean()


def choose(inner, zero: bool = False):
    grid = np.array([0.0]) if zero else np.round(np.arange(-2, 2.001, 0.02), 2)
    mm = [np.mean([report(lab, z, t, 0)[2] for lab, z in inner]) for t in grid]
    top = [t for t, v in zip(grid, mm) if v >= max(mm) - 1e-9]
    thr = min(top, key=lambda t: (abs(t), t))
    margin = 0.0
    for mg in np.round(np.arange(0, 1.001, 0.02), 2):
        if min(report(lab, z, thr, mg)[3] for lab, z in inner) < COVER:
            break
        margin = mg
    return thr, margin, float(max(mm))


def fit_lr(X, y, d, l2=1.0, iters=50):
    """Balanced logistic regression (every database-class cell weighted equally), Newton."""
    w = np.zeros(X.shape[1] + 1)
    A = np.c_[X, np.ones(len(X))]
    _, inv, cnt = np.unique(np.char.add(d.astype(str), y.astype(str)), return_inverse=True, return_counts=True)
    sw = 1.0 / cnt[inv]
    sw /= sw.mean()
    R = l2 * np.diag(np.r_[np.ones(len(w) - 1), 0])
    for _ in range(iters):
        p = 1 / (1 + np.exp(-np.clip(A @ w, -30, 30)))
        step = np.linalg.solve((A * (sw * p * (1 - p))[:, None]).T @ A + R, A.T @ (sw * (p - y)) + R @ w)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return w


class Rule:
    def __init__(self, X, Z, y, dbs, delta, calibration: str = "median"):
        self.X, self.Z, self.y, self.dbs, self.delta = X, Z, y, dbs, delta
        self.have = np.isfinite(X).all(1)
        self.calibration = calibration
        self.prevalence: dict[tuple, float] = {}  # (train, test, pool size) -> estimated abnormal share (pcg7)

    def weighted_score(self, db: str, cols: list[int], sign: np.ndarray, w: np.ndarray) -> np.ndarray:
        """z of database ``db``'s recordings with features and score standardised by the
        ``w``-weighted median/IQR of its recordings (NaN where a kept feature is missing)."""
        k = np.flatnonzero(self.dbs == db)
        q = weighted_quantiles(self.X[k], w, [0.25, 0.5, 0.75])
        Z = np.clip((self.X[k] - q[1]) / np.maximum(q[2] - q[0], 1e-9), -5, 5)
        s = np.full(len(k), np.nan)
        h = self.have[k]
        s[h] = (Z[h][:, cols] * sign).mean(1)
        qs = weighted_quantiles(s[h], w[h], [0.25, 0.5, 0.75])[:, 0]
        return (s - qs[1]) / max(qs[2] - qs[0], 1e-9)

    def class_gaussians(self, train, cols, sign) -> np.ndarray:
        """(m0, s0, m1, s1) of the score's z on the training databases, each standardised with
        label-balanced weights (its normal and abnormal recordings weighing half each), averaged."""
        out = []
        for t in train:
            yk = self.y[self.dbs == t]
            w = np.where(yk == 1, 0.5 / max(yk.sum(), 1), 0.5 / max((1 - yk).sum(), 1))
            z = self.weighted_score(t, cols, sign, w)
            ok = np.isfinite(z)
            z0, z1 = z[ok & (yk == 0)], z[ok & (yk == 1)]
            out.append((z0.mean(), z0.std(), z1.mean(), z1.std()))
        return np.mean(out, 0)

    def device_z(self, train, test, cols, sign, s: np.ndarray) -> np.ndarray:
        """The held-out device's z under ``self.calibration`` (its labels never read)."""
        z = calibrate(s)
        key = (tuple(train), test, len(cols))
        if self.calibration == "mixture":
            pi1, m0, s0, m1, s1 = two_gaussians(z[np.isfinite(z)])
            self.prevalence[key] = pi1
            return z - equal_density(m0, s0, m1, s1)
        if self.calibration == "sld":
            m0, s0, m1, s1 = self.class_gaussians(train, cols, sign)
            n = int((self.dbs == test).sum())
            w, pi1 = np.ones(n), 0.5
            for _ in range(5):
                z = self.weighted_score(test, cols, sign, w)
                ok = np.isfinite(z)
                for _ in range(200):
                    pi1 = float(np.clip(_posterior(z[ok], pi1, m0, s0, m1, s1).mean(), 0.01, 0.99))
                p = np.full(n, pi1)
                p[ok] = _posterior(z[ok], pi1, m0, s0, m1, s1)
                w = p / (2 * p.sum()) + (1 - p) / (2 * (1 - p).sum())
            self.prevalence[key] = pi1
            return z - equal_density(m0, s0, m1, s1)
        return z

    def kept(self, train, pool):
        A = np.array([[auc(self.y[(self.dbs == n) & self.have], self.X[(self.dbs == n) & self.have, j]) for j in pool]
                      for n in train])
        up, down = (A > 0.5 + self.delta).all(0), (A < 0.5 - self.delta).all(0)
        return [pool[j] for j in np.flatnonzero(up | down)], np.where(up, 1.0, -1.0)[up | down]

    def score(self, train, test, pool, how):
        cols, sign = self.kept(train, pool)
        k = self.dbs == test
        s = np.full(k.sum(), np.nan)
        h = self.have[k]
        if cols:
            if how == "eq":
                s[h] = (self.Z[k][h][:, cols] * sign).mean(1)
            elif how == "fam":  # each family's signed mean, then their mean (every family weighs the same)
                parts = [(self.Z[k][h][:, c] * sign[j]).mean(1) for f in FAMILIES.values()
                         for j in [np.flatnonzero(np.isin(cols, f))] for c in [np.asarray(cols)[j]] if len(j)]
                s[h] = np.mean(parts, 0)
            else:
                m = np.isin(self.dbs, train) & self.have
                w = fit_lr(self.Z[m][:, cols], self.y[m], self.dbs[m])
                s[h] = np.c_[self.Z[k][h][:, cols], np.ones(h.sum())] @ w
        if not np.isfinite(s).any():
            return self.y[k], s, len(cols)
        if how == "eq" and self.calibration != "median":
            return self.y[k], self.device_z(train, test, cols, sign, s), len(cols)
        return self.y[k], calibrate(s), len(cols)


def choose_rule(rule: Rule, train: list[str], family_mean: bool = False,
                zero: bool = False) -> tuple[float, str, float, float]:
    """(inner mean MAcc, pool, z-threshold, z-margin) for a rule learnt on ``train``, each of
    its databases left out in turn (the held-out database, if any, is not among them);
    ``family_mean``: the pool 'both' scored as the families' mean (P8f), no pool chosen;
    ``zero``: the z-threshold 0, only the margin chosen."""
    best = None
    for p in (["both"] if family_mean else POOLS):
        inner = [rule.score([u for u in train if u != t], t, POOLS[p], "fam" if family_mean else "eq")[:2]
                 for t in train]
        thr, margin, inner_macc = choose(inner, zero)
        if best is None or inner_macc > best[0]:
            best = (inner_macc, p, thr, margin)
    assert best is not None
    return best


# --choose-method (pcg9): the scoring methods the protocol chooses among, declared before the run:
# how the kept features are scored ('pool': attempt I, signed mean with the pool chosen among
# state32/cells84/both; 'fam': P8f, families' mean of the union pool), the z-threshold (chosen on
# the inner databases, or 0 as pcg7's --zero-threshold) and the keeping rule's delta (0.02, I's
# since attempt I, and its neighbours 0.01, 0.03 that pcg8 also ran).
METHOD_HOWS = ("pool", "fam")
METHOD_ZERO = (False, True)
METHOD_DELTAS = (0.01, 0.02, 0.03)
METHODS = [(how, zero, d) for how in METHOD_HOWS for zero in METHOD_ZERO for d in METHOD_DELTAS]
# a candidate is eligible when every inner database's row keeps Sp and coverage this high (issue
# 14's bar); the highest inner mean MAcc among the eligible wins (among all when none is)
METHOD_MIN_SP, METHOD_MIN_COVER = 0.5, 0.7


def eligible(rows: list[tuple]) -> bool:
    """Every row (se, sp, macc, coverage) keeps Sp and coverage at the bar."""
    r = np.array(rows)
    return bool((r[:, 1] >= METHOD_MIN_SP).all() and (r[:, 3] >= METHOD_MIN_COVER).all())


def method_name(m: tuple[str, bool, float]) -> str:
    return f"{'I pool chosen' if m[0] == 'pool' else 'families mean'}, z {'0' if m[1] else 'chosen'}, delta {m[2]:g}"


def run_method(rules: dict[float, Rule], m: tuple[str, bool, float], train: list[str], test: str):
    """Method ``m`` learnt on ``train`` as the bench learns it (pool, z-threshold and margin
    chosen leaving each of ``train`` out in turn), applied to ``test``:
    (labels, z, (inner mean MAcc, pool, z-threshold, margin), kept count)."""
    how, zero, delta = m
    rule = rules[delta]
    best = choose_rule(rule, train, how == "fam", zero)
    lab, z, nk = rule.score(train, test, POOLS[best[1]], "fam" if how == "fam" else "eq")
    return lab, z, best, nk


def method_rows(rules, m, train: list[str]) -> list[tuple]:
    """Method ``m`` judged on ``train`` alone: each of its databases left out in turn, the whole
    method (its own choices included) learnt on the others and scored there with its threshold
    and margin: [(se, sp, macc, coverage)] per left-out database."""
    out = []
    for t in train:
        lab, z, best, _ = run_method(rules, m, [u for u in train if u != t], t)
        out.append(report(lab, z, best[2], best[3]))
    return out


def choose_method(rules, train: list[str]) -> tuple[tuple, dict]:
    """(the method of METHODS chosen on ``train``, {method: its rows from method_rows})."""
    table = {m: method_rows(rules, m, train) for m in METHODS}

    def key(m):
        return (eligible(table[m]), float(np.array(table[m])[:, 2].mean()))

    best = METHODS[0]
    for m in METHODS[1:]:
        if key(m) > key(best):
            best = m
    return best, table


def choose_method_main(X, y, dbs, names: list[str], log_rows: bool = True) -> list[tuple]:
    """--choose-method: per outer fold, the method chosen on the inner databases (method_rows /
    choose_method), scored on the held-out database; then each method fixed (looks), and the
    method the protocol would choose on all four."""
    Z = per_database(X, dbs)
    rules = {d: Rule(X, Z, y, dbs, d) for d in METHOD_DELTAS}
    fixed: dict[tuple, list] = {m: [] for m in METHODS}
    chosen = []
    print("| outer fold (held out) | candidate | inner MAcc (each left out) | inner Sp | inner cov | inner mean | "
          "eligible |")
    print("|---|---|---|---|---|---|---|")
    for held in names:
        train = [n for n in names if n != held]
        pick, table = choose_method(rules, train)
        for m in METHODS:
            r, ok = np.array(table[m]), eligible(table[m])
            star = " **(chosen)**" if m == pick else ""
            print(f"| {held[-1]} (inner {'/'.join(t[-1] for t in train)}) | {method_name(m)}{star} | "
                  + "/".join(f"{v:.3f}" for v in r[:, 2]) + " | " + "/".join(f"{v:.2f}" for v in r[:, 1]) + " | "
                  + "/".join(f"{v:.2f}" for v in r[:, 3]) + f" | {r[:, 2].mean():.3f} | {'yes' if ok else 'no'} |")
        for m in METHODS:
            lab, z, best, nk = run_method(rules, m, train, held)
            ok = np.isfinite(z)
            r = report(lab, z, best[2], best[3]) + (auc(lab[ok], z[ok]),)
            note = f"{best[1]}; z {best[2]:g} ± {best[3]:g}; {nk} features"
            fixed[m].append((held[-1], r, note))
            if m == pick:
                chosen.append((held[-1], r, f"{method_name(m)}; {note}"))
    print()
    print("| attempt | held-out | Se | Sp | MAcc | AUC | cov | method chosen on the inner databases; pool; z ± margin |")
    print("|---|---|---|---|---|---|---|---|")
    what = "pcg9: scoring method chosen per fold on the inner databases (--choose-method)"
    for name, rr in [(what, chosen)] + [(f"fixed: {method_name(m)}", fixed[m]) for m in METHODS]:
        for held, r, note in rr:
            print(row(name, held, r, note))
        m_ = np.mean([r for _, r, _ in rr], 0)
        print(f"| {name} | mean | {m_[0]:.3f} | {m_[1]:.3f} | **{m_[2]:.3f}** | {m_[4]:.3f} | {m_[3]:.2f} | "
              f"min Sp {min(r[1] for _, r, _ in rr):.3f}, min cov {min(r[3] for _, r, _ in rr):.2f} |")
        if name == what:
            print("| | | | | | | | |")
    pick, table = choose_method(rules, names)
    print(f"\nall four databases (each left out, the method learnt on the other three): chosen {method_name(pick)}")
    for m in METHODS:
        r, ok = np.array(table[m]), eligible(table[m])
        print(f"  {method_name(m)}: MAcc {'/'.join(f'{v:.3f}' for v in r[:, 2])}, mean {r[:, 2].mean():.3f}, "
              f"min Sp {r[:, 1].min():.2f}, min cov {r[:, 3].min():.2f}{'' if ok else ' (not eligible)'}")
    return chosen


def family_weights(cols: list[int]) -> np.ndarray:
    """Each kept feature's weight in the families' mean (P8f), scaled to mean 1: the signed
    mean weighted by them is the mean over the families of each family's signed mean."""
    fam = [next(f for f, js in FAMILIES.items() if c in js) for c in cols]
    count = {f: fam.count(f) for f in set(fam)}
    w = np.array([1.0 / (len(count) * count[f]) for f in fam])
    return w * len(w) / w.sum()


def rule_card(what: str, name: str, trained_on: list[str], emission: np.ndarray, cols: list[int], sign: np.ndarray,
              chosen: tuple[float, str, float, float], delta: float, held_out: dict, family_mean: bool = False) -> dict:
    """A rule file for monitor/dsp/pcg_cycles.py (format RULE_FORMAT), card-like: what it is,
    the command that wrote it, what it trained on and its held-out figures."""
    card = {
        "format": RULE_FORMAT, "name": name, "kind": "pcg_cycles", "what": what,
        "command": "ECGMON_DATA=... OMP_NUM_THREADS=1 python " + " ".join(["bench/pcg_cycles.py", *sys.argv[1:]]),
        "created": time.strftime("%Y-%m-%d", time.gmtime()),
        "trained_on": trained_on, "delta": delta, "pool": chosen[1], "inner_mean_macc": round(float(chosen[0]), 4),
        "span_s": SPAN_S, "update_s": UPDATE_S,
        "emission": np.asarray(emission).tolist(),
        "score": "family_mean" if family_mean else "signed_mean",
        "features": [{"name": P.FEATURE_NAMES[c], "index": int(c), "sign": int(sg)} for c, sg in zip(cols, sign)],
        "z_threshold": chosen[2], "z_margin": chosen[3],
        "held_out_figures": held_out,
    }
    if family_mean:  # the daemon's signed mean weighted by them is the families' mean
        for f, c, w in zip(card["features"], cols, family_weights(cols)):
            f.update(family=next(n for n, js in FAMILIES.items() if c in js), weight=round(float(w), 6))
    return card


def figures(r) -> dict:
    return {k: round(float(v), 4) for k, v in zip(("se", "sp", "macc", "coverage", "auc"), r)}


def write_fold_rule(rule: Rule, names: list[str], emission: dict[str, np.ndarray], held: str, path: str,
                    delta: float, family_mean: bool = False) -> None:
    """The rule of one outer fold, as the table above used it, for ``ecgmon evaluate pcg
    --cycles`` and a test to hold the segmenter and features to that fold's figures on its
    held-out database."""
    train = [n for n in names if n != held]
    best = choose_rule(rule, train, family_mean)
    cols, sign = rule.kept(train, POOLS[best[1]])
    lab, z, _ = rule.score(train, held, POOLS[best[1]], "fam" if family_mean else "eq")
    ok = np.isfinite(z)
    r = report(lab, z, best[2], best[3]) + (auc(lab[ok], z[ok]),)
    what = "P8f (families' mean)" if family_mean else "attempt I's"
    card = rule_card(f"{what} rule learnt without the held-out database (bench/pcg_cycles.py --fold-rule)",
                     f"pcg-cycles-without-{held}", train, emission[held], cols, sign, best, delta, {held: figures(r)},
                     family_mean)
    Path(path).write_text(json.dumps({"held_out": held, **card}, indent=1) + "\n")
    print(f"wrote {path}")


def row(name, held, r, note):
    return f"| {name} | {held} | {r[0]:.3f} | {r[1]:.3f} | {r[2]:.3f} | {r[4]:.3f} | {r[3]:.2f} | {note} |"


def cached(path: str | None, key: str, compute) -> dict[str, np.ndarray]:
    """The arrays of the cache file ``path``, with those of ``compute()`` added (and saved) when
    ``key`` is not among them yet."""
    have: dict[str, np.ndarray] = {}
    if path and Path(path).is_file():
        with np.load(path) as z:
            have = {k: z[k] for k in z.files}
    if key not in have:
        have.update(compute())
        if path:
            np.savez(path, **have)
    return have


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=os.path.join(os.environ.get("ECGMON_DATA", "../shared/data"), "pcg2016"))
    ap.add_argument("--cache", help="features .npz: read if it exists, else written")
    ap.add_argument("--delta", type=float, default=0.02, help="AUC distance from 0.5 a kept feature needs")
    ap.add_argument("--fold-rule", nargs=2, metavar=("HELD_OUT", "JSON"),
                    help="write the rule learnt without database HELD_OUT (as tests/pcg_cycles_rule_d.json)")
    ap.add_argument("--write-rule", metavar="JSON",
                    help="write the rule refitted on all four databases (ecgmon/models/weights/pcg-cycles.json); "
                         "one more pass over the audio unless the cache holds it")
    ap.add_argument("--calibration", choices=("median", "mixture", "sld"), default="median",
                    help="the held-out device's calibration of the signed mean (pcg7; see above)")
    ap.add_argument("--zero-threshold", action="store_true",
                    help="z-threshold fixed at 0, only the margin chosen on the inner databases (pcg7)")
    ap.add_argument("--family-mean", action="store_true",
                    help="no pool choice: every feature of the union pool, score = mean over the families "
                         "(state32, cells84, and the extra ones) of each family's signed mean (pcg8)")
    ap.add_argument("--choose-method", action="store_true",
                    help="choose the scoring method (METHODS: I's pool choice or the families' mean, z-threshold "
                         "chosen or 0, delta 0.01/0.02/0.03) per outer fold on the inner databases (pcg9)")
    ap.add_argument("--extra-features", action="store_true",
                    help="add EXTRA_NAMES (pcg8) and the pools 'extra' and 'all'; computed once into --cache")
    args = ap.parse_args()
    variant = args.calibration != "median" or args.zero_threshold or args.extra_features
    if variant and (args.fold_rule or args.write_rule):
        ap.error("--fold-rule / --write-rule write the daemon's rule: median calibration, chosen threshold, "
                 "I's features (with or without --family-mean) only")
    if args.choose_method and (variant or args.family_mean or args.fold_rule or args.write_rule):
        ap.error("--choose-method chooses the threshold, delta and score itself: median calibration, "
                 "I's features, no --family-mean, --fold-rule or --write-rule")
    data = load_pcg(database_folders(Path(args.data)), lambda s: print(s), progress=False)
    if args.cache and Path(args.cache).is_file():
        with np.load(args.cache) as z:
            X = z["X"]
            emission = {k[2:]: z[k] for k in z.files if k.startswith("W_")}
    else:
        X, emission = features(data, lambda s: print(s, flush=True))
        if args.cache:
            np.savez(args.cache, X=X, **{f"W_{db}": w for db, w in emission.items()})
    dbs, y = data.databases, data.labels
    names = sorted(set(dbs.tolist()))
    if args.choose_method:
        choose_method_main(X, y, dbs, names)
        return
    if args.extra_features:
        X8 = cached(args.cache, "X_extra", lambda: {
            "X": X, **{f"W_{db}": w for db, w in emission.items()},
            "X_extra": extra_matrix(data, emission, X, lambda s: print(s, flush=True)),
        })["X_extra"]
        print("| extra feature | family | " + " | ".join(f"AUC {n[-1]}" for n in names) + " | same way in all |")
        print("|---|---|" + "---|" * (len(names) + 1))
        for j, nm in enumerate(EXTRA_NAMES):
            fam = next(f for f, js in EXTRA_FAMILIES.items() if j in js)
            a = [auc(y[(dbs == n) & np.isfinite(X8[:, j])], X8[(dbs == n) & np.isfinite(X8[:, j]), j]) for n in names]
            way = "up" if min(a) > 0.5 + args.delta else "down" if max(a) < 0.5 - args.delta else ""
            print(f"| {nm} | {fam} | " + " | ".join(f"{v:.3f}" for v in a) + f" | {way} |")
        # a recording with the 116 but not the 72 (never seen on pcg2016) keeps I's verdict count honest
        assert np.array_equal(np.isfinite(X).all(1), np.isfinite(np.c_[X, X8]).all(1)), "extra features lose recordings"
        n0 = X.shape[1]
        X = np.c_[X, X8]
        POOLS.update({"extra": list(range(n0, X.shape[1])), "all": list(range(X.shape[1]))})
        FAMILIES.update({f: [n0 + j for j in js] for f, js in EXTRA_FAMILIES.items()})
    if args.write_rule:
        have = cached(args.cache, "X_all",
                      lambda: dict(zip(("X_all", "W_all"), all_four(data, lambda s: print(s, flush=True)))))
    rule = Rule(X, per_database(X, dbs), y, dbs, args.delta, args.calibration)
    variants = [(p, h) for p in POOLS for h in ("eq", "lr")]
    if args.family_mean:
        variants = [("all" if args.extra_features else "both", "fam")]
    rows = {v: [] for v in variants}
    chosen = []
    for held in names:
        train = [n for n in names if n != held]
        best = None
        for v in variants:
            inner = [rule.score([u for u in train if u != t], t, POOLS[v[0]], v[1])[:2] for t in train]
            thr, margin, inner_macc = choose(inner, args.zero_threshold)
            lab, z, nk = rule.score(train, held, POOLS[v[0]], v[1])
            ok = np.isfinite(z)
            r = report(lab, z, thr, margin) + (auc(lab[ok], z[ok]),)
            note = f"z {thr:g} ± {margin:g}; {nk} features; inner {inner_macc:.3f}"
            pi = rule.prevalence.get((tuple(train), held, nk))
            if v[1] == "eq" and pi is not None:
                note += f"; abnormal share est. {pi:.2f}, true {lab.mean():.2f}"
            rows[v].append((held[-1], r, note))
            if v[1] in ("eq", "fam") and (best is None or inner_macc > best[0]):
                best = (inner_macc, v, rows[v][-1])
        chosen.append((best[2][0], best[2][1], f"{best[1][0]}; {best[2][2]}"))
    what = "I: signed mean, pool chosen per fold on the inner databases"
    if args.family_mean:
        what = f"I: mean of the families' signed means ({', '.join(FAMILIES)}), no pool choice"
    if variant:
        what += f"; calibration {args.calibration}" if args.calibration != "median" else ""
        what += "; z-threshold 0" if args.zero_threshold else ""
        what += "; extra features (pools extra, all)" if args.extra_features else ""
    for name, rr in [(f"{v[0]} {v[1]}", rows[v]) for v in variants] + [(what, chosen)]:
        for held, r, note in rr:
            print(row(name, held, r, note))
        m = np.mean([r for _, r, _ in rr], 0)
        print(f"| {name} | mean | {m[0]:.3f} | {m[1]:.3f} | **{m[2]:.3f}** | {m[4]:.3f} | {m[3]:.2f} | |")
    if variant:  # the daemon's rule (below) has the median calibration and a chosen threshold only
        return
    if args.fold_rule:
        write_fold_rule(rule, names, emission, *args.fold_rule, args.delta, args.family_mean)
    # the rule refitted on all four databases (what a shipped model would hold): on the
    # features segmented with each fold's emission, or, for --write-rule, with the emission
    # fitted on all four (what the daemon will segment with)
    final = Rule(have["X_all"], per_database(have["X_all"], dbs), y, dbs, args.delta) if args.write_rule else rule
    best = choose_rule(final, names, args.family_mean)
    cols, sign = final.kept(names, POOLS[best[1]])
    print(f"\nall four databases: pool {best[1]}, z-threshold {best[2]:g} ± {best[3]:g} "
          f"(mean MAcc {best[0]:.3f} leaving each out); {len(cols)} features kept:")
    print(", ".join(f"{'+' if s > 0 else '-'}{P.FEATURE_NAMES[c]}" for c, s in zip(cols, sign)))
    if args.write_rule:
        held_out = {held: figures(r) for held, (_, r, _) in zip(names, chosen)}
        what = ("attempt I with the families' mean (pcg8 P8f: no pool chosen, each feature family weighs the same)"
                if args.family_mean else "attempt I's")
        found = ("; the families' mean itself was picked after every pool's held-out rows were seen, so these "
                 "figures are an upper reading: --choose-method, which also picks the method inside each fold, "
                 "gives the protocol's own (README)" if args.family_mean else "")
        card = rule_card(f"{what} rule refitted on all four pcg2016 databases (bench/pcg_cycles.py --write-rule); "
                         "held_out_figures: the outer folds' (each fold's own rule, nothing chosen on its held-out "
                         f"database){found}", "pcg-cycles", names, have["W_all"], cols, sign, best, args.delta, held_out,
                         args.family_mean)
        Path(args.write_rule).write_text(json.dumps(card, indent=1) + "\n")
        print(f"wrote {args.write_rule}")


if __name__ == "__main__":
    main()
