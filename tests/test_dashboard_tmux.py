"""The dashboard in a real terminal (tmux) against a real daemon: what a user sees on the
screen, the daemon going away and coming back, and quitting with q."""

from __future__ import annotations

import os
from pathlib import Path
import re
import shlex
import subprocess
import sys
import time
from typing import Callable

import pytest
import zmq

from conftest import free_tcp_port
from ecgmon.curve import ClientKeys
from ecgmon.schema import parse_message
from test_dashboard import BRAILLE, daemon_process

REPO = Path(__file__).resolve().parent.parent
HR = re.compile(r"HR\s+(\d+) bpm")


class Tmux:
    """A private tmux server (its own socket) with one 120×40 window running ``command``
    in a shell that prints its exit status and keeps the pane open (tmux's own record of a
    dead pane's status is not reliable, and a pane that dies at once can lose its output)."""

    def __init__(self, tmp_path: Path, command: list[str]) -> None:
        self.socket = f"ecgmon-test-{os.getpid()}-{tmp_path.name}"
        conf = tmp_path / "tmux.conf"
        conf.write_text("set -g status off\n")
        env = {"ECGMON_DATA": os.environ["ECGMON_DATA"], "PYTHONPATH": str(REPO), "LANG": "C.UTF-8",
               "TERM": "xterm-256color"}
        # Without COLUMNS and LINES (pytest sets them), Rich asks the terminal for its size.
        shell = f"cd {shlex.quote(str(REPO))} && env -u COLUMNS -u LINES {' '.join(f'{k}={shlex.quote(v)}' for k, v in env.items())} " \
                f"{shlex.join(command)}; echo \"exit=$?\"; sleep 600"
        self.tmux("-f", str(conf), "new-session", "-d", "-x", "120", "-y", "40", "-s", "main", shell)

    def tmux(self, *args: str) -> str:
        return subprocess.run(["tmux", "-u", "-L", self.socket, *args], check=True, capture_output=True,
                              text=True, timeout=30).stdout

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", "main")

    def wait(self, what: str, ok: Callable[[str], bool], timeout: float = 90.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.screen()
            if ok(text):
                return text
            time.sleep(0.5)
        raise AssertionError(f"the screen never showed {what}:\n{self.screen()}")

    def exit_status(self, timeout: float = 30.0) -> int:
        text = self.wait("the exit status", lambda s: re.search(r"^exit=\d+$", s, re.M) is not None, timeout)
        return int(re.search(r"^exit=(\d+)$", text, re.M).group(1))

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True)


def ecgmon(*args: str) -> list[str]:
    return [sys.executable, "-m", "ecgmon.cli", *args]


def live(text: str) -> bool:
    """A stream with a heart rate, a braille trace, fresh data and a connected daemon."""
    return (bool(HR.search(text)) and len(BRAILLE.findall(text)) > 50 and "NO DATA" not in text
            and "●" in text)


def test_dashboard_follows_a_daemon_that_goes_away_and_comes_back(tmp_path):
    endpoint = f"tcp://127.0.0.1:{free_tcp_port()}"
    control = f"tcp://127.0.0.1:{free_tcp_port()}"
    term = Tmux(tmp_path, ecgmon("dashboard", "--connect", endpoint, "--control", control))
    try:
        term.wait("that it waits for the daemon", lambda s: "waiting for the daemon" in s)
        with daemon_process("ward=sim?hr=80&seed=3", 1, endpoint, control):
            text = term.wait("the stream live", lambda s: live(s) and "ward" in s)
            assert 40 <= int(HR.search(text).group(1)) <= 160
        text = term.wait("no data after the daemon stopped", lambda s: "no data for" in s and "NO DATA" in s)
        with daemon_process("ward=sim?hr=80&seed=3", 1, endpoint, control):
            term.wait("the stream live again", lambda s: live(s) and "ward" in s)
            term.tmux("send-keys", "-t", "main", "q")
            assert term.exit_status() == 0
            assert term.tmux("display", "-p", "-t", "main", "#{alternate_on}").strip() == "0"  # screen restored
    finally:
        term.close()


