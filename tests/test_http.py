"""The HTTP face with FastAPI's test client: an uploaded record analysed exactly as the daemon
replays it, every malformed upload a 4xx with one line, the pool's limit (429), the token,
/readyz before the models, /metrics in the Prometheus text format. The real uvicorn server
beside a live daemon is in test_http_live.py."""

from __future__ import annotations

import asyncio
import io
import os
from pathlib import Path
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import wfdb
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from ecgmon.config import Config
from ecgmon.http.app import create_app
from ecgmon.http.face import HttpFace
from ecgmon.http.analyze import ping
from ecgmon.http.pool import AnalysisPool, PoolFull, WorkerCrashed
from ecgmon.http.security import HttpSetupError, check_bind
from ecgmon.http.server import bind
from ecgmon.monitor.daemon import Daemon
from ecgmon.monitor.model_set import load_models
from ecgmon.monitor.sources.audio_file import AudioFileSource
from ecgmon.monitor.sources.record import RecordSource
from ecgmon.schema import AlarmMessage, BeatMessage, PcgClassMessage, PcgMessage, SegmentMessage
from zmq_helpers import PREFIXES, daemon_messages

SECONDS = 180  # of mitdb 119 (ventricular bigeminy): V and N beats, segments, alarms


@pytest.fixture(scope="module")
def models():
    return load_models(Config().models)


def _config(**http) -> Config:
    config = Config()
    config.http.pool = "thread"  # the test's own process: no worker start-up to wait for
    for key, value in http.items():
        setattr(config.http, key, value)
    return config


def _client(models, config: Config | None = None, ready: bool = True) -> TestClient:
    config = config or _config()
    pool = AnalysisPool(config, *models)
    pool.start()
    if ready:
        asyncio.run(pool.warm_up())
    return TestClient(create_app(HttpFace(config, pool)))


@pytest.fixture(scope="module")
def client(models):
    return _client(models)


@pytest.fixture(scope="module")
def excerpt(tmp_path_factory, data_dir) -> Path:
    """The first SECONDS of mitdb 119 as a WFDB record of its own (header and .dat)."""
    rec = wfdb.rdrecord(str(data_dir / "mitdb" / "119"), sampto=int(SECONDS * 360), physical=False)
    folder = tmp_path_factory.mktemp("rec")
    wfdb.wrsamp("r119", fs=rec.fs, units=rec.units, sig_name=rec.sig_name, d_signal=rec.d_signal,
                fmt=rec.fmt, adc_gain=rec.adc_gain, baseline=rec.baseline, write_dir=str(folder))
    return folder / "r119.hea"


@pytest.fixture(scope="module")
def answer119(client, excerpt) -> dict:
    """The analysis of the excerpt uploaded as a zip, with the attention maps."""
    answer = client.post("/v1/analyze?explain=true",
                         files=[("file", ("r119.zip", _zip(excerpt, excerpt.with_suffix(".dat"))))])
    assert answer.status_code == 200, answer.text
    return answer.json()


def _zip(*paths: Path) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for p in paths:
            zf.write(p, p.name)
    return buf.getvalue()


def _files(*paths: Path) -> list:
    return [("file", (p.name, p.read_bytes())) for p in paths]


async def test_analyze_equals_what_the_daemon_publishes_for_the_record(answer119, models, excerpt, endpoint):
    # What `ecgmon run --source r119.hea --speed 0` publishes: the daemon itself, on a real socket.
    config = Config()
    config.replay.speed = 0
    live = await daemon_messages(
        endpoint, lambda pub: Daemon(config, [RecordSource(str(excerpt), config)], pub, *models),
        PREFIXES + ("segment.", "alarm."), 120)
    body = answer119
    beats = [m for m in live if isinstance(m, BeatMessage)]
    assert [b["sample"] for b in body["beats"]] == [b.sample for b in beats]  # every beat, in order
    # Batches of other sizes may round differently, never enough to change more than a tie.
    assert sum(a["label"] != b.label for a, b in zip(body["beats"], beats)) <= 1
    assert {b["label"] for b in body["beats"]} >= {"N", "V"}
    segments = [m for m in live if isinstance(m, SegmentMessage)]
    assert [(s["start"], s["label"]) for s in body["segments"]] == [(s.start, s.label) for s in segments]
    alarms = [(m.alarm, m.state, m.onset_s, m.suppressed, m.annunciated_s) for m in live if isinstance(m, AlarmMessage)]
    assert [(a["alarm"], a["state"], a["onset_s"], a["suppressed"], a["annunciated_s"]) for a in body["alarms"]] == alarms
    assert body["record"] == {"name": "r119", "fs": 360.0, "lead": "MLII", "channels": ["MLII", "V1"],
                              "samples": SECONDS * 360, "duration_s": SECONDS}
    rates = [r["hr_bpm"] for r in body["heart_rate"] if r["hr_bpm"] is not None]
    assert len(body["heart_rate"]) >= SECONDS - 1 and 50 < np.median(rates) < 90


