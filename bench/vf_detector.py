"""Fit and measure the VF/flutter detector of the alarm engine (ecgmon/monitor/alarms/
fibrillation.py), folds by record.

Every record is measured as the engine measures it: the daemon's causal filter, a 4 s window
every 1 s resampled to 250 Hz, the 22 waveform measures, the technical monitor (a VF alarm
raised near a noise, clipping or leads-off condition is suppressed, as in the engine), and
the reference VF episodes of `ecgmon evaluate alarms` ((VF/(VFL labels and '[' ']' spans).
Windows wholly inside an episode are VF, windows clear of every episode by 2 s are not, the
rest are left out of training. The model is a 33 -> 8 tanh -> 1 network (torch, full batch,
each record's VF and non-VF windows weighted equally), fitted from 3 random starts whose
P(VF) is averaged; an alarm needs the mean P(VF) of the last K windows at T or more (a
window with more than fibrillation.HIGH_MAX of its power above 12 Hz counts 0), or one
window passing the fixed flutter rule (fibrillation.flutter) with P(VF) >= G
(--no-flutter-rule leaves the rule out, to compare). K, T and G are chosen together: the
fewest MISS_COST x (episodes not alarmed within 10 s of onset) + false VF alarms (no choice
met the old "at most 1 false VF/h" on the training folds, so that rule only ever maximised
the episodes found).

Folds: each record with VF (15 CUDB, MIT-BIH 207) is its own fold, and the records without
VF (cu02, cu14, the other 26 MIT-BIH records) are dealt over the folds. For each held-out
fold, K, T and G are chosen on the other folds alone (inner 4-fold predictions), the
network is refitted on them, and the held-out records are scored: the held-out figures.

With ``--noise ma:0 ma:-6 ...`` every MIT-BIH record also comes noise-stressed (nstdb noise,
the ``evaluate alarms --noise`` way: 2 min on/off after 5 min, at that SNR), twice: a training
copy whose noise is taken 120 s earlier in the noise record (the stretches the test copy never
gets), which joins the training data wherever its clean record does (only its noisy windows),
and a test copy exactly as ``ecgmon evaluate alarms --noise ma --snr 0`` makes it, never fitted
or chosen on, scored by the fold model that never saw its patient: the held-out false VF
alarms under noise. Muscle noise is broadband: a network that never met it calls a third of
the noisy windows of 118 and 119 at 0 dB VF.

With ``--noise-veto W`` the network that decides is fitted on the clean records alone (as with
``--noise-untrained``), and a second one, fitted with the training copies weighing W, is a veto
on one thing only: a window the first network calls VF-like is exempt from the noise
suppression only when the second one gives it P(VF) >= fibrillation.VETO_P (0.5, not tuned:
the veto acts only where it calls VF the less likely). K, T and G are chosen as without it.
Fitted into the deciding network, the noise moved its K, T and G and lost borderline CUDB
episodes (README, VF under noise).

The shipped model is fitted on every record but HOLDOUT (CUDB records kept out of all
fitting and choosing, for tests/test_vf_detector.py), K, T and G chosen on its own fold
predictions; with --write it replaces ecgmon/monitor/alarms/vf_model.py.

    ECGMON_DATA=../shared/data OMP_NUM_THREADS=1 nice -n 10 python bench/vf_detector.py [--noise ma:0 ...] [--jobs 2] [--write]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
import pickle

import numpy as np

from ecgmon.config import AlarmsConfig, Config
from ecgmon.evaluate.alarms import reference_episodes
from ecgmon.evaluate.noise_stress import NoiseStress, add_noise
from ecgmon.monitor.alarms import fibrillation
from ecgmon.monitor.alarms.engine import STEP_S
from ecgmon.monitor.alarms.technical import TechnicalMonitor
from ecgmon.monitor.dsp.filters import ECGFilter
from ecgmon.replay.records import load_record

HOLDOUT = ("cudb:cu15", "cudb:cu16", "cudb:cu17")
HOLDS = (2, 3, 4, 5, 6, 7, 8)
THRESHOLDS = tuple(np.round(np.arange(0.7, 0.995, 0.02), 2))
FLUTTER_GATES = (0.5, 0.85, 1.01)  # P(VF) a flutter-rule window needs (1.01: the rule off)
MISS_COST = 3.0  # a VF episode not alarmed within 10 s of onset weighs as 3 false alarms
EDGE_S = 2.0
HIDDEN = 8
EPOCHS = 300
SEEDS = 3
INNER = 4
CLEAR_S = AlarmsConfig().clear_s
FLUTTER_RULE = True  # --no-flutter-rule: the network alone, for comparison
NOISE_WEIGHT = 1.0  # --noise-weight (--noise-veto): a training copy's weight against its clean record's
WITHIN_S = 10.0


def records(data: Path) -> list[str]:
    out = [f"cudb:{r}" for r in (data / "cudb" / "RECORDS").read_text().split()]
    return out + [f"mitdb:{r}" for r in (data / "mitdb" / "RECORDS").read_text().split()]


TRAIN_NOISE_OFFSET_S = 120.0  # a training copy's noise: the stretches the test copy never gets
TRAIN_COPY = "+train"


def measure(spec: str, config: Config, noise: NoiseStress | None = None, noise_offset_s: float = 0.0) -> dict:
    """Window end times, features, technical flags and reference VF episodes of one record
    (with ``noise`` added as ``evaluate alarms --noise`` adds it; a training copy keeps only
    the windows that end in noise, under ``noisy``)."""
    rec = load_record(spec, config.data)
    fs = rec.fs
    signal, mask = rec.signal, None
    if noise is not None:
        signal, mask = add_noise(signal, rec.ann_samples, fs, noise, config.data, noise_offset_s)
    x = np.nan_to_num(signal[:, 0].astype(np.float64))
    filt = ECGFilter.configured(fs, config.dsp)(x)
    win, step = round(fibrillation.WINDOW_S * fs), max(1, round(STEP_S * fs))
    ends = np.arange(win, x.size + 1, step)
    windows = np.stack([fibrillation.analysis_window(filt[e - win : e], fs) for e in ends])
    feats = fibrillation.features(windows)
    tm = TechnicalMonitor(fs, config.alarms)
    tech = np.zeros((ends.size, 3))
    for i, e in enumerate(ends):
        st = tm.assess(x[e - win : e], filt[e - win : e], step)
        tech[i] = (st.leads_off, st.clipping, np.nan if st.noise_ratio is None else st.noise_ratio)
    eps = [(e.onset_s, e.end_s) for e in reference_episodes(rec, config.alarms) if e.kind == "vfib"]
    out = {"t": ends / fs, "X": feats, "tech": tech, "eps": eps, "hours": x.size / fs / 3600}
    if mask is not None:
        out["noisy"] = mask[ends - 1]
    return out


def noisy_copies(data: dict, config: Config, specs: list[str]) -> None:
    """Add each MIT-BIH record's noise-stressed test copy (``mitdb:118 ma:0``) and training
    copy (``mitdb:118 ma:0+train``) to ``data``."""
    for r in [r for r in data if r.startswith("mitdb:") and " " not in r]:
        for spec in specs:
            kind, snr = spec.split(":")
            stress = NoiseStress(kind, float(snr))
            data[f"{r} {spec}"] = measure(r, config, stress)
            data[f"{r} {spec}{TRAIN_COPY}"] = measure(r, config, stress, TRAIN_NOISE_OFFSET_S)


def base_record(r: str) -> str:
    return r.split(" ")[0]


def is_test_copy(r: str) -> bool:
    return " " in r and not r.endswith(TRAIN_COPY)


def labels(d: dict) -> tuple[np.ndarray, np.ndarray]:
    t = d["t"]
    y = np.zeros(t.size)
    use = np.ones(t.size, dtype=bool)
    for on, off in d["eps"]:
        inside = (t - fibrillation.WINDOW_S >= on) & (t <= off)
        y[inside] = 1
        use &= inside | ~((t > on - EDGE_S) & (t - fibrillation.WINDOW_S < off + EDGE_S))
    if "noisy" in d:  # a noisy copy teaches with its noise; its clean stretches are the record's own
        use &= d["noisy"]
    return y, use


def fit(data: dict, recs: list[str], seed: int = 0) -> dict:
    import torch

    torch.set_num_threads(1)
    X, Y, W = [], [], []
    for r in recs:
        y, use = labels(data[r])
        X.append(data[r]["X"][use])
        Y.append(y[use])
        w = np.zeros(use.sum())
        for c in (0, 1):  # each record's VF and non-VF windows weigh alike
            n = (Y[-1] == c).sum()
            w[Y[-1] == c] = 1.0 / n if n else 0.0
        if r.endswith(TRAIN_COPY):
            w *= NOISE_WEIGHT
        W.append(w)
    X, Y, W = np.vstack(X), np.concatenate(Y), np.concatenate(W)
    for c in (0, 1):
        W[Y == c] /= 2 * W[Y == c].sum()
    X[:, fibrillation.LOG_FEATURES] = np.log(np.maximum(X[:, fibrillation.LOG_FEATURES], 1e-6))
    mean, scale = X.mean(axis=0), X.std(axis=0) + 1e-9
    Z = torch.tensor((X - mean) / scale, dtype=torch.float32)
    Yt, Wt = torch.tensor(Y, dtype=torch.float32), torch.tensor(W, dtype=torch.float32)
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(Z.shape[1], HIDDEN), torch.nn.Tanh(), torch.nn.Linear(HIDDEN, 1))
    opt = torch.optim.Adam(net.parameters(), lr=0.01, weight_decay=1e-4)
    loss = torch.nn.BCEWithLogitsLoss(reduction="none")
    for _ in range(EPOCHS):
        opt.zero_grad()
        (loss(net(Z)[:, 0], Yt) * Wt).sum().backward()
        opt.step()
    p = [v.detach().numpy().astype(np.float64) for v in net.parameters()]
    return {"mean": mean, "scale": scale, "w1": p[0].T, "b1": p[1], "w2": p[2][0], "b2": float(p[3][0])}


def weights(m: dict) -> fibrillation.Weights:
    return fibrillation.Weights(m["mean"], m["scale"], m["w1"], m["b1"], m["w2"], m["b2"])


def fit_all(data: dict, recs: list[str]) -> list[dict]:
    """The network fitted from SEEDS random starts (their P(VF) is averaged)."""
    return [fit(data, recs, seed) for seed in range(SEEDS)]


def nets(ms: list[dict]) -> tuple:
    return tuple(weights(m) for m in ms)


def decide(p: np.ndarray, hold: int, thr: float) -> np.ndarray:
    """The mean of the last ``hold`` values of ``p`` (before the first, 0) at ``thr`` or more."""
    run = np.lib.stride_tricks.sliding_window_view(np.concatenate([np.zeros(hold - 1), p]), hold).mean(axis=1)
    return run >= thr


def alarms(d: dict, vf: np.ndarray, vf_like: np.ndarray) -> list[tuple[float, float]]:
    """Annunciated alarm spans as the engine makes them: raised at the first VF decision,
    cleared CLEAR_S after the last; suppressed at a window when a technical window (noise
    only when the window is not VF-like) ended within CLEAR_S before it, this one included:
    the engine knows no later one yet (AlarmEngine.suppressed_at); kept if unsuppressed at
    some decision, from the first such (its annunciated_s: nobody hears a suppressed alarm).
    Windows are STEP_S apart: a VF decision within CLEAR_S of the last one continues its alarm."""
    t, tech = d["t"], d["tech"]
    idx = np.flatnonzero(vf)
    if idx.size == 0:
        return []
    bad = (tech[:, 0] > 0) | (tech[:, 1] > 0) | ((np.nan_to_num(tech[:, 2]) >= AlarmsConfig().noise_ratio) & ~vf_like)
    bt, tv = t[bad], t[idx]
    if bt.size:
        j = np.searchsorted(bt, tv - CLEAR_S - 1e-9)
        sup = (j < bt.size) & (bt[np.minimum(j, bt.size - 1)] <= tv + 1e-9)
    else:
        sup = np.zeros(tv.size, dtype=bool)
    gaps = np.flatnonzero(np.diff(tv) > CLEAR_S + 1e-6)
    spans = []
    for a, b in zip(np.concatenate([[0], gaps + 1]), np.concatenate([gaps, [tv.size - 1]])):
        if sup[a : b + 1].all():
            continue
        k = np.searchsorted(t, tv[b] + CLEAR_S - 1e-9)
        spans.append((tv[a + int(np.argmin(sup[a : b + 1]))], t[k] if k < t.size else t[-1]))
    return spans


def score(d: dict, spans: list[tuple[float, float]], tol: float = 5.0) -> tuple[list[float], int]:
    delays = []
    for on, off in d["eps"]:
        hits = [a for a, b in spans if a <= off + tol and b >= on]
        delays.append(max(0.0, min(hits) - on) if hits else float("inf"))
    false = sum(1 for a, b in spans if not any(a <= off + tol and b >= on - tol for on, off in d["eps"]))
    return delays, false


def run(data: dict, P: dict, recs: list[str], hold: int, thr: float, gate: float, veto: dict | None = None) -> dict:
    """Alarms and their scores; ``veto``: the noise-trained network's P(VF), which a VF-like
    window also needs to stay exempt from the noise suppression."""
    rows = {}
    for r in recs:
        X = data[r]["X"]
        like = fibrillation.vf_like(P[r], X, thr)
        if veto is not None:
            like &= veto[r] >= fibrillation.VETO_P
        busy = X[:, fibrillation.NAMES.index("high_fraction")] > fibrillation.HIGH_MAX
        vf = decide(np.where(busy, 0.0, P[r]), hold, thr)
        if FLUTTER_RULE:  # the engine's single-window flutter rule, ORed as the engine does
            vf = vf | (fibrillation.flutter(X) & (P[r] >= gate))
        spans = alarms(data[r], vf, like)
        rows[r] = score(data[r], spans)
    delays = [x for r in recs for x in rows[r][0]]
    hours = sum(data[r]["hours"] for r in recs)
    false = sum(rows[r][1] for r in recs)
    return {"rows": rows, "episodes": len(delays), "found": sum(np.isfinite(delays)),
            "found10": sum(x <= WITHIN_S for x in delays), "false": false, "fph": false / hours, "hours": hours}


def choose(data: dict, P: dict, recs: list[str], miss_cost: float) -> tuple[int, float, float]:
    """K, T and G with the fewest miss_cost x (episodes not found within 10 s) + false alarms
    (the first in grid order on a tie)."""
    best = None
    for hold in HOLDS:
        for thr in THRESHOLDS:
            for gate in FLUTTER_GATES if FLUTTER_RULE else (2.0,):
                s = run(data, P, recs, hold, thr, gate)
                key = (-(miss_cost * (s["episodes"] - s["found10"]) + s["false"]), s["found10"])
                if best is None or key > best[0]:
                    best = (key, hold, float(thr), float(gate))
    return best[1], best[2], best[3]


def groups_of(data: dict, recs: list[str]) -> list[list[str]]:
    vf = [r for r in recs if data[r]["eps"]]
    groups = [[r] for r in vf]
    for i, r in enumerate(r for r in recs if r not in vf):
        groups[i % len(groups)].append(r)
    return groups


def with_copies(data: dict, recs: list[str], test: bool = False) -> list[str]:
    """``recs`` and their noise-stressed training copies (``test``: their test copies instead)."""
    keep = is_test_copy if test else (lambda r: r.endswith(TRAIN_COPY))
    copies = {}
    for r in data:
        if keep(r):
            copies.setdefault(base_record(r), []).append(r)
    return [x for r in recs for x in ([r] + copies.get(r, []))]


def fold_predictions(data: dict, groups: list[list[str]]) -> dict:
    """P(VF) of each group's records (and their training copies) by a fit on the other groups."""
    P = {}
    for g in groups:
        m = nets(fit_all(data, with_copies(data, [r for x in groups if x is not g for r in x])))
        for r in with_copies(data, g):
            P[r] = fibrillation.probability(data[r]["X"], m)
    return P


