"""The daemon wiring: one task per source, one pipeline per stream (made from the stream's
first chunk, so one source may carry many streams), one inference batcher per model, the
publisher, and periodic status; a stream, source or model that fails or ends never stops
the others: an exception inside one stream's pipeline restarts that stream alone (and after
too many, stops it), and a stream of a many-stream source that stays idle leaves."""

from __future__ import annotations

import asyncio
from collections import deque
import logging
import time
from typing import TYPE_CHECKING

import numpy as np

from ecgmon.chunk import Chunk, SourceEvent
from ecgmon.config import Config
from ecgmon.monitor.alarms import fibrillation
from ecgmon.monitor.alarms.fibrillation import Measured, WindowSteps
from ecgmon.monitor.batcher import BatcherClosedError, InferenceBatcher
from ecgmon.monitor.classification import MAX_WAIT_S
from ecgmon.monitor.inference_job import InferenceJob
from ecgmon.monitor.pcg_pipeline import PcgPipeline
from ecgmon.monitor.pipeline import StreamPipeline
from ecgmon.monitor.publisher import Publisher
from ecgmon.monitor.sources.base import Source, SourceError
from ecgmon.schema import DAEMON_STREAM, EventMessage, Message, StatusMessage, StreamStatus

if TYPE_CHECKING:
    from ecgmon.archive.writer import ArchiveWriter
    from ecgmon.monitor.alarms.book import AlarmBook
    from ecgmon.monitor.model_loader import LoadedModel

log = logging.getLogger("ecgmon.daemon")

# Bounded wait at shutdown for queued messages; a stuck subscriber cannot hold the exit longer.
CLOSE_LINGER_MS = 250
# A stream whose pipeline raises starts afresh with its next chunk: a rare input that trips a
# bug costs seconds of one stream, not the patient's monitoring for good. More than this many
# failures within RESTART_WINDOW_S is a bug that would only spin: the stream then stops.
RESTART_LIMIT = 3
RESTART_WINDOW_S = 600.0


class _Stream:
    """One stream's pipeline (made from its first chunk), its state and its fault counters."""

    def __init__(self, stream: str, source: Source) -> None:
        self.stream = stream
        self.source = source
        self.state = "starting"
        self.pipeline: StreamPipeline | PcgPipeline | None = None
        # Outlives the pipeline: a pipeline started again (internal error, new rate) takes on
        # the alarms of the one before, so none vanishes unannounced and no id comes twice.
        self.alarm_book: AlarmBook | None = None
        self.faults: dict[str, int] = {}
        # Model jobs in submission order, each with its pending result (None: nothing to
        # compute); results are finished strictly in this order, so beats stay in order.
        self.jobs: deque[tuple[InferenceJob, asyncio.Future | None]] = deque()
        self.last_chunk = time.monotonic()  # when a chunk for it last came
        self.failures: deque[float] = deque()  # when its pipeline raised, within RESTART_WINDOW_S
        # The feed of its last chunk while it waits for its VF windows' measures (see
        # Daemon._measure_windows); nothing else reaches its pipeline meanwhile.
        self.steps: WindowSteps[list[Message]] | None = None
        # Chunks that came and wait for ``Daemon._feed_pending`` (in this turn of the event loop).
        self.pending: list[Chunk] = []
        self.had_data = False

    def status(self) -> StreamStatus:
        if self.pipeline is not None:
            status = self.pipeline.status(self.source.spec, self.state)
        else:
            status = StreamStatus(
                stream=self.stream, source=self.source.spec, fs=getattr(self.source, "fs", 0.0),
                lead=getattr(self.source, "lead", ""), state=self.state, samples=0, time_s=0.0,
                beats=0, hr_bpm=None,
            )
        status.faults = dict(self.faults)
        return status


def _modality(source: Source) -> str:
    """"pcg" for heart-sound sources (they say so), "ecg" for every other."""
    return getattr(source, "modality", "ecg")


def _key(stream: str, source: Source) -> tuple[str, str]:
    return (stream, _modality(source))


