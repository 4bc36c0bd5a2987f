"""``ecgmon run``: the daemon with its control socket, and the dashboard in-process when
it runs on a terminal."""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import logging
from pathlib import Path
import sys

from ecgmon.commands.common import (
    channel_arg,
    connect_endpoint,
    log,
    override,
    replay_overrides,
    run_until_signal,
)
from ecgmon.commands.keys import server_keys
from ecgmon.commands.serve import add_http_options, http_overrides, open_face
from ecgmon.config import Config
from ecgmon.curve import check_bind


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
    p.add_argument("--pcg-calibration", metavar="CAL.json",
                   help="the stethoscope's calibration for the heart-sound model (`ecgmon calibrate pcg`; "
                        "default: [audio] calibration)")
    p.add_argument("--pcg-cycles", metavar="RULE.json",
                   help="the heart-sound verdict from the segmented cardiac cycle instead of the model; needs a "
                        "calibration made with it (default: [models] pcg_cycles, the shipped pcg-cycles.json; "
                        "'' for the model's verdict)")
    p.add_argument("--speed", type=float, help="replay speed: 1 real time, N faster, 0 as fast as possible")
    p.add_argument("--chunk-s", type=float, help="chunk length in seconds")
    p.add_argument("--loop", action="store_true", default=None, help="replay records in a loop")
    p.add_argument("--channel", type=channel_arg, help="channel index or name (e.g. MLII)")
    p.add_argument("--endpoint", help="ZeroMQ PUB endpoint to bind (e.g. tcp://127.0.0.1:5555)")
    p.add_argument("--control", metavar="ENDPOINT",
                   help="ZeroMQ control endpoint for acknowledge/silence (default: [publisher] "
                        "control_endpoint; '' for none)")
    p.add_argument("--headless", action="store_true", help="no dashboard, even on a terminal")
    p.add_argument("--archive", metavar="DIR",
                   help="archive every stream (WFDB signal, beats, events) and the audit log into DIR "
                        "(default: [archive] folder; README: Archive)")
    p.add_argument("--no-archive", action="store_true", help="write no archive")
    p.add_argument("--server-key", metavar="FILE",
                   help="the daemon's CURVE secret key (`ecgmon keys server DIR`: DIR/server.key_secret); "
                        "with --allowed-keys only allowed clients can read or acknowledge")
    p.add_argument("--allowed-keys", metavar="DIR",
                   help="folder of the public keys of the clients let in (DIR/allowed), each named by its file")
    p.add_argument("--insecure", action="store_true", default=None,
                   help="bind a non-loopback --endpoint or --control without keys (or --http without a token "
                        "or TLS): anyone who reaches it can read every stream and acknowledge alarms")
    p.add_argument("--http", metavar="HOST:PORT",
                   help="serve the HTTP API beside the daemon (analyses, /v1/streams, /healthz, /readyz, "
                        "/metrics; README: HTTP API)")
    add_http_options(p)
    p.set_defaults(func=cmd_run)


def cmd_run(args: argparse.Namespace, config: Config) -> int:
    from ecgmon.monitor.publisher import Publisher
    from ecgmon.monitor.sources.factory import open_pcg_sources, open_sources

    config = override(config, [
        *replay_overrides(args),
        ("--endpoint", "publisher", "endpoint", args.endpoint),
        ("--control", "publisher", "control_endpoint", args.control),
        ("--server-key", "security", "server_key", args.server_key),
        ("--allowed-keys", "security", "allowed_keys", args.allowed_keys),
        ("--insecure", "security", "insecure", args.insecure),
        ("--pcg-calibration", "audio", "calibration", args.pcg_calibration),
        ("--pcg-cycles", "models", "pcg_cycles", args.pcg_cycles),
        *http_overrides(args),
    ])
    pc, sc = config.publisher, config.security
    keys = server_keys(sc)
    # The control socket opens only after the models have loaded: refuse an open one now.
    if pc.control_endpoint:
        check_bind(pc.control_endpoint, keys is not None, sc.insecure, "control socket")
    specs = args.source or ([] if args.pcg else config.run.sources)
    sources = (open_sources(specs, config) if specs else []) + open_pcg_sources(args.pcg or [], config)
    publisher = Publisher(pc.endpoint, pc.send_hwm, keys=keys, insecure=sc.insecure)
    # The HTTP face binds now (a taken or refused address is one line before anything loads).
    face = open_face(args.http, config, live=True) if args.http else None
    # torch comes with these: imported only once everything the user gave has been checked,
    # so that a mistake is reported at once, not after seconds of loading.
    from ecgmon.monitor.model_set import load_models

    holder: list = []  # (daemon, control, dashboard) once assembled
    if face is None:
        models, model_errors = load_models(config.models)
        holder.append(_assemble(args, config, sources, publisher, keys, models, model_errors))
        main = lambda: _serve(*holder[0])  # noqa: E731
    else:
        main = lambda: _serve_with_http(face, args, config, sources, publisher, keys, holder)  # noqa: E731
    try:
        code = run_until_signal(main)
    finally:
        if holder and holder[0][1] is not None:
            holder[0][1].close()
    if code == 0 and holder and any(s.state == "failed" for s in holder[0][0].streams):
        return 1
    return code


