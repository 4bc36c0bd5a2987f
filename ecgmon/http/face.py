"""The HTTP face's state, shared by its routes: the configuration, the analysis pool, the
live daemon when there is one (``ecgmon run --http``), the message counter behind
``/metrics`` and what ``/readyz`` waits for."""

from __future__ import annotations

from typing import Any

from ecgmon.config import Config
from ecgmon.http.metrics import HttpMetrics, MessageCounter
from ecgmon.http.pictures import ExplainStore
from ecgmon.http.pool import AnalysisPool
from ecgmon.http.security import load_token
from ecgmon.schema import StatusMessage, StreamStatus


class HttpFace:
    """``daemon`` is attached once it exists (its models load after the server is up, so
    that ``/readyz`` can say 503 meanwhile)."""

    def __init__(self, config: Config, pool: AnalysisPool, live: bool = False) -> None:
        self.config = config
        self.pool = pool
        self.live = live  # a daemon will be attached: /v1/streams answers, /readyz waits for it
        self.daemon: Any = None
        self.counter = MessageCounter()
        self.token = load_token(config.http)
        self.explained = ExplainStore()  # what the PNG links of explained analyses draw from
        self.metrics = HttpMetrics(self.status, self.counter, lambda: self.pool.busy)

    @property
    def max_bytes(self) -> int:
        return int(self.config.http.max_upload_mb * 1e6)

    def attach(self, daemon: Any) -> None:
        self.daemon = daemon

    def status(self) -> StatusMessage | None:
        return self.daemon.status_message() if self.daemon is not None else None

    def streams(self) -> list[StreamStatus]:
        status = self.status()
        return status.streams if status is not None else []

    def not_ready(self) -> list[str]:
        """Why the face is not ready yet; empty when it is."""
        why = []
        if self.pool.error:
            why.append(self.pool.error)
        elif not self.pool.ready:
            why.append("models loading")
        if self.live:
            if self.daemon is None:
                why.append("daemon starting")
            else:
                streams = self.streams()
                if any(s.state == "starting" for s in streams):
                    why.append("sources starting: " + ", ".join(s.stream for s in streams if s.state == "starting"))
                elif streams and all(s.state == "failed" for s in streams):
                    why.append("every source failed")
        return why