def test_run_on_a_terminal_shows_the_dashboard_and_ctrl_c_stops_it(tmp_path):
    endpoint = f"tcp://127.0.0.1:{free_tcp_port()}"
    control = f"tcp://127.0.0.1:{free_tcp_port()}"
    term = Tmux(tmp_path, ecgmon("run", "--source", "sim?ectopic=0&seed=1", "--endpoint", endpoint, "--control", control))
    try:
        text = term.wait("the simulator live", lambda s: live(s) and "sim" in s)
        assert "q quit" in text
        term.tmux("send-keys", "-t", "main", "Tab", "a")  # a regular 72 bpm raises no alarm
        term.wait("the answer to a", lambda s: "no active alarm on sim" in s)
        term.tmux("send-keys", "-t", "main", "C-c")
        assert term.exit_status() == 130  # the Ctrl-C convention
        assert term.tmux("display", "-p", "-t", "main", "#{alternate_on}").strip() == "0"
    finally:
        term.close()


def test_acknowledge_and_silence_from_the_keyboard(tmp_path):
    """A slow heart (30 bpm) raises a bradycardia alarm in the daemon; a and s on the
    dashboard go through the control socket and come back as published alarm changes."""
    endpoint = f"tcp://127.0.0.1:{free_tcp_port()}"
    control = f"tcp://127.0.0.1:{free_tcp_port()}"
    with daemon_process("ward=sim?hr=30&hr_std=0&ectopic=0&seed=2", 2, endpoint, control):
        term = Tmux(tmp_path, ecgmon("dashboard", "--connect", endpoint, "--control", control,
                                     "--user", "nurse1", "--silence-s", "90"))
        try:
            term.wait("an alarm", lambda s: "HIGH" in s or "MEDIUM" in s, timeout=120)
            term.tmux("send-keys", "-t", "main", "a")
            # A daemon without keys records the name typed, marked as such.
            term.wait("the acknowledgement", lambda s: "✓ ack nurse1 (unauthenticated)" in s and ": done" in s)
            term.tmux("send-keys", "-t", "main", "s")
            term.wait("the silence", lambda s: re.search(r"silenced 1:[23]\d", s) is not None)
            term.tmux("send-keys", "-t", "main", "q")
            assert term.exit_status() == 0
        finally:
            term.close()


def test_dashboard_bad_endpoint_is_one_line_on_the_terminal(tmp_path):
    term = Tmux(tmp_path, ecgmon("dashboard", "--connect", "not-an-endpoint"))
    try:
        assert term.exit_status() == 2
        text = term.screen()
        lines = [line for line in text.splitlines() if line.strip()]
        assert lines[0].startswith("error: cannot connect to not-an-endpoint"), text
        assert len(lines) == 2 and "Traceback" not in text
    finally:
        term.close()


@pytest.mark.parametrize("bad,needle", [
    (["--silence-s", "0"], "--silence-s"),
    (["--control", "tcp://a:1", "--control", "tcp://b:2"], "give one per daemon"),
    ([], "needs a terminal"),  # stdout is a pipe here
])
def test_dashboard_bad_arguments_are_one_line(bad, needle):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(ecgmon("dashboard", *bad), env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], proc.stderr


# -- issue 12: who may read and acknowledge (CURVE keys)


def make_keys(tmp_path: Path) -> Path:
    """A daemon's keys with nurse1 let in, made by the real `ecgmon keys`."""
    folder = tmp_path / "keys"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for args in (["server", str(folder)], ["client", "nurse1", str(folder)]):
        subprocess.run(ecgmon("keys", *args), env=env, check=True, capture_output=True, timeout=60)
    return folder


def keyed_alarms(keys: Path, endpoint: str) -> tuple[zmq.Context, zmq.Socket]:
    """A subscriber to the alarms, let in with nurse1's key."""
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    ClientKeys.load(str(keys / "nurse1.key_secret"), str(keys / "server.key")).apply(sub)
    sub.setsockopt_string(zmq.SUBSCRIBE, "alarm.")
    sub.connect(endpoint)
    return ctx, sub


