"""``ecgmon serve``: the HTTP face alone (analyses of uploaded files, health, metrics), with
the daemon's configuration and models; ``ecgmon run --http`` serves it beside a live daemon.
FastAPI and uvicorn are imported only here and there, when asked for."""

from __future__ import annotations

import argparse

from ecgmon.commands.common import CommandError, override, run_until_signal
from ecgmon.config import Config


def add_serve(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "serve", parents=[common], help="the HTTP API: analyse uploaded ECG and heart-sound files, health, metrics",
        description="Serve the HTTP API (README: HTTP API) until Ctrl-C: POST /v1/analyze, /v1/analyze/pcg, "
                    "GET /healthz, /readyz, /metrics; OpenAPI documentation at /docs.",
    )
    add_http_options(p)
    p.add_argument("--listen", metavar="HOST:PORT", help="address to serve (default: [http] listen, 127.0.0.1:8080)")
    p.add_argument("--insecure", action="store_true", default=None,
                   help="serve a non-loopback address without a token or TLS: anyone who reaches it can use it")
    p.set_defaults(func=cmd_serve)


def add_http_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--http-pool", choices=["process", "thread"],
                   help="analyse uploads in worker processes or threads (default: [http] pool)")
    p.add_argument("--http-workers", type=int, metavar="N", help="analyses at once (default: [http] workers)")


def http_overrides(args: argparse.Namespace) -> list[tuple[str, str, str, object]]:
    return [
        ("--http-pool", "http", "pool", getattr(args, "http_pool", None)),
        ("--http-workers", "http", "workers", getattr(args, "http_workers", None)),
        ("--insecure", "security", "insecure", getattr(args, "insecure", None)),
    ]


def open_face(listen: str, config: Config, live: bool):
    """The bound HTTP face (ecgmon.http.server.Face); a refused address is a CommandError."""
    from ecgmon.http.security import HttpSetupError
    from ecgmon.http.server import Face

    try:
        return Face(listen, config, live)
    except HttpSetupError as err:
        raise CommandError(str(err)) from None


def cmd_serve(args: argparse.Namespace, config: Config) -> int:
    config = override(config, [("--listen", "http", "listen", args.listen), *http_overrides(args)])
    face = open_face(config.http.listen, config, live=False)

    async def main() -> None:
        await face.start()
        face.warm_up()
        try:
            await face.wait()
        finally:
            await face.stop()

    return run_until_signal(main)