def outer_fold(
    data: dict, groups: list[list[str]], gi: int, miss_cost: float, veto_data: dict | None = None
) -> tuple[tuple[int, float, float], dict, dict | None]:
    """Held-out fold ``gi``: K, T, G chosen on inner folds of the other groups, the network fitted
    on them; P(VF) of the group's records and of their noise test copies (and the veto
    network's, fitted on ``veto_data``: the records and their training copies)."""
    g = groups[gi]
    train_groups = [x for x in groups if x is not g]
    train = with_copies(data, [r for x in train_groups for r in x])
    inner = [[r for x in train_groups[j::INNER] for r in x] for j in range(INNER)]
    hold, thr, gate = choose(data, fold_predictions(data, inner), train, miss_cost)
    m = nets(fit_all(data, train))
    tested = with_copies(data, g, test=True)
    held = {r: fibrillation.probability(data[r]["X"], m) for r in tested}
    veto = None
    if veto_data is not None:
        v = nets(fit_all(veto_data, with_copies(veto_data, [r for x in train_groups for r in x])))
        veto = {r: fibrillation.probability(data[r]["X"], v) for r in tested}
    s = run(data, held, g, hold, thr, gate, veto)
    print(f"fold {gi:2d} {g[0]:10s} K={hold} T={thr:.2f} G={gate:.2f}: {s['found10']}/{s['episodes']} within 10 s, "
          f"{s['false']} false", flush=True)
    return (hold, thr, gate), held, veto


