"""How far the live beat classes are from issue 13's V targets, and whether anything after the
beat model closes the gap: every beat of the DS1 and SVDB records, at the daemon's own R peaks,
classified by the fold model that never saw its patient (as ``ecgmon evaluate beats
--cross-validated``), with the model's probabilities, its 22 inputs and the shape vote's state
for the beat (``monitor/dsp/beat_clusters.py``: the group it matched, how well, how large, the
group's mean P(V)).

Printed, all EC57-scored by ``evaluate/beats.py`` (pooled over the records):
  * the shipped classes (the shape vote), and the model's alone;
  * the operating curve of a threshold on P(V), the model's and the vote's: every (Se, +P)
    pair one knob can reach;
  * a second stage learnt on those per-beat data (gradient boosting on the model's
    probabilities, the vote's state and the inputs), leave-records-out by the beat model's own
    folds (a record's beats are scored by a second stage that never saw its patient);
  * the records holding the most missed V beats and V false positives;
  * with --self-train, a per-patient stage: each record's own earlier beats, labelled by the
    vote's confident calls (pooled P(V) >= 0.8 V, <= 0.1 not), fit a logistic regression on the
    22 inputs every 200 beats (once 10 of each are there), and its P(V) is averaged with the
    vote's (causal, no reference label read).

    ECGMON_DATA=../shared/data OMP_NUM_THREADS=1 nice -n 10 python bench/beat_vote_curve.py
        [--cache beats.pkl] [--jobs 2] [--self-train] [records ...]

The per-beat capture (about 8 minutes for the 100 records on two cores) goes to --cache and is
read from it next time. Needs the bench extra (scikit-learn).
"""

from __future__ import annotations

import argparse
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
import os
from pathlib import Path
import pickle
import sys

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ecgmon.config import Config  # noqa: E402
from ecgmon.evaluate.beats import classify_record, confusion_of, detection_stats, match_reference  # noqa: E402
from ecgmon.evaluate.fold_models import load_fold_models  # noqa: E402
from ecgmon.models.aami import CLASSES, DS1  # noqa: E402
from ecgmon.monitor import classification  # noqa: E402
from ecgmon.monitor.dsp import beat_clusters  # noqa: E402
from ecgmon.monitor.model_loader import load_model  # noqa: E402
from ecgmon.monitor.model_set import model_path  # noqa: E402

V = CLASSES.index("V")
THRESHOLDS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
# What the second stage sees of the vote's state (NaN where the beat met no group yet).
GROUP = ("g_r", "g_count", "g_mean_v", "g_share", "g_groups")


@dataclass
class Beat:
    """One classified beat: what scoring needs (``sample``, ``label``) and what was captured."""

    sample: int
    label: str
    p: np.ndarray | None  # the model's probabilities
    p_vote: np.ndarray | None  # after the shape vote
    inputs: np.ndarray | None  # the model's 22 RR and template inputs
    group: dict


# What the hooks record for the record being captured (one record at a time per process).
_LOG: dict = {}


def _capture_hooks() -> None:
    """Record, per beat, the model's probabilities and inputs and the vote's group state in
    ``_LOG`` (installed once per process)."""
    if _LOG.get("hooked"):
        return
    _LOG["hooked"] = True
    log = _LOG
    jobs, finish = classification.BeatClassification.jobs, classification.BeatClassification._finish
    vote, group = beat_clusters.MorphologyVote.__call__, beat_clusters.MorphologyVote._group

    def hooked_jobs(self, end, flush=False):
        out = jobs(self, end, flush)
        for job in out:
            if job.inputs is not None:
                log["inputs"][id(job.finish.args[0])] = np.asarray(job.inputs[1], dtype=np.float64)
        return out

    def hooked_finish(self, msg, received, window, window2, output):
        log["current"] = {"p": None if output is None else classification.softmax(output), "group": {},
                          "inputs": log["inputs"].pop(id(msg), None)}
        res = finish(self, msg, received, window, window2, output)
        log["beats"][msg.sample] = log.pop("current")
        return res

    def hooked_group(self, x):
        cur = log.get("current")
        if cur is not None and self._count.size:
            # The group the vote is about to match, and how well, before it joins or starts one.
            r = self._templates @ x
            k = int(r.argmax())
            cur["group"] = {"g_r": float(r[k]), "g_count": float(np.log1p(self._count[k])),
                            "g_mean_v": float(self._mean_v[k]), "g_share": float(self._count[k] / self._count.sum()),
                            "g_groups": float(self._count.size)}
        return group(self, x)

    def hooked_vote(self, window, p, window2=None):
        out = vote(self, window, p, window2)
        cur = log.get("current")
        if cur is not None:
            cur["p_vote"] = np.asarray(out, dtype=np.float64)
        return out

    classification.BeatClassification.jobs = hooked_jobs
    classification.BeatClassification._finish = hooked_finish
    beat_clusters.MorphologyVote.__call__ = hooked_vote
    beat_clusters.MorphologyVote._group = hooked_group


