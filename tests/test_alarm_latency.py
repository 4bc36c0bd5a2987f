"""A beat alarm (and its suppression) does not depend on how late the beat model answered: the live
daemon hands classes back within a fraction of a second, ``evaluate`` up to ``LAG_S`` (10 s) of
signal later, and both must raise, suppress (or annunciate) and clear the same alarms. Before, a
noise span found while a class was on its way suppressed a V-tach alarm in ``evaluate`` and not
live, and a beat met the template its late-classified predecessors had taught."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ecgmon.config import Config, DataConfig
from ecgmon.evaluate.record_run import LAG_S, run_record
from ecgmon.monitor.alarms.engine import BEAT_KINDS
from ecgmon.monitor.model_loader import LoadedModel
from ecgmon.replay.records import load_record
from ecgmon.schema import AlarmMessage


def test_beat_alarms_are_the_same_however_late_the_classes_come(
    data_dir: Path, beat_model: dict[str, LoadedModel]
) -> None:
    """CUDB cu13 400-460 s: tachycardia, couplets and runs of PVCs, noise at 21-28 s, flutter,
    clipping at 44-48 s, and a 13-beat run from 43.6 s whose alarm falls within clear_s of the
    clipping. Live timing (0.1 s chunks, classes 0.2 s late) and evaluate's timing (2 s chunks,
    up to 10 s late) give the same beat alarms, suppressed or not, at the same signal times
    (before the suppression fix the run at 46 s, then V-tach, was suppressed only with
    evaluate's timing; before the template and clearing fixes, couplets came and went with it)."""
    rec = load_record("cudb:cu13", DataConfig(folder=str(data_dir), cache="/nonexistent"))
    part = dataclasses.replace(rec, signal=rec.signal[round(400 * rec.fs) : round(460 * rec.fs)])
    config = Config()

    def beat_alarms(chunk_s: float, lag_s: float) -> list[str]:
        msgs = run_record("cudb:cu13", config, beat_model, chunk_s=chunk_s, record=part, lag_s=lag_s)
        return sorted(
            repr(m.model_dump(exclude={"pub", "seq", "wall", "raised_wall", "id"}))
            for m in msgs if isinstance(m, AlarmMessage) and m.alarm in BEAT_KINDS
        )

    live = beat_alarms(0.1, 0.2)
    raised = [m for m in live if "'state': 'raised'" in m]
    assert any("'suppressed': True" in m for m in raised) and any("'suppressed': False" in m for m in raised)
    assert beat_alarms(2.0, LAG_S) == live
