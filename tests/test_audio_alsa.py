"""The real PortAudio path without a sound card: ALSA's ``file`` plugin is the capture device,
its input a raw PCM file made from a real pcg2016 recording (or a FIFO the test writes), set
up in an asoundrc in a temporary HOME that the daemon subprocess reads when PortAudio starts.

ALSA's ``null`` slave has no clock, so this device delivers as fast as the daemon takes the
audio (the source's hand-off then paces it); a real stethoscope is paced by its own clock.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
import signal
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import soxr

from ecgmon.schema import EventMessage, PcgClassMessage, PcgMessage
from pcg_model_helpers import tiny_calibration, tiny_pcg_model  # noqa: F401 (fixtures)
from zmq_helpers import collect_into, subscriber

# pcg2016 a0001: a clean normal recording of 35 s.
RECORDING = ("training-a", "a0001")
DEVICE_RATE = 4000  # the device's own rate, resampled to 2 kHz by the source

REPO = Path(__file__).resolve().parent.parent


def _asoundrc(infile: Path) -> str:
    # The plug layer fixes what the file plugin reads (S16_LE mono at DEVICE_RATE) and
    # converts it to whatever PortAudio asks for.
    return f"""
pcm.stethraw {{
  type file
  slave.pcm "null"
  file "/dev/null"
  infile "{infile}"
  format "raw"
}}
pcm.steth {{
  type plug
  slave {{
    pcm "stethraw"
    format S16_LE
    rate {DEVICE_RATE}
    channels 1
  }}
}}
"""


def _raw_pcm(data_dir: Path, silence_s: float = 0.0) -> bytes:
    """The recording at DEVICE_RATE as raw S16_LE, then ``silence_s`` of exact zeros."""
    x, fs = sf.read(data_dir / "pcg2016" / RECORDING[0] / f"{RECORDING[1]}.flac", dtype="float32")
    y = np.concatenate([soxr.resample(x, fs, DEVICE_RATE), np.zeros(int(silence_s * DEVICE_RATE), np.float32)])
    return (np.clip(y, -1, 1) * 32767).astype("<i2").tobytes()


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "ECGMON_CONFIG"}
    env["HOME"] = str(home)  # alsa.conf loads ~/.asoundrc
    env["PYTHONPATH"] = str(REPO)
    return env


def _start(home: Path, endpoint: str, *args: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "ecgmon.cli", "run", "--headless", "--endpoint", endpoint,
           "--control", "", *args]
    return subprocess.Popen(cmd, env=_env(home), cwd=home, stderr=subprocess.PIPE, text=True)


def _stop(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        pytest.fail(f"daemon did not stop on SIGTERM: {err[-2000:]}")
    return err


async def _run_until_event(home: Path, endpoint: str, code: str, args: list[str], timeout: float,
                           before_stop=lambda: None, enough=lambda ms: True) -> tuple[list, str]:
    """Run the daemon until event ``code`` and an ECG beat were published and ``enough`` holds
    of the messages; the messages and stderr."""
    proc = _start(home, endpoint, *args)
    try:
        msgs = await _watch(
            endpoint,
            lambda ms: any(isinstance(m, EventMessage) and m.code == code for m in ms)
            and any(m.kind == "beat" for m in ms) and enough(ms),
            timeout,
        )
    finally:
        before_stop()
        err = _stop(proc)
    return msgs, err


async def _watch(endpoint: str, until, timeout: float) -> list:
    ctx, sub = await subscriber(endpoint, ("pcg.", "pcg_class.", "event.", "beat."))
    msgs: list = []
    task = asyncio.create_task(collect_into(sub, msgs))
    try:
        for _ in range(int(timeout / 0.1)):
            if until(msgs):
                break
            await asyncio.sleep(0.1)
    finally:
        task.cancel()
        sub.close()
        ctx.term()
    return msgs


def test_devices_lists_the_alsa_device(tmp_path: Path, data_dir: Path) -> None:
    raw = tmp_path / "steth.raw"
    raw.write_bytes(_raw_pcm(data_dir))
    (tmp_path / ".asoundrc").write_text(_asoundrc(raw))
    proc = subprocess.run([sys.executable, "-m", "ecgmon.cli", "devices"], env=_env(tmp_path),
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert " steth " in proc.stdout and f"{DEVICE_RATE} Hz" in proc.stdout


async def test_heart_sounds_from_the_alsa_device_beside_ecg(
    tmp_path: Path, data_dir: Path, endpoint: str, tiny_pcg_model: Path, tiny_calibration: Path
) -> None:
    """ECG and heart sounds on one stream id; S1/S2, a rate and the heart-sound model's verdict
    come out; a device gone silent (exact zeros: unplugged or muted) is reported as a lost signal.

    At the end of its input file ALSA's file plugin repeats what its buffer last held, so
    the recording is followed by a few seconds of zeros that then last for ever.
    """
    raw = tmp_path / "steth.raw"
    raw.write_bytes(_raw_pcm(data_dir, silence_s=3.0))
    (tmp_path / ".asoundrc").write_text(_asoundrc(raw))
    config = tmp_path / "config.toml"
    # The heart-sound model's verdict (not the default cycle rule's): pcg_cycles = "".
    config.write_text(f'[models]\npcg = "{tiny_pcg_model}"\npcg_cycles = ""\n[audio]\ncalibration = "{tiny_calibration}"\n')
    duration = len(_raw_pcm(data_dir)) / 2 / DEVICE_RATE
    # One verdict per 5 s window with 2.5 s hop over the recording. The device has no clock:
    # the zeros after the recording (and the signal_lost event) can come before the batcher
    # has returned the last windows' results, so wait for those too.
    windows = int((duration - 5) / 2.5)
    msgs, err = await _run_until_event(
        tmp_path, endpoint, "signal_lost",
        ["--config", str(config), "--source", "bed1=mitdb:100", "--pcg", "bed1=mic:steth", "--speed", "10"],
        timeout=120,
        enough=lambda ms: sum(isinstance(m, PcgClassMessage) for m in ms) >= windows,
    )
    pcg = [m for m in msgs if isinstance(m, PcgMessage)]
    assert pcg, f"no pcg message: {err[-2000:]}"
    assert all(m.stream == "bed1" for m in pcg)
    assert any(m.kind == "beat" and m.stream == "bed1" for m in msgs), "the ECG of bed1 stopped"
    assert not any(isinstance(m, EventMessage) and m.code == "stream_id_clash" for m in msgs)
    codes = [m.code for m in msgs if isinstance(m, EventMessage)]
    assert "overflow" not in codes, codes  # the hand-off paces a device without a clock
    s1 = [t for m in pcg for t in m.s1_s]
    s2 = [t for m in pcg for t in m.s2_s]
    rates = [m.hr_bpm for m in pcg if m.hr_bpm is not None and m.time_s < duration]
    assert rates, "no heart rate while the recording played"
    rate = float(np.median(rates))
    # About one S1 and one S2 per beat of the recording's rate.
    beats = rate / 60 * duration
    assert 0.7 * beats <= len(s1) <= 1.3 * beats and 0.7 * beats <= len(s2) <= 1.3 * beats
    assert 40 <= rate <= 120
    lost = [m for m in msgs if isinstance(m, EventMessage) and m.code == "signal_lost"]
    assert lost[0].stream == "bed1" and "exact zeros" in lost[0].text
    verdicts = [m for m in msgs if isinstance(m, PcgClassMessage)]
    assert len(verdicts) >= windows and all(v.stream == "bed1" for v in verdicts)
    # The verdict on the device's calibration ([audio] calibration): on the calibrated scale, no probability.
    last = verdicts[-1]
    assert last.calibrated and last.reason != "device not calibrated" and last.p_abnormal is not None
    if last.label != "uncertain":
        assert last.probability is None and (last.label == "abnormal") == (last.p_abnormal >= last.threshold)
    assert "Traceback" not in err


async def test_a_device_that_stops_delivering_is_reported(tmp_path: Path, data_dir: Path, endpoint: str) -> None:
    """The device's input is a FIFO whose writer stops: PortAudio's thread waits in read(),
    no block arrives, and the source reports the device lost; other streams go on."""
    fifo = tmp_path / "steth.fifo"
    os.mkfifo(fifo)
    # Opened read-write so that neither side blocks opening it and PortAudio's probe of the
    # device at start-up finds a writer.
    fd = os.open(fifo, os.O_RDWR)
    closed = []

    def close_writer() -> None:  # the blocked read() returns, so the device can be closed
        if not closed:
            closed.append(os.close(fd))

    try:
        (tmp_path / ".asoundrc").write_text(_asoundrc(fifo))
        os.write(fd, _raw_pcm(data_dir)[: DEVICE_RATE * 2 * 3])  # 3 s, then nothing
        msgs, err = await _run_until_event(
            tmp_path, endpoint, "device_lost", ["--source", "ecg=sim", "--pcg", "bed1=mic:steth"],
            timeout=60, before_stop=close_writer,
        )
    finally:
        close_writer()
    lost = [m for m in msgs if isinstance(m, EventMessage) and m.code == "device_lost"]
    assert lost, f"no device_lost event: {err[-2000:]}"
    assert lost[0].stream == "bed1" and "steth" in lost[0].text
    assert any(m.kind == "beat" and m.stream == "ecg" for m in msgs), "the other stream stopped"
    assert "device_lost" in err or "no audio from input device" in err  # one log line too
    assert "Traceback" not in err
