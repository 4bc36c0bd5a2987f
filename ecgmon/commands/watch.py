"""Watching a daemon: ``ecgmon subscribe`` (messages as JSON lines) and ``ecgmon dashboard``
(the live terminal dashboard of one or more daemons)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys

from ecgmon.commands.common import (
    EXIT_SIGINT,
    CommandError,
    connect_endpoint,
    print_warning,
    run_until_signal,
    stderr_console,
)
from ecgmon.commands.keys import client_keys
from ecgmon.config import Config
from ecgmon.curve import HANDSHAKE_EVENTS, refusal


def add_subscribe(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "subscribe", parents=[common], help="print published messages as JSON lines",
        description="Connect to a daemon and print each message (its JSON frame) on one line.",
    )
    p.add_argument("prefix", nargs="?", default="", metavar="PREFIX",
                   help="topic prefix, e.g. beat. or vitals.bed3 (default: everything)")
    p.add_argument("--endpoint", help="daemon endpoint (default: [publisher] endpoint)")
    p.add_argument("--count", type=int, metavar="N", help="exit after N messages")
    _key_options(p)
    p.set_defaults(func=cmd_subscribe)


def _key_options(p: argparse.ArgumentParser, per_daemon: str = "") -> None:
    p.add_argument("--key", metavar="FILE",
                   help="this client's CURVE secret key, for a daemon with keys (`ecgmon keys client "
                        "NAME DIR`: DIR/NAME.key_secret; default: [security] key)")
    p.add_argument("--server-public", metavar="FILE", action="append" if per_daemon else None,
                   help=f"the daemon's public key (DIR/server.key; default: [security] server_public){per_daemon}")


class _StopSignals:
    """SIGINT and SIGTERM stop ``subscribe`` once, cleanly: the first one is recorded and the
    rest ignored (``timeout`` sends SIGTERM twice: to the command, then to its group). Nothing
    is raised, so a signal can neither land in the cleanup nor cut an output line in half;
    the wait for a message watches ``wakeup``, which Python writes to at once on a signal (a
    signal just before a blocking wait would otherwise be handled only after it)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.wakeup, self._write_end = os.pipe()
        for fd in (self.wakeup, self._write_end):
            os.set_blocking(fd, False)
        signal.set_wakeup_fd(self._write_end)
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)  # kept through interpreter shutdown, unlike a handler
        self.signum = signum

    def close(self) -> None:
        signal.set_wakeup_fd(-1)
        os.close(self.wakeup)
        os.close(self._write_end)


def cmd_subscribe(args: argparse.Namespace, config: Config) -> int:
    import zmq
    from zmq.utils.monitor import parse_monitor_message

    endpoint = connect_endpoint(args.endpoint or config.publisher.endpoint)
    if args.count is not None and args.count < 1:
        raise CommandError(f"--count must be at least 1, not {args.count}")
    curve = client_keys(config.security, args.key, args.server_public)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    if curve is not None:
        curve.apply(sock)
    # A key mismatch is otherwise silence: ZeroMQ's own events say why the daemon refuses us.
    monitor = sock.get_monitor_socket(HANDSHAKE_EVENTS)
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    poller.register(monitor, zmq.POLLIN)
    try:
        sock.connect(endpoint)
    except zmq.ZMQError as err:
        _close(ctx, sock, monitor)
        raise CommandError(f"cannot connect to {endpoint}: {err.strerror}") from None
    sock.setsockopt_string(zmq.SUBSCRIBE, args.prefix)
    stop = _StopSignals()
    poller.register(stop.wakeup, zmq.POLLIN)
    if sys.stderr.isatty():
        # ZeroMQ connects lazily: without a daemon this just waits, so say what it waits for.
        what = f"'{args.prefix}'" if args.prefix else "all topics"
        stderr_console().print(f"subscribed to {what} on {endpoint}; Ctrl-C to stop", style="dim")
    out = sys.stdout.buffer
    last_seq: dict[tuple[str, str], int] = {}
    missed = received = 0
    said: str | None = None
    try:
        while stop.signum is None and (args.count is None or received < args.count):
            ready = dict(poller.poll())
            if stop.wakeup in ready:
                os.read(stop.wakeup, 64)
                continue  # the handler has recorded the signal
            if monitor in ready:
                why = refusal(parse_monitor_message(monitor.recv_multipart())["event"], curve is not None)
                if why and why != said:  # once, not at every reconnection
                    print_warning(f"{endpoint}: {why}")
                said = why
            if sock not in ready:
                continue
            frames = sock.recv_multipart()
            payload = frames[-1]
            out.write(payload + b"\n")
            out.flush()
            received += 1
            missed += _gap(last_seq, frames[0], payload)
    except BrokenPipeError:
        # The reader went away (| head): stop quietly; stdout must not be flushed again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    finally:
        stop.close()
        _close(ctx, sock, monitor)
    if missed:
        stderr_console().print(f"missed {missed} messages (gaps in seq)", soft_wrap=True)
    return EXIT_SIGINT if stop.signum == signal.SIGINT else 0