def test_the_same_ecg_as_edf_or_csv_gives_the_same_beats(client, answer119, excerpt, tmp_path):
    import pyedflib

    # The first minute: the pipeline is causal, so its beats are the whole excerpt's up to then
    # (less the last second or two, which wait for successors that the end of a file flushes).
    rec = wfdb.rdrecord(str(excerpt.with_suffix("")), sampto=60 * 360)
    wfdb_samples = [b["sample"] for b in answer119["beats"] if b["sample"] < 57 * 360]
    # EDF in microvolts (as most EDF ECGs are): read back and scaled to mV.
    edf = tmp_path / "r119.edf"
    writer = pyedflib.EdfWriter(str(edf), 2, file_type=pyedflib.FILETYPE_EDFPLUS)
    headers = [{"label": name, "dimension": "uV", "sample_frequency": 360, "physical_min": -10000,
                "physical_max": 10000, "digital_min": -32768, "digital_max": 32767} for name in rec.sig_name]
    writer.setSignalHeaders(headers)
    writer.writeSamples([rec.p_signal[:, i] * 1000 for i in range(2)])
    writer.close()
    edf_answer = client.post("/v1/analyze", files=_files(edf)).json()
    # EDF stores 16-bit samples over +-10 mV: 0.3 uV steps move a peak by a sample at most.
    edf_samples = [b["sample"] for b in edf_answer["beats"]][: len(wfdb_samples)]
    assert len(edf_samples) == len(wfdb_samples) > 60
    assert max(abs(a - b) for a, b in zip(edf_samples, wfdb_samples)) <= 1
    assert edf_answer["record"]["lead"] == "MLII" and edf_answer["record"]["duration_s"] == 60
    csv = "time,MLII,V1\n" + "\n".join(f"{i / 360:.4f},{a * 1000:.1f},{b * 1000:.1f}"
                                       for i, (a, b) in enumerate(rec.p_signal))
    csv_answer = client.post("/v1/analyze?fs=360&unit=uV", files=[("file", ("r119.csv", csv.encode()))])
    assert csv_answer.status_code == 200, csv_answer.text
    assert [b["sample"] for b in csv_answer.json()["beats"]][: len(wfdb_samples)] == wfdb_samples
    second = client.post("/v1/analyze?fs=360&unit=uV&channel=V1", files=[("file", ("r119.csv", csv.encode()))])
    assert second.json()["record"]["lead"] == "V1"


def test_explain_gives_each_segment_its_attention_map(client, answer119):
    maps = [s["attention"] for s in answer119["segments"]]
    assert maps and all(len(m) == 150 and abs(sum(m) - 1) < 1e-3 for m in maps)
    # Its picture, drawn when the link is fetched: 12 x 3.6 inches at 100 dpi.
    picture = client.get(answer119["segments"][3]["png"])
    assert picture.status_code == 200 and picture.headers["content-type"] == "image/png"
    assert picture.content[:8] == b"\x89PNG\r\n\x1a\n" and picture.content[16:24] == bytes.fromhex("000004b000000168")
    assert client.get(answer119["segments"][3]["png"].replace("/3.png", "/999.png")).status_code == 404
    assert client.get("/v1/explain/nosuchkey/segments/0.png").status_code == 404