def _assemble(args, config: Config, sources, publisher, keys, models, model_errors):
    """The daemon on its loaded models, its control socket and the dashboard options."""
    from ecgmon.monitor.daemon import Daemon

    pc, sc = config.publisher, config.security
    _check_calibration(config, models, any(getattr(s, "modality", "ecg") == "pcg" for s in sources))
    daemon = Daemon(config, sources, publisher, models, model_errors, _archive(args, config, sources))
    names = ", ".join(f"{s.stream} ({s.spec})" for s in sources)
    log.info("publishing %s on %s; watch with: ecgmon subscribe --endpoint %s%s",
             names, publisher.endpoint, connect_endpoint(publisher.endpoint),
             " --key FILE --server-public FILE" if keys is not None else "")
    if keys is not None:
        log.info("CURVE keys on: only the clients in %s can read or acknowledge", sc.allowed_keys)
    dashboard = None
    control = _open_control(pc.control_endpoint, daemon, keys, sc.insecure)
    if not args.headless and sys.stdout.isatty():
        from ecgmon.dashboard.app import Options

        links = [(connect_endpoint(publisher.endpoint), connect_endpoint(control.endpoint) if control else None)]
        # With keys the dashboard in this process is let in with a key of its own, "console".
        dashboard = Options(links, curve=[keys.console()] if keys is not None else [])
    elif not args.headless:
        log.info("running headless: stdout is not a terminal, so no dashboard here (watch with "
                 "`ecgmon dashboard` on a terminal; --headless says it is meant)")
    return daemon, control, dashboard


async def _serve_with_http(face, args, config: Config, sources, publisher, keys, holder: list) -> None:
    """The HTTP face first (``/healthz`` answers, ``/readyz`` says 503), then the models load off
    the event loop, then the daemon runs as without --http; its messages are counted for
    ``/metrics`` on their way to the publisher."""
    from ecgmon.http.metrics import TappedPublisher
    from ecgmon.monitor.model_set import load_models

    await face.start()
    try:
        models, model_errors = await asyncio.to_thread(load_models, config.models)
        face.warm_up(models, model_errors)
        tapped = TappedPublisher(publisher, face.face.counter)
        holder.append(_assemble(args, config, sources, tapped, keys, models, model_errors))
        face.face.attach(holder[0][0])
        await _serve(*holder[0])
    finally:
        await face.stop()


UNCALIBRATED_HINT = ("every heart-sound verdict will be 'uncertain: device not calibrated' (heart rate, quality "
                     "and envelope are published as usual); calibrate the stethoscope once on >= 20 of its "
                     "recordings: ecgmon calibrate pcg RECORDINGS --out CAL.json, then ecgmon run "
                     "--pcg-calibration CAL.json or [audio] calibration (README: Heart sounds)")


def _check_calibration(config: Config, models, pcg_sources: bool = True) -> None:
    """A calibration that cannot serve the loaded heart-sound model is refused now, not when
    the first heart-sound stream starts. With a cycle rule only its part of the file counts
    (the heart-sound model is not run). A heart-sound stream whose every verdict would be
    'uncertain: device not calibrated' (no calibration, or none for the rule) is a warning."""
    from ecgmon.monitor.dsp.pcg_decision import Calibration, CalibrationError, CycleCalibration, DeviceRule, device_rule

    cycles, model = models.get("pcg_cycles"), models.get("pcg")
    if cycles is None and model is None:
        return
    if not config.audio.calibration:
        # Not an error (the verdict says so), but whoever plays --pcg FILE should know at once.
        needs = cycles is not None or DeviceRule.from_card(model.card.get("decision", {})) is not None
        if pcg_sources and needs:
            log.warning("no [audio] calibration: %s", UNCALIBRATED_HINT)
        return
    from ecgmon.commands.common import CommandError

    if cycles is not None:
        try:
            part = CycleCalibration.from_calibration(Calibration.load(config.audio.calibration),
                                                     config.audio.calibration, cycles.rule.sha256)
        except CalibrationError as err:
            raise CommandError(f"[audio] calibration: {err}") from None
        if part is None:
            log.warning("[audio] calibration %s has no part for the cycle rule %s: %s", config.audio.calibration,
                        cycles.name, UNCALIBRATED_HINT)
        return
    model = models.get("pcg")
    try:
        device_rule(model.card.get("decision", {}),
                    Calibration.load(config.audio.calibration, model.card["sha256"]).check_quality(
                        config.audio.min_quality), config.audio.min_quality)
    except CalibrationError as err:
        raise CommandError(f"[audio] calibration: {err}") from None


def _archive(args: argparse.Namespace, config: Config, sources):
    """The archive writer ([archive], --archive DIR, --no-archive), or None when off."""
    ac = config.archive
    if args.no_archive or (not ac.enabled and args.archive is None):
        return None
    from ecgmon.archive.writer import ArchiveWriter

    root = Path(args.archive).expanduser() if args.archive is not None else ac.root()
    log.info("archiving to %s (segments of %g s; keep %g days, at most %g GB)", root, ac.segment_s,
             ac.keep_days, ac.max_gb)
    return ArchiveWriter(root, ac.segment_s, ac.keep_days, ac.max_gb, ac.queue_items,
                         sources=[s.spec for s in sources])


def _open_control(endpoint: str, daemon, keys, insecure: bool):
    """The daemon's control socket, or None when not configured or its address is taken
    (monitoring goes on without acknowledge/silence; a warning says so)."""
    if not endpoint:
        return None
    from ecgmon.monitor.control import ControlError, ControlServer

    try:
        control = ControlServer(endpoint, daemon.alarm_engine, daemon.publish, keys, insecure)
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
