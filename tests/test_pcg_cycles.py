"""The cycle rule live (issue 14, attempt I in the daemon): the pipeline's cycle features equal
the offline ones for a recording fed in chunks, the batcher runs them off the event loop, a
broken rule file or calibration is a clear error or 'uncertain', never a crash, a calibration
with the cycle part round-trips, and the fold rule that never saw training-d keeps its figures
on d through ``evaluate pcg --cycles`` (the daemon's features and decision)."""

from __future__ import annotations

import asyncio
from collections import Counter
import json
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from ecgmon.commands.common import CommandError
from ecgmon.commands.run import _check_calibration
from ecgmon.config import Config
from ecgmon.evaluate.pcg import cycle_features, evaluate_cycles, fit_cycle_device
from ecgmon.evaluate.record_run import run_jobs
from ecgmon.models.pcg_data import PcgDataError, folder_recordings
from ecgmon.monitor.batcher import InferenceBatcher
from ecgmon.monitor.daemon import Daemon
from ecgmon.monitor.dsp import pcg_segment as P
from ecgmon.monitor.dsp.pcg_cycles import CycleRule, CycleRuleError
from ecgmon.monitor.dsp.pcg_decision import Calibration, CalibrationError, CycleCalibration, decide_cycles
from ecgmon.monitor.model_set import load_models, model_path
from ecgmon.monitor.pcg_cycle_model import CycleModel
from ecgmon.monitor.pcg_pipeline import PcgPipeline
from ecgmon.monitor.sources.audio_file import AudioFileSource
from ecgmon.schema import PcgClassMessage
from pcg_model_helpers import make_database
from test_pcg_pipeline import calibrated, feed
from zmq_helpers import daemon_messages

RULE_D = Path(__file__).parent / "pcg_cycles_rule_d.json"
# the same fold scored as the families' mean (pcg8 P8f, what the shipped rule does)
RULE_D_FAM = Path(__file__).parent / "pcg_cycles_rule_d_fam.json"
FS = 2000


def _audio(data_dir: Path, rec: str) -> np.ndarray:
    x, fs = sf.read(data_dir / "pcg2016" / f"{rec}.flac", dtype="float32")
    assert fs == FS
    return x


@pytest.fixture(scope="module")
def model() -> CycleModel:
    return CycleModel.load(RULE_D)


