"""Audio file replay and the audio checks every audio source shares: streaming resampling
without clicks, and malformed input (wrong rate, stereo, silence, clipping, truncated and
corrupt files), each one clear event or one-line error, never a crash."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

from ecgmon.chunk import Chunk, SourceEvent
from ecgmon.config import Config
from ecgmon.monitor.daemon import Daemon
from ecgmon.monitor.publisher import Publisher
from ecgmon.monitor.sources.audio_blocks import PCG_FS, StreamResampler
from ecgmon.monitor.sources.base import SourceError
from ecgmon.monitor.sources.factory import open_pcg_sources, pcg_stream_id
from ecgmon.schema import EventMessage, PcgMessage
from zmq_helpers import collect_into, subscriber


def recording(data_dir: Path, name: str = "a0001") -> np.ndarray:
    x, fs = sf.read(data_dir / "pcg2016" / "training-a" / f"{name}.flac", dtype="float32")
    assert fs == PCG_FS
    return x


def replay(path: Path, spec_name: str | None = None) -> tuple[list[Chunk], list[SourceEvent]]:
    config = Config()
    config.replay.speed = 0
    (src,) = open_pcg_sources([f"{spec_name}={path}" if spec_name else str(path)], config)

    async def go() -> list:
        return [item async for item in src.chunks()]

    items = asyncio.run(go())
    return [i for i in items if isinstance(i, Chunk)], [i for i in items if isinstance(i, SourceEvent)]


@pytest.mark.parametrize("in_fs", [44100, 8000, 4000, 1000])
@pytest.mark.parametrize("block", [1, 441, 4000])
def test_chunked_resampling_equals_one_shot(in_fs: int, block: int) -> None:
    rng = np.random.default_rng(0)
    t = np.arange(int(1.5 * in_fs)) / in_fs
    x = (0.3 * np.sin(2 * np.pi * 60 * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)
    one = soxr.resample(x, in_fs, PCG_FS)
    r = StreamResampler(in_fs)
    parts = [r(x[i : i + block]) for i in range(0, x.size, block)] + [r(x[:0], last=True)]
    chunked = np.concatenate(parts)
    assert chunked.size == one.size
    # No click at block edges: the streamed signal is the one-shot one.
    assert np.max(np.abs(chunked - one)) < 1e-3


def test_flac_replay_is_the_recording(data_dir: Path) -> None:
    path = data_dir / "pcg2016" / "training-a" / "a0001.flac"
    chunks, events = replay(path)
    assert events == []  # 2 kHz mono: nothing to report
    assert {c.stream for c in chunks} == {"a0001"} == {pcg_stream_id(str(path))}
    assert all(c.fs == PCG_FS and c.channels == ("pcg",) for c in chunks)
    starts = [c.start for c in chunks]
    assert starts == sorted(starts) and all(a.end == b.start for a, b in zip(chunks, chunks[1:]))
    np.testing.assert_array_equal(np.concatenate([c.samples[:, 0] for c in chunks]), recording(data_dir))


def test_wrong_rate_is_resampled_and_said(tmp_path: Path, data_dir: Path) -> None:
    x = recording(data_dir)[:20000]
    path = tmp_path / "hi.wav"
    sf.write(path, soxr.resample(x, PCG_FS, 44100), 44100, subtype="FLOAT")
    chunks, events = replay(path)
    assert [e.code for e in events] == ["resampling"] and "44100 Hz" in events[0].text
    y = np.concatenate([c.samples[:, 0] for c in chunks])
    assert abs(y.size - x.size) <= 2
    n = min(x.size, y.size)
    assert np.corrcoef(x[100 : n - 100], y[100 : n - 100])[0, 1] > 0.99


@pytest.mark.parametrize("rate", [100, 0.5])
def test_too_low_a_rate_is_one_line(tmp_path: Path, rate: float) -> None:
    path = tmp_path / "low.wav"
    sf.write(path, np.zeros(1000, np.float32), 100)
    with pytest.raises(SourceError, match="too low for heart sounds") as err:
        replay(path)
    assert "\n" not in str(err.value)


def test_odd_low_rate_warns(tmp_path: Path, data_dir: Path) -> None:
    path = tmp_path / "odd.wav"
    sf.write(path, soxr.resample(recording(data_dir)[:8000], PCG_FS, 700), 700)
    _, events = replay(path)
    assert [e.code for e in events] == ["resampling", "low_rate"]


def test_stereo_uses_channel_0(tmp_path: Path, data_dir: Path) -> None:
    x = recording(data_dir)[:20000]
    noise = np.random.default_rng(0).standard_normal(x.size).astype(np.float32) * 0.2
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([x, noise], axis=1), int(PCG_FS), subtype="FLOAT")
    chunks, events = replay(path)
    assert [e.code for e in events] == ["multichannel_input"] and "channel 0" in events[0].text
    np.testing.assert_array_equal(np.concatenate([c.samples[:, 0] for c in chunks]), x)


def test_silence_and_signal_loss_and_recovery(tmp_path: Path, data_dir: Path) -> None:
    x = recording(data_dir)[:8000]
    quiet = (np.random.default_rng(0).standard_normal(4000) * 1e-5).astype(np.float32)
    path = tmp_path / "gaps.wav"
    sf.write(path, np.concatenate([x, quiet, x, np.zeros(4000, np.float32), x]), int(PCG_FS), subtype="FLOAT")
    _, events = replay(path)
    codes = [e.code for e in events]
    assert codes == ["silence", "sound_restored", "signal_lost", "sound_restored"], codes
    assert "exact zeros" in events[2].text and events[2].counts["silences"] == 2


def test_clipping_is_reported_once_and_cleared(tmp_path: Path, data_dir: Path) -> None:
    x = recording(data_dir)[:12000]
    path = tmp_path / "clip.wav"
    sf.write(path, np.concatenate([np.clip(x * 100, -1, 1), x]), int(PCG_FS), subtype="FLOAT")
    _, events = replay(path)
    assert [e.code for e in events] == ["clipping", "clipping_ended"]
    assert events[0].counts["clipped_samples"] > 100  # counted by the end of the first second


def test_truncated_wav_and_flac(tmp_path: Path, data_dir: Path) -> None:
    x = recording(data_dir)
    wav = tmp_path / "cut.wav"
    sf.write(wav, x, int(PCG_FS), subtype="PCM_16")
    wav.write_bytes(wav.read_bytes()[: 44 + 2 * 10000])
    chunks, events = replay(wav)
    assert [e.code for e in events] == ["truncated_file"] and "promises 35.7 s" in events[0].text
    assert sum(c.n for c in chunks) == 10000

    src = data_dir / "pcg2016" / "training-a" / "a0001.flac"
    flac = tmp_path / "cut.flac"
    flac.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    chunks, events = replay(flac)
    assert [e.code for e in events] == ["corrupt_input"] and "cannot be decoded after" in events[0].text
    assert 0 < sum(c.n for c in chunks) < x.size


@pytest.mark.parametrize("content,needle", [
    (b"RIFF" + bytes(100), "not a readable audio file"),
    (b"", "not a readable audio file"),
])
def test_corrupt_or_missing_file_is_one_line(tmp_path: Path, content: bytes, needle: str) -> None:
    path = tmp_path / "bad.wav"
    path.write_bytes(content)
    with pytest.raises(SourceError, match=needle) as err:
        replay(path)
    assert "\n" not in str(err.value)
    with pytest.raises(SourceError, match="not found"):
        replay(tmp_path / "missing.flac")


def test_pcg_specs() -> None:
    assert pcg_stream_id("mic") == "mic"
    assert pcg_stream_id("mic:USB Steth 2") == "mic-USB-Steth-2"
    assert pcg_stream_id("bed3=mic:1") == "bed3"
    with pytest.raises(SourceError, match="unknown heart-sound source"):
        pcg_stream_id("mitdb:100")
    with pytest.raises(SourceError, match="both publish as stream 'a'"):
        open_pcg_sources(["a=x.wav", "a=y.wav"], Config())


async def test_daemon_goes_on_after_a_corrupt_audio_stream(tmp_path: Path, data_dir: Path, endpoint: str) -> None:
    """A FLAC that breaks part-way ends its own stream with an event; the good one goes on."""
    src = data_dir / "pcg2016" / "training-a" / "a0001.flac"
    bad = tmp_path / "bad.flac"
    bad.write_bytes(src.read_bytes()[: src.stat().st_size // 4])
    config = Config()
    config.replay.speed = 0
    config.publisher.endpoint = endpoint
    sources = open_pcg_sources([f"good={src}", f"bad={bad}"], config)
    # Bound before the subscriber connects: at speed 0 the first event leaves at once, and a
    # subscriber still retrying its connection would miss it.
    publisher = Publisher(endpoint, config.publisher.send_hwm)
    ctx, sub = await subscriber(endpoint, ("pcg.", "event."))
    msgs: list = []
    task = asyncio.create_task(collect_into(sub, msgs))
    try:
        await Daemon(config, sources, publisher).run()
        await asyncio.sleep(0.3)
    finally:
        task.cancel()
        sub.close()
        ctx.term()
    corrupt = [m for m in msgs if isinstance(m, EventMessage) and m.code == "corrupt_input"]
    assert len(corrupt) == 1 and corrupt[0].stream == "bad"
    good = [m for m in msgs if isinstance(m, PcgMessage) and m.stream == "good"]
    assert good and good[-1].time_s > 34  # the whole good recording
    assert any(m.hr_bpm for m in good)
