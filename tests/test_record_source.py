"""RecordSource: a real record replayed as chunks, exactly, contiguously, paced and looped."""

from __future__ import annotations

import dataclasses
import os
import time

import numpy as np
import pytest
import requests
import wfdb

from ecgmon.chunk import Chunk
from ecgmon.config import Config, DataConfig, ReplayConfig
from ecgmon.monitor.sources.base import SourceError
from ecgmon.monitor.sources.record import RecordSource
from ecgmon.replay.records import load_record


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reaches PhysioNet: wfdb's download raises as it does offline."""
    def no_network(*args, **kwargs):
        raise requests.exceptions.ConnectionError("Failed to resolve 'physionet.org'")
    monkeypatch.setattr(wfdb, "dl_database", no_network)


def make_config(tmp_path, **replay) -> Config:
    return Config(data=DataConfig(cache=str(tmp_path / "cache")), replay=ReplayConfig(**replay))


@pytest.fixture(scope="module")
def rec100(data_dir):
    """mitdb:100, read once (module-scoped fixtures may run before conftest sets ECGMON_DATA)."""
    return load_record("mitdb:100", DataConfig(folder=str(data_dir), cache="/nonexistent"))


def short(record, n: int):
    """The first ``n`` samples of ``record``, to keep loops and pacing tests quick."""
    return dataclasses.replace(record, signal=record.signal[:n].copy(), ann_samples=None,
                               ann_symbols=None)


async def collect(source: RecordSource, limit: int | None = None) -> list[Chunk]:
    out = []
    async for chunk in source.chunks():
        out.append(chunk)
        if limit is not None and len(out) >= limit:
            break
    return out