class Daemon:
    """Runs every source until all have ended (or until cancelled), publishing what they yield.

    ``publisher`` may be given (already bound) so that a bind error surfaces before the run;
    otherwise one is bound to ``config.publisher.endpoint`` when ``run`` starts. The daemon
    closes the publisher when it returns.

    ``models`` are the loaded `[models]` entries by key ("beat", "segment"); ``model_errors``
    the one-line reasons why configured models are missing, published as events at the start.

    ``archive``, if given, gets every ECG chunk and every published message (it queues them
    and returns at once); the daemon starts it, closes it at the end and publishes its events.
    """

    def __init__(
        self,
        config: Config,
        sources: list[Source],
        publisher: Publisher | None = None,
        models: dict[str, LoadedModel] | None = None,
        model_errors: list[str] | None = None,
        archive: ArchiveWriter | None = None,
    ) -> None:
        self.config = config
        self.archive = archive
        self.sources = sources
        self.publisher = publisher
        self.models = dict(models or {})
        self.model_errors = list(model_errors or [])
        self._batchers: dict[str, InferenceBatcher] = {}
        self._failed_models: set[str] = set()
        # Streams by (id, modality), in the order they appeared; a source announces its own
        # id first. An ECG and a heart-sound stream of one patient share the id.
        self._streams: dict[tuple[str, str], _Stream] = {_key(s.stream, s): _Stream(s.stream, s) for s in sources}
        self._t0 = time.monotonic()
        # Feeds waiting for their VF windows' measures, and whether _measure_windows is due.
        self._waiting: list[tuple[_Stream, WindowSteps[list[Message]], np.ndarray]] = []
        self._measure_soon = False
        # ECG streams whose chunks wait to be fed together (see _feed_pending), in arrival order.
        self._pending: list[_Stream] = []

    @property
    def streams(self) -> list[_Stream]:
        return list(self._streams.values())

    def alarm_engine(self, stream: str):
        """The alarm engine of ``stream`` for the control socket; None if it has none (yet)."""
        for st in self._streams.values():
            if st.stream == stream and getattr(st.pipeline, "alarms", None) is not None:
                return st.pipeline.alarms
        return None

    def publish(self, msg: Message) -> None:
        """Publish ``msg`` and archive it (the control socket's alarm changes come here too)."""
        assert self.publisher is not None
        self.publisher.publish(msg)
        if self.archive is not None:
            self.archive.message(msg)

    def _archive_events(self) -> None:
        """Publish what the archive writer reported (disk faults, a full queue)."""
        if self.archive is not None:
            for ev in self.archive.take_events():
                self._event(ev.stream, ev.level, ev.code, ev.text, ev.counts)

    def _event(self, stream: str, level: str, code: str, text: str, counts: dict | None = None) -> None:
        self.publish(EventMessage(stream=stream, level=level, code=code, text=text, counts=counts or {}))

    def status_message(self) -> StatusMessage:
        pub = self.publisher
        return StatusMessage(
            uptime_s=time.monotonic() - self._t0,
            streams=[s.status() for s in self._streams.values()],
            dropped=pub.dropped if pub else 0,
            sent=pub.sent if pub else 0,
            models={key: b.stats() for key, b in self._batchers.items()},
        )

    def _stream_of(self, chunk: Chunk, source: Source) -> _Stream | None:
        st = self._streams.get(_key(chunk.stream, source))
        if st is None:
            st = self._streams[_key(chunk.stream, source)] = _Stream(chunk.stream, source)
        elif st.source is not source:
            # Two sources naming the same stream (an MQTT topic and a NAME=): never mix them.
            if st.faults.get("foreign_chunks", 0) == 0:
                self._event(chunk.stream, "error", "stream_id_clash",
                            f"{chunk.stream}: {source.spec} also sends stream '{chunk.stream}', which "
                            f"belongs to {st.source.spec}; its data is ignored: rename one of them")
            st.faults["foreign_chunks"] = st.faults.get("foreign_chunks", 0) + 1
            return None
        if not st.had_data:  # (a source's events may have made its entry before)
            st.had_data = True
            if chunk.stream != source.stream:
                self._event(chunk.stream, "info", "stream_started", f"{chunk.stream}: first data from {source.spec}")
        if st.pipeline is not None and st.pipeline.fs != chunk.fs:
            self._drain(st)  # what came at the old rate goes to the old pipeline
            self._event(chunk.stream, "warning", "rate_changed",
                        f"{chunk.stream}: sample rate changed from {st.pipeline.fs:g} to {chunk.fs:g} Hz; "
                        f"detection starts again")
            st.pipeline = None
        if st.pipeline is None and st.state != "failed":
            try:
                if _modality(source) == "pcg":
                    st.pipeline = PcgPipeline(chunk.stream, chunk.fs, self.config, self.models.get("pcg"),
                                              self.models.get("pcg_cycles"))
                else:
                    st.pipeline = StreamPipeline(
                        chunk.stream, chunk.fs, chunk.channels[0], self.config,
                        self.models.get("beat"), self.models.get("segment"), st.alarm_book,
                    )
                    st.alarm_book = st.pipeline.alarms.book
            except ValueError as err:  # e.g. a sample rate the detector cannot handle
                st.state = "failed"
                log.error("%s: %s: %s", chunk.stream, source.spec, err)
                self._event(chunk.stream, "error", "source_failed", f"{source.spec}: {err}")
            except Exception as err:  # a bug: as one inside the running pipeline
                self._pipeline_failed(st, err, "starting its pipeline")
        return st

    def _feed(self, chunk: Chunk, source: Source) -> None:
        # The source's own entry (the only one of a single-stream source) shows it is running.
        own = self._streams[_key(source.stream, source)]
        if own.state == "starting":
            own.state = "running"
        st = self._stream_of(chunk, source)
        if st is None:
            return
        if self.archive is not None:
            # Before the pipeline: its faults lose no signal.
            if _modality(source) == "ecg":
                self.archive.feed(chunk, source)
            else:
                self.archive.feed_pcg(chunk)
            self._archive_events()
        st.last_chunk = time.monotonic()
        if st.pipeline is None:
            return
        st.state = "running"
        if isinstance(st.pipeline, StreamPipeline):
            st.pending.append(chunk)
            if len(st.pending) == 1:
                self._pending.append(st)
                if len(self._pending) == 1:
                    asyncio.get_running_loop().call_soon(self._feed_pending)
            return
        try:
            msgs = st.pipeline.feed(chunk)
        except Exception as err:
            self._pipeline_failed(st, err, "processing a chunk")
            return
        self._fed(st, msgs)

    def _feed_pending(self) -> None:
        """Feed the ECG chunks that came since the last call, each stream's run of contiguous
        chunks as one. A daemon that keeps up feeds each chunk alone, in the turn of the
        event loop after it came; one that falls behind takes a stream's backlog (an MQTT
        client hands it over within one turn) in one call, whose fixed cost, most of a 0.1 s
        chunk's, it then pays once. A stream's outputs do not depend on its chunking."""
        while self._pending:
            streams, self._pending = self._pending, []
            for st in streams:
                self._drain(st)
        self._measure_windows()  # the VF windows of all these feeds, at once

    def _drain(self, st: _Stream) -> None:
        """Feed a stream's pending chunks now (before anything else reaches its pipeline)."""
        pending, st.pending = st.pending, []
        for chunk in _contiguous_runs(pending):
            if st.steps is not None:
                # Its previous chunk still waits for its VF windows: it goes through first,
                # a stream's chunks in order.
                self._measure_windows()
            if st.pipeline is None:
                # Its pipeline failed with an earlier run: the stream starts afresh, as it
                # would with its next chunk, unless it stopped or left meanwhile.
                if st.state == "failed" or self._streams.get(_key(st.stream, st.source)) is not st:
                    return
                self._stream_of(chunk, st.source)
            if isinstance(st.pipeline, StreamPipeline):
                self._step(st, st.pipeline.feed_steps(chunk), None)

    def _fed(self, st: _Stream, msgs: list[Message]) -> None:
        """A chunk went through the stream's pipeline: its messages out, its model jobs in."""
        try:
            jobs = st.pipeline.take_jobs()
        except Exception as err:
            self._pipeline_failed(st, err, "processing a chunk")
            return
        for msg in msgs:
            self.publish(msg)
        self._submit(st, jobs)

    def _step(self, st: _Stream, steps: WindowSteps[list[Message]], measured: Measured | None) -> None:
        """Move a stream's feed on: to its next VF window, which waits for
        ``_measure_windows`` (soon, with the windows of the other streams of this turn of the
        event loop), or to its end, whose messages are published and jobs submitted."""
        try:
            window = next(steps) if measured is None else steps.send(measured)
        except StopIteration as done:
            st.steps = None
            self._fed(st, done.value)
            return
        except Exception as err:
            self._pipeline_failed(st, err, "processing a chunk")
            return
        st.steps = steps
        self._waiting.append((st, steps, window))
        if not self._measure_soon:
            self._measure_soon = True
            asyncio.get_running_loop().call_soon(self._measure_windows)

    def _measure_windows(self) -> None:
        """Measure every VF window the streams' feeds wait for in one call (per window
        length): the measures' fixed cost per call was most of a window's (``bench/ward.py``'s
        profile), and a batch gives each window what it gets alone. Then each feed goes on,
        and so on while feeds ask for more windows."""
        while self._waiting:
            # A feed dropped meanwhile (its pipeline failed) is no longer the stream's.
            waiting = [(st, steps, w) for st, steps, w in self._waiting if st.steps is steps]
            self._waiting = []
            by_length: dict[int, list[tuple[_Stream, WindowSteps[list[Message]], np.ndarray]]] = {}
            for item in waiting:
                by_length.setdefault(item[2].size, []).append(item)
            for group in by_length.values():
                for (st, steps, _), measured in zip(group, self._measured(group)):
                    if measured is not None:
                        self._step(st, steps, measured)
        self._measure_soon = False

    def _measured(self, group: list[tuple[_Stream, WindowSteps[list[Message]], np.ndarray]]) -> list[Measured | None]:
        """The group's windows measured in one call; should that raise, each alone: a window
        that trips a bug fails its own stream (None), not the others of its batch."""
        try:
            return fibrillation.measure(np.stack([w for _, _, w in group]))
        except Exception:
            pass
        out: list[Measured | None] = []
        for st, _, window in group:
            try:
                out.append(fibrillation.measure_one(window))
            except Exception as err:
                self._pipeline_failed(st, err, "measuring a VF window")
                out.append(None)
        return out

    def _flush(self, st: _Stream) -> None:
        """Classify the stream's beats still waiting for a successor (its samples stopped)."""
        self._drain(st)
        if st.steps is not None:
            self._measure_windows()  # its last chunk first
        if st.pipeline is None:
            return
        try:
            jobs = st.pipeline.finish()
        except Exception as err:
            self._pipeline_failed(st, err, "finishing its waiting beats")
            return
        self._submit(st, jobs)

    def _pipeline_failed(self, st: _Stream, err: Exception, doing: str) -> None:
        """One stream's pipeline raised: drop it (and its jobs) and say so; the stream starts
        afresh with its next chunk, or stays stopped after more than RESTART_LIMIT failures
        within RESTART_WINDOW_S. The source and its other streams go on."""
        now = time.monotonic()
        st.failures.append(now)
        while now - st.failures[0] > RESTART_WINDOW_S:
            st.failures.popleft()
        st.faults["pipeline_errors"] = st.faults.get("pipeline_errors", 0) + 1
        st.pipeline = None
        st.steps = None
        st.jobs.clear()  # results still on their way finish nothing: their pipeline is gone
        what = f"{st.stream}: internal error {doing}: {type(err).__name__}: {err}"
        if len(st.failures) > RESTART_LIMIT:
            st.state = "failed"
            code = "stream_failed"
            text = f"{what}; {len(st.failures)} failures within {RESTART_WINDOW_S:g} s: the stream stays stopped"
        else:
            code = "stream_reset"
            text = f"{what}; the stream starts afresh with its next chunk"
        log.error("%s", text)
        log.debug("traceback of the %s failure", st.stream, exc_info=err)
        self._event(st.stream, "error", code, text, dict(st.faults))

    # -- models -------------------------------------------------------------------------

    def _submit(self, st: _Stream, jobs: list[InferenceJob]) -> None:
        for job in jobs:
            batcher = self._batchers.get(job.model)
            fut = None
            if batcher is not None and job.inputs is not None:
                fut = asyncio.ensure_future(batcher.submit(*job.inputs))
                fut.add_done_callback(lambda _f, st=st: self._finish_jobs(st))
            st.jobs.append((job, fut))
        self._finish_jobs(st)

    def _finish_jobs(self, st: _Stream) -> None:
        """Finish the stream's jobs whose results are in, stopping at the first still pending
        (or all, while the stream's last chunk waits for its VF windows: they come after)."""
        while st.jobs and st.steps is None:
            job, fut = st.jobs[0]
            if fut is not None and not fut.done():
                return
            st.jobs.popleft()
            result = None
            if fut is not None and not fut.cancelled():
                err = fut.exception()
                if err is None:
                    result = fut.result()
                elif not isinstance(err, BatcherClosedError):  # closed: the daemon is stopping
                    self._model_failed(job.model, err)
            try:
                msgs = job.finish(result)  # the stream's pipeline: its alarms, its messages
            except Exception as err:
                self._pipeline_failed(st, err, "finishing a model job")
                return
            for msg in msgs:
                self.publish(msg)

    def _model_failed(self, key: str, err: BaseException) -> None:
        # One event per model and failure kind: a broken model fails every batch, and a
        # storm of identical events would bury everything else.
        what = f"{key}:{type(err).__name__}"
        if what in self._failed_models:
            return
        self._failed_models.add(what)
        log.error("model %s failed: %s; its items go on unclassified", key, err)
        self._event(DAEMON_STREAM, "error", "model_failed", f"[models] {key}: {err}; items go on unclassified")

    async def _drain_jobs(self) -> None:
        """Wait for every submitted job, so the last beats are published before the end."""
        self._feed_pending()
        self._measure_windows()
        pending = [f for st in self._streams.values() for _, f in st.jobs if f is not None]
        if pending:
            await asyncio.wait(pending)

    def _source_event(self, ev: SourceEvent, source: Source) -> None:
        if ev.code == "stream_moved":
            self._stream_moved(ev, source)
            return
        st = self._streams.setdefault(_key(ev.stream, source), _Stream(ev.stream, source))
        st.faults.update(ev.counts)
        log_level = {"info": logging.INFO, "warning": logging.WARNING}.get(ev.level, logging.ERROR)
        log.log(log_level, "%s: %s", ev.stream, ev.text)
        self._event(ev.stream, ev.level, ev.code, ev.text, ev.counts)

    def _stream_moved(self, ev: SourceEvent, source: Source) -> None:
        """A ward worker's stream went to another daemon (its partition changed hands): its beats
        still waiting are classified, then it leaves at once, so that its silence here raises no
        signal-loss alarm for a patient monitored elsewhere."""
        st = self._streams.pop(_key(ev.stream, source), None)
        if st is not None:
            self._flush(st)
        log.info("%s: %s", ev.stream, ev.text)
        self._event(ev.stream, ev.level, ev.code, ev.text, ev.counts)

    def _finish(self, source: Source, state: str) -> None:
        for st in self._streams.values():
            if st.source is source and st.state != "failed":
                st.state = state

    async def _run_source(self, source: Source) -> None:
        sid, spec = source.stream, source.spec
        self._event(sid, "info", "source_started", f"{sid}: started {spec}")
        try:
            async for item in source.chunks():
                if isinstance(item, SourceEvent):
                    self._source_event(item, source)
                else:
                    self._feed(item, source)
        except SourceError as err:
            self._finish(source, "failed")
            log.error("%s: %s", sid, err)
            self._event(sid, "error", "source_failed", str(err))
        except Exception as err:  # a bug in one source must not take the others down
            self._finish(source, "failed")
            log.error("%s: internal error: %s: %s", sid, type(err).__name__, err)
            log.debug("traceback of the %s failure", sid, exc_info=True)
            self._event(sid, "error", "source_failed", f"internal error: {type(err).__name__}: {err}")
        else:
            self._finish(source, "ended")
            for st in list(self._streams.values()):
                if st.source is source:
                    self._flush(st)
            log.info("%s: %s ended", sid, spec)
            self._event(sid, "info", "source_ended", f"{sid}: {spec} ended")

    def _start_batchers(self) -> None:
        mc = self.config.models
        for error in self.model_errors:
            log.error("%s", error)
            self._event(DAEMON_STREAM, "error", "model_unavailable", error)
        for key, model in self.models.items():
            log.info("model %s: %s", key, model.card.get("name", key))
            self._batchers[key] = InferenceBatcher(
                model, mc.max_batch, mc.max_batch_delay_ms, model.device, key,
                item_shapes=[s[1:] for s in model.input_shapes(1)],
            )

    async def _status_loop(self) -> None:
        period = self.config.publisher.status_period_s
        while True:
            await asyncio.sleep(period)
            self._drop_idle()
            self._archive_events()
            self.publish(self.status_message())

    def _drop_idle(self) -> None:
        """Streams that a many-stream source (MQTT topics) opened and that sent nothing for
        ``[publisher] idle_stream_s`` leave, pipeline and all, so that state stays bounded by
        the streams alive; new data makes a new stream. A source's own stream stays: it is
        the source's place in the status."""
        limit = self.config.publisher.idle_stream_s
        now = time.monotonic()
        for key, st in list(self._streams.items()):
            if st.stream != st.source.stream and now - st.last_chunk >= limit:
                del self._streams[key]
                text = (f"{st.stream}: no data from {st.source.spec} for {limit:g} s: the stream leaves the "
                        f"status; new data starts it afresh")
                log.warning("%s", text)
                self._event(st.stream, "warning", "stream_idle", text)

    async def _signal_loss_loop(self) -> None:
        period = min(1.0, self.config.alarms.signal_loss_s / 4)
        while True:
            await asyncio.sleep(period)
            self._check_quiet_streams()

    def _check_quiet_streams(self) -> None:
        """What a silent source cannot trigger, checked on the wall clock for each running ECG
        stream: the signal-loss alarm, and the beats waiting for a successor that will not
        come soon (classified without it, as at a stream's end)."""
        self._feed_pending()  # chunks that came are not silence
        for st in list(self._streams.values()):
            alarms = getattr(st.pipeline, "alarms", None)
            if st.state == "running" and alarms is not None:
                try:
                    msgs = alarms.check_signal_loss(time.time())
                except Exception as err:
                    self._pipeline_failed(st, err, "checking signal loss")
                    continue
                for msg in msgs:
                    self.publish(msg)
                if time.monotonic() - st.last_chunk >= MAX_WAIT_S:
                    self._flush(st)

    async def run(self) -> None:
        if self.publisher is None:
            pc = self.config.publisher
            self.publisher = Publisher(pc.endpoint, pc.send_hwm)
        self._t0 = time.monotonic()
        if self.archive is not None:
            self.archive.start()
        self._start_batchers()
        self.publish(self.status_message())
        status = asyncio.create_task(self._status_loop(), name="status")
        loss = asyncio.create_task(self._signal_loss_loop(), name="signal loss")
        tasks = [
            asyncio.create_task(self._run_source(src), name=f"source {src.stream}")
            for src in self.sources
        ]
        try:
            await asyncio.gather(*tasks)
            await self._drain_jobs()
        finally:
            # Reached on the end of all streams and on cancellation (Ctrl-C) alike.
            for t in [status, loss, *tasks]:
                t.cancel()
            await asyncio.gather(status, loss, *tasks, return_exceptions=True)
            for batcher in self._batchers.values():
                await batcher.close()
            await asyncio.sleep(0)  # let the jobs the close failed finish, unclassified
            for st in self._streams.values():
                if st.state in ("starting", "running"):
                    st.state = "ended"  # stopped by shutdown
            try:
                if self.archive is not None:
                    # Its open segments are written now; the wait is bounded (its queue is).
                    await asyncio.to_thread(self.archive.close)
                    self._archive_events()
                self.publish(self.status_message())
            finally:
                # A short linger lets the last status and events reach subscribers.
                self.publisher.close(linger_ms=CLOSE_LINGER_MS)


def _contiguous_runs(chunks: list[Chunk]) -> list[Chunk]:
    """``chunks`` (one stream's, in order) with each run of contiguous chunks of one rate and
    layout joined into one, dated by its first chunk's arrival (latency counts the wait)."""
    runs: list[list[Chunk]] = []
    for c in chunks:
        last = runs[-1][-1] if runs else None
        if last is not None and c.start == last.end and c.fs == last.fs and c.channels == last.channels:
            runs[-1].append(c)
        else:
            runs.append([c])
    return [
        run[0] if len(run) == 1 else Chunk(
            run[0].stream, run[0].fs, run[0].channels, run[0].start,
            np.concatenate([c.samples for c in run]), run[0].received,
        )
        for run in runs
    ]