def acknowledged_by(sub: zmq.Socket, timeout_s: float = 30.0) -> str | None:
    """Who the first published acknowledgement names."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if sub.poll(500):
            msg = parse_message(sub.recv_multipart()[1])
            if msg.acknowledged_by:
                return msg.acknowledged_by
    return None


def test_dashboard_with_a_key_shows_data_and_acknowledges_under_the_key_name(tmp_path):
    """A daemon with keys; the dashboard connects with nurse1's key, sees the stream, and its
    acknowledgement is published naming the key, not the --user it typed."""
    keys = make_keys(tmp_path)
    endpoint = f"tcp://127.0.0.1:{free_tcp_port()}"
    control = f"tcp://127.0.0.1:{free_tcp_port()}"
    with daemon_process("ward=sim?hr=30&hr_std=0&ectopic=0&seed=2", 2, endpoint, control,
                        "--server-key", str(keys / "server.key_secret"), "--allowed-keys", str(keys / "allowed")):
        ctx, sub = keyed_alarms(keys, endpoint)
        term = Tmux(tmp_path, ecgmon("dashboard", "--connect", endpoint, "--control", control, "--user", "mallory",
                                     "--key", str(keys / "nurse1.key_secret"), "--server-public", str(keys / "server.key")))
        try:
            term.wait("the stream live", lambda s: live(s) and "ward" in s)
            term.wait("an alarm", lambda s: "HIGH" in s or "MEDIUM" in s, timeout=120)
            term.tmux("send-keys", "-t", "main", "a")
            term.wait("the acknowledgement", lambda s: "✓ ack nurse1" in s and ": done" in s)
            assert "mallory" not in term.screen()
            assert acknowledged_by(sub) == "nurse1"
            term.tmux("send-keys", "-t", "main", "q")
            assert term.exit_status() == 0
        finally:
            term.close()
            sub.close()
            ctx.term()


def test_a_dashboard_without_the_key_sees_nothing_of_a_daemon_with_keys(tmp_path):
    keys = make_keys(tmp_path)
    endpoint = f"tcp://127.0.0.1:{free_tcp_port()}"
    control = f"tcp://127.0.0.1:{free_tcp_port()}"
    with daemon_process("ward=sim?hr=80&seed=3", 1, endpoint, control,
                        "--server-key", str(keys / "server.key_secret"), "--allowed-keys", str(keys / "allowed")):
        ctx, sub = keyed_alarms(keys, endpoint)  # the daemon is up once a keyed subscriber sees it
        sub.setsockopt_string(zmq.SUBSCRIBE, "status.")
        try:
            assert sub.poll(60_000), "the daemon never published"
        finally:
            sub.close()
            ctx.term()
        term = Tmux(tmp_path, ecgmon("dashboard", "--connect", endpoint, "--control", control))
        try:
            # ZeroMQ's handshake events say why: nothing else would.
            text = term.wait("the refusal", lambda s: "refused: the daemon has keys (connect with --key" in s)
            time.sleep(3)  # many refused reconnections later: still nothing
            text = term.screen()
            assert "ward" not in text and not HR.search(text) and "refused" in text
            term.tmux("send-keys", "-t", "main", "q")
            assert term.exit_status() == 0
        finally:
            term.close()


def test_run_with_keys_shows_its_own_dashboard_which_acknowledges_as_console(tmp_path):
    """The dashboard inside `ecgmon run` is let in with a key of its own, named console."""
    keys = make_keys(tmp_path)
    endpoint = f"tcp://127.0.0.1:{free_tcp_port()}"
    control = f"tcp://127.0.0.1:{free_tcp_port()}"
    term = Tmux(tmp_path, ecgmon("run", "--source", "ward=sim?hr=30&hr_std=0&ectopic=0&seed=2", "--speed", "2",
                                 "--endpoint", endpoint, "--control", control,
                                 "--server-key", str(keys / "server.key_secret"), "--allowed-keys", str(keys / "allowed")))
    try:
        term.wait("the stream live", lambda s: live(s) and "ward" in s)
        term.wait("an alarm", lambda s: "HIGH" in s or "MEDIUM" in s, timeout=120)
        term.tmux("send-keys", "-t", "main", "a")
        term.wait("the acknowledgement", lambda s: "✓ ack console" in s and ": done" in s)
        term.tmux("send-keys", "-t", "main", "q")
        assert term.exit_status() == 0
    finally:
        term.close()