def table(title: str, data: dict, s: dict) -> None:
    print(f"\n{title}: {s['found10']}/{s['episodes']} episodes within {WITHIN_S:g} s "
          f"({s['found']} at all), {s['false']} false VF in {s['hours']:.2f} h ({s['fph']:.2f}/h)")
    print("| record | episodes | found ≤ 10 s | delays s | false VF |")
    print("|---|---|---|---|---|")
    for r, (delays, false) in s["rows"].items():
        if delays or false:
            found = sum(x <= WITHIN_S for x in delays)
            print(f"| {r} | {len(delays)} | {found} | {', '.join('–' if not np.isfinite(x) else f'{x:.1f}' for x in delays)} | {false} |")


def _arr(a: np.ndarray) -> str:
    return np.array2string(np.asarray(a), separator=", ", precision=8, max_line_width=100, threshold=10**6)


def _fits(ms: list[dict]) -> tuple[np.ndarray, np.ndarray, str]:
    """The fits' shared normalisation and their weights as Python source."""
    # Every fit standardises the same training features: the mean and scale are written once.
    mean, scale = ms[0]["mean"], ms[0]["scale"]
    if any(not (np.array_equal(m["mean"], mean) and np.array_equal(m["scale"], scale)) for m in ms):
        raise ValueError("the fits do not share their feature normalisation")
    body = "".join(f"""    (
        np.array({_arr(m["w1"])}),
        np.array({_arr(m["b1"])}),
        np.array({_arr(m["w2"])}),
        {m["b2"]!r},
    ),
""" for m in ms)
    return mean, scale, body