def test_explain_gives_the_beats_the_spectrogram_models_class_and_grad_cam(client, answer119):
    grid = answer119["gradcam_grid"]
    frames = np.array(grid["frames_ms"])  # each column's STFT frame centre, ms from the R peak
    assert grid["model"] == "beat-spectrogram-cnn" and len(grid["frequencies_hz"]) == 18 and frames.size == 32
    beats = answer119["beats"]
    assert all(b["spectrogram"] is not None for b in beats)  # every beat has a class here
    # The documented selection: the first 20 beats and every beat either model calls other than N.
    explained = [b for b in beats if b["spectrogram"]["gradcam"] is not None]
    assert explained == [b for i, b in enumerate(beats)
                         if i < 20 or b["label"] != "N" or b["spectrogram"]["label"] != "N"]
    assert grid["explained"] == len(explained) and grid["limit"] == 1000
    maps = {c: np.array([b["spectrogram"]["gradcam"] for b in explained
                         if b["label"] == b["spectrogram"]["label"] == c]) for c in "NV"}
    assert len(maps["N"]) >= 15 and len(maps["V"]) >= 30
    for m in maps.values():
        assert m.shape[1:] == (18, 32) and np.isfinite(m).all() and m.min() >= 0 and np.allclose(m.max(axis=(1, 2)), 1)
    profile = {c: m.max(axis=1) for c, m in maps.items()}  # over the frequencies: where in time it looked
    # A normal beat is called from its QRS: every N map peaks within 45 ms of the R peak.
    assert np.all(np.abs(frames[profile["N"].argmax(axis=1)]) <= 45)
    # A PVC of 119 (wide, then a deep slow T wave) is called from its QRS and its T wave: most of
    # the V maps are hot at the QRS too, and every V map puts more weight after R+100 ms than
    # any N map does. A map given to the neighbouring beat (bigeminy: N, V, N, V) fails both.
    qrs = np.abs(frames) <= 45
    assert np.mean(profile["V"][:, qrs].max(axis=1) >= 0.5) >= 0.9
    late = {c: p[:, frames > 100].sum(axis=1) / p.sum(axis=1) for c, p in profile.items()}
    assert late["V"].min() > late["N"].max(), (late["V"].min(), late["N"].max())
    # Its picture, drawn when the link is fetched (13 x 3.5 inches at 100 dpi), as evaluate draws it.
    v_beat = next(b for b in explained if b["label"] == "V")
    picture = client.get(v_beat["spectrogram"]["png"])
    assert picture.status_code == 200 and picture.headers["content-type"] == "image/png"
    assert picture.content[:8] == b"\x89PNG\r\n\x1a\n" and picture.content[16:24] == bytes.fromhex("000005140000015e")
    last = f"/{len(explained) - 1}.png"
    assert explained[-1]["spectrogram"]["png"].endswith(last)
    assert client.get(explained[-1]["spectrogram"]["png"].replace(last, f"/{len(explained)}.png")).status_code == 404


def test_the_beats_given_a_grad_cam_are_bounded_and_the_answer_says_so(client, excerpt, monkeypatch):
    monkeypatch.setattr("ecgmon.http.analyze.MAX_EXPLAINED", 25)
    answer = client.post("/v1/analyze?explain=true", files=_files(excerpt, excerpt.with_suffix(".dat"))).json()
    beats = answer["beats"]
    explained = [i for i, b in enumerate(beats) if b["spectrogram"]["gradcam"] is not None]
    # The first 20, then the first 5 beats called other than N: the earliest, in time order.
    assert explained[:20] == list(range(20)) and len(explained) == 25
    assert all(beats[i]["label"] != "N" or beats[i]["spectrogram"]["label"] != "N" for i in explained[20:])
    assert answer["gradcam_grid"]["explained"] == answer["gradcam_grid"]["limit"] == 25
    assert "at most 25" in answer["explain"]["beats.spectrogram"]