def _close(ctx, sock, monitor) -> None:
    sock.disable_monitor()
    sock.close(linger=0)
    monitor.close(linger=0)
    ctx.term()


def _gap(last_seq: dict[tuple[str, str], int], topic: bytes, payload: bytes) -> int:
    """Messages missed on this topic since the last one seen from the same publisher."""
    try:
        msg = json.loads(payload)
        key, seq = (msg["pub"], topic.decode()), int(msg["seq"])
    except (ValueError, KeyError, TypeError):
        return 0
    prev = last_seq.get(key)
    last_seq[key] = seq
    return max(0, seq - prev - 1) if prev is not None else 0


def add_dashboard(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "dashboard", parents=[common], help="the live terminal dashboard of one or more daemons",
        description="Show the streams of one or more daemons: ECG traces, heart rate, beat classes, "
                    "rhythm, alarms, heart sounds. Keys: arrows/tab/1-9 select a stream, a "
                    "acknowledges and s silences its highest alarm, q quits.",
    )
    p.add_argument("--connect", action="append", metavar="ENDPOINT",
                   help="a daemon's PUB endpoint; repeatable (default: [publisher] endpoint)")
    p.add_argument("--control", action="append", metavar="ENDPOINT",
                   help="control endpoint of the daemon at the same position in --connect "
                        "(default for the configured daemon: [publisher] control_endpoint)")
    p.add_argument("--user", help="name recorded with acknowledgements by a daemon without keys, marked "
                                  "'(unauthenticated)' (default: login name); with keys the key's name is recorded")
    p.add_argument("--silence-s", type=float, default=120.0, metavar="S",
                   help="how long s silences an alarm (default 120)")
    _key_options(p, per_daemon="; repeatable: one for every daemon, or one per --connect")
    p.set_defaults(func=cmd_dashboard)


def cmd_dashboard(args: argparse.Namespace, config: Config) -> int:
    from ecgmon.dashboard.app import DashboardError, Options, run_dashboard

    connects = args.connect or [config.publisher.endpoint]
    controls = args.control or []
    if len(controls) > len(connects):
        raise CommandError(f"{len(controls)} --control for {len(connects)} --connect: give one per daemon")
    publics = args.server_public or [""]
    if len(publics) not in (1, len(connects)):
        raise CommandError(f"{len(publics)} --server-public for {len(connects)} --connect: give one for "
                           f"every daemon or one per daemon")
    if not 0 < args.silence_s <= 3600:
        raise CommandError(f"--silence-s must be between 0 and 3600 seconds, not {args.silence_s:g}")
    if not sys.stdout.isatty():
        raise CommandError("the dashboard needs a terminal; use `ecgmon subscribe` for a pipe or a file")
    own = connect_endpoint(config.publisher.endpoint)
    links = []
    for i, endpoint in enumerate(connects):
        if i < len(controls):
            control = controls[i]
        else:  # the configured daemon's control socket is known; another daemon's is not
            control = config.publisher.control_endpoint if connect_endpoint(endpoint) == own else ""
        links.append((connect_endpoint(endpoint), connect_endpoint(control) if control else None))
    curve = [client_keys(config.security, args.key, publics[min(i, len(publics) - 1)]) for i in range(len(links))]
    opts = Options(links, user=args.user or "", silence_s=args.silence_s, curve=curve)
    try:
        return run_until_signal(lambda: run_dashboard(opts))
    except DashboardError as err:
        raise CommandError(str(err)) from None
