"""Shared fixtures: the real recordings in $ECGMON_DATA (../shared/data by default)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _data_dir() -> Path:
    return Path(os.environ.get("ECGMON_DATA") or REPO.parent / "shared" / "data").resolve()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = _data_dir()
    assert (path / "mitdb" / "100.hea").is_file(), (
        f"real recordings not found in {path}: set ECGMON_DATA to the shared data folder"
    )
    return path


@pytest.fixture(scope="session")
def beat_model() -> dict:
    """The shipped beat model alone, loaded as the daemon loads it (``{"beat": LoadedModel}``)."""
    from ecgmon.config import Config
    from ecgmon.monitor.model_set import load_models

    loaded, errors = load_models(Config().models.model_copy(update={"segment": "", "pcg": "", "pcg_cycles": ""}))
    assert errors == []
    return loaded


@pytest.fixture(autouse=True)
def _ecgmon_data_env(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Every test (and every subprocess it starts) finds the recordings the same way, and a
    daemon it runs archives into a scratch folder of its own, not the user's archive."""
    monkeypatch.setenv("ECGMON_DATA", str(_data_dir()))
    monkeypatch.setenv("ECGMON_ARCHIVE", str(tmp_path_factory.mktemp("archive")))


def free_tcp_port() -> int:
    """A loopback TCP port nobody listens on right now (the OS picks it)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(name: str, proc, port: int, timeout: float, exit_details, stop) -> None:
    """Return once ``proc`` (a server just started) accepts TCP connections on loopback ``port``.
    RuntimeError naming ``exit_details()`` if it exits first, or after ``stop()`` if it does not
    listen within ``timeout`` seconds."""
    import socket
    import time

    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited at start: {exit_details()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                stop()
                raise RuntimeError(f"{name} did not listen on {port} within {timeout} s") from None
            time.sleep(0.05)


@pytest.fixture
def free_port() -> int:
    return free_tcp_port()


@pytest.fixture
def endpoint(free_port: int) -> str:
    """A fresh tcp://127.0.0.1:PORT endpoint for a publisher under test."""
    return f"tcp://127.0.0.1:{free_port}"
