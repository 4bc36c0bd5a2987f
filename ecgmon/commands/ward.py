"""``ecgmon ward``: what a ward served by several daemons needs besides ``ecgmon run --source
nats://...``: the NATS server's config (``nats-conf``) and one face for subscribers (``proxy``)."""

from __future__ import annotations

import argparse
import signal
import threading

from ecgmon.commands.common import CommandError, log
from ecgmon.commands.keys import client_keys, server_keys
from ecgmon.config import Config


def add_ward(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("ward", parents=[common], help="a ward on several daemons: NATS config, subscriber proxy",
                       description="Several daemons share a ward through NATS JetStream (README: A ward on "
                                   "several daemons).")
    ward = p.add_subparsers(dest="ward_command", metavar="WHAT", required=True)
    conf = ward.add_parser("nats-conf", parents=[common], help="print a nats-server config for a ward",
                           description="Print a nats-server config: a listener, JetStream on disk, and the "
                                       "mapping that puts each bed's subject into one of the partitions.")
    conf.add_argument("--listen", default="127.0.0.1:4222", metavar="HOST:PORT")
    conf.add_argument("--store", default="/var/lib/nats", metavar="DIR", help="JetStream's folder")
    conf.add_argument("--prefix", default="ward", help="devices publish on PREFIX.<bed> (default: ward)")
    conf.add_argument("--partitions", type=int, default=16,
                      help="as in every worker's nats://...?partitions= (default 16)")
    conf.set_defaults(func=cmd_nats_conf)
    proxy = ward.add_parser("proxy", parents=[common], help="one endpoint for subscribers of all the ward's daemons",
                            description="Forward every daemon's messages to subscribers on one endpoint "
                                        "(ZeroMQ XSUB/XPUB). With keys: --server-key/--allowed-keys for "
                                        "the subscribers, --key/--server-public towards the daemons.")
    proxy.add_argument("--connect", action="append", required=True, metavar="ENDPOINT",
                       help="a daemon's publisher (its --endpoint); repeatable")
    proxy.add_argument("--endpoint", help="where subscribers connect (default: [publisher] endpoint)")
    proxy.add_argument("--server-key", metavar="FILE", help="the face's CURVE secret key (as ecgmon run's)")
    proxy.add_argument("--allowed-keys", metavar="DIR", help="the subscribers let in (as ecgmon run's)")
    proxy.add_argument("--key", metavar="FILE", help="the proxy's own client secret key, allowed by the daemons")
    proxy.add_argument("--server-public", metavar="FILE", help="the daemons' public key")
    proxy.add_argument("--insecure", action="store_true", help="bind a non-loopback --endpoint without keys")
    proxy.set_defaults(func=cmd_proxy)


def cmd_nats_conf(args: argparse.Namespace, config: Config) -> int:
    from ecgmon.monitor.sources.ward_subjects import server_config

    host, _, port = args.listen.rpartition(":")
    if not host or not port.isdigit() or not 1 <= args.partitions <= 1024:
        raise CommandError("--listen is HOST:PORT (127.0.0.1:4222) and --partitions 1-1024")
    print(server_config(host, int(port), args.store, args.prefix, args.partitions), end="")
    return 0


def cmd_proxy(args: argparse.Namespace, config: Config) -> int:
    from ecgmon.config import SecurityConfig
    import zmq

    from ecgmon.ward_proxy import WardProxy

    sc = config.security
    front = server_keys(SecurityConfig.model_validate({**sc.model_dump(), "server_key": args.server_key or sc.server_key,
                                                       "allowed_keys": args.allowed_keys or sc.allowed_keys}))
    back = client_keys(sc, args.key, args.server_public)
    endpoint = args.endpoint or config.publisher.endpoint
    # Signals are taken by this thread alone (sigwait), the forwarding thread never sees one.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        proxy = WardProxy(endpoint, args.connect, config.publisher.send_hwm, front, back,
                          args.insecure or sc.insecure)
    except zmq.ZMQError as err:
        raise CommandError(f"ward proxy: cannot use {endpoint} or {', '.join(args.connect)}: {err.strerror}") from None
    log.info("ward proxy: %s → %s%s", ", ".join(args.connect), proxy.endpoint,
             " (CURVE keys on)" if front is not None else "")
    thread = threading.Thread(target=proxy.run, name="ward proxy", daemon=True)
    thread.start()
    sig = signal.sigwait({signal.SIGINT, signal.SIGTERM})
    proxy.stop()
    thread.join(5.0)
    proxy.close()
    log.info("ward proxy stopped by %s", signal.Signals(sig).name)
    return 130 if sig == signal.SIGINT else 0
