"""The heart-sound pipeline: messages that do not depend on chunking, gaps said, model windows
(5 s, 50 % overlap, raw audio) and the recording-level verdict from a real trained model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from ecgmon.chunk import Chunk
from ecgmon.config import Config
from ecgmon.monitor.model_loader import load_model
from ecgmon.monitor.pcg_pipeline import PcgPipeline
from ecgmon.schema import EventMessage, PcgClassMessage, PcgMessage
from pcg_model_helpers import tiny_calibration, tiny_pcg_model  # noqa: F401 (fixtures)

FS = 2000.0


def audio(data_dir: Path, name: str = "a0001") -> np.ndarray:
    x, _ = sf.read(data_dir / "pcg2016" / "training-a" / f"{name}.flac", dtype="float32")
    return x


def feed(pipe: PcgPipeline, x: np.ndarray, chunk: int, start: int = 0) -> list:
    out = []
    for i in range(0, x.size, chunk):
        out += pipe.feed(Chunk("bed1", FS, ("pcg",), start + i, x[i : i + chunk].reshape(-1, 1)))
    return out


@pytest.mark.parametrize("chunk", [37, 2000])
def test_messages_do_not_depend_on_chunking(chunk: int, data_dir: Path) -> None:
    x = audio(data_dir)[:30000]
    whole = feed(PcgPipeline("bed1", FS, Config()), x, x.size)
    parts = feed(PcgPipeline("bed1", FS, Config()), x, chunk)
    assert [m.model_dump() for m in parts] == [m.model_dump() for m in whole]
    pcg = [m for m in whole if isinstance(m, PcgMessage)]
    assert len(pcg) == 30  # one every 0.5 s
    env = np.concatenate([m.envelope for m in pcg])
    assert env.size == 750 and [m.start for m in pcg] == list(range(0, 750, 25))
    assert sum(len(m.s1_s) for m in pcg) >= 12 and pcg[-1].hr_bpm is not None


def test_rate_is_unknown_once_the_heart_sounds_stop(data_dir: Path) -> None:
    x = audio(data_dir)[:24000]
    pcg = [m for m in feed(PcgPipeline("bed1", FS, Config()), np.concatenate([x, np.zeros(10000, np.float32)]), 1000)
           if isinstance(m, PcgMessage)]
    playing = [m.hr_bpm for m in pcg if 6 <= m.time_s < 12]
    assert all(r is not None and 50 <= r <= 120 for r in playing)
    assert [m.hr_bpm for m in pcg if m.time_s >= 15] == [None] * 4


def test_gaps_are_filled_and_said(data_dir: Path) -> None:
    x = audio(data_dir)[:20000]
    pipe = PcgPipeline("bed1", FS, Config())
    out = feed(pipe, x[:10000], 1000, start=500)
    out += feed(pipe, x[10000:], 1000, start=500 + 10000 + 300)  # 300 samples lost
    gaps = [m for m in out if isinstance(m, EventMessage)]
    assert [m.code for m in gaps] == ["discontinuity"] and "filled with silence" in gaps[0].text
    assert pipe.position == 500 + 20000 + 300
    # Times are on the source's clock: the first message starts at sample 500.
    assert next(m for m in out if isinstance(m, PcgMessage)).time_s == pytest.approx(0.25)



def test_a_splice_event_names_the_real_samples(data_dir: Path) -> None:
    """Issue 12, reproduction 10: the event said 'expected N' with N the chunk's own start."""
    x = audio(data_dir)[:20000]
    pipe = PcgPipeline("bed1", FS, Config())
    feed(pipe, x[:10000], 1000)
    later = 10000 + int(3600 * FS)
    out = feed(pipe, x[10000:11000], 1000, start=later)
    gaps = [m for m in out if isinstance(m, EventMessage)]
    assert len(gaps) == 1 and f"starts at sample {later}, expected 10000; spliced" in gaps[0].text
    assert pipe.position == later + 1000

def test_wrong_rate_is_refused() -> None:
    with pytest.raises(ValueError, match="2000 Hz"):
        PcgPipeline("bed1", 4000.0, Config())


def calibrated(calibration: Path) -> Config:
    """The default config with the device's calibration ([audio] calibration)."""
    config = Config()
    return config.model_copy(update={"audio": config.audio.model_copy(update={"calibration": str(calibration)})})


