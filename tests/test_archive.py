"""The archive (issue 15): a record replayed through the daemon at --speed 0 comes back from
disk with wfdb sample for sample, its beats as WFDB annotations equal to the published beat
messages; an archive folder that cannot be written is a technical event and monitoring goes
on."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time

import numpy as np
import pytest
import wfdb

from ecgmon.archive import reader
from ecgmon.archive.annotations import BEAT_EXT, BEAT_SYMBOL, EVENT_EXT
from ecgmon.archive.audit import read_audit
from ecgmon.archive.layout import NULL
from ecgmon.archive.writer import ArchiveWriter
from ecgmon.chunk import Chunk
from ecgmon.config import Config
from ecgmon.evaluate import qrs
from ecgmon.evaluate.matching import MATCH_WINDOW_S, score_beats
from ecgmon.monitor.daemon import Daemon
from ecgmon.monitor.model_set import load_models
from ecgmon.monitor.publisher import Publisher
from ecgmon.monitor.sources.record import RecordSource
from ecgmon.replay.records import load_record
from ecgmon.replay.reference import reference_beats
from ecgmon.schema import AlarmMessage, BeatMessage, EventMessage, SegmentMessage, parse_message
from zmq_helpers import PREFIXES, daemon_messages, subscriber

SECONDS = 75  # two closed segments of 30 s and a short last one


def _span(name: str, seconds: float):
    rec = load_record(name, Config().data)
    return dataclasses.replace(rec, signal=rec.signal[: int(seconds * rec.fs)], ann_samples=None, ann_symbols=None)


async def _run(endpoint: str, config: Config, record, archive, models=None) -> list:
    source = RecordSource(record.name, config, stream="bed1", record=record)
    return await daemon_messages(endpoint, lambda pub: Daemon(config, [source], pub, models or {}, [], archive),
                                 PREFIXES + ("alarm.", "segment."))


@pytest.fixture(scope="module")
def models():
    return load_models(Config().models)[0]


async def test_a_replayed_record_comes_back_from_the_archive(endpoint, data_dir, tmp_path, models):
    config = Config()
    config.replay.speed = 0
    record = _span("mitdb:119", SECONDS)  # ventricular bigeminy: N and V beats
    archive = ArchiveWriter(tmp_path, segment_s=30)
    msgs = await _run(endpoint, config, record, archive, models)
    assert archive.dropped == 0

    layout = reader.open_layout(tmp_path / "bed1")
    assert [n for n, _ in layout.entries][-1] != NULL and layout.length == record.n_samples
    assert [n for _, n in layout.entries] == [30 * 360, 30 * 360, 15 * 360]

    # The signal, sample for sample: the record's own digital values, both replayed leads.
    n = record.n_samples
    got = wfdb.rdrecord(str(tmp_path / "bed1" / layout.name), physical=False)
    want = wfdb.rdrecord(str(data_dir / "mitdb" / "119"), sampto=n, physical=False)
    assert got.sig_name == want.sig_name and got.fs == want.fs
    np.testing.assert_array_equal(got.d_signal, want.d_signal)
    phys = wfdb.rdrecord(str(tmp_path / "bed1" / layout.name)).p_signal
    np.testing.assert_array_equal(phys, wfdb.rdrecord(str(data_dir / "mitdb" / "119"), sampto=n).p_signal)

    # The beats: the published ones, at the record's indices, with their classes as WFDB codes.
    beats = [m for m in msgs if isinstance(m, BeatMessage)]
    samples, symbols, _ = reader.annotations(layout, BEAT_EXT, stream_indices=True)
    assert samples.tolist() == [b.sample for b in beats]
    assert symbols == [BEAT_SYMBOL[b.label] for b in beats]
    assert {"N", "V"} <= set(symbols)
    # ... and scored against the reference they give the figures of `evaluate qrs` for the span.
    full = load_record("mitdb:119", Config().data)
    ref = reference_beats(full.ann_samples[full.ann_samples < n], [
        s for s, at in zip(full.ann_symbols, full.ann_samples) if at < n], n)
    qrs_beats = await qrs._replay_beats(RecordSource("mitdb:119", config, record=record), config)
    want_score = score_beats(ref, np.array([b.sample for b in qrs_beats]), 360.0, MATCH_WINDOW_S)
    got_score = score_beats(ref, samples, 360.0, MATCH_WINDOW_S)
    assert (got_score.tp, got_score.fp, got_score.fn) == (want_score.tp, want_score.fp, want_score.fn)
    assert got_score.se > 0.99 and got_score.ppv > 0.99

    # Events as notes, and the audit log: the start and stop, every event in order.
    _, ev_symbols, ev_aux = reader.annotations(layout, EVENT_EXT)
    assert '"' in ev_symbols and any("source_ended" in a for a in ev_aux)
    verdicts = [m.label for m in msgs if isinstance(m, SegmentMessage)]
    changes = [v for i, v in enumerate(verdicts) if i == 0 or v != verdicts[i - 1]]
    assert [a.split()[2] for a in ev_aux if a.startswith("rhythm model")] == changes and changes
    audit = read_audit(tmp_path)
    assert audit[0]["type"] == "daemon_start" and audit[-1]["type"] == "daemon_stop"
    published_events = [m.code for m in msgs if isinstance(m, EventMessage)]
    assert [e["code"] for e in audit if e["type"] == "event"] == published_events
    alarms = [m for m in msgs if isinstance(m, AlarmMessage) and m.state == "raised"]
    assert [e["id"] for e in audit if e.get("action") == "raised"] == [a.id for a in alarms]
    assert all(json.dumps(e) for e in audit)


async def test_a_second_run_continues_the_stream_after_a_gap(endpoint, tmp_path):
    config = Config()
    config.replay.speed = 0
    record = _span("mitdb:100", 12)
    for _ in range(2):
        await _run(endpoint, config, record, ArchiveWriter(tmp_path, segment_s=5))
    layout = reader.open_layout(tmp_path / "bed1")
    names = [n for n, _ in layout.entries]
    assert names.count(NULL) == 1 and names[3] == NULL  # 5 + 5 + 2 s, the gap, 5 + 5 + 2 s
    assert [n for name, n in layout.entries if name != NULL] == [1800, 1800, 720] * 2
    sig = wfdb.rdrecord(str(tmp_path / "bed1" / layout.name), physical=False).d_signal
    gap = layout.entries[3][1]
    first, second = sig[:4320], sig[4320 + gap:]
    np.testing.assert_array_equal(first, second)  # the same record, replayed twice
    assert (sig[4320 : 4320 + gap] == -32768).all()  # WFDB's invalid sample in the gap
    assert [e["type"] for e in read_audit(tmp_path)].count("daemon_start") == 2


async def test_an_unwritable_archive_is_an_event_and_monitoring_goes_on(endpoint, tmp_path):
    config = Config()
    config.replay.speed = 0
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the archive's folder should be")
    msgs = await _run(endpoint, config, _span("mitdb:100", 20), ArchiveWriter(blocker / "archive", segment_s=5))
    beats = [m for m in msgs if isinstance(m, BeatMessage)]
    assert len(beats) >= 20  # monitoring went on
    failed = [m for m in msgs if isinstance(m, EventMessage) and m.code == "archive_failed"]
    # Once for the audit log and once for the signal, not once per chunk or message.
    assert sorted((m.stream, m.text.split(" in ")[0]) for m in failed) == [
        ("bed1", "cannot write the archive"), ("ecgmon", "cannot append to the audit log")]
    assert all(m.level == "error" and str(blocker) in m.text and "Not a directory" in m.text for m in failed)


def test_retention_deletes_the_oldest_segments_and_keeps_the_indices(tmp_path, data_dir):
    rec = wfdb.rdrecord(str(data_dir / "mitdb" / "100"), sampto=360 * 20)
    x = rec.p_signal.astype(np.float32)
    # Each 2 s segment is 2.9 kB of samples: 10 kB keeps the newest few, whatever the headers.
    writer = ArchiveWriter(tmp_path, segment_s=2, max_gb=10e3 / 1e9)
    writer.start()
    adc = [(g, b, u) for g, b, u in zip(rec.adc_gain, rec.baseline, rec.units)]
    for s in range(0, len(x), 36):
        writer.feed(Chunk("bed2", 360.0, tuple(rec.sig_name), s, x[s : s + 36].copy()), adc)
    writer.close()
    layout = reader.open_layout(tmp_path / "bed2")
    kept = [n for n, _ in layout.entries]
    assert 1 <= len(kept) < 10 and kept[-1] == "bed2_000010"
    assert layout.first_sample == (10 - len(kept)) * 720  # the rest keeps its indices
    assert not (tmp_path / "bed2" / "bed2_000001.dat").exists()
    assert sum(p.stat().st_size for p in tmp_path.rglob("*") if p.is_file()) <= 10e3
    got = wfdb.rdrecord(str(tmp_path / "bed2" / layout.name), physical=False).d_signal
    want = wfdb.rdrecord(str(data_dir / "mitdb" / "100"), sampfrom=layout.first_sample, sampto=360 * 20,
                         physical=False).d_signal
    np.testing.assert_array_equal(got, want)


async def test_an_archive_replays_verifies_and_exports_as_the_record(endpoint, data_dir, tmp_path, models, capsys):
    from ecgmon.cli import main
    from ecgmon.monitor.sources.factory import open_source

    config = Config()
    config.replay.speed = 0
    record = _span("mitdb:119", 40)
    first = await _run(endpoint, config, record, ArchiveWriter(tmp_path / "a", segment_s=15), models)

    # Replayed from the archive (archive:DIR/STREAM), the daemon finds the same beats and classes.
    source = open_source(f"archive:{tmp_path / 'a' / 'bed1'}", config)
    assert source.stream == "bed1" and source.channels == ("MLII", "V1")
    by_header = open_source(str(tmp_path / "a" / "bed1" / "bed1.hea"), config)  # its layout header: the same
    assert by_header.stream == "bed1"
    np.testing.assert_array_equal(by_header.record.signal, source.record.signal)
    np.testing.assert_array_equal(source.record.signal, record.signal)
    listed = reader.open_layout(tmp_path / "a" / "bed1").entries
    # With the archive on into the same folder: the stream is not appended to itself.
    archive = ArchiveWriter(tmp_path / "a", segment_s=15)
    again = await daemon_messages(endpoint, lambda pub: Daemon(config, [source], pub, models, [], archive),
                                  ("beat.", "event."))
    beats = [(m.sample, m.label) for m in first if isinstance(m, BeatMessage)]
    assert [(m.sample, m.label) for m in again if isinstance(m, BeatMessage)] == beats and len(beats) > 40
    assert reader.open_layout(tmp_path / "a" / "bed1").entries == listed
    assert [m.code for m in again if isinstance(m, EventMessage) and m.code.startswith("archive")] == ["archive_skipped"]

    # verify: all well; list names the stream; export: one plain record with its beats.
    root = str(tmp_path / "a")
    assert main(["archive", "--archive", root, "verify"]) == 0
    assert "bed1/bed1: 3 segments, 0 gaps (0.0 s): ok" in capsys.readouterr().out
    assert main(["archive", "--archive", root, "list"]) == 0
    assert "bed1" in capsys.readouterr().out
    out = tmp_path / "out" / "night"
    assert main(["archive", "--archive", root, "export", "bed1", "--from", "10", "--to", "30", str(out)]) == 0
    got = wfdb.rdrecord(str(out), physical=False)
    want = wfdb.rdrecord(str(data_dir / "mitdb" / "119"), sampfrom=3600, sampto=10800, physical=False)
    np.testing.assert_array_equal(got.d_signal, want.d_signal)
    ann = wfdb.rdann(str(out), "ecgmon")
    inside = [(s - 3600, BEAT_SYMBOL[lab]) for s, lab in beats if 3600 <= s < 10800]
    assert list(zip(ann.sample.tolist(), ann.symbol)) == inside

    # A flipped byte in a closed segment is a checksum mismatch, and verify exits 1.
    dat = tmp_path / "a" / "bed1" / "bed1_000002.dat"
    raw = bytearray(dat.read_bytes())
    raw[1000] ^= 0x40
    dat.write_bytes(bytes(raw))
    assert main(["archive", "--archive", root, "verify"]) == 1
    assert "bed1_000002: checksum mismatch" in capsys.readouterr().out


async def test_who_acknowledged_and_silenced_an_alarm_is_in_the_audit_log(endpoint, tmp_path, models):
    from ecgmon.monitor.control import ControlServer

    config = Config()
    config.replay.speed = 20  # slow enough to act on an alarm while the stream runs
    record = _span("mitdb:119", SECONDS)
    pub = Publisher(endpoint, 100000)
    ctx, sub = await subscriber(endpoint, ("alarm.",))
    source = RecordSource(record.name, config, stream="bed1", record=record)
    daemon = Daemon(config, [source], pub, models, [], ArchiveWriter(tmp_path, segment_s=30))
    control = ControlServer("tcp://127.0.0.1:0", daemon.alarm_engine, daemon.publish)
    run = asyncio.ensure_future(daemon.run())
    try:
        alarm = None
        while alarm is None:
            assert await sub.poll(60_000), "no alarm raised"
            msg = parse_message((await sub.recv_multipart())[1])
            alarm = msg if msg.state == "raised" else None
        # As the control socket hands them over: the authenticated key name, then a client's word.
        ack = control.handle(json.dumps({"op": "ack", "stream": "bed1", "alarm_id": alarm.id, "by": "x"}).encode(),
                             key="nurse1")
        silence = control.handle(json.dumps({"op": "silence", "stream": "bed1", "alarm_id": alarm.id,
                                             "by": "desk", "seconds": 60}).encode())
        assert ack["ok"] and silence["ok"]
        await asyncio.wait_for(run, 300)
    finally:
        run.cancel()
        control.close()
        sub.close()
        ctx.term()
    entries = [e for e in read_audit(tmp_path) if e["type"] == "alarm" and e["id"] == alarm.id]
    assert [(e["action"], e["by"]) for e in entries][:3] == [
        ("raised", None), ("acknowledged", "nurse1"), ("silenced", "desk (unauthenticated)")]
    _, _, notes = reader.annotations(reader.open_layout(tmp_path / "bed1"), EVENT_EXT)
    assert any(f"alarm {alarm.alarm} acknowledged by nurse1" in n for n in notes)


async def test_heart_sounds_are_archived_as_flac_beside_their_envelope_and_verdicts(endpoint, data_dir, tmp_path,
                                                                                     models, capsys):
    import soundfile as sf

    from ecgmon.archive.pcg import pcg_segments
    from ecgmon.monitor.sources.factory import open_pcg_sources
    from ecgmon.schema import PcgClassMessage, PcgMessage

    config = Config()
    config.replay.speed = 0
    wav = data_dir / "pcg2016" / "training-a" / "a0001.flac"
    sources = open_pcg_sources([f"bed1={wav}"], config)
    pub = Publisher(endpoint, 100000)
    ctx, sub = await subscriber(endpoint, ("pcg.", "pcg_class."))
    try:
        await asyncio.wait_for(Daemon(config, sources, pub, models, [], ArchiveWriter(tmp_path, segment_s=10)).run(),
                               300)
        msgs = []
        while await sub.poll(300):
            msgs.append(parse_message((await sub.recv_multipart())[1]))
    finally:
        sub.close()
        ctx.term()
    folder = tmp_path / "bed1" / "pcg"
    segs = pcg_segments(folder)
    assert [s["samples"] for s in segs[:-1]] == [20000] * (len(segs) - 1) and segs[0]["stream_start"] == 0
    audio = np.concatenate([sf.read(folder / s["audio"], dtype="int16")[0] for s in segs])
    original, fs = sf.read(wav, dtype="int16")
    assert fs == 2000 and segs[0]["fs"] == 2000.0
    np.testing.assert_array_equal(audio, original)  # the recording, sample for sample
    archived_env = [m["time_s"] for s in segs for m in s["pcg"]]
    assert archived_env == [m.time_s for m in msgs if isinstance(m, PcgMessage)] and archived_env
    verdicts = [(m["time_s"], m["label"]) for s in segs for m in s["pcg_class"]]
    assert verdicts == [(m.time_s, m.label) for m in msgs if isinstance(m, PcgClassMessage)] and verdicts
    assert reader.verify_pcg(folder) == (len(segs), [])
    from ecgmon.cli import main

    assert main(["archive", "--archive", str(tmp_path), "list"]) == 0
    row = next(ln for ln in capsys.readouterr().out.splitlines() if "pcg (FLAC)" in ln)
    assert "bed1" in row and "2000" in row and f" {len(segs)} " in row
    flac = folder / segs[1]["audio"]
    flac.write_bytes(flac.read_bytes()[:2000])  # cut short
    count, problems = reader.verify_pcg(folder)
    assert count == len(segs) and len(problems) == 1 and problems[0].startswith("bed1_pcg_000002")
    assert main(["archive", "--archive", str(tmp_path), "verify"]) == 1
    assert f"bed1/pcg: {len(segs)} heart-sound segments: 1 problems" in capsys.readouterr().out


def test_retention_deletes_old_heart_sound_segments_too(tmp_path, data_dir):
    import soundfile as sf

    x, fs = sf.read(data_dir / "pcg2016" / "training-a" / "a0001.flac", dtype="float32")
    writer = ArchiveWriter(tmp_path, segment_s=5, max_gb=30e3 / 1e9)  # 5 s of FLAC is about 15 kB
    writer.start()
    for s in range(0, 40 * fs, 100):
        writer.feed_pcg(Chunk("bed4", float(fs), ("pcg",), s, x[s : s + 100, None].copy()))
    writer.close()
    left = sorted(p.name for p in (tmp_path / "bed4" / "pcg").iterdir() if p.is_file())
    assert left[-2:] == ["bed4_pcg_000008.flac", "bed4_pcg_000008.json"]  # the newest stays
    assert "bed4_pcg_000001.flac" not in left and 2 <= len(left) < 16
    assert all(p.with_suffix(".flac").name in left for p in (tmp_path / "bed4" / "pcg").glob("*.json"))


def test_a_disk_that_fails_and_comes_back_is_a_gap_between_two_events(tmp_path, data_dir):
    rec = wfdb.rdrecord(str(data_dir / "mitdb" / "100"), sampto=360 * 30)
    x = rec.p_signal.astype(np.float32)
    adc = [(g, b, u) for g, b, u in zip(rec.adc_gain, rec.baseline, rec.units)]
    root, away = tmp_path / "archive", tmp_path / "away"
    writer = ArchiveWriter(root, segment_s=2)
    writer.start()

    def feed(seconds: range) -> None:
        for s in range(seconds.start * 360, seconds.stop * 360, 36):
            writer.feed(Chunk("bed5", 360.0, tuple(rec.sig_name), s, x[s : s + 36].copy()), adc)
        assert writer.wait_idle(60)

    feed(range(0, 10))
    root.rename(away)  # the disk goes: where the archive was, a file
    root.write_text("not a folder")
    feed(range(10, 20))
    root.unlink()  # and comes back
    away.rename(root)
    feed(range(20, 30))
    writer.close()
    events = [(e.code, e.stream) for e in writer.take_events()]
    assert events == [("archive_failed", "bed5"), ("archive_recovered", "ecgmon")]
    layout = reader.open_layout(root / "bed5")
    names = [n for n, _ in layout.entries]
    assert NULL in names and layout.length == 360 * 30  # the lost stretch is a gap, in step
    got = wfdb.rdrecord(str(root / "bed5" / layout.name), physical=False).d_signal
    want = wfdb.rdrecord(str(data_dir / "mitdb" / "100"), sampto=360 * 30, physical=False).d_signal
    lost = got[:, 0] == -32768
    assert 0 < lost.sum() <= 12 * 360 and not lost[: 10 * 360].any() and not lost[22 * 360 :].any()
    np.testing.assert_array_equal(got[~lost], want[~lost])
    assert reader.verify(layout) == []


def test_a_full_queue_drops_counts_and_says_so_and_the_archive_shows_the_gap(tmp_path, data_dir):
    rec = wfdb.rdrecord(str(data_dir / "mitdb" / "100"), sampto=360 * 20)
    x = rec.p_signal.astype(np.float32)
    adc = [(g, b, u) for g, b, u in zip(rec.adc_gain, rec.baseline, rec.units)]
    writer = ArchiveWriter(tmp_path, segment_s=2, queue_items=50)

    def chunk(s: int) -> Chunk:
        return Chunk("bed6", 360.0, tuple(rec.sig_name), s, x[s : s + 36].copy())

    # The writer's thread not yet running is a writer that fell behind: feeding never waits.
    for s in range(0, 360 * 10, 36):  # 100 chunks into room for 50
        writer.feed(chunk(s), adc)
    assert writer.dropped == 50
    events = writer.take_events()
    assert [(e.code, e.counts) for e in events] == [("archive_queue_full", {"archive_dropped": 1})]  # once
    writer.start()
    assert writer.wait_idle(60)
    for s in range(360 * 10, 360 * 20, 36):
        writer.feed(chunk(s), adc)
        if s % 1440 == 0:
            assert writer.wait_idle(60)  # a writer that keeps up: nothing more is dropped
    writer.close()
    assert writer.dropped == 50
    layout = reader.open_layout(tmp_path / "bed6")
    assert layout.length == 360 * 20
    assert [(n == NULL, length) for n, length in layout.entries] == [
        (False, 720), (False, 720), (False, 360), (True, 1800), (False, 720), (False, 720), (False, 720),
        (False, 720), (False, 720)]  # 5 s kept, 5 s dropped: a gap in step, then the rest


def test_resent_samples_are_dropped_and_a_jump_is_a_gap(tmp_path, data_dir):
    rec = wfdb.rdrecord(str(data_dir / "mitdb" / "100"), sampto=360 * 10)
    x = rec.p_signal.astype(np.float32)
    adc = [(g, b, u) for g, b, u in zip(rec.adc_gain, rec.baseline, rec.units)]
    writer = ArchiveWriter(tmp_path, segment_s=60)
    writer.start()
    for start, stop in [(0, 360), (0, 360), (180, 720), (720, 1080), (1800, 3600)]:  # resend, overlap, jump
        writer.feed(Chunk("bed7", 360.0, tuple(rec.sig_name), start, x[start:stop].copy()), adc)
    writer.close()
    layout = reader.open_layout(tmp_path / "bed7")
    assert [(n == NULL, length) for n, length in layout.entries] == [(False, 1080), (True, 720), (False, 1800)]
    got = wfdb.rdrecord(str(tmp_path / "bed7" / layout.name), physical=False).d_signal
    want = wfdb.rdrecord(str(data_dir / "mitdb" / "100"), sampto=3600, physical=False).d_signal
    np.testing.assert_array_equal(got[:1080], want[:1080])
    np.testing.assert_array_equal(got[1800:], want[1800:])


def test_a_full_disk_under_the_audit_log_is_an_event_and_the_signal_goes_on(tmp_path, data_dir):
    import os

    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full here to fill")
    (tmp_path / "audit.jsonl").symlink_to("/dev/full")  # every write: ENOSPC, as on a full disk
    rec = wfdb.rdrecord(str(data_dir / "mitdb" / "100"), sampto=360 * 5)
    x = rec.p_signal.astype(np.float32)
    writer = ArchiveWriter(tmp_path, segment_s=2)
    writer.start()
    for s in range(0, len(x), 36):
        writer.feed(Chunk("bed8", 360.0, tuple(rec.sig_name), s, x[s : s + 36].copy()))
    writer.close()
    events = [(e.stream, e.code, e.text.split(": ", 1)[1]) for e in writer.take_events()]
    assert events == [("ecgmon", "archive_failed", "the disk is full")]
    assert reader.verify(reader.open_layout(tmp_path / "bed8")) == []
    assert reader.open_layout(tmp_path / "bed8").length == 360 * 5


def test_run_archives_by_default_and_the_flags_choose_where_or_not(tmp_path, monkeypatch):
    from ecgmon.cli import build_parser
    from ecgmon.commands.run import _archive
    from ecgmon.config import parse_config

    def writer(argv: list[str], config: Config = Config()):
        return _archive(build_parser().parse_args(["run", *argv]), config, [])

    monkeypatch.setenv("ECGMON_ARCHIVE", str(tmp_path / "env"))
    assert writer([]).root == tmp_path / "env"  # on by default
    assert writer(["--archive", str(tmp_path / "x")]).root == tmp_path / "x"
    assert writer(["--no-archive"]) is None
    off = parse_config({"archive": {"enabled": False}})
    assert writer([], off) is None and writer(["--archive", str(tmp_path / "y")], off).root == tmp_path / "y"
    monkeypatch.delenv("ECGMON_ARCHIVE")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert writer([]).root == tmp_path / "xdg" / "ecgmon" / "archive"
    chosen = parse_config({"archive": {"folder": str(tmp_path / "cfg"), "segment_s": 30}})
    w = writer([], chosen)
    assert w.root == tmp_path / "cfg" and w.segment_s == 30


def test_a_restart_lists_a_segment_renamed_just_before_a_crash_and_mends_a_torn_audit_line(tmp_path, data_dir):
    from ecgmon.archive.segment import to_digital, write_segment

    rec = wfdb.rdrecord(str(data_dir / "mitdb" / "100"), sampto=360 * 6)
    x = rec.p_signal.astype(np.float32)
    adc = [(g, b, u) for g, b, u in zip(rec.adc_gain, rec.baseline, rec.units)]

    def run(seconds: int) -> None:
        writer = ArchiveWriter(tmp_path, segment_s=2)
        writer.start()
        for s in range(0, 360 * seconds, 36):
            writer.feed(Chunk("bed9", 360.0, tuple(rec.sig_name), s, x[s : s + 36].copy()), adc)
        writer.close()

    run(4)
    layout = reader.open_layout(tmp_path / "bed9")
    # A crash after segment 3 was renamed into place and before the layout header was replaced,
    # and in the middle of an audit entry.
    write_segment(tmp_path / "bed9", "bed9_000003", layout.spec, to_digital(x[1440:2160], layout.spec)[0],
                  time.time(), {"stream_start": 1440, "closed_wall": f"{time.time():.3f}"})
    with open(tmp_path / "audit.jsonl", "a") as fh:
        fh.write('{"wall": 1, "type": "ala')
    run(2)
    names = [n for n, _ in reader.open_layout(tmp_path / "bed9").entries]
    assert names == ["bed9_000001", "bed9_000002", "bed9_000003", NULL, "bed9_000004"]
    assert reader.verify(reader.open_layout(tmp_path / "bed9")) == []
    lines = (tmp_path / "audit.jsonl").read_text().splitlines()
    assert lines[2] == '{"wall": 1, "type": "ala'  # the torn entry stays as it was, alone on its line
    assert [e["type"] for e in read_audit(tmp_path)] == ["daemon_start", "daemon_stop"] * 2


def test_retention_by_age_deletes_segments_older_than_keep_days(tmp_path, data_dir):
    import os

    rec = wfdb.rdrecord(str(data_dir / "mitdb" / "100"), sampto=360 * 10)
    x = rec.p_signal.astype(np.float32)

    def run(keep_days: float) -> None:
        writer = ArchiveWriter(tmp_path, segment_s=2, keep_days=keep_days)
        writer.start()
        for s in range(0, len(x), 36):
            writer.feed(Chunk("bed10", 360.0, tuple(rec.sig_name), s, x[s : s + 36].copy()))
        writer.close()

    run(0)
    old = time.time() - 40 * 86400
    for path in (tmp_path / "bed10").glob("bed10_00000[1-3].*"):  # three segments of 40 days ago
        os.utime(path, (old, old))
    run(30)
    names = [n for n, _ in reader.open_layout(tmp_path / "bed10").entries]
    assert names[:2] == ["bed10_000004", "bed10_000005"] and names[2] == NULL  # the rest, then the restart
    assert not list((tmp_path / "bed10").glob("bed10_000001.*"))
    assert reader.open_layout(tmp_path / "bed10").first_sample == 3 * 720
    assert reader.verify(reader.open_layout(tmp_path / "bed10")) == []


def test_export_times_may_be_utc_dates(tmp_path, data_dir):
    from datetime import datetime, timezone

    rec = wfdb.rdrecord(str(data_dir / "mitdb" / "100"), sampto=360 * 6)
    x = rec.p_signal.astype(np.float32)
    writer = ArchiveWriter(tmp_path, segment_s=2)
    writer.start()
    for s in range(0, len(x), 36):
        writer.feed(Chunk("bed11", 360.0, tuple(rec.sig_name), s, x[s : s + 36].copy(), received=1.8e9 + (s + 36) / 360))
    writer.close()
    layout = reader.open_layout(tmp_path / "bed11")

    def utc(t: float) -> str:
        return datetime.fromtimestamp(t, tz=timezone.utc).isoformat().replace("+00:00", "Z")

    # The chunks arrived as if live from 1.8e9 (Unix seconds): the segments' times say where.
    assert reader.time_index(layout, utc(1.8e9 + 3.0)) == 3 * 360
    assert reader.time_index(layout, "2.5") == 900
    assert reader.time_index(layout, utc(1.8e9 - 60)) == 0
    with pytest.raises(ValueError, match="neither seconds"):
        reader.time_index(layout, "yesterday")
