"""Who may read and acknowledge (issue 12, reproduction 3): ZeroMQ CURVE on the publisher and
the control socket, over real sockets with keys made by the real ``ecgmon keys`` command, and
the refusal to bind beyond loopback without keys."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
import stat
import subprocess
import sys

import pytest
import zmq
import zmq.asyncio

from conftest import free_tcp_port
from ecgmon.cli import main
from ecgmon.curve import ClientKeys, CurveError, ServerKeys, check_bind, is_loopback, load_secret
from ecgmon.dashboard.control_client import ControlUnavailable, request
from ecgmon.monitor.control import ControlServer
from ecgmon.monitor.publisher import Publisher
from ecgmon.schema import AlarmMessage, StatusMessage, parse_message
from test_control import flat_line_engine

REPO = Path(__file__).resolve().parent.parent
NO_ANSWER_S = 1.0  # how long a client waits before it counts as refused


@pytest.fixture
def keys(tmp_path: Path, capsys) -> Path:
    """A daemon's keys with nurse1 let in, and a stranger's key pair made elsewhere."""
    folder = tmp_path / "keys"
    assert main(["keys", "server", str(folder)]) == 0
    assert main(["keys", "client", "nurse1", str(folder)]) == 0
    assert main(["keys", "client", "stranger", str(tmp_path / "other")]) == 0
    out = capsys.readouterr().out
    for secret in [folder / "server.key_secret", folder / "nurse1.key_secret"]:
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
        assert load_secret(secret)[1].decode() not in out  # a secret key is never printed
    assert stat.S_IMODE((folder / "allowed" / "nurse1.key").stat().st_mode) == 0o644
    assert sorted(p.name for p in (folder / "allowed").iterdir()) == ["nurse1.key"]
    return folder


def server(keys: Path) -> ServerKeys:
    return ServerKeys(str(keys / "server.key_secret"), str(keys / "allowed"))


def client(keys: Path, key_file: Path) -> ClientKeys:
    return ClientKeys.load(str(key_file), str(keys / "server.key"))


def status() -> StatusMessage:
    return StatusMessage(uptime_s=0.0, streams=[], dropped=0, sent=0)


def test_keys_never_overwrite_and_names_are_checked(keys: Path, capsys) -> None:
    before = (keys / "server.key_secret").read_bytes()
    assert main(["keys", "server", str(keys)]) == 2
    assert main(["keys", "client", "nurse1", str(keys)]) == 2
    assert main(["keys", "client", "two words", str(keys)]) == 2
    err = capsys.readouterr().err
    assert "exists" in err and "key name 'two words'" in err
    assert (keys / "server.key_secret").read_bytes() == before


def test_a_secret_key_others_can_read_is_refused(keys: Path) -> None:
    (keys / "nurse1.key_secret").chmod(0o644)
    with pytest.raises(CurveError, match="chmod 600"):
        client(keys, keys / "nurse1.key_secret")
    with pytest.raises(CurveError, match="holds no secret key"):
        load_secret(keys / "server.key")


async def test_publisher_sends_only_to_allowed_keys(keys: Path, endpoint: str, tmp_path: Path) -> None:
    pub = Publisher(endpoint, 1000, keys=server(keys))
    ctx = zmq.asyncio.Context()
    subs = {}
    for name, key in [("nurse1", client(keys, keys / "nurse1.key_secret")), ("unkeyed", None),
                      ("stranger", client(keys, tmp_path / "other" / "stranger.key_secret"))]:
        sock = subs[name] = ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        if key is not None:
            key.apply(sock)
        sock.setsockopt_string(zmq.SUBSCRIBE, "")
        sock.connect(endpoint)
    try:
        for _ in range(200):  # until the allowed subscriber has joined
            pub.publish(status())
            if await subs["nurse1"].poll(50):
                break
        for _ in range(20):
            pub.publish(status())
        got = parse_message((await asyncio.wait_for(subs["nurse1"].recv_multipart(), 5))[1])
        assert isinstance(got, StatusMessage)
        # Every reconnection attempt of the other two has been refused by now many times over.
        assert not await subs["unkeyed"].poll(NO_ANSWER_S * 1000)
        assert not await subs["stranger"].poll(100)
    finally:
        for sock in subs.values():
            sock.close()
        ctx.term()
        pub.close()


@pytest.fixture
def keyed_control(keys: Path, endpoint: str):
    engine, alarm = flat_line_engine()
    published: list[AlarmMessage] = []
    control = ControlServer(endpoint, {"bed1": engine}.get, published.append, keys=server(keys))
    yield control, alarm, published
    control.close()


async def _ask(control: ControlServer, payload: dict, keys: ClientKeys | None) -> dict:
    task = asyncio.create_task(control.serve())
    ctx = zmq.asyncio.Context()
    try:
        return await request(ctx, control.endpoint, payload, timeout_s=NO_ANSWER_S if keys is None else 10,
                             keys=keys)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        ctx.term()


async def test_only_an_allowed_key_acknowledges_and_its_name_is_recorded(keyed_control, keys: Path,
                                                                         tmp_path: Path) -> None:
    control, alarm, published = keyed_control
    ack = {"op": "ack", "stream": "bed1", "alarm_id": alarm.id, "by": "mallory"}
    with pytest.raises(ControlUnavailable):
        await _ask(control, ack, None)
    stranger = client(keys, tmp_path / "other" / "stranger.key_secret")
    task = asyncio.create_task(control.serve())
    ctx = zmq.asyncio.Context()
    try:
        with pytest.raises(ControlUnavailable, match="allowed keys"):
            await request(ctx, control.endpoint, ack, timeout_s=NO_ANSWER_S, keys=stranger)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        ctx.term()
    assert published == [] and control.handled == 0
    reply = await _ask(control, ack, client(keys, keys / "nurse1.key_secret"))
    # The key's name, not the self-declared "by".
    assert reply["ok"] is True and reply["alarm"]["acknowledged_by"] == "nurse1"
    assert [m.acknowledged_by for m in published] == ["nurse1"]


async def test_a_key_removed_from_allowed_is_refused_from_its_next_connection(keyed_control, keys: Path) -> None:
    control, alarm, published = keyed_control
    nurse = client(keys, keys / "nurse1.key_secret")
    silence = {"op": "silence", "stream": "bed1", "alarm_id": alarm.id, "by": "x", "seconds": 60}
    assert (await _ask(control, silence, nurse))["ok"] is True
    os.remove(keys / "allowed" / "nurse1.key")
    task = asyncio.create_task(control.serve())
    ctx = zmq.asyncio.Context()
    try:
        with pytest.raises(ControlUnavailable):
            await request(ctx, control.endpoint, silence, timeout_s=NO_ANSWER_S, keys=nurse)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        ctx.term()
    assert len(published) == 1


async def test_without_keys_the_given_name_is_marked_unauthenticated(endpoint: str) -> None:
    engine, alarm = flat_line_engine()
    published: list[AlarmMessage] = []
    control = ControlServer(endpoint, {"bed1": engine}.get, published.append)
    try:
        reply = await _ask(control, {"op": "ack", "stream": "bed1", "alarm_id": alarm.id, "by": "nurse"}, None)
    finally:
        control.close()
    assert reply["alarm"]["acknowledged_by"] == "nurse (unauthenticated)"
    assert published[-1].acknowledged_by == "nurse (unauthenticated)"


@pytest.mark.parametrize("endpoint,local", [
    ("tcp://127.0.0.1:5555", True), ("tcp://127.0.0.2:1", True), ("tcp://localhost:5555", True),
    ("tcp://[::1]:5555", True), ("ipc:///tmp/ecgmon", True), ("inproc://x", True),
    ("tcp://*:5555", False), ("tcp://0.0.0.0:5555", False), ("tcp://192.168.1.20:5555", False),
    ("tcp://eth0:5555", False), ("tcp://[::]:5555", False), ("tcp://monitor.ward:5555", False),
])
def test_what_counts_as_loopback(endpoint: str, local: bool) -> None:
    assert is_loopback(endpoint) is local
    if local:
        check_bind(endpoint, keyed=False, insecure=False, what="publisher")
    else:
        with pytest.raises(CurveError, match="refusing to open the publisher.*--insecure"):
            check_bind(endpoint, keyed=False, insecure=False, what="publisher")
    check_bind(endpoint, keyed=True, insecure=False, what="control socket")
    check_bind(endpoint, keyed=False, insecure=True, what="control socket")


def _run(args: list[str], tmp_path: Path, **kw) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "ECGMON_CONFIG"}
    env["PYTHONPATH"] = str(REPO)
    return subprocess.Popen([sys.executable, "-m", "ecgmon.cli", "run", "--headless", "--source", "sim", *args],
                            env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, **kw)


@pytest.mark.parametrize("flag", ["--endpoint", "--control"])
def test_an_open_bind_without_keys_is_refused_unless_insecure(flag: str, tmp_path: Path) -> None:
    port = free_tcp_port()
    loopback = ["--endpoint", f"tcp://127.0.0.1:{free_tcp_port()}", "--control", f"tcp://127.0.0.1:{free_tcp_port()}"]
    args = [*loopback, flag, f"tcp://0.0.0.0:{port}"]
    proc = _run(args, tmp_path)
    _, err = proc.communicate(timeout=60)
    lines = [line for line in err.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, err
    assert lines[0].startswith("error: refusing to open the ") and f"tcp://0.0.0.0:{port}" in lines[0]

    proc = _run([*args, "--insecure"], tmp_path)
    try:
        ctx = zmq.Context()
        sock = ctx.socket(zmq.SUB if flag == "--endpoint" else zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDTIMEO, 60_000)  # a DEALER's send waits for the daemon to be there
        sock.connect(f"tcp://127.0.0.1:{port}")
        if flag == "--endpoint":
            sock.setsockopt_string(zmq.SUBSCRIBE, "status.")
        else:  # the control socket answers (with an error: there is no such stream)
            sock.send_multipart([b"", b'{"op": "ack", "stream": "x", "alarm_id": "y", "by": "z"}'])
        try:
            assert sock.poll(60_000), f"nothing from the daemon on port {port}"
        finally:
            sock.close()
            ctx.term()
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0 and "Traceback" not in err, err


@pytest.mark.parametrize("args,needle", [
    (["--key", "nope.key_secret", "--server-public", "server.key"], "key file nope.key_secret not found"),
    (["--key", "KEYS/nurse1.key_secret"], "--key and --server-public"),
    (["--key", "KEYS/nurse1.key", "--server-public", "KEYS/server.key"], "holds no secret key"),
    (["--key", "KEYS/allowed", "--server-public", "KEYS/server.key"], "not found"),
])
def test_bad_client_keys_are_one_line(keys: Path, args: list[str], needle: str, capsys) -> None:
    args = [a.replace("KEYS", str(keys)) for a in args]
    assert main(["subscribe", "--endpoint", "tcp://127.0.0.1:1", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and needle.replace("KEYS", str(keys)) in err, err


def test_the_daemon_needs_both_key_settings_and_a_real_allowed_folder(keys: Path, capsys) -> None:
    run = ["run", "--headless", "--source", "sim", "--endpoint", "tcp://127.0.0.1:0", "--control", ""]
    assert main([*run, "--server-key", str(keys / "server.key_secret")]) == 2
    assert main([*run, "--server-key", str(keys / "server.key_secret"), "--allowed-keys", str(keys / "nope")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert "--server-key and --allowed-keys" in err[0] and "is not a folder" in err[1], err


async def test_subscribe_says_why_a_daemon_with_keys_refuses_it(keys: Path, endpoint: str, tmp_path: Path) -> None:
    """Without the right key a subscriber receives nothing; ZeroMQ's handshake events let it
    say why (once, not at every reconnection) instead of waiting in silence."""
    env = {k: v for k, v in os.environ.items() if k != "ECGMON_CONFIG"}
    env["PYTHONPATH"] = str(REPO)
    pub = Publisher(endpoint, 1000, keys=server(keys))
    stranger = ["--key", str(tmp_path / "other" / "stranger.key_secret"), "--server-public", str(keys / "server.key")]
    try:
        for args, why in [([], "the daemon has keys (connect with --key"), (stranger, "not among the daemon's allowed keys")]:
            sub = subprocess.Popen([sys.executable, "-m", "ecgmon.cli", "subscribe", "--endpoint", endpoint, *args],
                                   env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            try:
                line = sub.stderr.readline()  # while it keeps retrying
                for _ in range(20):
                    pub.publish(status())
                assert sub.poll() is None
            finally:
                sub.terminate()  # at once: a stop signal must not wait for the next message
                out, err = sub.communicate(timeout=30)
            assert line.startswith("warning: ") and why in line, line
            assert out == "" and err == "" and sub.returncode == 0  # nothing received, said once
    finally:
        pub.close()


def test_a_config_file_with_a_password_others_can_read_is_warned_about(tmp_path: Path, caplog, monkeypatch) -> None:
    from ecgmon.config import load_config

    monkeypatch.setattr(logging.getLogger("ecgmon"), "propagate", True)  # main() may have cut it off
    cfg = tmp_path / "ecgmon.toml"
    cfg.write_text('[mqtt]\nusername = "nurse"\npassword = "s@cret"\n')
    cfg.chmod(0o644)
    load_config(cfg)
    warnings = {r.getMessage() for r in caplog.records if r.name == "ecgmon.config"}
    assert len(warnings) == 1 and all("chmod 600" in w and "s@cret" not in w for w in warnings), warnings
    caplog.clear()
    cfg.chmod(0o600)
    load_config(cfg)
    assert not [r for r in caplog.records if r.name == "ecgmon.config"]
