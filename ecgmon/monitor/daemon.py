"""The daemon wiring: one task per source feeding its stream pipeline into the publisher,
plus periodic status; a stream that fails or ends never stops the others."""

from __future__ import annotations

import asyncio
import logging
import time

from ecgmon.config import Config
from ecgmon.monitor.pipeline import StreamPipeline
from ecgmon.monitor.publisher import Publisher
from ecgmon.monitor.sources.base import Source, SourceError
from ecgmon.schema import EventMessage, Message, StatusMessage, StreamStatus

log = logging.getLogger("ecgmon.daemon")

# Bounded wait at shutdown for queued messages; a stuck subscriber cannot hold the exit longer.
CLOSE_LINGER_MS = 250


class _Stream:
    """One source, its pipeline and its state as status reports it."""

    def __init__(self, source: Source, config: Config) -> None:
        self.source = source
        self.state = "starting"
        self.error: str | None = None
        self.pipeline: StreamPipeline | None = None
        try:
            self.pipeline = StreamPipeline(source.stream, source.fs, source.lead, config)
        except ValueError as err:  # e.g. a sample rate the detector cannot handle
            self.error = f"{source.spec}: {err}"

    def status(self) -> StreamStatus:
        if self.pipeline is not None:
            return self.pipeline.status(self.source.spec, self.state)
        s = self.source
        return StreamStatus(
            stream=s.stream, source=s.spec, fs=s.fs, lead=s.lead, state=self.state,
            samples=0, time_s=0.0, beats=0, hr_bpm=None,
        )


class Daemon:
    """Runs every source until all have ended (or until cancelled), publishing what they yield.

    ``publisher`` may be given (already bound) so that a bind error surfaces before the run;
    otherwise one is bound to ``config.publisher.endpoint`` when ``run`` starts. The daemon
    closes the publisher when it returns.
    """

    def __init__(
        self, config: Config, sources: list[Source], publisher: Publisher | None = None
    ) -> None:
        self.config = config
        self.streams = [_Stream(s, config) for s in sources]
        self.publisher = publisher
        self._t0 = time.monotonic()

    def _publish(self, msg: Message) -> None:
        assert self.publisher is not None
        self.publisher.publish(msg)

    def _event(self, stream: str, level: str, code: str, text: str) -> None:
        self._publish(EventMessage(stream=stream, level=level, code=code, text=text))

    def status_message(self) -> StatusMessage:
        pub = self.publisher
        return StatusMessage(
            uptime_s=time.monotonic() - self._t0,
            streams=[s.status() for s in self.streams],
            dropped=pub.dropped if pub else 0,
            sent=pub.sent if pub else 0,
        )

    async def _run_stream(self, st: _Stream) -> None:
        sid, spec = st.source.stream, st.source.spec
        pipeline = st.pipeline
        if pipeline is None:
            st.state = "failed"
            log.error("%s: %s", sid, st.error)
            self._event(sid, "error", "source_failed", st.error or "cannot start")
            return
        self._event(sid, "info", "source_started", f"{sid}: started {spec}")
        try:
            async for chunk in st.source.chunks():
                st.state = "running"
                for msg in pipeline.feed(chunk):
                    self._publish(msg)
        except SourceError as err:
            st.state = "failed"
            log.error("%s: %s", sid, err)
            self._event(sid, "error", "source_failed", str(err))
        except Exception as err:  # a bug in one stream must not take the others down
            st.state = "failed"
            log.error("%s: internal error: %s: %s", sid, type(err).__name__, err)
            log.debug("traceback of the %s failure", sid, exc_info=True)
            self._event(sid, "error", "source_failed", f"internal error: {type(err).__name__}: {err}")
        else:
            st.state = "ended"
            log.info("%s: %s ended after %.1f s of signal", sid, spec, pipeline.samples / pipeline.fs)
            self._event(sid, "info", "source_ended", f"{sid}: {spec} ended")

    async def _status_loop(self) -> None:
        period = self.config.publisher.status_period_s
        while True:
            await asyncio.sleep(period)
            self._publish(self.status_message())

    async def run(self) -> None:
        if self.publisher is None:
            pc = self.config.publisher
            self.publisher = Publisher(pc.endpoint, pc.send_hwm)
        self._t0 = time.monotonic()
        self._publish(self.status_message())
        status = asyncio.create_task(self._status_loop(), name="status")
        tasks = [
            asyncio.create_task(self._run_stream(st), name=f"stream {st.source.stream}")
            for st in self.streams
        ]
        try:
            await asyncio.gather(*tasks)
        finally:
            # Reached on the end of all streams and on cancellation (Ctrl-C) alike.
            for t in [status, *tasks]:
                t.cancel()
            await asyncio.gather(status, *tasks, return_exceptions=True)
            for st in self.streams:
                if st.state in ("starting", "running"):
                    st.state = "ended"  # stopped by shutdown
            try:
                self._publish(self.status_message())
            finally:
                # A short linger lets the last status and events reach subscribers.
                self.publisher.close(linger_ms=CLOSE_LINGER_MS)
