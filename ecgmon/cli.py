"""The ``ecgmon`` command: one function per subcommand, registered in ``build_parser``.

Errors a user can fix (config, source, endpoint) are one red line on stderr and exit 2;
Ctrl-C is a clean stop with exit 130, SIGTERM a clean stop with exit 0, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import logging
import os
from pathlib import Path
import re
import signal
import sys
from typing import Callable

from rich.console import Console
from rich.text import Text

from ecgmon.config import Config, ConfigError, load_config, parse_config
from ecgmon.monitor.publisher import PublisherError
from ecgmon.monitor.sources.base import SourceError

log = logging.getLogger("ecgmon")

EXIT_USAGE = 2
EXIT_SIGINT = 130


class CommandError(Exception):
    """A user-fixable problem found by a command; printed as one line, exit 2."""


# --------------------------------------------------------------------------- helpers


def _stderr() -> Console:
    return Console(stderr=True, highlight=False)


def print_error(text: str) -> None:
    # soft_wrap: one line whatever the terminal width, so logs and tests see it whole.
    _stderr().print(Text(f"error: {text}", style="bold red"), soft_wrap=True)


def setup_logging(verbose: int) -> None:
    level = logging.DEBUG if verbose else logging.INFO
    if sys.stderr.isatty():
        from rich.logging import RichHandler

        handler: logging.Handler = RichHandler(console=_stderr(), show_path=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        # Plain single lines for journals and pipes.
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("ecgmon")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def connect_endpoint(endpoint: str) -> str:
    """The address a subscriber connects to for a bind endpoint (``tcp://*:5555`` → loopback)."""
    return re.sub(r"^tcp://(\*|0\.0\.0\.0)(?=:)", "tcp://127.0.0.1", endpoint)


def _override(config: Config, changes: list[tuple[str, str, str, object]]) -> Config:
    """Apply CLI flags over the config, validated like the file; errors name flag and key."""
    data = config.model_dump()
    for flag, section, key, value in changes:
        if value is None:
            continue
        data[section][key] = value
        config = parse_config(data, f"{flag} {value}")
    return config


def _channel(text: str) -> int | str:
    return int(text) if text.strip().isdigit() else text


# --------------------------------------------------------------------------- run


def add_run(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "run", parents=[common], help="run the daemon: sources → pipeline → ZeroMQ",
        description="Run the monitoring daemon until Ctrl-C or until every source has ended.",
    )
    p.add_argument("--source", action="append", metavar="SPEC",
                   help="sim, sim?hr=110, mitdb:100, path/to/rec.hea or NAME=SPEC; repeatable "
                        "(default: [run] sources of the config)")
    p.add_argument("--pcg", action="append", metavar="SPEC",
                   help="heart sounds: mic, mic:DEVICE (index or name; see `ecgmon devices`), "
                        "FILE.wav or FILE.flac, or NAME=SPEC (the ECG's NAME puts both on one "
                        "patient); repeatable. With --pcg and no --source, no ECG is started")
    p.add_argument("--speed", type=float, help="replay speed: 1 real time, N faster, 0 as fast as possible")
    p.add_argument("--chunk-s", type=float, help="chunk length in seconds")
    p.add_argument("--loop", action="store_true", default=None, help="replay records in a loop")
    p.add_argument("--channel", type=_channel, help="channel index or name (e.g. MLII)")
    p.add_argument("--endpoint", help="ZeroMQ PUB endpoint to bind (e.g. tcp://127.0.0.1:5555)")
    p.add_argument("--control", metavar="ENDPOINT",
                   help="ZeroMQ control endpoint for acknowledge/silence (default: [publisher] "
                        "control_endpoint; '' for none)")
    p.add_argument("--headless", action="store_true", help="no dashboard, even on a terminal")
    p.set_defaults(func=cmd_run)


def cmd_run(args: argparse.Namespace, config: Config) -> int:
    from ecgmon.monitor.daemon import Daemon
    from ecgmon.monitor.model_set import load_models
    from ecgmon.monitor.publisher import Publisher
    from ecgmon.monitor.sources.factory import open_pcg_sources, open_sources

    config = _override(config, [
        ("--speed", "replay", "speed", args.speed),
        ("--chunk-s", "replay", "chunk_s", args.chunk_s),
        ("--loop", "replay", "loop", args.loop),
        ("--channel", "replay", "channel", args.channel),
        ("--endpoint", "publisher", "endpoint", args.endpoint),
        ("--control", "publisher", "control_endpoint", args.control),
    ])
    specs = args.source or ([] if args.pcg else config.run.sources)
    sources = (open_sources(specs, config) if specs else []) + open_pcg_sources(args.pcg or [], config)
    pc = config.publisher
    publisher = Publisher(pc.endpoint, pc.send_hwm)
    models, model_errors = load_models(config.models)
    daemon = Daemon(config, sources, publisher, models, model_errors)
    names = ", ".join(f"{s.stream} ({s.spec})" for s in sources)
    log.info("publishing %s on %s; watch with: ecgmon subscribe --endpoint %s",
             names, publisher.endpoint, connect_endpoint(publisher.endpoint))
    dashboard = None
    control = _open_control(config.publisher.control_endpoint, daemon)
    if sys.stdout.isatty() and not args.headless:
        from ecgmon.dashboard.app import Options

        links = [(connect_endpoint(publisher.endpoint), connect_endpoint(control.endpoint) if control else None)]
        dashboard = Options(links)
    try:
        code = run_until_signal(lambda: _serve(daemon, control, dashboard))
    finally:
        if control is not None:
            control.close()
    if code == 0 and any(s.state == "failed" for s in daemon.streams):
        return 1
    return code


def _open_control(endpoint: str, daemon):
    """The daemon's control socket, or None when not configured or its address is taken
    (monitoring goes on without acknowledge/silence; a warning says so)."""
    if not endpoint:
        return None
    from ecgmon.monitor.control import ControlError, ControlServer

    try:
        control = ControlServer(endpoint, daemon.alarm_engine, daemon.publisher.publish)
    except ControlError as err:
        log.warning("%s; running without a control socket", err)
        return None
    log.info("control socket (acknowledge, silence) on %s", control.endpoint)
    return control


async def _serve(daemon, control, dashboard) -> None:
    """Run the daemon and its control socket; with ``dashboard`` options, show the dashboard
    in-process until q (the daemon is stopped then) or, without keys, until the daemon ends."""
    serving = asyncio.ensure_future(control.serve()) if control is not None else None
    run = asyncio.ensure_future(daemon.run())
    try:
        if dashboard is None:
            await run
            return
        from ecgmon.dashboard.app import run_dashboard

        with _logs_held():
            await run_dashboard(dashboard, until=run)
    finally:
        for task in (run, serving):
            if task is not None:
                task.cancel()
        await asyncio.gather(*(t for t in (run, serving) if t is not None), return_exceptions=True)
    if not run.cancelled() and run.exception() is not None:
        raise run.exception()


class _HeldLogs(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: collections.deque[logging.LogRecord] = collections.deque(maxlen=500)

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def _logs_held():
    """While the full-screen dashboard owns the terminal, log lines wait (the dashboard shows
    the daemon's events) and are printed when it closes."""
    root = logging.getLogger("ecgmon")
    handlers, held = root.handlers[:], _HeldLogs()
    root.handlers[:] = [held]
    try:
        yield
    finally:
        root.handlers[:] = handlers
        for record in held.records:
            for handler in handlers:
                handler.handle(record)


def run_until_signal(make: Callable[[], object]) -> int:
    """Run the coroutine ``make()`` until it returns (0) or SIGINT (130) / SIGTERM (0) stop it;
    the coroutine is cancelled so that it shuts down cleanly."""

    async def runner() -> int:
        loop = asyncio.get_running_loop()
        task = asyncio.ensure_future(make())
        stopped: list[int] = []

        def stop(sig: int) -> None:
            stopped.append(sig)
            task.cancel()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop, sig)
        try:
            await task
        except asyncio.CancelledError:
            if not stopped:
                raise
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
        if stopped:
            log.info("stopped by %s", signal.Signals(stopped[0]).name)
            return EXIT_SIGINT if stopped[0] == signal.SIGINT else 0
        return 0

    return asyncio.run(runner())


# --------------------------------------------------------------------------- subscribe


def add_subscribe(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "subscribe", parents=[common], help="print published messages as JSON lines",
        description="Connect to a daemon and print each message (its JSON frame) on one line.",
    )
    p.add_argument("prefix", nargs="?", default="", metavar="PREFIX",
                   help="topic prefix, e.g. beat. or vitals.bed3 (default: everything)")
    p.add_argument("--endpoint", help="daemon endpoint (default: [publisher] endpoint)")
    p.add_argument("--count", type=int, metavar="N", help="exit after N messages")
    p.set_defaults(func=cmd_subscribe)


class _Terminated(Exception):
    pass


def _on_sigterm(signum, frame) -> None:
    raise _Terminated()


def cmd_subscribe(args: argparse.Namespace, config: Config) -> int:
    import zmq

    endpoint = connect_endpoint(args.endpoint or config.publisher.endpoint)
    if args.count is not None and args.count < 1:
        raise CommandError(f"--count must be at least 1, not {args.count}")
    ctx = zmq.Context()
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(endpoint)
    except zmq.ZMQError as err:
        sock.close()
        ctx.term()
        raise CommandError(f"cannot connect to {endpoint}: {err.strerror}") from None
    sock.setsockopt_string(zmq.SUBSCRIBE, args.prefix)
    signal.signal(signal.SIGTERM, _on_sigterm)
    if sys.stderr.isatty():
        # ZeroMQ connects lazily: without a daemon this just waits, so say what it waits for.
        what = f"'{args.prefix}'" if args.prefix else "all topics"
        _stderr().print(f"subscribed to {what} on {endpoint}; Ctrl-C to stop", style="dim")
    out = sys.stdout.buffer
    last_seq: dict[tuple[str, str], int] = {}
    missed = received = 0
    code = 0
    try:
        while args.count is None or received < args.count:
            frames = sock.recv_multipart()
            payload = frames[-1]
            out.write(payload + b"\n")
            out.flush()
            received += 1
            missed += _gap(last_seq, frames[0], payload)
    except KeyboardInterrupt:
        code = EXIT_SIGINT
    except _Terminated:
        code = 0
    except BrokenPipeError:
        # The reader went away (| head): stop quietly; stdout must not be flushed again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 0
    finally:
        sock.close(linger=0)
        ctx.term()
    if missed:
        _stderr().print(f"missed {missed} messages (gaps in seq)", soft_wrap=True)
    return code


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


# --------------------------------------------------------------------------- dashboard


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
    p.add_argument("--user", help="name recorded with acknowledgements (default: login name)")
    p.add_argument("--silence-s", type=float, default=120.0, metavar="S",
                   help="how long s silences an alarm (default 120)")
    p.set_defaults(func=cmd_dashboard)


def cmd_dashboard(args: argparse.Namespace, config: Config) -> int:
    from ecgmon.dashboard.app import DashboardError, Options, run_dashboard

    connects = args.connect or [config.publisher.endpoint]
    controls = args.control or []
    if len(controls) > len(connects):
        raise CommandError(f"{len(controls)} --control for {len(connects)} --connect: give one per daemon")
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
    opts = Options(links, user=args.user or "", silence_s=args.silence_s)
    try:
        return run_until_signal(lambda: run_dashboard(opts))
    except DashboardError as err:
        raise CommandError(str(err)) from None


# --------------------------------------------------------------------------- replay


def add_replay(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "replay", parents=[common], help="device simulator: push a record or the simulator to MQTT or serial",
        description="Replay a record (or the simulator) as a device would send it: to an MQTT "
                    "topic, or out of a serial port (a new pseudo-terminal whose path is printed, "
                    "or a given port).",
    )
    p.add_argument("spec", metavar="SOURCE", help="mitdb:100, path/to/rec.hea, sim, sim?hr=110")
    p.add_argument("--to", required=True, metavar="TARGET",
                   help="mqtt://HOST:PORT/TOPIC, serial (new pseudo-terminal) or serial:PORT")
    p.add_argument("--format", choices=["json", "binary", "ascii"],
                   help="wire format: MQTT json (default) or binary; serial ascii (default) or binary")
    p.add_argument("--speed", type=float, help="1 real time (default), N faster, 0 as fast as possible")
    p.add_argument("--chunk-s", type=float, help="seconds of signal per message or write")
    p.add_argument("--loop", action="store_true", default=None, help="start the record again at its end")
    p.add_argument("--channel", type=_channel, help="channel index or name (e.g. MLII)")
    p.set_defaults(func=cmd_replay)


def cmd_replay(args: argparse.Namespace, config: Config) -> int:
    from ecgmon.monitor.sources.factory import open_source

    config = _override(config, [
        ("--speed", "replay", "speed", args.speed),
        ("--chunk-s", "replay", "chunk_s", args.chunk_s),
        ("--loop", "replay", "loop", args.loop),
        ("--channel", "replay", "channel", args.channel),
    ])
    source = open_source(args.spec, config)
    target = args.to
    if target.startswith(("mqtt://", "mqtts://")):
        from ecgmon.replay.mqtt_emitter import emit_mqtt

        run = lambda: emit_mqtt(source, target, config, args.format or "json")  # noqa: E731
    elif target == "serial" or target.startswith("serial:"):
        from ecgmon.replay.serial_emitter import emit_serial

        run = lambda: emit_serial(source, target, config, args.format or "ascii")  # noqa: E731
    else:
        raise CommandError(f"unknown target '{target}': use mqtt://HOST:PORT/TOPIC, serial or serial:PORT")
    return run_until_signal(run)


# --------------------------------------------------------------------------- evaluate


def _record_arguments(p: argparse.ArgumentParser) -> None:
    """The records an evaluation replays (see ``_evaluation_specs``) and their channel."""
    p.add_argument("records", nargs="*", metavar="RECORD",
                   help="mitdb:100, a path to a .hea, or with --db a bare record name")
    p.add_argument("--db", help="a PhysioNet database: all its records (from its local RECORDS "
                                "file, else PhysioNet's list)")
    p.add_argument("--channel", type=_channel, help="channel index or name (default from config)")


def add_evaluate(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("evaluate", parents=[common], help="score ecgmon against reference annotations")
    kinds = p.add_subparsers(dest="what", metavar="WHAT", required=True)
    q = kinds.add_parser(
        "qrs", parents=[common], help="EC57 beat detection statistics (Se, +P, delay)",
        description="Replay records through the streaming pipeline at --speed 0 and score the "
                    "detected beats against the reference 'atr' annotations (ANSI/AAMI EC57: "
                    "150 ms match window, ventricular flutter/fibrillation episodes excluded).",
    )
    _record_arguments(q)
    q.add_argument("--chunk-s", type=float, default=10.0,
                   help="chunk length of the replay (results do not depend on it; default 10)")
    q.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    q.set_defaults(func=cmd_evaluate_qrs)
    add_evaluate_beats(kinds, common)
    add_evaluate_model(kinds, common)
    add_evaluate_pcg(kinds, common)
    add_evaluate_alarms(kinds, common)


def _database_records(db: str, config: Config) -> list[str]:
    from ecgmon.replay.records import RecordError, database_record_names

    try:
        return [f"{db}:{name}" for name in database_record_names(db, config.data)]
    except RecordError as err:
        raise CommandError(str(err)) from None


def _each_record(specs: list[str], verb: str, evaluate: Callable[[str], object]) -> tuple[list, int]:
    """``evaluate(spec)`` for every record under a progress bar: the results, and how many
    records failed (each failure one red line, the others still evaluated)."""
    from rich.progress import Progress

    results, failed = [], 0
    with Progress(console=_stderr(), transient=True) as progress:
        task = progress.add_task("evaluating", total=len(specs))
        for spec in specs:
            progress.update(task, description=f"{verb} {spec}")
            try:
                results.append(evaluate(spec))
            except SourceError as err:
                failed += 1
                progress.console.print(Text(f"error: {err}", style="bold red"), soft_wrap=True)
            progress.advance(task)
    return results, failed


def cmd_evaluate_qrs(args: argparse.Namespace, config: Config) -> int:
    from ecgmon.monitor.qrs_evaluation import evaluate_record, render, summary

    config = _override(config, [
        ("--speed", "replay", "speed", 0.0),
        ("--chunk-s", "replay", "chunk_s", args.chunk_s),
        ("--loop", "replay", "loop", False),
        ("--channel", "replay", "channel", args.channel),
    ])
    specs = _evaluation_specs(args, config)
    results, failed = _each_record(specs, "evaluating", lambda spec: evaluate_record(spec, config))
    result = summary(results)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        console = Console()
        for part in render(result):
            console.print(part)
    return 1 if failed else 0


def _evaluation_specs(args: argparse.Namespace, config: Config) -> list[str]:
    specs = [r if (":" in r or r.endswith(".hea") or not args.db) else f"{args.db}:{r}" for r in args.records]
    if args.db and not args.records:
        specs = _database_records(args.db, config)
    if not specs:
        raise CommandError("name the records to evaluate, or a database with --db (e.g. --db mitdb)")
    return specs


def add_evaluate_beats(kinds: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    b = kinds.add_parser(
        "beats", parents=[common], help="EC57 V and S statistics of the live beat classes",
        description="Replay records through the streaming pipeline with the beat model (detector, "
                    "live windows and RR features, classifier) and score the classified beats against "
                    "the reference: EC57 V and S Se, +P, false-positive rate, and the gross N/S/V/F/Q "
                    "confusion, separately over the records the model never trained on. The paced "
                    "records (102 104 107 217) are left out of --db, as EC57 leaves them out.",
    )
    _record_arguments(b)
    b.add_argument("--model", help="beat model file (default: [models] beat of the config)")
    b.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE")
    b.set_defaults(func=cmd_evaluate_beats)


def cmd_evaluate_beats(args: argparse.Namespace, config: Config) -> int:
    from ecgmon.models.aami import PACED
    from ecgmon.models.beat_evaluation import evaluate_record, render, summary
    from ecgmon.monitor.model_loader import ModelError, load_model
    from ecgmon.monitor.model_set import model_path
    from ecgmon.replay.records import record_id

    config = _override(config, [("--channel", "replay", "channel", args.channel)])
    specs = _evaluation_specs(args, config)
    if args.db and not args.records:
        specs = [s for s in specs if record_id(s) not in PACED]
    setting = args.model or config.models.beat
    if not setting:
        raise CommandError("no beat model: give --model FILE or set [models] beat in the config")
    try:
        model = load_model(model_path(setting), config.models.device)
    except ModelError as err:
        raise CommandError(str(err)) from None
    if model.kind != "beat":
        raise CommandError(f"{setting}: a {model.kind} model; evaluate beats needs a beat model")
    results, failed = _each_record(specs, "classifying", lambda spec: evaluate_record(spec, config, model))
    result = summary(results, model)
    console = Console()
    for part in render(result):
        console.print(part)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 1 if failed else 0


def add_evaluate_alarms(kinds: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    a = kinds.add_parser(
        "alarms", parents=[common], help="alarm episode sensitivity, false alarms per hour, delays",
        description="Replay records through the whole pipeline with the configured models and score "
                    "the alarms (without latching) against the reference: V-tach ((VT of >= 5 beats), "
                    "VF/flutter, A-fib episodes, and asystole/extreme brady/tachy from the reference "
                    "beats: per kind episode sensitivity, false alarms per hour, onset-to-alarm delays, "
                    "over all records and over those the beat model never trained on. With --noise, "
                    "nstdb noise is added the nst way (2 min on/off after 5 min).",
    )
    _record_arguments(a)
    a.add_argument("--noise", choices=["em", "ma", "bw"], help="add this nstdb noise record")
    a.add_argument("--snr", type=float, default=6.0, help="SNR of the added noise, dB (default 6)")
    a.add_argument("--out", default="eval/alarms", metavar="DIR",
                   help="where metrics.json and alarms.png go (default eval/alarms)")
    a.set_defaults(func=cmd_evaluate_alarms)


def cmd_evaluate_alarms(args: argparse.Namespace, config: Config) -> int:
    from ecgmon.monitor.alarm_evaluation import evaluate_record, summary
    from ecgmon.monitor.alarm_report import plot, render
    from ecgmon.monitor.model_set import load_models
    from ecgmon.monitor.noise_stress import NoiseStress

    config = _override(config, [("--channel", "replay", "channel", args.channel)])
    specs = _evaluation_specs(args, config)
    models, errors = load_models(config.models)
    for error in errors:
        _stderr().print(Text(f"warning: {error}", style="yellow"), soft_wrap=True)
    noise = NoiseStress(args.noise, args.snr) if args.noise else None
    results, failed = _each_record(
        specs, "alarms of", lambda spec: evaluate_record(spec, config, models, noise=noise)
    )
    if not results:
        raise CommandError("no record could be evaluated")
    result = summary(results, models, noise)
    result["command"] = {"records": specs, "channel": config.replay.channel, "out": args.out,
                         "noise": args.noise, "snr_db": args.snr if args.noise else None}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(result, indent=2))
    plot(result, out / "alarms.png")
    console = Console()
    for part in render(result):
        console.print(part)
    console.print(f"wrote {out / 'metrics.json'} and {out / 'alarms.png'}")
    return 1 if failed else 0


def add_evaluate_model(kinds: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    m = kinds.add_parser(
        "model", parents=[common], help="per-class Se/+P/F1, confusion, ROC/PR plots of a model file",
        description="Load a model file as the daemon does and score it on whole records it never "
                    "trained on (by default its card's validation records): per-class Se, +P, F1, "
                    "confusion matrix; metrics.json and PNG plots in --out.",
    )
    m.add_argument("model", metavar="MODEL", help="a .pt (TorchScript) or .pt2 (torch.export) file, its card beside it")
    m.add_argument("--records", nargs="+", metavar="REC", help="records to score on (default: the card's "
                                                               "validation records)")
    m.add_argument("--allow-train-records", action="store_true",
                   help="accept records the model trained on (its scores there flatter it)")
    m.add_argument("--channel", type=_channel, help="channel index or name (default: the one it trained on)")
    m.add_argument("--device", default="auto", help="auto, cpu or cuda")
    m.add_argument("--out", metavar="DIR", help="where to write metrics.json and the plots "
                                                "(default: eval/<model name>)")
    m.set_defaults(func=cmd_evaluate_model)


def cmd_evaluate_model(args: argparse.Namespace, config: Config) -> int:
    from ecgmon.models.evaluation import EvaluationError, evaluate_model, render

    try:
        result = evaluate_model(args.model, config.data, records=args.records, out=args.out,
                                channel=args.channel, allow_train_records=args.allow_train_records,
                                device=args.device, progress=sys.stderr.isatty())
    except EvaluationError as err:
        raise CommandError(str(err)) from None
    console = Console()
    for part in render(result):
        console.print(part)
    return 0


# --------------------------------------------------------------------------- train


def add_train(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    from ecgmon.monitor.dsp.beat_features import RR_FEATURES

    p = sub.add_parser(
        "train", parents=[common], help="train a classifier on DS1 records and export it",
        description="Train a beat or 10 s segment classifier on whole records (inter-patient), "
                    "measure it on records it never saw (held-out records with early stopping, or "
                    "--folds k-fold by record), export TorchScript with its model card.",
    )
    p.add_argument("model", choices=["beat", "beat-spectrogram", "segment", "pcg"], help="which network")
    add_train_pcg_options(p)
    p.add_argument("--records", nargs="+", metavar="REC",
                   help="training records (default: the de Chazal DS1 records found locally)")
    p.add_argument("--val-records", nargs="+", metavar="REC",
                   help="held-out records for early stopping (default: --n-val drawn from --records)")
    p.add_argument("--n-val", type=int, default=4, help="records held out when --val-records is not given")
    p.add_argument("--folds", type=int, default=0, metavar="K",
                   help="k-fold by record over --records for the card's metrics (K models of --epochs "
                        "each), then the shipped model on every record for the same fixed --epochs; "
                        "no held-out records, no early stopping")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--patience", type=int, default=5, help="epochs without improvement before stopping")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--channel", type=_channel, default=0, help="channel index or name")
    p.add_argument("--class-weight-power", type=float, default=0.5,
                   help="class weights ∝ count^-power (0.5: 1/sqrt(count); 1: inverse frequency)")
    p.add_argument("--majority-fraction", type=float, default=1.0, metavar="F",
                   help="each epoch trains on a fresh random fraction F of the commonest class (N)")
    p.add_argument("--min-class-count", type=int, default=50, metavar="N",
                   help="classes with fewer training examples are not learnt (weight 0)")
    p.add_argument("--rr-features", nargs="+", choices=RR_FEATURES, default=list(RR_FEATURES), metavar="NAME",
                   help=f"beat models: RR inputs, in order (of {', '.join(RR_FEATURES)})")
    p.add_argument("--jitter", type=int, default=0, metavar="SAMPLES",
                   help="beat models: random R shift of up to this many samples each way in training")
    p.add_argument("--noise", type=float, default=0.0,
                   help="beat models: white noise in training, this fraction of each window's std")
    p.add_argument("--out", required=True, metavar="FILE.pt", help="where to write the model (card beside it)")
    p.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace, config: Config) -> int:
    if args.model == "pcg":
        return cmd_train_pcg(args, config)
    from pathlib import Path

    from ecgmon.models.aami import DS1
    from ecgmon.models.datasets import record_id
    from ecgmon.models.trainer import TrainingJob, split_records, train_model
    from ecgmon.models.training import TrainSettings
    from ecgmon.replay.records import RecordError

    records = [record_id(r) for r in (args.records or DS1)]
    if args.folds:
        if args.val_records:
            raise CommandError("--folds holds records out itself: give no --val-records")
        if not 2 <= args.folds <= len(records):
            raise CommandError(f"--folds must be between 2 and {len(records)} for {len(records)} records")
        train, val = records, []
    elif args.val_records:
        val = [record_id(r) for r in args.val_records]
        train = [r for r in records if r not in val]
        if not train:
            raise CommandError("every training record is also a --val-records record: the held-out "
                               "records must be patients the model does not train on")
    else:
        if len(records) <= args.n_val:
            raise CommandError(f"--n-val {args.n_val} leaves no training record out of {len(records)}")
        train, val = split_records(records, args.n_val, args.seed)
    settings = TrainSettings(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                             patience=None if args.folds else args.patience, seed=args.seed,
                             progress=sys.stderr.isatty(), weight_power=args.class_weight_power,
                             majority_fraction=args.majority_fraction, min_class_count=args.min_class_count)
    # The card records the command that reproduces this model, with every choice spelled out.
    held = f"--folds {args.folds}" if args.folds else f"--val-records {' '.join(val)} --patience {args.patience}"
    command = (f"ecgmon train {args.model} --records {' '.join(train)} {held} "
               f"--epochs {args.epochs} --batch-size {args.batch_size} --lr {args.lr:g} "
               f"--seed {args.seed} --channel {args.channel} --class-weight-power {args.class_weight_power:g} "
               f"--majority-fraction {args.majority_fraction:g} --min-class-count {args.min_class_count}")
    if args.model != "segment":
        command += (f" --rr-features {' '.join(args.rr_features)} --jitter {args.jitter} "
                    f"--noise {args.noise:g}")
    command += f" --out {args.out}"
    job = TrainingJob(args.model, train, val, Path(args.out), command, settings, args.channel,
                      folds=args.folds, rr_features=tuple(args.rr_features), jitter=args.jitter,
                      noise=args.noise)
    try:
        card = train_model(job, config.data)
    except (RecordError, ValueError) as err:
        raise CommandError(str(err)) from None
    m = card["metrics"]
    per = ", ".join(f"{c} Se {v['se']} +P {v['ppv']}" for c, v in m["per_class"].items() if v["n"])
    where = f"{args.folds}-fold by record, pooled" if args.folds else f"held-out records {' '.join(val)}"
    log.info("wrote %s: %s: macro-F1 %s; %s", args.out, where, m["macro_f1"], per)
    return 0


# --------------------------------------------------------------------------- heart sounds (pcg)


def add_train_pcg_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", metavar="DIR",
                   help="pcg: folder of database folders (each *.flac/*.wav + REFERENCE.csv; "
                        "default: pcg2016 under $ECGMON_DATA or [data] folder)")
    p.add_argument("--databases", nargs="+", metavar="NAME",
                   help="pcg: database folders under --data to use (default: all); one is held out per fold")
    p.add_argument("--final-epochs", type=int, metavar="N",
                   help="pcg: epochs of the shipped model (default: median best epoch of the folds)")


def _pcg_root(args: argparse.Namespace, config: Config):
    from pathlib import Path

    if args.data:
        return Path(args.data)
    for base in (os.environ.get("ECGMON_DATA"), config.data.folder):
        if base and (Path(base).expanduser() / "pcg2016").is_dir():
            return Path(base).expanduser() / "pcg2016"
    raise CommandError("no pcg2016 folder under $ECGMON_DATA or [data] folder: give --data DIR")


def add_evaluate_pcg(kinds: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    e = kinds.add_parser(
        "pcg", parents=[common], help="heart-sound model: Se, Sp, MAcc per database, confusion, ROC",
        description="Score the recordings of DIR (a folder of *.flac/*.wav with a REFERENCE.csv, or a "
                    "folder of such folders) with a heart-sound model file loaded as the daemon loads "
                    "it: recording-level Se, Sp, MAcc per database, confusion matrix; metrics.json, "
                    "roc.png and confusion.png in --out.",
    )
    e.add_argument("dir", metavar="DIR", help="recordings with REFERENCE.csv (1 abnormal, -1 normal)")
    e.add_argument("--model", help="a .pt/.pt2 heart-sound model (default: [models] pcg of the config)")
    e.add_argument("--device", default="auto", help="auto, cpu or cuda")
    e.add_argument("--out", metavar="DIR", help="where to write metrics.json and the plots "
                                                "(default: eval/<model name>-<DIR name>)")
    e.set_defaults(func=cmd_evaluate_pcg)


def cmd_evaluate_pcg(args: argparse.Namespace, config: Config) -> int:
    from pathlib import Path

    from ecgmon.models.pcg_data import PcgDataError
    from ecgmon.models.pcg_evaluate import evaluate_pcg, render
    from ecgmon.monitor.model_set import model_path

    if not (args.model or config.models.pcg):
        raise CommandError("no heart-sound model: give --model FILE or set [models] pcg in the config")
    model = Path(args.model) if args.model else model_path(config.models.pcg)
    warned: list[str] = []

    def warn(text: str) -> None:
        warned.append(text)
        _stderr().print(Text(f"warning: {text}", style="yellow"), soft_wrap=True)

    try:
        result = evaluate_pcg(args.dir, model, args.out, warn, device=args.device, progress=sys.stderr.isatty())
    except PcgDataError as err:
        raise CommandError(str(err)) from None
    console = Console()
    for part in render(result):
        console.print(part)
    if warned:
        console.print(Text(f"{len(warned)} warning(s): files skipped or changed are listed above", style="yellow"))
    return 0


def cmd_train_pcg(args: argparse.Namespace, config: Config) -> int:
    from ecgmon.models.pcg_data import PcgDataError, database_folders, load_pcg
    from ecgmon.models.pcg_training import PcgSettings, train_and_export

    import torch
    from pathlib import Path

    torch.set_num_threads(1)  # the machine is shared; one thread trains this small model well
    root = _pcg_root(args, config)
    try:
        folders = database_folders(root)
        if args.databases:
            unknown = sorted(set(args.databases) - {f.name for f in folders})
            if unknown:
                raise CommandError(f"no database {', '.join(unknown)} in {root} "
                                   f"(found {', '.join(f.name for f in folders)})")
            folders = [f for f in folders if f.name in args.databases]
        data = load_pcg(folders, lambda text: log.warning("%s", text), progress=sys.stderr.isatty())
        settings = PcgSettings(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                               patience=args.patience, seed=args.seed, progress=sys.stderr.isatty())
        command = ("ecgmon train pcg" + (f" --data {args.data}" if args.data else "")
                   + f" --databases {' '.join(f.name for f in folders)} "
                   f"--epochs {args.epochs} --batch-size {args.batch_size} --lr {args.lr:g} "
                   f"--patience {args.patience} --seed {args.seed}"
                   + (f" --final-epochs {args.final_epochs}" if args.final_epochs else "")
                   + f" --out {args.out}")
        card = train_and_export(data, Path(args.out), command, settings, args.final_epochs)
    except (PcgDataError, ValueError) as err:
        raise CommandError(str(err)) from None
    m = card["metrics"]
    folds = ", ".join(f"{db} MAcc {f['macc']} (Se {f['se']} Sp {f['sp']})" for db, f in m["folds"].items())
    log.info("wrote %s: leave-one-database-out %s; mean MAcc %s", args.out, folds, m["mean"]["macc"])
    return 0


# --------------------------------------------------------------------------- devices


def add_devices(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("devices", parents=[common], help="list audio input devices for --pcg mic:DEVICE",
                       description="List PortAudio's audio input devices (stethoscopes, microphones).")
    p.set_defaults(func=cmd_devices)


def cmd_devices(args: argparse.Namespace, config: Config) -> int:
    from ecgmon.monitor.sources.audio_mic import import_sounddevice, input_devices

    sd = import_sounddevice()
    devices = input_devices(sd)
    if not devices:
        _stderr().print("no audio input device found")
        return 1
    default = sd.default.device[0]
    for d in devices:
        mark = "*" if d["index"] == default else " "
        api = sd.query_hostapis(d["hostapi"])["name"]
        print(f"{mark} {d['index']:3d}  {d['name']}  ({api}, {d['max_input_channels']} in, "
              f"{d['default_samplerate']:g} Hz)")
    return 0


# --------------------------------------------------------------------------- main


def _global_options(parser: argparse.ArgumentParser, default_config, default_verbose) -> None:
    parser.add_argument("--config", metavar="FILE", default=default_config,
                        help="config file (default: $ECGMON_CONFIG, ./config.toml, built-in)")
    parser.add_argument("-v", "--verbose", action="count", default=default_verbose,
                        help="more log detail (debug)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ecgmon",
        description="Real-time ECG monitoring daemon: streaming ECG, online R-peaks, ZeroMQ out.",
    )
    _global_options(parser, None, 0)
    # Global options are accepted after the subcommand too (ecgmon run -v); SUPPRESS keeps
    # a subcommand from resetting what was given before it.
    common = argparse.ArgumentParser(add_help=False)
    _global_options(common, argparse.SUPPRESS, argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add_run(sub, common)
    add_subscribe(sub, common)
    add_devices(sub, common)
    add_dashboard(sub, common)
    add_replay(sub, common)
    add_evaluate(sub, common)
    add_train(sub, common)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        setup_logging(args.verbose)
        config = load_config(args.config)
        return args.func(args, config)
    except (ConfigError, SourceError, PublisherError, CommandError) as err:
        print_error(str(err))
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_SIGINT


if __name__ == "__main__":
    sys.exit(main())
