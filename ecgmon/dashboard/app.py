"""The running dashboard: one ZeroMQ SUB socket per daemon, a redraw loop at a fixed rate,
keys from the terminal, and acknowledge/silence requests to the daemon's control socket.

Messages update the model as they arrive; drawing happens only in the redraw loop, so the
cost of drawing is bounded by the redraw rate whatever the message rate. ZeroMQ's SUB
socket reconnects by itself when a daemon comes back; silence is measured, not assumed.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
import getpass
import sys
import time

from rich.console import Console
from rich.live import Live
import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

from ecgmon.curve import HANDSHAKE_EVENTS, ClientKeys, refusal
from ecgmon.dashboard.control_client import ControlUnavailable, request
from ecgmon.dashboard.keys import key_reader
from ecgmon.dashboard.state import DashboardState
from ecgmon.dashboard.view import Dashboard

REDRAW_HZ = 8.0
# Drawing may take at most this share of the time: a huge grid redraws less often instead.
MAX_DRAW_SHARE = 0.25
NEXT_KEYS = {"right", "down", "tab"}
PREV_KEYS = {"left", "up", "shift-tab"}


class DashboardError(Exception):
    """The dashboard cannot start (e.g. a malformed endpoint); the message says which."""


@dataclass
class Options:
    links: list[tuple[str, str | None]]  # (PUB endpoint, control endpoint or None)
    user: str = ""
    silence_s: float = 120.0
    keys: bool = True  # read keys from stdin when it is a terminal
    # CURVE keys for each link's daemon (None or missing: a daemon without keys).
    curve: list[ClientKeys | None] = field(default_factory=list)

    def curve_of(self, link: int) -> ClientKeys | None:
        return self.curve[link] if link < len(self.curve) else None


async def _receive(sock: zmq.asyncio.Socket, state: DashboardState, link: int) -> None:
    while True:
        frames = await sock.recv_multipart()
        state.receive(link, frames, time.monotonic(), time.time())


async def _watch_handshakes(monitor: zmq.asyncio.Socket, state: DashboardState, link: int, keyed: bool) -> None:
    """Whether the daemon lets us in, from ZeroMQ's own events (a key mismatch is otherwise
    just silence)."""
    while True:
        event = parse_monitor_message(await monitor.recv_multipart())["event"]
        state.links[link].refused = refusal(event, keyed)


async def _redraw(live: Live) -> None:
    while True:
        t0 = time.perf_counter()
        live.refresh()
        took = time.perf_counter() - t0
        await asyncio.sleep(max(1.0 / REDRAW_HZ - took, took * (1 / MAX_DRAW_SHARE - 1)))


class Controller:
    """Turns key presses into selection changes and control requests."""

    def __init__(self, state: DashboardState, ctx: zmq.asyncio.Context, opts: Options) -> None:
        self.state = state
        self.ctx = ctx
        self.opts = opts
        self.user = opts.user or _user()
        self.pending: set[asyncio.Task] = set()

    def key(self, key: str) -> bool:
        """Handle one key; False when the dashboard should quit."""
        st = self.state
        if key in ("q", "Q", "eof"):
            return False
        if key in NEXT_KEYS:
            st.select(1)
        elif key in PREV_KEYS:
            st.select(-1)
        elif key.isdigit() and key != "0":
            st.select(index=int(key) - 1)
        elif key in ("a", "s"):
            task = asyncio.ensure_future(self.act("ack" if key == "a" else "silence"))
            self.pending.add(task)
            task.add_done_callback(self.pending.discard)
        return True

    async def act(self, op: str) -> None:
        st, now = self.state, time.monotonic()
        name = st.selected_name()
        view = st.streams.get(name) if name else None
        alarms = view.active_alarms() if view else []
        if view is None or not alarms:
            st.say(f"no active alarm on {name or 'any stream'}", "yellow", now)
            return
        wall = time.time()
        # The highest alarm that the key would still change; else the highest.
        if op == "ack":
            todo = [a for a in alarms if not a.acknowledged_by] or alarms
        else:
            todo = [a for a in alarms if not (a.silenced_until_wall or 0) > wall] or alarms
        alarm = todo[0]
        control = st.links[view.link].control
        if not control:
            st.say("no control endpoint for this daemon (give --control)", "red", now)
            return
        payload = {"op": op, "stream": alarm.stream, "alarm_id": alarm.id, "by": self.user}
        if op == "silence":
            payload["seconds"] = self.opts.silence_s
        what = "acknowledge" if op == "ack" else f"silence {self.opts.silence_s:g} s"
        st.say(f"{what} {alarm.id} …", "dim", now)
        try:
            reply = await request(self.ctx, control, payload, keys=self.opts.curve_of(view.link))
        except ControlUnavailable as err:
            st.say(str(err), "bold red", time.monotonic())
            return
        if reply.get("ok"):
            st.say(f"{what} {alarm.id}: done", "bold green", time.monotonic())
        else:
            st.say(f"{what} {alarm.id}: refused: {reply.get('error', 'no reason given')}", "bold red",
                   time.monotonic())


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "dashboard"


async def run_dashboard(opts: Options, console: Console | None = None, until: asyncio.Future | None = None) -> None:
    """Show the dashboard until q (or the terminal closes), or until cancelled.

    ``until`` (e.g. the in-process daemon) ends the dashboard when it finishes and no keys
    are read; with keys, the final state stays on screen until q.
    """
    ctx = zmq.asyncio.Context()
    state = DashboardState(opts.links)
    socks, monitors = [], []
    for i, (endpoint, _) in enumerate(opts.links):
        sock = ctx.socket(zmq.SUB)
        socks.append(sock)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
        sock.setsockopt_string(zmq.SUBSCRIBE, "")
        if (curve := opts.curve_of(i)) is not None:
            curve.apply(sock)
        monitors.append(sock.get_monitor_socket(HANDSHAKE_EVENTS))
        try:
            sock.connect(endpoint)
        except zmq.ZMQError as err:
            _close(ctx, socks, monitors)
            raise DashboardError(f"cannot connect to {endpoint}: {err.strerror}") from None
    tasks = [asyncio.create_task(_receive(sock, state, i)) for i, sock in enumerate(socks)]
    tasks += [asyncio.create_task(_watch_handshakes(mon, state, i, opts.curve_of(i) is not None))
              for i, mon in enumerate(monitors)]
    controller = Controller(state, ctx, opts)
    keys = opts.keys and sys.stdin.isatty()
    try:
        with Live(Dashboard(state), console=console, auto_refresh=False, screen=True,
                  redirect_stdout=False, redirect_stderr=False) as live:
            tasks.append(asyncio.create_task(_redraw(live)))
            if keys:
                with key_reader(sys.stdin.fileno()) as queue:
                    await _keys_loop(queue, controller, state, until)
            elif until is not None:
                await asyncio.wait([until])
            else:
                await asyncio.Event().wait()  # until cancelled
    finally:
        for t in [*tasks, *controller.pending]:
            t.cancel()
        await asyncio.gather(*tasks, *controller.pending, return_exceptions=True)
        _close(ctx, socks, monitors)


def _close(ctx: zmq.asyncio.Context, socks: list[zmq.asyncio.Socket], monitors: list[zmq.asyncio.Socket]) -> None:
    for sock in socks:
        sock.disable_monitor()
        sock.close(linger=0)
    for monitor in monitors:
        monitor.close(linger=0)
    ctx.term()


async def _keys_loop(queue: asyncio.Queue, controller: Controller, state: DashboardState,
                     until: asyncio.Future | None) -> None:
    while True:
        try:
            async with asyncio.timeout(0.5):  # not wait_for: on 3.11 it can swallow a cancellation
                key = await queue.get()
        except TimeoutError:
            if until is not None and until.done():
                state.say("the daemon has finished: q to quit", "bold yellow", time.monotonic())
            continue
        if not controller.key(key):
            return
