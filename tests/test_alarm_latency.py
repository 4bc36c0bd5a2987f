"""A beat alarm's suppression does not depend on how late the beat model answered: the live
daemon hands classes back within a fraction of a second, ``evaluate`` up to ``LAG_S`` (10 s) of
signal later, and both must suppress (or annunciate) the same V-tach alarms. Before, a noise span
found while a class was on its way suppressed the alarm in ``evaluate`` and not live."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ecgmon.config import Config, DataConfig
from ecgmon.evaluate.record_run import LAG_S, run_record
from ecgmon.monitor.model_loader import LoadedModel
from ecgmon.replay.records import load_record
from ecgmon.schema import AlarmMessage


def test_vtach_suppression_is_the_same_however_late_the_classes_come(
    data_dir: Path, beat_model: dict[str, LoadedModel]
) -> None:
    """CUDB cu13 400-460 s: a V-tach run at 46 s, with the noise alarm raised a few seconds later
    (within clear_s). Live timing (0.1 s chunks, classes 0.2 s late) and evaluate's timing
    (2 s chunks, up to 10 s late) give the same V-tach messages: annunciated at once, as the
    live monitor does, since the noise that followed was not known when the run was."""
    rec = load_record("cudb:cu13", DataConfig(folder=str(data_dir), cache="/nonexistent"))
    part = dataclasses.replace(rec, signal=rec.signal[round(400 * rec.fs) : round(460 * rec.fs)])
    config = Config()

    def vtach(chunk_s: float, lag_s: float) -> list[dict]:
        msgs = run_record("cudb:cu13", config, beat_model, chunk_s=chunk_s, record=part, lag_s=lag_s)
        return [
            m.model_dump(exclude={"pub", "seq", "wall", "raised_wall", "id"})
            for m in msgs if isinstance(m, AlarmMessage) and m.alarm == "vtach"
        ]

    live = vtach(0.1, 0.2)
    assert live and live[0]["state"] == "raised" and not live[0]["suppressed"]
    assert any(m["alarm"] == "noise" for m in (
        a.model_dump() for a in run_record("cudb:cu13", config, {}, record=part) if isinstance(a, AlarmMessage)
    ))  # the noise that once suppressed it is there
    assert vtach(2.0, LAG_S) == live