async def test_a_heart_sound_recording_gets_what_the_daemon_publishes_for_it(models, data_dir, endpoint):
    """The heart-sound model's path (``[models] pcg_cycles = ""``; the cycle rule's is in
    test_pcg_cycles): the upload gets what the daemon publishes."""
    path = data_dir / "pcg2016" / "training-a" / "a0001.flac"
    config = Config()
    config.replay.speed = 0
    config.models.pcg_cycles = ""
    cnn = ({k: m for k, m in models[0].items() if k != "pcg_cycles"}, models[1])  # what load_models gives it
    live = await daemon_messages(endpoint, lambda pub: Daemon(config, [AudioFileSource(str(path), config)], pub,
                                                                *cnn), PREFIXES + ("pcg.", "pcg_class."), 60)
    http_config = _config()
    http_config.models.pcg_cycles = ""
    client = await asyncio.to_thread(_client, cnn, http_config)  # it warms the pool up in its own loop
    answer = await asyncio.to_thread(client.post, "/v1/analyze/pcg", files=_files(path))
    body = answer.json()
    assert body["duration_s"] == pytest.approx(35.67, abs=0.01)
    updates = [m for m in live if isinstance(m, PcgMessage)]
    assert body["s1_s"] == [t for m in updates for t in m.s1_s] and len(body["s1_s"]) >= 30
    assert body["s2_s"] == [t for m in updates for t in m.s2_s] and len(body["s2_s"]) >= 30
    assert body["envelope"]["envelope"] == [v for m in updates for v in m.envelope]
    assert 55 < body["hr_bpm"] < 66  # a0001 beats at about 60 bpm
    last = [m for m in live if isinstance(m, PcgClassMessage)][-1]
    verdict = body["verdict"]
    assert (verdict["label"], verdict["reason"], verdict["windows"]) == (last.label, last.reason, last.windows)
    assert verdict["p_abnormal"] == pytest.approx(last.p_abnormal, abs=1e-3)
    # The shipped card rules on the device's calibration: without one the daemon says so too.
    assert verdict["label"] == "uncertain" and verdict["reason"] == "device not calibrated"
    assert verdict["method"] == last.method == "model" and body["model"] == "pcg-mel-cnn"


def _truncated(excerpt: Path) -> list:
    return [("file", (excerpt.name, excerpt.read_bytes())),
            ("file", ("r119.dat", excerpt.with_suffix(".dat").read_bytes()[:5000]))]


def _escaping_header(excerpt: Path) -> list:
    text = excerpt.read_text().replace("r119.dat", "../../etc/passwd")
    return [("file", ("r119.hea", text.encode())), ("file", ("r119.dat", b"\0" * 100))]


