"""The HTTP face on a real uvicorn server on loopback, beside a live daemon (`ecgmon run
--http`): /readyz is 503 until the models are loaded, /v1/streams says what the status
message says, /metrics parses and its counters move as the daemon works, an upload is
analysed while the daemon runs, and Ctrl-C stops both cleanly."""

from __future__ import annotations

import os
from pathlib import Path
import shutil
import signal
import subprocess
import sys
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import free_tcp_port

REPO = Path(__file__).resolve().parents[1]


def _samples(text: str) -> dict[tuple[str, tuple], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def test_a_live_daemon_serves_streams_metrics_and_analyses(tmp_path):
    port = free_tcp_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "ecgmon.cli", "run", "--source", "bed1=mitdb:119", "--speed", "4", "--headless",
         "--no-archive", "--endpoint", f"tcp://127.0.0.1:{free_tcp_port()}", "--control", "",
         "--http", f"127.0.0.1:{port}"],  # the default pool: a worker process
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        first = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                answer = httpx.get(f"{base}/readyz", timeout=2)
            except httpx.TransportError:
                time.sleep(0.02)
                continue
            first = first or answer
            if answer.status_code == 200:
                break
            time.sleep(0.1)
        # The server answers before the models have loaded (they load after it binds).
        assert first is not None and first.status_code == 503, first and first.text
        assert answer.status_code == 200, answer.text
        assert httpx.get(f"{base}/healthz").json() == {"status": "ok"}

        streams = httpx.get(f"{base}/v1/streams").json()
        assert [(s["stream"], s["source"], s["state"]) for s in streams] == [("bed1", "mitdb:119", "running")]
        assert httpx.get(f"{base}/v1/streams/bed1").json()["fs"] == 360
        missing = httpx.get(f"{base}/v1/streams/bed9")
        assert missing.status_code == 404 and "bed1" in missing.json()["error"]

        before = _samples(httpx.get(f"{base}/metrics").text)
        csv = "\n".join("0.0" for _ in range(3600)).encode()
        upload = httpx.post(f"{base}/v1/analyze?fs=360&unit=mV", files={"file": ("flat.csv", csv)}, timeout=60)
        assert upload.status_code == 200 and upload.json()["beats"] == []  # a flat line has no beats
        bad = httpx.post(f"{base}/v1/analyze", files={"file": ("x.bin", b"\0" * 10)})
        assert bad.status_code == 415
        key = ("ecgmon_stream_samples_total", (("lead", "MLII"), ("stream", "bed1")))
        # mitdb 119's first ventricular bigeminy is raised 28.6 s into the record (7 s at speed 4).
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            time.sleep(1)
            after = _samples(httpx.get(f"{base}/metrics").text)
            if after[key] - before[key] > 20 * 360 and any(k[0] == "ecgmon_alarms_raised_total" for k in after):
                break
        assert after[key] - before[key] > 20 * 360
        beats = ("ecgmon_stream_beats_total", (("lead", "MLII"), ("stream", "bed1")))
        assert after[beats] > before[beats]
        sent = ("ecgmon_messages_published_total", ())
        assert after[sent] > before[sent]
        assert after[("ecgmon_batcher_items_total", (("model", "beat"),))] > 0
        assert ("ecgmon_batcher_latency_ms", (("model", "beat"), ("quantile", "0.99"))) in after
        assert after[("ecgmon_http_analyses_total", (("endpoint", "analyze"), ("status", "415")))] == 1
        # mitdb 119's ventricular bigeminy, counted by kind as the daemon raises it.
        raised = {k[1]: v for k, v in after.items() if k[0] == "ecgmon_alarms_raised_total"}
        assert any(dict(labels)["alarm"] == "bigeminy" and dict(labels)["stream"] == "bed1" for labels in raised)
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "token" not in err.casefold().replace("token not required", "")


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make a certificate")
def test_tls_lets_ecgmon_serve_bind_beyond_loopback(tmp_path):
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    config = tmp_path / "config.toml"
    config.write_text(f'[http]\npool = "thread"\ntls_cert = "{cert}"\ntls_key = "{key}"\n')
    port = free_tcp_port()
    env = {k: v for k, v in os.environ.items() if k != "ECGMON_HTTP_TOKEN"}
    proc = subprocess.Popen([sys.executable, "-m", "ecgmon.cli", "--config", str(config), "serve", "--listen",
                             f"0.0.0.0:{port}"], cwd=REPO, env={**env, "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        answer = None
        for _ in range(300):
            try:
                answer = httpx.get(f"https://127.0.0.1:{port}/healthz", verify=str(cert), timeout=2)
                break
            except httpx.TransportError:
                time.sleep(0.05)
        assert answer is not None and answer.json() == {"status": "ok"}
        with pytest.raises(httpx.TransportError):  # no plain HTTP on a TLS port
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130 and "https://0.0.0.0:" in err and "Traceback" not in err, err