@pytest.fixture(scope="module")
def device_cal(model: CycleModel, data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """training-b as one device: its first 24 recordings' cycle features (8 s each, no label
    read), saved with a CNN part as ``ecgmon calibrate pcg --cycles`` writes it."""
    folder = data_dir / "pcg2016" / "training-b"
    recs = [("b", *r) for r in folder_recordings(folder, print)[:24]]
    cyc = fit_cycle_device(cycle_features(recs, model.rule, print, False), model.rule)
    path = tmp_path_factory.mktemp("cal") / "steth.json"
    Calibration(0.5, 0.1, 24, "0" * 64, "cnn", "b", 0.5, cyc.to_json()).save(path)
    return path


def _run(pipe: PcgPipeline, x: np.ndarray, chunk: int, model: CycleModel) -> tuple[list, list[PcgClassMessage]]:
    feed(pipe, x, chunk)
    jobs = pipe.take_jobs() + pipe.finish()
    msgs = run_jobs(jobs, {"pcg_cycles": model})
    return jobs, [m for m in msgs if isinstance(m, PcgClassMessage)]


@pytest.mark.parametrize("chunk", [313, 4000])
def test_live_features_equal_offline_features(chunk: int, model: CycleModel, device_cal: Path,
                                              data_dir: Path) -> None:
    x = _audio(data_dir, "training-a/a0007")[: 23 * FS + 123]  # 23.06 s: four updates, then the end
    pipe = PcgPipeline("bed1", FS, calibrated(device_cal), None, model)
    jobs, verdicts = _run(pipe, x, chunk, model)
    ends = [5, 10, 15, 20]
    assert len(jobs) == len(ends) + 1 and all(j.model == "pcg_cycles" for j in jobs)
    cal = CycleCalibration.from_calibration(Calibration.load(device_cal), device_cal, model.rule.sha256)
    rule = model.rule
    for job, end, msg in zip(jobs, [e * FS for e in ends] + [len(x)], verdicts):
        # the job holds exactly the audio so far (the rule's span reaches back further)...
        padded, length = job.inputs
        assert int(length[0]) == end and np.array_equal(padded[:end], x[:end])
        # ...and its verdict is the offline one on that audio, feature for feature
        values, cycles = rule.features(x[:end])
        assert msg.time_s == round(end / FS, 3)
        v = decide_cycles(values, cycles, rule.columns, rule.signs, rule.z_threshold, rule.z_margin, cal)
        assert (msg.label, msg.reason, msg.windows) == (v.label, v.reason, cycles)
        assert msg.calibrated and msg.probability is None
        if v.score is not None:
            assert msg.p_abnormal == pytest.approx(v.score, abs=1e-4)
            assert msg.threshold == pytest.approx(v.threshold, abs=1e-6)
    # at the end the features are those of the whole recording, as bench/pcg_cycles.py has them
    offline, _ = P.recording_features(x, rule.emission)
    row = model(*[np.stack([c]) for c in jobs[-1].inputs]).numpy()[0]
    assert np.isfinite(offline).all() and np.array_equal(row[:-1], offline)
    assert verdicts[-1].label in ("normal", "abnormal") and verdicts[-1].windows >= 10


def test_the_batcher_runs_the_rule_off_the_loop(model: CycleModel, data_dir: Path) -> None:
    x = _audio(data_dir, "training-b/b0001")

    async def go() -> np.ndarray:
        batcher = InferenceBatcher(model, 8, 5.0, model.device, "pcg_cycles",
                                   item_shapes=[s[1:] for s in model.input_shapes(1)])
        try:
            return await batcher.submit(*model.item(x))
        finally:
            await batcher.close()

    row = asyncio.run(go())
    values, cycles = model.rule.features(x)
    assert np.array_equal(row[:-1], values, equal_nan=True) and row[-1] == cycles


async def test_the_daemon_publishes_the_offline_verdict(model: CycleModel, device_cal: Path, data_dir: Path,
                                                       endpoint: str) -> None:
    """A whole recording replayed through the daemon (file source, pipeline, the rule's batcher
    in its thread, publisher): a verdict every 5 s and at the end, the last one that of the
    offline features of the whole recording."""
    path = data_dir / "pcg2016" / "training-a" / "a0007.flac"
    config = calibrated(device_cal)
    config.replay.speed = 0
    live = await daemon_messages(endpoint, lambda pub: Daemon(config, [AudioFileSource(str(path), config)], pub,
                                                              {"pcg_cycles": model}), ("pcg_class.",), 60)
    verdicts = [m for m in live if isinstance(m, PcgClassMessage)]
    x = _audio(data_dir, "training-a/a0007")
    assert [m.time_s for m in verdicts] == [5.0 * k for k in range(1, 8)] + [round(len(x) / FS, 3)]
    rule = model.rule
    cal = CycleCalibration.from_calibration(Calibration.load(device_cal), device_cal, rule.sha256)
    values, cycles = rule.features(x)
    v = decide_cycles(values, cycles, rule.columns, rule.signs, rule.z_threshold, rule.z_margin, cal)
    last = verdicts[-1]
    assert (last.label, last.reason, last.windows, last.calibrated) == (v.label, v.reason, cycles, True)
    assert v.score is not None and last.p_abnormal == pytest.approx(v.score, abs=1e-4)


def test_an_http_upload_gets_the_cycle_verdict(model: CycleModel, device_cal: Path, data_dir: Path) -> None:
    """POST /v1/analyze/pcg's worker with the daemon's models: the cycle rule's verdict at the end."""
    from ecgmon.http.analyze import Context, PcgRequest, analyze_pcg
    from ecgmon.http.uploads import Part

    path = data_dir / "pcg2016" / "training-a" / "a0007.flac"
    answer = json.loads(analyze_pcg(PcgRequest(Part(path.name, path.read_bytes())),
                                    Context(calibrated(device_cal), {"pcg_cycles": model})))
    rule = model.rule
    cal = CycleCalibration.from_calibration(Calibration.load(device_cal), device_cal, rule.sha256)
    values, cycles = rule.features(_audio(data_dir, "training-a/a0007"))
    v = decide_cycles(values, cycles, rule.columns, rule.signs, rule.z_threshold, rule.z_margin, cal)
    verdict = answer["verdict"]
    assert (verdict["label"], verdict["reason"], verdict["windows"], verdict["calibrated"]) == \
        (v.label, v.reason, cycles, True)
    assert v.score is not None and verdict["p_abnormal"] == pytest.approx(v.score, abs=1e-4)


def test_no_calibration_or_none_for_the_rule_is_uncertain(model: CycleModel, tmp_path: Path, data_dir: Path) -> None:
    x = _audio(data_dir, "training-a/a0007")[: 11 * FS]
    _, verdicts = _run(PcgPipeline("bed1", FS, Config(), None, model), x, 1000, model)
    assert verdicts and {(m.label, m.reason, m.calibrated) for m in verdicts} == \
        {("uncertain", "device not calibrated", False)}
    # a calibration file from before the cycle rule (no cycle part): the same, no crash
    old = tmp_path / "old.json"
    Calibration(0.5, 0.1, 24, "0" * 64).save(old)
    assert "cycles" not in json.loads(old.read_text())
    _, verdicts = _run(PcgPipeline("bed1", FS, calibrated(old), None, model), x, 1000, model)
    assert {(m.label, m.reason) for m in verdicts} == {("uncertain", "device not calibrated")}
    _check_calibration(calibrated(old), {"pcg_cycles": model})  # a warning at the start, no error
    # silence: no cycles, 'uncertain: quality'
    _, verdicts = _run(PcgPipeline("bed1", FS, calibrated(old), None, model), np.zeros(6 * FS, np.float32), 1000,
                       model)
    assert [(m.label, m.reason, m.windows) for m in verdicts] == [("uncertain", "quality", 0)] * 2


def test_calibration_with_the_cycle_part_round_trips(device_cal: Path, model: CycleModel, tmp_path: Path) -> None:
    cal = Calibration.load(device_cal)
    assert cal.cycles is not None and cal.cycles["recordings"] >= 20
    again = tmp_path / "again.json"
    cal.save(again)
    assert Calibration.load(again) == cal
    assert json.loads(again.read_text()) == json.loads(device_cal.read_text())
    cyc = CycleCalibration.from_calibration(Calibration.load(again), again, model.rule.sha256)
    assert cyc is not None and len(cyc.feature_median) == len(P.FEATURE_NAMES) == len(cyc.feature_iqr)
    assert cyc.to_json() == cal.cycles
    # fitted for another rule file: refused with a message saying what to do
    with pytest.raises(CalibrationError, match="run ecgmon calibrate pcg again"):
        CycleCalibration.from_calibration(cal, again, "f" * 64)
    # a cycle part that lost a field: a clear error, at the daemon's start
    broken = tmp_path / "broken.json"
    data = json.loads(again.read_text())
    del data["cycles"]["score_iqr"]
    broken.write_text(json.dumps(data))
    with pytest.raises(CalibrationError, match="malformed cycle calibration"):
        CycleCalibration.from_calibration(Calibration.load(broken), broken, model.rule.sha256)
    # one median short, or a NaN (a NaN score would compare as "normal"): refused, not misread
    for field, value in (("feature_median", cal.cycles["feature_median"][:-1]),
                         ("feature_iqr", [float("nan")] + cal.cycles["feature_iqr"][1:])):
        odd = tmp_path / f"odd-{field}.json"
        odd.write_text(json.dumps({**data, "cycles": {**cal.cycles, field: value}}))
        with pytest.raises(CalibrationError, match="not one per cycle feature|not a number"):
            CycleCalibration.from_calibration(Calibration.load(odd), odd, model.rule.sha256)
    config = calibrated(broken)
    with pytest.raises(CommandError, match=r"\[audio\] calibration: .*malformed"):
        _check_calibration(config, {"pcg_cycles": model})
    with pytest.raises(ValueError, match="malformed"):
        PcgPipeline("bed1", FS, config, None, model)


def _bad_rules(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    good = json.loads(RULE_D.read_text())
    out = {"missing": (tmp_path / "nope.json", "cannot read"), "not json": (tmp_path / "x.json", "cannot read")}
    out["not json"][0].write_text("{ not json")
    cases = {
        "other format": ({**good, "format": "something else"}, "not a heart-sound cycle rule"),
        "no threshold": ({k: v for k, v in good.items() if k != "z_threshold"}, "malformed"),
        "renamed feature": ({**good, "features": [{**good["features"][0], "name": "cell S1 1-2"}]}, "do not match"),
        "emission shape": ({**good, "emission": good["emission"][:3]}, "9 x 4"),
        "sign 2": ({**good, "features": [{**good["features"][0], "sign": 2}]}, "signs"),
        "weight 0": ({**good, "features": [{**good["features"][0], "weight": 0}]}, "weights"),
    }
    for name, (data, match) in cases.items():
        path = tmp_path / f"{name.replace(' ', '_')}.json"
        path.write_text(json.dumps(data))
        out[name] = (path, match)
    return out


def test_a_broken_rule_file_is_a_clear_error_not_a_crash(tmp_path: Path, data_dir: Path) -> None:
    for name, (path, match) in _bad_rules(tmp_path).items():
        with pytest.raises(CycleRuleError, match=match):
            CycleRule.load(path)
        # the daemon goes on without it (one line saying why), as with a broken model file
        config = Config().models.model_copy(update={"pcg_cycles": str(path), "beat": "", "segment": "", "pcg": ""})
        models, errors = load_models(config)
        assert "pcg_cycles" not in models and len(errors) == 1 and errors[0].startswith("[models] pcg_cycles"), name
        with pytest.raises(PcgDataError, match=match):
            evaluate_cycles(data_dir / "pcg2016" / "training-d", path, tmp_path / "out", print, progress=False)


def test_held_out_training_d_through_the_daemons_path(data_dir: Path, tmp_path: Path) -> None:
    """The fold rule that never saw training-d (bench/pcg_cycles.py --fold-rule training-d,
    learnt on a, b, e) on every d recording through ``evaluate pcg --cycles``: the daemon's
    features of each recording's last 60 s, d calibrated on its own recordings (no label
    read), ``decide_cycles``. Measured: Se 0.381, Sp 0.800, MAcc 0.590, coverage 0.84, AUC
    0.659 (as the bench's I row); the bounds leave room for harmless changes, not for a broken
    segmenter, calibration or decision."""
    result = evaluate_cycles(data_dir / "pcg2016" / "training-d", RULE_D, tmp_path / "out", print, progress=False)
    d = result["databases"]["training-d"]
    assert d["recordings"] == 55 and result["trained_on"] == []
    assert d["coverage"] >= 0.7
    assert d["sp"] >= 0.6 and d["macc"] >= 0.56
    assert d["auc"] >= 0.62


def test_the_shipped_rule_loads_by_name_and_says_how_it_was_made() -> None:
    config = Config().models.model_copy(update={"pcg_cycles": "pcg-cycles.json", "beat": "", "segment": "", "pcg": ""})
    models, errors = load_models(config)
    assert errors == [] and isinstance(models["pcg_cycles"], CycleModel)
    card = models["pcg_cycles"].rule.card
    assert card["trained_on"] == ["training-a", "training-b", "training-d", "training-e"]
    assert "--write-rule" in card["command"]
    # the outer folds' figures it carries: what README's I-live table shows
    figures = card["held_out_figures"]
    assert sorted(figures) == card["trained_on"]
    assert np.mean([f["macc"] for f in figures.values()]) == pytest.approx(0.692, abs=0.001)
    assert min(f["sp"] for f in figures.values()) >= 0.5 and min(f["coverage"] for f in figures.values()) >= 0.7
    assert card["score"] == "family_mean" and "--family-mean" in card["command"]


@pytest.mark.parametrize("path", [RULE_D_FAM, model_path("pcg-cycles.json")])
def test_a_weighted_rule_scores_the_families_mean(path: Path) -> None:
    """A rule whose features carry weights (bench/pcg_cycles.py --family-mean) is scored by the
    daemon's signed mean as the mean over the feature families of each family's signed mean."""
    card = json.loads(Path(path).read_text())
    rule = CycleRule.load(path)
    z = np.random.default_rng(0).normal(size=(5, len(P.FEATURE_NAMES)))
    fams = sorted({f["family"] for f in card["features"]})
    assert len(fams) == 2
    want = np.mean([np.mean([z[:, f["index"]] * f["sign"] for f in card["features"] if f["family"] == fam], 0)
                    for fam in fams], 0)
    assert (z[:, rule.columns] * rule.signs).mean(1) == pytest.approx(want)
    plain = CycleRule.load(RULE_D)  # no weights: the plain signed mean, as before
    assert set(np.abs(plain.signs).tolist()) == {1.0}


def test_held_out_training_d_families_mean_through_the_daemons_path(data_dir: Path, tmp_path: Path) -> None:
    """The fold without training-d scored as the families' mean (bench/pcg_cycles.py --family-mean
    --fold-rule training-d) through ``evaluate pcg --cycles``. Measured: Se 0.696, Sp 0.789, MAcc
    0.743, coverage 0.76, AUC 0.693, as the bench's P8f row for d."""
    result = evaluate_cycles(data_dir / "pcg2016" / "training-d", RULE_D_FAM, tmp_path / "out", print,
                             progress=False)
    d = result["databases"]["training-d"]
    assert d["recordings"] == 55
    assert d["coverage"] >= 0.7
    assert d["sp"] >= 0.7 and d["macc"] >= 0.7
    assert d["auc"] >= 0.66


# -- the cycle rule as the daemon's default verdict ---------------------------------------------


@pytest.fixture(scope="module")
def default_device(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """training-d as one stethoscope, calibrated as a user calibrates for the default verdict:
    ``ecgmon calibrate pcg FOLDER --out CAL.json --model none`` on 30 of its recordings (their
    REFERENCE.csv beside them, not read; no --cycles: the configured rule); and one d recording
    that is not among them."""
    from ecgmon.cli import main

    root = tmp_path_factory.mktemp("default-device")
    d = data_dir / "pcg2016" / "training-d"
    used = set(make_database(root / "d", d, 30))
    out = root / "cal.json"
    assert main(["calibrate", "pcg", str(root / "d"), "--out", str(out), "--model", "none"]) == 0
    other = next(line.split(",")[0] for line in (d / "REFERENCE.csv").read_text().split()
                 if line.split(",")[0] not in used)
    return out, d / f"{other}.flac"


async def test_the_default_config_gives_the_cycle_verdict(default_device: tuple[Path, Path], endpoint: str) -> None:
    """The default config's daemon on a real pcg2016 recording its stethoscope's calibration never
    saw: every pcg_class is the shipped cycle rule's (one every 5 s and at the end, the last one
    the offline decision on the whole recording), the CNN is loaded but gives none, the heart
    rate and quality go on, and the dashboard shows it as cycles and a score."""
    from test_dashboard import frames_of, render
    from ecgmon.dashboard.state import DashboardState
    from ecgmon.schema import PcgMessage

    cal_path, path = default_device
    assert Config().models.pcg_cycles == "pcg-cycles.json"
    cal = json.loads(cal_path.read_text())
    assert cal["model_sha256"] == "" and cal["median"] is None  # the rule alone needs no model part
    config = calibrated(cal_path)
    config.replay.speed = 0
    models, errors = load_models(config.models)
    assert errors == [] and models["pcg_cycles"].name == "pcg-cycles" and "pcg" in models
    assert cal["cycles"]["rule_sha256"] == models["pcg_cycles"].rule.sha256 and cal["cycles"]["recordings"] >= 20
    with pytest.raises(CalibrationError, match="cycle rule only"):  # with pcg_cycles = "" it is refused, not misread
        Calibration.load(cal_path, models["pcg"].card["sha256"])
    live = await daemon_messages(endpoint, lambda pub: Daemon(config, [AudioFileSource(str(path), config)], pub,
                                                              models), ("pcg.", "pcg_class."), 120)
    verdicts = [m for m in live if isinstance(m, PcgClassMessage)]
    x, _ = sf.read(path, dtype="float32")
    assert [m.time_s for m in verdicts] == [5.0 * k for k in range(1, int(len(x) / FS / 5) + 1)] + \
        [round(len(x) / FS, 3)]
    assert {m.method for m in verdicts} == {"cycles"} and all(m.probability is None for m in verdicts)
    rule = models["pcg_cycles"].rule
    part = CycleCalibration.from_calibration(Calibration.load(cal_path), cal_path, rule.sha256)
    values, cycles = rule.features(x)
    v = decide_cycles(values, cycles, rule.columns, rule.signs, rule.z_threshold, rule.z_margin, part)
    last = verdicts[-1]
    assert (last.label, last.reason, last.windows, last.calibrated) == (v.label, v.reason, cycles, True)
    assert cycles >= 3 and v.score is not None and last.p_abnormal == pytest.approx(v.score, abs=1e-4)
    updates = [m for m in live if isinstance(m, PcgMessage)]
    assert all(m.quality is not None for m in updates)
    assert all(m.hr_bpm is not None for m in updates if m.time_s >= 5.0)  # the rate needs its first 5 s
    # The dashboard, rendered as a terminal shows it: cycles and a score, no windows, no percentage.
    st = DashboardState([("tcp://127.0.0.1:1", None)])
    now, wall, seq = time.monotonic(), time.time(), Counter[str]()
    for m in live:
        st.receive(0, frames_of(m, seq[m.topic]), now, wall)
        seq[m.topic] += 1
    text = "\n".join(render(st, 100, 24))
    line = next(t for t in text.splitlines() if "PCG" in t)
    assert f"({last.windows} cycles)" in line and "windows" not in line and "%" not in line, line
    if last.label == "uncertain":
        assert f"uncertain: {last.reason}" in line
    else:
        sign = "≥" if last.label == "abnormal" else "<"
        assert f"{last.label} score {last.p_abnormal:+.2f} {sign} {last.threshold:+.2f}" in line, line


def test_run_warns_when_the_stethoscope_is_not_calibrated_for_the_rule(data_dir: Path, tmp_path: Path,
                                                                        free_port: int) -> None:
    """``ecgmon run --pcg FILE`` with the default config and no calibration says at the start, in
    one warning, that every verdict will be 'uncertain: device not calibrated' and how to
    calibrate; with a calibration holding only the model's part it says so too."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "ECGMON_CONFIG"}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)
    wav = data_dir / "pcg2016" / "training-d" / "d0001.flac"
    cnn_only = tmp_path / "cnn-only.json"
    Calibration(0.5, 0.1, 24, "0" * 64).save(cnn_only)
    for extra, needle in (([], "no [audio] calibration"), (["--pcg-calibration", str(cnn_only)],
                                                            "has no part for the cycle rule pcg-cycles")):
        proc = subprocess.run(
            [sys.executable, "-m", "ecgmon.cli", "run", "--headless", "--no-archive", "--pcg", str(wav),
             "--speed", "0", "--endpoint", f"tcp://127.0.0.1:{free_port}", "--control", "", *extra],
            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=180,
        )
        assert proc.returncode == 0, proc.stderr
        warnings = [line for line in proc.stderr.splitlines() if "device not calibrated" in line]
        assert len(warnings) == 1 and needle in warnings[0] and "ecgmon calibrate pcg" in warnings[0], proc.stderr


def test_calibrate_writes_the_rules_part_when_the_models_cannot_be_fitted(data_dir: Path, tmp_path: Path,
                                                                          capsys) -> None:
    """With the default config a device whose recordings give the CNN no window (4.8 s cuts of
    30 real d recordings: its windows are 5 s) still gets the default verdict's calibration, with
    a warning that the model has no part."""
    from ecgmon.cli import main

    folder = tmp_path / "short"
    make_database(folder, data_dir / "pcg2016" / "training-d", 30)
    for f in folder.glob("*.flac"):
        x, fs = sf.read(f, dtype="float32")
        f.unlink()
        sf.write(f, x[: int(4.8 * fs)], fs)
    out = tmp_path / "cal.json"
    code = main(["calibrate", "pcg", str(folder), "--out", str(out), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "no part for the heart-sound model pcg-mel-cnn" in err
    cal = json.loads(out.read_text())
    assert cal["model_sha256"] == "" and cal["cycles"]["recordings"] >= 20