def capture(spec: str) -> dict:
    """The record's beats as the daemon classifies them with the fold model that never saw it."""
    config = Config()
    config.replay.channel = "MLII" if spec.startswith("mitdb:") else 0
    model = load_fold_models(load_model(model_path(config.models.beat), "cpu"), "cpu").for_record(spec)
    _capture_hooks()
    log = _LOG
    log.update(inputs={}, beats={})
    r = classify_record(spec, config, model)
    out = []
    for b in r.beats:
        c = log["beats"].get(b.sample, {})
        out.append(Beat(b.sample, b.label or "", c.get("p"), c.get("p_vote"), c.get("inputs"), c.get("group", {})))
    return {"fold": model.name, "fs": r.fs, "ref_samples": r.ref_samples, "ref_labels": r.ref_labels, "beats": out}


def scored(data: dict, label) -> dict:
    """Pooled EC57 V and S statistics with each beat labelled ``label(spec, i, beat)``."""
    total = None
    for spec, d in data.items():
        relabelled = [Beat(b.sample, label(spec, i, b), None, None, None, {}) for i, b in enumerate(d["beats"])]
        m = confusion_of(d["ref_samples"], d["ref_labels"], relabelled, d["fs"])
        total = m if total is None else total + m
    return {c: detection_stats(total, c) for c in ("V", "S")}


def line(name: str, s: dict) -> str:
    v, sv = s["V"], s["S"]
    return (f"{name:<44} V Se {100 * v['se']:5.1f} +P {100 * v['ppv']:5.1f} (fn {v['fn']:5d}, fp {v['fp']:5d})"
            f"   S Se {100 * sv['se']:5.1f} +P {100 * sv['ppv']:5.1f}")


def at_threshold(p: np.ndarray, t: float) -> str:
    """V at P(V) >= t, else the likeliest other class."""
    if p[V] >= t:
        return "V"
    q = p.copy()
    q[V] = -1.0
    return CLASSES[int(q.argmax())]


def features(b: Beat) -> list[float]:
    p = np.clip(b.p, 1e-6, 1 - 1e-6)
    pv = np.clip(b.p_vote, 1e-6, 1 - 1e-6)
    inputs = list(b.inputs) if b.inputs is not None else []
    return [*np.log(p), float(np.log(pv[V] / (1 - pv[V]))), *(b.group.get(g, np.nan) for g in GROUP), *inputs]


def second_stage(data: dict) -> dict[str, np.ndarray]:
    """P(V) from gradient boosting over ``features``, each record's by a fit on the other folds."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    usable = {s: np.flatnonzero([b.p is not None and b.p_vote is not None for b in d["beats"]])
              for s, d in data.items()}
    X = {s: np.array([features(d["beats"][i]) for i in usable[s]], dtype=np.float64) for s, d in data.items()}
    # Target: the matched reference beat is V (F and Q beats are not learnt from).
    y = {s: np.array(reference_of(d), dtype=object)[usable[s]] for s, d in data.items()}
    out = {}
    for fold in sorted({d["fold"] for d in data.values()}):
        train = [s for s, d in data.items() if d["fold"] != fold]
        rows = [~np.isin(y[s], ("F", "Q")) for s in train]
        Xt = np.vstack([X[s][r] for s, r in zip(train, rows)])
        yt = np.concatenate([y[s][r] == "V" for s, r in zip(train, rows)])
        model = HistGradientBoostingClassifier(max_iter=200, random_state=0).fit(Xt, yt)
        for s, d in data.items():
            if d["fold"] == fold:
                q = np.full(len(d["beats"]), np.nan)
                q[usable[s]] = model.predict_proba(X[s])[:, 1]
                out[s] = q
    return out


def self_trained(d: dict, refit: int = 200, least: int = 10) -> np.ndarray:
    """P(V) of each beat by a logistic regression fitted on the record's own earlier beats,
    pseudo-labelled by the vote's confident calls (NaN until it has ``least`` of each)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    beats = d["beats"]
    width = max((b.inputs.size for b in beats if b.inputs is not None), default=0)  # the model's inputs
    X = np.array([np.zeros(width) if b.inputs is None else np.nan_to_num(b.inputs) for b in beats])
    pv = np.array([np.nan if b.p_vote is None else b.p_vote[V] for b in beats])
    q = np.full(len(beats), np.nan)
    model = None
    for i in range(len(beats)):
        if i and i % refit == 0:
            pos, neg = pv[:i] >= 0.8, pv[:i] <= 0.1
            model = None
            if pos.sum() >= least and neg.sum() >= least:
                rows = np.flatnonzero(pos | neg)
                model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, class_weight="balanced"))
                model.fit(X[rows], pos[rows])
        if model is not None and not np.isnan(pv[i]):
            q[i] = model.predict_proba(X[i : i + 1])[0, 1]
    return q