MALFORMED = {
    "wrong format": (lambda e: [("file", ("scan.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 64))], "", 415,
                     "unsupported file type"),
    "missing header": (lambda e: [("file", ("r119.dat", e.with_suffix(".dat").read_bytes()))], "", 422,
                       "missing header"),
    "unsupported rate": (lambda e: [("file", ("slow.csv", b"\n".join(b"0.1" for _ in range(500))))],
                         "?fs=50&unit=mV", 422, "unsupported rate"),
    "csv without rate": (lambda e: [("file", ("a.csv", b"1\n2\n"))], "", 400, "?fs=HZ&unit=mV"),
    "csv not numbers": (lambda e: [("file", ("a.csv", b"mv\n1\nabc\n"))], "?fs=360&unit=mV", 422, "not numeric"),
    "csv unit": (lambda e: [("file", ("a.csv", b"1\n2\n"))], "?fs=360&unit=mmHg", 422, "not an ECG voltage"),
    "truncated signal": (_truncated, "", 422, "truncated"),
    "corrupt header": (lambda e: [("file", ("r119.hea", b"r119 two 360\n")), ("file", ("r119.dat", b"\0" * 10))],
                       "", 422, "not a number"),
    "header naming another file": (_escaping_header, "", 422, "was not uploaded"),
    "two records": (lambda e: [("file", ("a.hea", b"a 1 360\n")), ("file", ("b.hea", b"b 1 360\n"))], "", 400,
                    "one record at a time"),
    "corrupt zip": (lambda e: [("file", ("r.zip", b"PK\x03\x04" + b"\xff" * 200))], "", 422, "not a readable zip"),
    "corrupt edf": (lambda e: [("file", ("x.edf", b"0       " + b"\xff" * 400))], "", 422, "not a readable EDF"),
    "no such channel": (lambda e: [("file", ("a.csv", b"\n".join(b"0.1" for _ in range(500))))],
                        "?fs=360&unit=mV&channel=V9", 422, "no channel 'V9'"),
    "no file": (lambda e: [("other", ("a.csv", b"1"))], "", 400, "file"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_every_malformed_upload_is_a_4xx_with_one_line(client, excerpt, case):
    files, query, status, needle = MALFORMED[case]
    answer = client.post(f"/v1/analyze{query}", files=files(excerpt))
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert needle in error and "\n" not in error and "Traceback" not in error
    assert "/tmp" not in error  # the server's scratch folders are nobody's business


@pytest.mark.parametrize("name, data, status, needle", [
    ("beat.wav", b"RIFF\x10\0\0\0WAVEfmt " + b"\0" * 30, 422, "not a readable WAV/FLAC"),
    ("notes.txt", b"hello", 415, "WAV or FLAC"),
])
def test_a_malformed_heart_sound_upload_is_a_4xx(client, name, data, status, needle):
    answer = client.post("/v1/analyze/pcg", files=[("file", (name, data))])
    assert answer.status_code == status and needle in answer.json()["error"]


def test_too_large_and_too_long_uploads_are_413(models, excerpt):
    small = _client(models, _config(max_upload_mb=0.1, max_duration_s=60))
    big = small.post("/v1/analyze", files=_files(excerpt, excerpt.with_suffix(".dat")))  # 389 kB
    assert big.status_code == 413 and "0.1 MB" in big.json()["error"]
    long = small.post("/v1/analyze?fs=360&unit=mV", files=[("file", ("a.csv", b"0\n" * 30000))])  # 83 s
    assert long.status_code == 413 and "max_duration_s" in long.json()["error"]


def test_a_full_pool_answers_429_at_once(models):
    client = _client(models, _config(workers=1, queue=0))
    face = client.app.app.state.face
    face.pool.busy = face.pool.capacity  # as while one analysis runs
    answer = client.post("/v1/analyze?fs=360&unit=mV", files=[("file", ("a.csv", b"0\n" * 3600))])
    assert answer.status_code == 429 and answer.headers["retry-after"] == "5"
    face.pool.busy = 0
    assert client.post("/v1/analyze?fs=360&unit=mV", files=[("file", ("a.csv", b"0\n" * 3600))]).status_code == 200


async def test_the_pool_admits_workers_plus_queue_then_refuses(models):
    config = _config(workers=1, queue=1)
    pool = AnalysisPool(config, *models)
    pool.start()
    await pool.warm_up()
    import threading

    release = threading.Event()
    running = [asyncio.ensure_future(pool.run(lambda req, ctx: release.wait(5) and b"{}", None)) for _ in range(2)]
    await asyncio.sleep(0.05)
    with pytest.raises(PoolFull):
        await pool.run(lambda req, ctx: b"{}", None)
    release.set()
    assert await asyncio.gather(*running) == [b"{}", b"{}"]
    assert await pool.run(lambda req, ctx: b"ok", None) == b"ok"
    pool.close()


def test_readyz_is_503_until_the_models_are_loaded(models):
    client = _client(models, ready=False)
    assert client.get("/healthz").status_code == 200
    answer = client.get("/readyz")
    assert answer.status_code == 503 and answer.json()["reasons"] == ["models loading"]
    assert client.post("/v1/analyze", files=[("file", ("a.csv", b"1"))]).status_code in (400, 503)
    asyncio.run(client.app.app.state.face.pool.warm_up())
    assert client.get("/readyz").status_code == 200


def test_a_token_guards_everything_but_health(models, monkeypatch):
    monkeypatch.setenv("ECGMON_HTTP_TOKEN", "s3cret-token-of-the-ward-0123")
    client = _client(models)
    assert client.get("/healthz").status_code == 200 and client.get("/readyz").status_code == 200
    refused = client.get("/metrics")
    assert refused.status_code == 401 and "s3cret" not in refused.text
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer s3cret-token-of-the-ward-0123"}).status_code == 200


def test_a_non_loopback_address_needs_a_token_or_tls(monkeypatch):
    monkeypatch.delenv("ECGMON_HTTP_TOKEN", raising=False)
    with pytest.raises(HttpSetupError, match="without a token or TLS"):
        bind("0.0.0.0:0", Config())
    check_bind("127.0.0.1", None, False, False)
    check_bind("0.0.0.0", "a-token", False, False)
    check_bind("0.0.0.0", None, True, False)
    monkeypatch.setenv("ECGMON_HTTP_TOKEN", "another-long-token-0123456789")
    bind("0.0.0.0:0", Config()).close()


def test_metrics_parse_and_streams_need_a_daemon(client):
    text = client.get("/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert "ecgmon_http_analyses" in families and "ecgmon_http_pool_busy" in families
    statuses = {s.labels["status"] for s in families["ecgmon_http_analyses"].samples if s.name.endswith("_total")}
    assert "200" in statuses  # the analyses of the tests before
    answer = client.get("/v1/streams")
    assert answer.status_code == 404 and "ecgmon run --http" in answer.json()["error"]


def test_openapi_documents_the_endpoints(client):
    doc = client.get("/openapi.json").json()
    assert {"/v1/analyze", "/v1/analyze/pcg", "/v1/streams", "/healthz", "/readyz", "/metrics"} <= set(doc["paths"])
    assert client.get("/docs").status_code == 200


def _cli(args: list[str], tmp_path: Path, **env) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k not in ("ECGMON_CONFIG", "ECGMON_HTTP_TOKEN")}
    code = ("import sys; from ecgmon.cli import main; rc = main(sys.argv[1:]); "
            "print(rc, 'torch' in sys.modules, 'fastapi' in sys.modules)")
    return subprocess.run([sys.executable, "-c", code, *args], env={**environ, **env}, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("command", [
    ["serve", "--listen", "0.0.0.0:0"],
    ["run", "--headless", "--source", "sim", "--endpoint", "tcp://127.0.0.1:0", "--control", "", "--http", "0.0.0.0:0"],
])
def test_a_non_loopback_http_address_is_refused_at_once_by_the_commands(command, tmp_path):
    proc = _cli(command, tmp_path)
    assert proc.stdout.split()[:2] == ["2", "False"], proc.stdout + proc.stderr  # before the models load
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: refusing to serve HTTP on 0.0.0.0 without a token or TLS")


def test_the_daemon_without_http_never_imports_fastapi(tmp_path):
    proc = _cli(["run", "--headless", "--source", "sim?hr=abc", "--endpoint", "tcp://127.0.0.1:0"], tmp_path)
    assert proc.stdout.split() == ["2", "False", "False"], proc.stdout + proc.stderr


def test_a_bug_is_a_500_with_one_line_and_no_traceback(models, monkeypatch):
    def broken(req, ctx=None):
        raise RuntimeError("a bug\nwith a second line")

    monkeypatch.setattr("ecgmon.http.app.analyze_ecg", broken)
    config = _config()
    pool = AnalysisPool(config, *models)
    pool.start()
    asyncio.run(pool.warm_up())
    client = TestClient(create_app(HttpFace(config, pool)), raise_server_exceptions=False)
    answer = client.post("/v1/analyze?fs=360&unit=mV", files=[("file", ("a.csv", b"0\n" * 3600))])
    assert answer.status_code == 500 and answer.json() == {"error": "internal error: RuntimeError"}
    counted = {s.labels["status"]: s.value for f in text_string_to_metric_families(client.get("/metrics").text)
               for s in f.samples if s.name == "ecgmon_http_analyses_total"}
    assert counted == {"500": 1.0}


async def test_a_worker_process_that_dies_is_a_422_and_the_pool_starts_again():
    config = Config()
    config.models.beat = config.models.segment = config.models.pcg = config.models.pcg_cycles = ""  # a quick start
    pool = AnalysisPool(config)
    pool.start()
    await pool.warm_up()
    try:
        with pytest.raises(WorkerCrashed, match="crashed on this upload"):
            await pool.run(os._exit, 3)  # as a decoder library's crash would
        assert not pool.ready  # /readyz says 503 while the workers start again
        for _ in range(300):
            if pool.ready:
                break
            await asyncio.sleep(0.1)
        assert pool.ready and await pool.run(ping, None) == []
    finally:
        pool.close()
