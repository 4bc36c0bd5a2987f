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
from pcg_model_helpers import tiny_pcg_model  # noqa: F401 (a fixture)

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


def test_model_windows_and_verdict(tiny_pcg_model: Path, data_dir: Path) -> None:
    model = load_model(tiny_pcg_model, "cpu")
    assert model.fs == FS
    x = audio(data_dir)
    pipe = PcgPipeline("bed1", FS, Config(), model)
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
    expected = p_abn[good].mean() if good.any() else p_abn.mean()
    assert last.windows == (good.sum() or len(jobs)) and last.rejected == len(jobs) - good.sum()
    p_label = expected if last.label == "abnormal" else 1 - expected
    assert last.probability == pytest.approx(p_label, abs=1e-3)
    assert (last.label == "abnormal") == (expected >= pipe.threshold)
    # No model loaded: the daemon finishes jobs with None and nothing is published.
    assert jobs[0].finish(None) == []
