"""Device calibration of the heart-sound verdict (issue 14): ``ecgmon calibrate pcg`` reads no
label, the daemon and ``evaluate pcg`` say "device not calibrated" without a calibration, refuse
one fitted for another model, and a calibrated verdict does not move when a device shifts and
stretches every score."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from ecgmon.cli import main
from ecgmon.config import Config
from ecgmon.evaluate.pcg import Windows, evaluate_pcg, fit_device, score_windows, verdicts
from ecgmon.models.pcg_data import PcgDataError, folder_recordings
from ecgmon.monitor.dsp.pcg_decision import Calibration, CalibrationError, device_rule
from ecgmon.monitor.model_loader import load_model
from ecgmon.monitor.pcg_pipeline import PcgPipeline
from pcg_model_helpers import make_database, tiny_calibration, tiny_pcg_model  # noqa: F401 (fixtures)
from test_pcg_pipeline import FS, _verdicts, calibrated

pytestmark = pytest.mark.filterwarnings(r"ignore:`torch\.jit\.\w+` is deprecated:DeprecationWarning")


def _device(tmp_path: Path, data_dir: Path) -> Path:
    folder = tmp_path / "device"
    make_database(folder, data_dir / "pcg2016" / "training-d", 30)
    return folder


def test_calibrate_reads_no_label_and_fits_the_recording_scores(
    tiny_pcg_model: Path, tiny_calibration: Path, data_dir: Path, tmp_path: Path
) -> None:
    cal = json.loads(tiny_calibration.read_text())
    model = load_model(tiny_pcg_model, "cpu")
    assert cal["model_sha256"] == model.card["sha256"].lower() and cal["recordings"] >= 20
    # The median and IQR are those of the recordings' scores as evaluate pcg gets them.
    folder = _device(tmp_path, data_dir)
    result = evaluate_pcg(folder, tiny_pcg_model, tmp_path / "out", print, device="cpu", progress=False,
                          calibration="none")
    scores = np.array([r["p_abnormal"] for r in result["recordings"] if r["p_abnormal"] is not None])
    assert len(scores) == cal["recordings"]
    q25, med, q75 = np.percentile(scores, [25, 50, 75])
    assert cal["median"] == pytest.approx(med, abs=2e-4) and cal["iqr"] == pytest.approx(q75 - q25, abs=4e-4)
    # Without a calibration every recording is uncertain, "device not calibrated" (or quality).
    assert result["overall"]["coverage"] == 0
    assert {r["reason"] for r in result["recordings"]} <= {"device not calibrated", "quality"}
    # evaluate pcg's default calibrates the folder on its own recordings: the same calibration
    # as the file, so the same verdicts as with --calibration FILE.
    own = evaluate_pcg(folder, tiny_pcg_model, tmp_path / "own", print, device="cpu", progress=False)
    assert own["calibrations"]["device"] == {k: cal[k] for k in ("median", "iqr", "recordings")}
    filed = evaluate_pcg(folder, tiny_pcg_model, tmp_path / "filed", print, device="cpu", progress=False,
                         calibration=tiny_calibration)
    assert [(r["verdict"], r["reason"]) for r in own["recordings"]] == \
        [(r["verdict"], r["reason"]) for r in filed["recordings"]]
    assert own["overall"]["coverage"] > 0
    # Labels flipped, then none at all: the same calibration.
    ref = folder / "REFERENCE.csv"
    ref.write_text("".join(f"{n},{'-1' if l == '1' else '1'}\n" for n, l in
                           (line.split(",") for line in ref.read_text().split())))
    for step in ("flipped", "removed"):
        out = tmp_path / f"{step}.json"
        assert main(["calibrate", "pcg", str(folder), "--out", str(out), "--model", str(tiny_pcg_model),
                     "--device", "cpu"]) == 0
        again = json.loads(out.read_text())
        assert (again["median"], again["iqr"], again["recordings"]) == (cal["median"], cal["iqr"], cal["recordings"])
        ref.unlink(missing_ok=True)


def test_the_daemon_without_calibration_says_device_not_calibrated(tiny_pcg_model: Path, data_dir: Path) -> None:
    model = load_model(tiny_pcg_model, "cpu")
    assert model.card["decision"]["z_threshold"] is not None  # the card rules on the calibrated score
    x, _ = sf.read(data_dir / "pcg2016" / "training-a" / "a0001.flac", dtype="float32")
    msgs = _verdicts(model, x, Config())
    assert msgs and all(m.label == "uncertain" and m.probability is None and not m.calibrated for m in msgs)
    good = [m for m in msgs if m.windows]
    assert good and all(m.reason == "device not calibrated" and m.p_abnormal is not None for m in good)


def test_a_calibration_for_another_model_is_refused(tiny_pcg_model: Path, tiny_calibration: Path,
                                                     data_dir: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.json"
    data = json.loads(tiny_calibration.read_text())
    other.write_text(json.dumps({**data, "model_sha256": "0" * 64}))
    model = load_model(tiny_pcg_model, "cpu")
    with pytest.raises(CalibrationError, match="not this model"):
        PcgPipeline("bed1", FS, calibrated(other), model)
    with pytest.raises(PcgDataError, match="not this model"):
        evaluate_pcg(_device(tmp_path, data_dir), tiny_pcg_model, tmp_path / "out", print, device="cpu",
                     progress=False, calibration=other)
    other.write_text(json.dumps({**data, "min_quality": 0.3}))  # scores averaged over other windows
    with pytest.raises(CalibrationError, match="min_quality 0.3"):
        PcgPipeline("bed1", FS, calibrated(other), model)
    other.write_text(json.dumps({**data, "format": "something else"}))
    with pytest.raises(CalibrationError, match="not a heart-sound calibration"):
        Calibration.load(other, model.card["sha256"])
    # Fewer than 20 usable recordings: calibrate refuses, exit 2 with one line.
    few = tmp_path / "few"
    make_database(few, data_dir / "pcg2016" / "training-d", 6)
    assert main(["calibrate", "pcg", str(few), "--out", str(tmp_path / "few.json"),
                 "--model", str(tiny_pcg_model), "--device", "cpu"]) == 2
    assert not (tmp_path / "few.json").exists()


def test_a_calibrated_verdict_does_not_move_with_the_device(tiny_pcg_model: Path, data_dir: Path,
                                                           tmp_path: Path) -> None:
    """The same real recordings heard by a device that shifts and squeezes every score (another
    stethoscope's colour, as far as an affine map goes): calibrated on its own recordings, every
    verdict is the same; on the raw threshold they are not."""
    model = load_model(tiny_pcg_model, "cpu")
    folder = _device(tmp_path, data_dir)
    recs = [("dev", n, p, lab) for n, p, lab in folder_recordings(folder, print)]
    a = score_windows(recs, model, print, False, 50.0)
    b = [Windows(r.database, r.name, r.label, 0.4 * r.p + 0.55, r.q) for r in a]
    decision = model.card["decision"]
    mq = Config().audio.min_quality
    va = verdicts(a, device_rule(decision, fit_device(a, model, mq, "a"), mq))
    vb = verdicts(b, device_rule(decision, fit_device(b, model, mq, "b"), mq))
    assert [(v.verdict, v.reason) for v in va] == [(v.verdict, v.reason) for v in vb]
    assert sum(v.verdict != "uncertain" for v in va) >= 10
    raw = dict(decision, z_threshold=None)
    ra, rb = verdicts(a, device_rule(raw, None, mq)), verdicts(b, device_rule(raw, None, mq))
    assert [v.verdict for v in ra] != [v.verdict for v in rb]


def test_the_shipped_model_rules_on_the_calibrated_score(tiny_calibration: Path, data_dir: Path,
                                                         tmp_path: Path) -> None:
    """The shipped card states a device rule and figures that meet its own floor on every
    held-out database; calibrated on a device's recordings, the daemon gives verdicts with it,
    and it refuses the tiny model's calibration."""
    from test_pcg_model_evaluate import SHIPPED

    model = load_model(SHIPPED, device="cpu")
    decision = model.card["decision"]
    assert decision["z_threshold"] is not None and "z_margin" in decision
    for db, fold in model.card["metrics"]["folds"].items():
        assert fold["sp"] >= 0.5 and fold["coverage"] >= 0.7, db
        assert fold["rule"]["calibration"]["recordings"] >= 50  # fitted on the held-out database itself
    with pytest.raises(CalibrationError, match="not this model"):
        PcgPipeline("bed1", FS, calibrated(tiny_calibration), model)
    cal = tmp_path / "shipped.json"
    assert main(["calibrate", "pcg", str(_device(tmp_path, data_dir)), "--out", str(cal), "--device", "cpu"]) == 0
    x, _ = sf.read(data_dir / "pcg2016" / "training-d" / "d0001.flac", dtype="float32")
    msgs = _verdicts(model, x, calibrated(cal))
    assert msgs and all(m.calibrated for m in msgs) and msgs[-1].reason != "device not calibrated"
    assert all(m.reason == "device not calibrated" for m in _verdicts(model, x, Config()) if m.windows)