def test_model_windows_and_verdict(tiny_pcg_model: Path, tiny_calibration: Path, data_dir: Path) -> None:
    model = load_model(tiny_pcg_model, "cpu")
    assert model.fs == FS
    x = audio(data_dir)
    pipe = PcgPipeline("bed1", FS, calibrated(tiny_calibration), model)
    assert pipe.calibration is not None and not pipe.rule.uncalibrated
    feed(pipe, x, 200)
    jobs = pipe.take_jobs() + pipe.finish()
    hop = model.card["input"]["hop"]
    assert len(jobs) == (x.size - model.window) // hop + 1
    # Each window is the raw audio ending where it was cut.
    for k, job in enumerate(jobs[:3]):
        np.testing.assert_array_equal(job.inputs[0], x[k * hop : k * hop + model.window])
    batch = torch.from_numpy(np.stack([j.inputs[0] for j in jobs]))
    with torch.no_grad():
        out = model(batch)
    logits = (out[0] if isinstance(out, tuple) else out).numpy()
    verdicts = [m for job, row in zip(jobs, logits) for m in job.finish(row)]
    assert all(isinstance(m, PcgClassMessage) for m in verdicts) and len(verdicts) == len(jobs)
    last = verdicts[-1]
    # The verdict is the mean P(abnormal) of the windows of acceptable quality.
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p_abn = (p / p.sum(axis=1, keepdims=True))[:, list(model.classes).index("abnormal")]
    good = np.array([v.window_quality >= Config().audio.min_quality for v in verdicts])
    assert good.any()  # a0001 is a clean recording
    expected = p_abn[good].mean()
    assert last.windows == good.sum() and last.rejected == len(jobs) - good.sum()
    assert last.p_abnormal == pytest.approx(expected, abs=1e-3)
    rule = pipe.rule
    if abs(expected - rule.threshold) < rule.margin:
        assert last.label == "uncertain" and last.reason == "near threshold" and last.probability is None
    elif last.label != "uncertain":
        assert last.reason is None and last.calibrated
        # On a calibrated device P(abnormal) is no probability: none is published.
        assert last.probability is None
        assert (last.label == "abnormal") == (expected >= pipe.threshold)
    else:
        assert last.reason == "windows disagree"
        side = (p_abn[good] >= rule.threshold) == (expected >= rule.threshold)
        assert side.mean() < rule.min_agreement
    # No model loaded: the daemon finishes jobs with None and nothing is published.
    assert jobs[0].finish(None) == []


def _verdicts(model, x: np.ndarray, config: Config) -> list[PcgClassMessage]:
    pipe = PcgPipeline("bed1", FS, config, model)
    feed(pipe, x, 500)
    jobs = pipe.take_jobs() + pipe.finish()
    with torch.no_grad():
        logits = model(torch.from_numpy(np.stack([j.inputs[0] for j in jobs])))
    return [m for job, row in zip(jobs, logits.numpy()) for m in job.finish(row)]


def test_uncertain_when_quality_is_low_or_near_the_threshold(tiny_pcg_model: Path, tiny_calibration: Path,
                                                             data_dir: Path) -> None:
    """The same real recording: buried in loud white noise it gets no verdict for its quality;
    clean, with a margin as wide as the whole scale, none for being near the threshold."""
    model = load_model(tiny_pcg_model, "cpu")
    config = calibrated(tiny_calibration)
    x = audio(data_dir)
    noisy = x + np.random.default_rng(0).standard_normal(x.size).astype(np.float32) * 20 * np.std(x)
    msgs = _verdicts(model, np.clip(noisy, -1, 1).astype(np.float32), config)
    assert msgs and all(m.label == "uncertain" and m.reason == "quality" for m in msgs)
    assert all(m.probability is None and m.p_abnormal is None and m.windows == 0 for m in msgs)
    assert msgs[-1].rejected == len(msgs)

    # A margin as wide as the whole scale on the calibrated score (z_margin in IQRs).
    model.card["decision"]["z_margin"] = 1e6
    try:
        msgs = _verdicts(model, x, config)
    finally:
        model.card["decision"]["z_margin"] = 0.0
    assert msgs[-1].label == "uncertain" and msgs[-1].reason == "near threshold"
    assert msgs[-1].p_abnormal is not None and msgs[-1].probability is None
    # Without margin (nor agreement required) the same recording gets a verdict.
    agreement = model.card["decision"].pop("min_agreement")
    try:
        assert _verdicts(model, x, config)[-1].label in ("normal", "abnormal")
    finally:
        model.card["decision"]["min_agreement"] = agreement


def test_the_daemon_and_evaluate_pcg_give_the_same_verdict(tiny_pcg_model: Path, tiny_calibration: Path,
                                                         data_dir: Path, tmp_path: Path) -> None:
    """`ecgmon evaluate pcg` reports the verdict the daemon publishes after a recording's last
    window, both on the same device's calibration."""
    from ecgmon.evaluate.pcg import evaluate_pcg
    from pcg_model_helpers import make_database

    names = make_database(tmp_path / "db", data_dir / "pcg2016" / "training-d", 4)
    result = evaluate_pcg(tmp_path / "db", tiny_pcg_model, tmp_path / "out", print, device="cpu", progress=False,
                          calibration=tiny_calibration)
    model = load_model(tiny_pcg_model, "cpu")
    by_name = {r["name"]: r for r in result["recordings"]}
    assert set(by_name) == set(names)
    for name in names:
        x, _ = sf.read(data_dir / "pcg2016" / "training-d" / f"{name}.flac", dtype="float32")
        last = _verdicts(model, x, calibrated(tiny_calibration))[-1]
        assert last.calibrated
        r = by_name[name]
        assert (last.label, last.reason, last.windows) == (r["verdict"], r["reason"], r["good_windows"])
        if last.p_abnormal is not None:
            assert last.p_abnormal == pytest.approx(r["p_abnormal"], abs=2e-4)