def reference_of(d: dict) -> list[str]:
    """Each detected beat's matched reference class ("X" unmatched), as ``confusion_of`` matches."""
    test = np.array([b.sample for b in d["beats"]], dtype=np.int64)
    return [ref or "X" for ref in match_reference(d["ref_samples"], d["ref_labels"], test, d["fs"])[0]]


def per_record(data: dict) -> None:
    rows = []
    for spec, d in data.items():
        s = scored({spec: d}, lambda _s, _i, b: b.label)["V"]
        rows.append((spec, s["tp"], s["fn"], s["fp"]))
    print("records with the most missed V beats (record, found, missed, false):",
          ", ".join(f"{r[0]} {r[1]}/{r[2]}/{r[3]}" for r in sorted(rows, key=lambda r: -r[2])[:6]))
    print("records with the most V false positives (record, found, missed, false):",
          ", ".join(f"{r[0]} {r[1]}/{r[2]}/{r[3]}" for r in sorted(rows, key=lambda r: -r[3])[:6]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("records", nargs="*", help="default: the 22 DS1 records and every SVDB record")
    ap.add_argument("--cache", type=Path, help="pickle of the captured beats (made if missing)")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--self-train", action="store_true", help="also the per-patient self-trained stage")
    args = ap.parse_args()
    if args.cache and args.cache.exists():
        data = pickle.loads(args.cache.read_bytes())
    else:
        folder = Path(os.environ.get("ECGMON_DATA", "../shared/data")) / "svdb"
        specs = args.records or [f"mitdb:{r}" for r in DS1] + sorted(f"svdb:{p.stem}" for p in folder.glob("*.hea"))
        with ProcessPoolExecutor(args.jobs) as pool:
            data = dict(zip(specs, pool.map(capture, specs)))
        if args.cache:
            args.cache.write_bytes(pickle.dumps(data))
    print(f"{len(data)} records, {sum(len(d['beats']) for d in data.values())} beats at the daemon's R peaks")
    print(line("shipped (the shape vote)", scored(data, lambda _s, _i, b: b.label)))
    for t in THRESHOLDS:
        print(line(f"model alone, V at P(V) >= {t}",
                   scored(data, lambda _s, _i, b, t=t: b.label if b.p is None else at_threshold(b.p, t))))
    for t in THRESHOLDS:
        print(line(f"shape vote, V at pooled P(V) >= {t}",
                   scored(data, lambda _s, _i, b, t=t: b.label if b.p_vote is None else at_threshold(b.p_vote, t))))
    q = second_stage(data)
    for t in THRESHOLDS:
        def stage(s, i, b, t=t):
            if b.p_vote is None or np.isnan(q[s][i]):
                return b.label
            return at_threshold(np.where(np.arange(len(CLASSES)) == V, q[s][i], b.p_vote), t)
        print(line(f"second stage (held out by fold), V at >= {t}", scored(data, stage)))
    if args.self_train:
        mine = {s: self_trained(d) for s, d in data.items()}
        for t in THRESHOLDS:
            def mixed(s, i, b, t=t):
                if b.p_vote is None or np.isnan(mine[s][i]):
                    return b.label if b.p_vote is None else at_threshold(b.p_vote, t)
                p = b.p_vote.copy()
                p[V] = (p[V] + mine[s][i]) / 2
                return at_threshold(p, t)
            print(line(f"vote and self-trained stage, V at >= {t}", scored(data, mixed)))
    per_record(data)


if __name__ == "__main__":
    main()
