"""The ward's one face (``ecgmon.ward_proxy``): two daemons' publishers (real ``Publisher``s with
CURVE keys) behind one proxy; a subscriber with an allowed key gets both daemons' messages and
only the topics it asked for, one without a key gets nothing, and an open bind beyond loopback
without keys is refused as the daemon refuses it."""

from __future__ import annotations

from pathlib import Path
import threading
import time

import pytest
import zmq

from conftest import free_tcp_port
from ecgmon.curve import ClientKeys, CurveError, ServerKeys, make_key_pair
from ecgmon.monitor.publisher import Publisher
from ecgmon.schema import EventMessage
from ecgmon.ward_proxy import WardProxy


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    make_key_pair(tmp_path, "server")
    make_key_pair(tmp_path, "proxy")
    make_key_pair(tmp_path, "nurse1")
    make_key_pair(tmp_path, "stranger")
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    for name in ("proxy", "nurse1"):
        (allowed / f"{name}.key").write_bytes((tmp_path / f"{name}.key").read_bytes())
    return tmp_path


def _receive(endpoint: str, client: ClientKeys | None, prefix: bytes, seconds: float) -> list[tuple[str, str]]:
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    if client is not None:
        client.apply(sub)
    sub.setsockopt(zmq.SUBSCRIBE, prefix)
    sub.setsockopt(zmq.RCVTIMEO, 100)
    sub.connect(endpoint)
    got: list[tuple[str, str]] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            topic, body = sub.recv_multipart()
        except zmq.Again:
            continue
        got.append((topic.decode(), EventMessage.model_validate_json(body).stream))
    sub.close(linger=0)
    ctx.term()
    return got


def test_one_face_for_two_daemons_with_keys(keys: Path):
    server = ServerKeys(str(keys / "server.key_secret"), str(keys / "allowed"))
    daemons = [Publisher(f"tcp://127.0.0.1:{free_tcp_port()}", 1000, keys=server) for _ in range(2)]
    proxy = WardProxy(f"tcp://127.0.0.1:{free_tcp_port()}", [d.endpoint for d in daemons], 1000,
                      ServerKeys(str(keys / "server.key_secret"), str(keys / "allowed")),
                      ClientKeys.load(str(keys / "proxy.key_secret"), str(keys / "server.key")))
    thread = threading.Thread(target=proxy.run, daemon=True)
    thread.start()
    stop = threading.Event()

    def publish() -> None:
        # Each daemon its own beds, as a ward splits them; events and (unasked-for) alarms.
        while not stop.is_set():
            for i, daemon in enumerate(daemons):
                for kind in ("event", "alarm"):
                    msg = EventMessage(stream=f"bed{i}", level="info", code="x", text="t")
                    daemon._sock.send_multipart([f"{kind}.bed{i}".encode(), msg.model_dump_json().encode()])
            time.sleep(0.05)

    publisher = threading.Thread(target=publish, daemon=True)
    publisher.start()
    try:
        nurse = ClientKeys.load(str(keys / "nurse1.key_secret"), str(keys / "server.key"))
        got = _receive(proxy.endpoint, nurse, b"event.", 3.0)
        assert {stream for _, stream in got} == {"bed0", "bed1"}
        assert {topic.split(".")[0] for topic, _ in got} == {"event"}
        stranger = ClientKeys.load(str(keys / "stranger.key_secret"), str(keys / "server.key"))
        assert _receive(proxy.endpoint, stranger, b"", 1.5) == []
        assert _receive(proxy.endpoint, None, b"", 1.5) == []
    finally:
        stop.set()
        publisher.join(5)
        proxy.stop()
        thread.join(5)
        proxy.close()
        for daemon in daemons:
            daemon.close()


def test_an_open_face_without_keys_is_refused():
    with pytest.raises(CurveError, match="refusing to open the publisher on tcp://0.0.0.0"):
        WardProxy(f"tcp://0.0.0.0:{free_tcp_port()}", ["tcp://127.0.0.1:1"], 1000)


def _frames(msg, seq: int, pub: str) -> list[bytes]:
    msg.seq, msg.pub, msg.wall = seq, pub, time.time()
    return [msg.topic.encode(), msg.model_dump_json().encode()]


def test_a_dashboard_on_the_proxy_keeps_every_daemons_beds():
    """Through the proxy one connection carries several daemon instances: each bed's panel keeps
    its alarms while the daemons' messages interleave, and a bed that moves to another daemon
    starts afresh alone (what the daemon it left raised no longer holds)."""
    from ecgmon.dashboard.state import DashboardState
    from ecgmon.schema import AlarmMessage, VitalsMessage

    st = DashboardState([("tcp://127.0.0.1:1", None)])
    now, wall = time.monotonic(), time.time()

    def vtach(stream: str) -> AlarmMessage:
        return AlarmMessage(stream=stream, id=f"{stream}-vtach-1", alarm="vtach", category="physiological",
                            priority="high", state="raised", text="V-tach", onset_s=1.0, raised_s=2.0,
                            raised_wall=wall)

    st.receive(0, _frames(vtach("bed0"), 0, "daemonA"), now, wall)
    st.receive(0, _frames(vtach("bed1"), 0, "daemonB"), now, wall)
    for seq in range(1, 4):  # the two daemons' vitals interleave on the one connection
        for bed, pub in (("bed0", "daemonA"), ("bed1", "daemonB")):
            st.receive(0, _frames(VitalsMessage(stream=bed, time_s=seq, hr_bpm=70.0, hr_method="m", beats=seq),
                                  seq, pub), now, wall)
    assert set(st.streams["bed0"].alarms) == {"bed0-vtach-1"} and set(st.streams["bed1"].alarms) == {"bed1-vtach-1"}
    assert st.links[0].missed == 0
    # bed1 moves to daemon A (its daemon died): bed1 starts afresh, bed0 keeps its alarm.
    st.receive(0, _frames(VitalsMessage(stream="bed1", time_s=9.0, hr_bpm=71.0, hr_method="m", beats=1),
                          0, "daemonA"), now, wall)
    assert st.streams["bed1"].alarms == {} and set(st.streams["bed0"].alarms) == {"bed0-vtach-1"}
