"""Serving the face with uvicorn inside the caller's event loop: the listening socket is bound
first (so a taken port or a refused address is one line before anything loads), then the
server runs as a task until cancelled; the caller keeps its own signal handling."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
from typing import Any, Iterator

import uvicorn

from ecgmon.config import Config
from ecgmon.http.security import HttpSetupError, check_bind, load_token, tls_files

log = logging.getLogger("ecgmon.http")


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:8080`` for IPv6; port 0 lets the system choose)."""
    m = re.fullmatch(r"\[?([^\[\]]*?)\]?:(\d{1,5})", text.strip())
    if m is None or not m.group(1) or int(m.group(2)) > 65535:
        raise HttpSetupError(f"bad HTTP address {text!r}: expected HOST:PORT, e.g. 127.0.0.1:8080")
    return m.group(1), int(m.group(2))


def bind(listen: str, config: Config) -> socket.socket:
    """The listening socket for ``listen``, after the security check (token or TLS beyond loopback)."""
    host, port = parse_listen(listen)
    check_bind(host, load_token(config.http), tls_files(config.http) is not None, config.security.insecure)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise HttpSetupError(f"cannot serve HTTP on {listen}: {err.strerror or err}"
                             f"{' (another server running?)' if err.errno == 98 else ''}; choose another "
                             f"address with --http/--listen or [http] listen") from None
    sock.listen(128)
    sock.setblocking(False)
    return sock


def url(sock: socket.socket, tls: bool) -> str:
    host, port = sock.getsockname()[:2]
    host = f"[{host}]" if ":" in host else host
    return f"{'https' if tls else 'http'}://{host}:{port}"


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # The command's own SIGINT/SIGTERM handling stops everything; uvicorn must not take them.
        yield


async def serve(app: Any, sock: socket.socket, config: Config) -> None:
    """Serve ``app`` on ``sock`` until cancelled, then shut down gracefully (open requests
    get a few seconds)."""
    tls = tls_files(config.http)
    uconfig = uvicorn.Config(
        app, log_config=None, access_log=False, lifespan="off", timeout_graceful_shutdown=3,
        ssl_certfile=tls[0] if tls else None, ssl_keyfile=tls[1] if tls else None,
    )
    server = _Server(uconfig)
    task = asyncio.ensure_future(server.serve(sockets=[sock]))
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        server.should_exit = True
        with contextlib.suppress(Exception):
            await task
        raise


class Face:
    """The HTTP face as a command starts it: bound at once (errors before anything loads),
    then served beside whatever the command runs, ready once its workers have their models."""

    def __init__(self, listen: str, config: Config, live: bool) -> None:
        self.config = config
        self.sock = bind(listen, config)
        # The face and its pool bring torch: only once the address is known to be usable.
        from ecgmon.http.face import HttpFace
        from ecgmon.http.pool import AnalysisPool

        self.face = HttpFace(config, AnalysisPool(config), live=live)
        self.url = url(self.sock, tls_files(config.http) is not None)
        self._tasks: list[asyncio.Future] = []

    async def start(self) -> None:
        """Start serving (``/readyz`` says 503 until ``warm_up`` ends) and the pool's workers."""
        from ecgmon.http.app import create_app

        self._tasks.append(asyncio.ensure_future(serve(create_app(self.face), self.sock, self.config)))
        self.face.pool.start()
        log.info("HTTP API on %s (docs: %s/docs; token %s, %s pool of %d)", self.url, self.url,
                 "required" if self.face.token else "not required", self.face.pool.kind, self.face.pool.workers)

    def warm_up(self, models: Any = None, errors: list[str] | None = None) -> None:
        """Load the workers' models in the background (a thread pool takes ``models``, already loaded)."""
        if models is not None and self.face.pool.kind == "thread":
            self.face.pool.set_models(models, errors or [])
        self._tasks.append(asyncio.ensure_future(self._warm_up()))

    async def _warm_up(self) -> None:
        try:
            await self.face.pool.warm_up()
        except Exception as err:  # workers that cannot start: /readyz says why, the rest goes on
            self.face.pool.error = self.face.pool.error or f"analysis workers failed: {type(err).__name__}: {err}"
            log.error("HTTP analyses unavailable: %s", self.face.pool.error)
            return
        log.info("HTTP API ready")

    async def wait(self) -> None:
        """Until the server stops (it only does when cancelled)."""
        await self._tasks[0]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.face.pool.close()