def write_model(ms: list[dict], hold: int, thr: float, gate: float, path: Path, note: str, veto: list[dict] | None = None) -> None:
    mean, scale, body = _fits(ms)
    veto_src = "\n# No noise veto: a VF-like window is exempt from the noise suppression.\nVETO_NETS = ()\n"
    if veto:
        vmean, vscale, vbody = _fits(veto)
        veto_src = f"""
# The noise veto (fitted with the noise-stressed training copies): a window NETS call VF-like is
# exempt from the noise suppression only when these give it P(VF) >= fibrillation.VETO_P.
VETO_MEAN = np.array({_arr(vmean)})
VETO_SCALE = np.array({_arr(vscale)})
VETO_NETS = (
{vbody})
"""
    path.write_text(f'''"""The VF/flutter networks of fibrillation.py, written by bench/vf_detector.py --write.

{note}
"""

import numpy as np

# An alarm needs the mean P(VF) of the last HOLD_WINDOWS 1 s-step windows at P_VF or more (or
# one window passing fibrillation.flutter with P(VF) >= FLUTTER_P; above 1: the rule is off).
P_VF = {thr}
HOLD_WINDOWS = {hold}
FLUTTER_P = {gate}

# The features' normalisation, shared by every fit (leakage and kurtosis as logarithms).
FEATURE_MEAN = np.array({_arr(mean)})
FEATURE_SCALE = np.array({_arr(scale)})

# (w1 (33, hidden), b1, w2 (hidden,), b2) of each fit: tanh(z @ w1 + b1) @ w2 + b2 is the log-odds of VF.
NETS = (
{body})
{veto_src}''')


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--miss-cost", type=float, default=MISS_COST, help="false alarms a missed (or late) episode weighs as when choosing K, T, G")
    ap.add_argument("--cache", default="", help="pickle of the measured records (made if missing)")
    ap.add_argument("--write", action="store_true", help="write ecgmon/monitor/alarms/vf_model.py")
    ap.add_argument("--no-flutter-rule", action="store_true", help="the network alone (no single-window flutter rule)")
    ap.add_argument("--noise", nargs="*", default=[], metavar="KIND:SNR",
                    help="also train on and score noise-stressed MIT-BIH copies (ma:0 ma:-6 em:0 ...)")
    ap.add_argument("--noise-untrained", action="store_true",
                    help="score the --noise test copies but fit on the clean records alone (the recipe before)")
    ap.add_argument("--noise-weight", type=float, default=1.0,
                    help="a training copy's weight in the fit against its clean record's")
    ap.add_argument("--noise-veto", type=float, default=None, metavar="W",
                    help="fit the deciding network on the clean records and a noise veto with the training copies weighing W")
    ap.add_argument("--jobs", type=int, default=1, help="outer folds run in this many processes")
    args = ap.parse_args()
    global FLUTTER_RULE, NOISE_WEIGHT
    NOISE_WEIGHT = args.noise_weight if args.noise_veto is None else args.noise_veto
    FLUTTER_RULE = not args.no_flutter_rule
    config = Config()
    root = Path(os.environ.get("ECGMON_DATA", config.data.folder))
    if args.cache and Path(args.cache).is_file():
        data = pickle.loads(Path(args.cache).read_bytes())
    else:
        data = {r: measure(r, config) for r in records(root)}
    missing = [spec for spec in args.noise if not any(r.endswith(" " + spec) for r in data)]
    if missing:
        noisy_copies(data, config, missing)
    if args.cache and (missing or not Path(args.cache).is_file()):
        Path(args.cache).write_bytes(pickle.dumps(data))
    for r in [r for r in data if " " in r and r.split(" ")[1].removesuffix(TRAIN_COPY) not in args.noise]:
        del data[r]  # copies of a noise the cache holds but this run did not ask for
    veto_data = dict(data) if args.noise_veto is not None else None
    if args.noise_untrained or veto_data is not None:
        for r in [r for r in data if r.endswith(TRAIN_COPY)]:
            del data[r]
    recs = [r for r in data if " " not in r]
    groups = groups_of(data, recs)
    if args.jobs > 1:
        import multiprocessing

        with multiprocessing.get_context("fork").Pool(args.jobs) as pool:
            folds = pool.starmap(outer_fold, [(data, groups, gi, args.miss_cost, veto_data) for gi in range(len(groups))])
    else:
        folds = [outer_fold(data, groups, gi, args.miss_cost, veto_data) for gi in range(len(groups))]
    rows = {}
    for (hkg, held, veto), g in zip(folds, groups):
        rows.update(run(data, held, with_copies(data, g, test=True), *hkg, veto)["rows"])
    sets = [("CUDB", [r for r in recs if r.startswith("cudb")]), ("MIT-BIH", [r for r in recs if r.startswith("mitdb")])]
    sets += [(f"MIT-BIH + {spec} noise", [r for r in rows if r.endswith(" " + spec)]) for spec in args.noise]
    for name, sel in sets:
        sub = {r: rows[r] for r in sel}
        delays = [x for r in sel for x in sub[r][0]]
        f = sum(sub[r][1] for r in sel)
        h = sum(data[r]["hours"] for r in sel)
        table(f"Held out (folds by record), {name}", data,
              {"rows": sub, "episodes": len(delays), "found": sum(np.isfinite(delays)),
               "found10": sum(x <= WITHIN_S for x in delays), "false": f, "fph": f / h, "hours": h})
    # The shipped model: every record but the holdout ones.
    base = [r for r in recs if r not in HOLDOUT]
    train = with_copies(data, base)
    tg = groups_of(data, base)
    hold, thr, gate = choose(data, fold_predictions(data, tg), train, args.miss_cost)
    m = fit_all(data, train)
    P = {r: fibrillation.probability(data[r]["X"], nets(m)) for r in data}
    vm = V = None
    if veto_data is not None:
        vm = fit_all(veto_data, with_copies(veto_data, base))
        V = {r: fibrillation.probability(data[r]["X"], nets(vm)) for r in data}
    print(f"\nshipped model: K={hold} T={thr:.2f} G={gate:.2f} (chosen on fold predictions of its {len(train)} training records)")
    table("Shipped model on the CUDB records it never saw " + " ".join(HOLDOUT), data, run(data, P, list(HOLDOUT), hold, thr, gate, V))
    table("Shipped model in-sample (trained on these), CUDB", data, run(data, P, [r for r in base if r.startswith("cudb")], hold, thr, gate, V))
    table("Shipped model in-sample (trained on these), MIT-BIH", data, run(data, P, [r for r in base if r.startswith("mitdb")], hold, thr, gate, V))
    for spec in args.noise:
        table(f"Shipped model, MIT-BIH + {spec} noise (patients trained on, noise stretches never)", data,
              run(data, P, [r for r in data if r.endswith(" " + spec)], hold, thr, gate, V))
    if args.write:
        path = Path(fibrillation.__file__).with_name("vf_model.py")
        trained = args.noise and not args.noise_untrained and vm is None
        noise = f" and their noise-stressed copies ({' '.join(args.noise)})" if trained else ""
        note = (f"Fitted on {len(base)} records (CUDB cu01-cu17 but {', '.join(HOLDOUT)}; the MIT-BIH records of\n"
                f"../shared/data{noise}), K, T and G chosen on their fold predictions (a late or missed episode weighs\n"
                f"as {args.miss_cost:g} false alarms){', the flutter rule in place' if FLUTTER_RULE else ''}.")
        if vm is not None:
            note += (f"\nThe noise veto: fitted on the same records and their noise-stressed training copies\n"
                     f"({' '.join(args.noise)}), each weighing {args.noise_veto:g} of its record.")
        write_model(m, hold, thr, gate, path, note, vm)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
