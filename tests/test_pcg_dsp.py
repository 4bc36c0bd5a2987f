"""Heart-sound DSP: chunking never changes the output, S1/S2 and the rate of a signal with
known heart sounds (also with S2 unheard and alternate beats quieter), the quality index on
clean, noisy, silent and clipped audio."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from ecgmon.monitor.dsp.pcg_envelope import PCG_FS, HomomorphicEnvelope, PcgBandpass, envelope_delay_s
from ecgmon.monitor.dsp.pcg_quality import quality_index
from ecgmon.monitor.dsp.pcg_rate import envelope_rate_bpm
from ecgmon.monitor.dsp.pcg_sounds import HeartSoundDetector


def synthetic_pcg(hr_bpm: float, seconds: float, systole_s: float = 0.32, seed: int = 0,
                  drop_s2_every: int = 0, alternate: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Decaying 50 Hz (S1) and 80 Hz (S2) bursts on weak noise, every other beat ``alternate``
    times as loud; the true S1 and S2 times."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * PCG_FS)) / PCG_FS
    x = 0.002 * rng.standard_normal(t.size)
    s1 = np.arange(0.3, seconds - 0.5, 60.0 / hr_bpm)
    s2 = s1 + systole_s
    for k, (a, b) in enumerate(zip(s1, s2)):
        gain = alternate if k % 2 else 1.0
        for onset, f, amp in ((a, 50.0, 0.5 * gain), (b, 80.0, 0.35 * gain)):
            if f == 80.0 and drop_s2_every and k % drop_s2_every == 0:
                continue
            m = (t >= onset) & (t < onset + 0.1)
            tt = t[m] - onset
            x[m] += amp * np.sin(2 * np.pi * f * tt) * np.exp(-tt / 0.03) * np.sin(np.pi * tt / 0.1)
    return x.astype(np.float32), s1, s2


def run(x: np.ndarray, chunk: int):
    bp, env = PcgBandpass(), HomomorphicEnvelope()
    det = HeartSoundDetector(env.fs, envelope_delay_s())
    envs, sounds = [], []
    for i in range(0, x.size, chunk):
        e = env(bp(x[i : i + chunk]))
        envs.append(e)
        sounds += det.feed(e)
    return np.concatenate(envs), sounds, det


@pytest.mark.parametrize("chunk", [7, 160, 2001])
def test_output_does_not_depend_on_chunking(chunk: int) -> None:
    x, _, _ = synthetic_pcg(75, 12)
    env_whole, sounds_whole, _ = run(x, x.size)
    env, sounds, _ = run(x, chunk)
    np.testing.assert_allclose(env, env_whole, rtol=1e-9, atol=1e-12)
    assert sounds == sounds_whole and len(sounds) > 20


@pytest.mark.parametrize("hr", [48, 72, 110])
def test_s1_s2_and_rate_of_known_heart_sounds(hr: float) -> None:
    x, s1, s2 = synthetic_pcg(hr, 20, systole_s=0.3 if hr < 100 else 0.24)
    env, sounds, _ = run(x, 200)
    found1 = np.array([s.time_s for s in sounds if s.kind == "S1"])
    found2 = np.array([s.time_s for s in sounds if s.kind == "S2"])
    # Every labelled sound lies within 60 ms of a true sound of its kind.
    assert found1.size >= s1.size - 3 and found2.size >= s2.size - 3
    assert np.all(np.min(np.abs(found1[:, None] - s1[None, :]), axis=1) < 0.06)
    assert np.all(np.min(np.abs(found2[:, None] - s2[None, :]), axis=1) < 0.06)
    assert envelope_rate_bpm(env[-500:], 50.0) == pytest.approx(hr, abs=1.5)


def test_rate_survives_unheard_second_sounds() -> None:
    x, _, _ = synthetic_pcg(66, 20, drop_s2_every=1)
    env, _, _ = run(x, 200)
    assert envelope_rate_bpm(env[-500:], 50.0) == pytest.approx(66, abs=1.5)


@pytest.mark.parametrize("hr", [64, 84])
def test_rate_is_one_beat_when_alternate_beats_are_quieter(hr: float) -> None:
    # The envelope repeats best every two beats; one beat repeats almost as well and wins.
    x, _, _ = synthetic_pcg(hr, 20, alternate=0.6)
    env, _, _ = run(x, 200)
    assert envelope_rate_bpm(env[-500:], 50.0) == pytest.approx(hr, abs=1.5)


def test_no_rate_from_too_little_or_flat_envelope() -> None:
    x, _, _ = synthetic_pcg(72, 20)
    env, _, _ = run(x, 200)
    assert envelope_rate_bpm(env[:240], 50.0) is None  # 4.8 s: too short for a slow heart
    assert envelope_rate_bpm(np.full(500, 0.01), 50.0) is None
    _, _, det = run(np.zeros(int(8 * PCG_FS), np.float32), 200)
    assert det.last_sound_s is None


def test_quality_index_orders_clean_noise_silence_clipping(data_dir: Path) -> None:
    x, fs = sf.read(data_dir / "pcg2016" / "training-a" / "a0001.flac", dtype="float32")
    assert fs == PCG_FS

    def q(audio: np.ndarray) -> float:
        # The filters run over the whole signal; the index judges 10-15 s, past their start-up.
        env = HomomorphicEnvelope()(PcgBandpass()(audio))
        return quality_index(audio[20000:30000], env[500:750], 50.0)

    rng = np.random.default_rng(1)
    clean = q(x)
    noise = q((0.1 * rng.standard_normal(x.size)).astype(np.float32))
    clipped = q(np.clip(x * 50, -1, 1))
    assert clean >= 0.8
    assert noise <= 0.2
    assert q(np.zeros_like(x)) == 0.0
    assert clipped < 0.5 * clean
