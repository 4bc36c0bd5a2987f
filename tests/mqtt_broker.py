"""A real mosquitto on a free loopback port for the MQTT tests, with persistence so that it keeps
sessions and queued QoS 1 messages across a stop (SIGTERM saves its database) and a restart."""

from __future__ import annotations

import getpass
from pathlib import Path
import shutil
import signal
import subprocess

import pytest

from conftest import free_tcp_port, wait_listening

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


class Broker:
    """One mosquitto process at a time on a fixed port; ``stop`` and ``start`` again keep its state."""

    def __init__(self, workdir: Path, port: int) -> None:
        self.port = port
        self.workdir = workdir
        self.conf = workdir / "mosquitto.conf"
        self.log = workdir / "mosquitto.log"
        (workdir / "db").mkdir(parents=True, exist_ok=True)
        self.conf.write_text(
            f"listener {port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence true\n"
            f"persistence_location {workdir / 'db'}/\n"
            # Saved only at exit (SIGTERM) or on SIGUSR1: the tests decide when.
            "autosave_interval 0\n"
            # The default keeps 1000 messages per absent client and drops the rest.
            "max_queued_messages 0\n"
            f"log_dest file {self.log}\n"
            "log_type error\nlog_type warning\nlog_type notice\nlog_type information\n"
            # As root, mosquitto would switch to user 'mosquitto', who cannot write tmp_path.
            f"user {getpass.getuser()}\n"
        )
        self.proc: subprocess.Popen | None = None

    def url(self, topic: str) -> str:
        return f"mqtt://127.0.0.1:{self.port}/{topic}"

    def start(self, timeout: float = 15.0) -> None:
        assert self.proc is None, "broker already running"
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        wait_listening("mosquitto", self.proc, self.port, timeout, self._exit_details, self.stop)

    def _exit_details(self) -> str:
        """What a mosquitto that exited at start said; it is then no longer running."""
        err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
        log = self.log.read_text() if self.log.exists() else ""
        self.proc = None
        return err + log

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
        """Stop it; with SIGTERM it saves sessions and queued messages first."""
        if self.proc is None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stderr:
            self.proc.stderr.close()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture
def mosquitto(tmp_path: Path):
    """A running broker with persistence in tmp_path; stopped at the end of the test."""
    if not Path(MOSQUITTO).exists():
        pytest.fail("mosquitto is not installed: run scripts/system-deps.sh")
    broker = Broker(tmp_path / "mosquitto", free_tcp_port())
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()
