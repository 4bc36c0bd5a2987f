"""Issue 12, reproduction 9: a missing microphone must not end everything. A microphone that
is not there when the daemon starts is the event ``device_unavailable`` and is looked for again
every ``[audio] reconnect_s``; the ECG streams go on; a stethoscope plugged in later is picked
up. Only a ``mic:DEVICE`` that can never be one device (it matches several) stops the start.

The devices are ALSA's, set up in an asoundrc in a temporary HOME (see test_audio_alsa.py).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ecgmon.schema import EventMessage, PcgMessage
from test_audio_alsa import _asoundrc, _env, _raw_pcm, _run_until_event, _start, _stop, _watch


def _input_devices(home: Path) -> int:
    """How many input devices PortAudio finds with ``home``'s ALSA setup."""
    code = "import sounddevice as sd; print(sum(d['max_input_channels'] > 0 for d in sd.query_devices()))"
    out = subprocess.run([sys.executable, "-c", code], env=_env(home), cwd=home, capture_output=True,
                         text=True, timeout=60)
    return int(out.stdout.strip() or 0)


def _events(msgs: list, code: str) -> list[EventMessage]:
    return [m for m in msgs if isinstance(m, EventMessage) and m.code == code]


async def test_no_audio_input_at_all(tmp_path: Path, endpoint: str) -> None:
    """The reproduction as filed: `--source bed1=mitdb:100 --pcg bed1=mic` on a machine
    without audio input exited 2 and took the ECG with it."""
    if _input_devices(tmp_path):
        pytest.skip("this machine has an audio input device")
    msgs, err = await _run_until_event(
        tmp_path, endpoint, "device_unavailable",
        ["--source", "bed1=mitdb:100", "--pcg", "bed1=mic", "--speed", "10"], timeout=60,
    )
    (event,) = _events(msgs, "device_unavailable")  # once, not once per attempt
    assert event.stream == "bed1" and event.level == "error" and "no audio input device" in event.text
    assert any(m.kind == "beat" and m.stream == "bed1" for m in msgs), f"the ECG stopped: {err[-2000:]}"
    assert not _events(msgs, "source_failed"), err[-2000:]
    assert "Traceback" not in err


async def test_a_stethoscope_plugged_in_later_is_picked_up(tmp_path: Path, endpoint: str, data_dir: Path) -> None:
    """No 'steth' device at start: an event, the ECG goes on; once the device exists (its
    asoundrc written), the source opens it and heart sounds are published."""
    proc = _start(tmp_path, endpoint, "--source", "bed1=mitdb:100", "--pcg", "bed1=mic:steth", "--speed", "10")
    plugged = []

    def unavailable_and_beats(ms: list) -> bool:
        if _events(ms, "device_unavailable") and any(m.kind == "beat" for m in ms) and not plugged:
            raw = tmp_path / "steth.raw"
            raw.write_bytes(_raw_pcm(data_dir))
            (tmp_path / ".asoundrc").write_text(_asoundrc(raw))
            plugged.append(len(ms))
        return bool(plugged) and any(isinstance(m, PcgMessage) for m in ms[plugged[0]:])

    try:
        msgs = await _watch(endpoint, unavailable_and_beats, timeout=90)
    finally:
        err = _stop(proc)
    (event,) = _events(msgs, "device_unavailable")
    assert event.stream == "bed1" and "mic:steth is no input device" in event.text, event.text
    assert plugged, f"no device_unavailable event and ECG beat: {err[-2000:]}"
    back = _events(msgs, "reconnected")
    assert back and back[0].stream == "bed1" and "steth" in back[0].text, err[-2000:]
    assert any(isinstance(m, PcgMessage) and m.stream == "bed1" for m in msgs), err[-2000:]
    assert any(m.kind == "beat" and m.stream == "bed1" for m in msgs[plugged[0]:]), "the ECG stopped"
    assert "Traceback" not in err


def test_an_ambiguous_device_is_refused_at_start(tmp_path: Path) -> None:
    raw = tmp_path / "steth.raw"
    raw.write_bytes(b"\0" * 8000)
    both = _asoundrc(raw) + _asoundrc(raw).replace("pcm.steth", "pcm.steth2")
    (tmp_path / ".asoundrc").write_text(both)
    proc = subprocess.run(
        [sys.executable, "-m", "ecgmon.cli", "run", "--headless", "--endpoint", "tcp://127.0.0.1:0",
         "--control", "", "--pcg", "mic:ste"],
        env=_env(tmp_path), cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert "mic:ste matches several input devices" in proc.stderr and "Traceback" not in proc.stderr