async def test_whole_record_concatenates_exactly(tmp_path, rec100):
    source = RecordSource("mitdb:100", make_config(tmp_path, speed=0, chunk_s=1.0))
    assert (source.stream, source.spec) == ("mitdb-100", "mitdb:100")
    assert (source.fs, source.lead) == (360.0, "MLII")
    assert source.record.ann_samples is None  # a live replay reads no annotations
    chunks = await collect(source)
    assert len(chunks) == -(-650000 // 360)
    assert all(c.n == 360 for c in chunks[:-1]) and chunks[-1].n == 650000 % 360
    starts = [c.start for c in chunks]
    assert starts[0] == 0 and all(a.end == b.start for a, b in zip(chunks, chunks[1:]))
    for c in chunks:
        # The chosen lead first, the record's other lead beside it (beat models may read it).
        assert c.samples.shape == (c.n, 2) and c.samples.dtype == np.float32
        assert c.channels == ("MLII", "V5") and c.stream == "mitdb-100" and c.fs == 360.0
    signal = np.concatenate([c.samples for c in chunks])
    np.testing.assert_array_equal(signal, rec100.signal)


async def test_second_lead_can_be_left_out(tmp_path, rec100):
    config = make_config(tmp_path, speed=0, chunk_s=0.5, channel="V5", second_lead=False)
    chunks = await collect(RecordSource("mitdb:100", config, record=short(rec100, 2000)))
    assert all(c.channels == ("V5",) and c.samples.shape == (c.n, 1) for c in chunks)
    np.testing.assert_array_equal(np.concatenate([c.samples for c in chunks])[:, 0], rec100.signal[:2000, 1])


@pytest.mark.parametrize("channel", [1, "V5", "v5", "1"])
async def test_channel_selection(tmp_path, rec100, channel):
    config = make_config(tmp_path, speed=0, chunk_s=0.5, channel=channel)
    source = RecordSource("mitdb:100", config, record=short(rec100, 5000))
    assert source.lead == "V5"
    chunks = await collect(source)
    assert all(c.channels == ("V5", "MLII") for c in chunks)
    np.testing.assert_array_equal(np.concatenate([c.samples for c in chunks]),
                                  rec100.signal[:5000, ::-1])


@pytest.mark.parametrize("channel", [2, "V1", -1])
def test_bad_channel_is_source_error(tmp_path, rec100, channel):
    with pytest.raises(SourceError, match="channel"):
        RecordSource("mitdb:100", make_config(tmp_path, channel=channel), record=rec100)


@pytest.mark.parametrize("spec", ["mitdb:999", "mitdb:", "not a record", ""])
def test_bad_record_is_source_error_at_construction(tmp_path, spec):
    with pytest.raises(SourceError) as info:
        RecordSource(spec, make_config(tmp_path))
    assert "\n" not in str(info.value)
    assert info.value.__cause__ is None


def test_truncated_record_is_source_error(tmp_path, data_dir):
    for ext in (".hea", ".dat"):
        (tmp_path / f"100{ext}").write_bytes((data_dir / "mitdb" / f"100{ext}").read_bytes())
    dat = tmp_path / "100.dat"
    dat.write_bytes(dat.read_bytes()[:500_000])
    with pytest.raises(SourceError, match="truncated"):
        RecordSource(str(tmp_path / "100.hea"), make_config(tmp_path))


async def test_loop_keeps_counting(tmp_path, rec100):
    n = 1000  # not a multiple of the chunk length: each pass ends with a short chunk
    config = make_config(tmp_path, speed=0, chunk_s=0.1, loop=True)
    source = RecordSource("mitdb:100", config, record=short(rec100, n))
    chunks = await collect(source, limit=100)  # 3.6 passes
    assert chunks[0].start == 0
    assert all(a.end == b.start for a, b in zip(chunks, chunks[1:]))
    assert chunks[-1].end > 3 * n
    signal = np.concatenate([c.samples for c in chunks])[:, 0]
    np.testing.assert_array_equal(signal, np.resize(rec100.signal[:n, 0], signal.size))


async def test_without_loop_it_ends(tmp_path, rec100):
    source = RecordSource("mitdb:100", make_config(tmp_path, speed=0, chunk_s=0.1),
                          record=short(rec100, 1000))
    chunks = await collect(source)
    assert chunks[-1].end == 1000


async def test_tiny_chunk_length_gives_one_sample(tmp_path, rec100):
    source = RecordSource("mitdb:100", make_config(tmp_path, speed=0, chunk_s=0.0001),
                          record=short(rec100, 50))
    chunks = await collect(source)
    assert [c.n for c in chunks] == [1] * 50


async def test_paced_not_faster_than_due(tmp_path, rec100):
    speed, chunk_s, n = 20.0, 0.25, 3600  # 10 s of signal at 20x: due over 0.5 s
    source = RecordSource("mitdb:100", make_config(tmp_path, speed=speed, chunk_s=chunk_s),
                          record=short(rec100, n))
    t0 = time.monotonic()
    lateness = []
    async for chunk in source.chunks():
        due = chunk.end / (source.fs * speed)
        lateness.append(time.monotonic() - t0 - due)
    elapsed = time.monotonic() - t0
    expected = n / (source.fs * speed)
    assert len(lateness) == 40
    # Never early (a few ms of timer granularity allowed); wall time not asserted tightly.
    assert min(lateness) > -0.01, min(lateness)
    assert elapsed >= 0.8 * expected


async def test_chunks_do_not_alias_the_record(tmp_path, rec100):
    record = short(rec100, 720)
    source = RecordSource("mitdb:100", make_config(tmp_path, speed=0, chunk_s=1.0), record=record)
    chunks = await collect(source)
    chunks[0].samples[:] = 99.0
    assert not (record.signal == 99.0).any()
    again = await collect(source)
    np.testing.assert_array_equal(again[0].samples[:, 0], record.signal[:360, 0])


def test_stream_id_override(tmp_path, rec100, data_dir):
    config = make_config(tmp_path)
    assert RecordSource("mitdb:100", config, stream="bed3", record=rec100).stream == "bed3"
    assert RecordSource(str(data_dir / "mitdb" / "100.hea"), config).stream == "100"
    with pytest.raises(SourceError, match="stream id"):
        RecordSource("mitdb:100", config, stream="bed 3", record=rec100)


@pytest.mark.parametrize("atr", [b"", b"garbage" * 3, bytes(range(256)) * 4])
def test_a_corrupt_reference_does_not_stop_a_live_replay(tmp_path, data_dir, atr):
    """Issue 12, item 11: the live path never needs the reference annotations, so an empty
    or corrupt .atr beside the record must not abort its replay; only the evaluator, which
    needs them, reports the file."""
    import asyncio

    from ecgmon.evaluate.qrs import evaluate_record

    for ext in ("hea", "dat"):
        (tmp_path / f"100.{ext}").write_bytes((data_dir / "mitdb" / f"100.{ext}").read_bytes())
    (tmp_path / "100.atr").write_bytes(atr)
    spec = str(tmp_path / "100.hea")
    config = make_config(tmp_path, speed=0, chunk_s=60)
    chunks = asyncio.run(collect(RecordSource(spec, config)))
    assert sum(c.n for c in chunks) == 650000
    with pytest.raises(SourceError, match="100.atr"):
        evaluate_record(spec, config)


async def test_sources_of_one_record_share_its_samples(tmp_path, rec100, data_dir):
    """Issue 16: a ward replaying one record to many beds holds it once, not once a bed. Two
    sources of mitdb:100 replay one read-only array; their chunks are still each bed's own;
    another record has its own array; a record whose files changed on disk is read again."""
    config = make_config(tmp_path, speed=0, chunk_s=1.0)
    a = RecordSource("mitdb:100", config, stream="bed1")
    b = RecordSource("mitdb:100", config, stream="bed2")
    assert a.record is b.record and np.shares_memory(a._samples, b._samples)
    with pytest.raises(ValueError):
        a.record.signal[0, 0] = 1.0  # shared: no source may change another bed's samples
    first = await collect(a, 2)
    first[0].samples[:] = 99.0
    np.testing.assert_array_equal((await collect(b, 1))[0].samples, rec100.signal[:360])
    assert not np.shares_memory(RecordSource("mitdb:101", config)._samples, a._samples)

    folder = tmp_path / "rec"
    folder.mkdir()
    for ext in ("hea", "dat"):
        (folder / f"100.{ext}").write_bytes((data_dir / "mitdb" / f"100.{ext}").read_bytes())
    spec = str(folder / "100.hea")
    c, d = RecordSource(spec, config), RecordSource(spec, config)
    assert c.record is d.record
    stat = (folder / "100.dat").stat()
    os.utime(folder / "100.dat", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    e = RecordSource(spec, config)
    assert e.record is not c.record
    np.testing.assert_array_equal(e._samples, c._samples)
