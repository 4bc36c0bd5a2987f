"""Measuring a model trained on several databases: each database's share of the pooled
leave-records-out predictions, and across databases (train on the others, score one), since a
new ward is a new database: other patients, other recorders, other leads."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from ecgmon.models.datasets import by_database, database_of
from ecgmon.scores import class_report

# Trains a fresh model on the first records and returns (labels, probabilities) of the second.
TrainAndPredict = Callable[[list[str], list[str]], tuple[np.ndarray, np.ndarray]]


def _summary(report: dict) -> dict:
    return {k: v for k, v in report.items() if k != "confusion"}


def per_database(
    labels: np.ndarray, probabilities: np.ndarray, records: np.ndarray, classes: Sequence[str]
) -> dict[str, dict]:
    """The pooled predictions' report restricted to each database's rows (confusion included)."""
    dbs = np.array([database_of(r) for r in records]) if len(records) else np.zeros(0, str)
    return {
        db: {"records": int(len(set(records[dbs == db].tolist()))),
             **class_report(labels[dbs == db], probabilities[dbs == db], classes)}
        for db in sorted(set(dbs.tolist()))
    }


def cross_database(records: Sequence[str], classes: Sequence[str], fit: TrainAndPredict) -> dict[str, dict]:
    """For each database: a model trained on every record of the other databases scores all of
    its records. Empty with fewer than two databases."""
    groups = by_database(records)
    if len(groups) < 2:
        return {}
    out = {}
    for db, held in groups.items():
        train = [r for other, rs in groups.items() if other != db for r in rs]
        labels, probabilities = fit(train, held)
        out[db] = {
            "trained_on": sorted({database_of(r) for r in train}),
            "train_records": len(train),
            "records": len(held),
            **_summary(class_report(labels, probabilities, classes)),
        }
    return out


def describe(report: dict, classes: Sequence[str] = ("S", "V")) -> str:
    """``S Se 0.65 +P 0.45, V Se 0.85 +P 0.82``: a one-line view of a report's chosen classes."""
    per = report.get("per_class", {})
    return ", ".join(
        f"{c} Se {per[c]['se']} +P {per[c]['ppv']}" for c in classes if c in per and per[c]["n"]
    )
