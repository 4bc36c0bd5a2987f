"""The archive writer the daemon feeds: a bounded queue and one thread of its own.

The daemon hands over every chunk of an ECG stream and every published message; both calls
only put a small item on a bounded queue and return at once, so the pipeline never waits
for the disk. When the queue is full the item is dropped and counted, and a technical event
says so (at most one every ``EVENT_EVERY_S``); a dropped chunk becomes a gap in the archive.
Disk faults (full, read-only, gone) are technical events too, and monitoring goes on; the
events come back to the daemon through ``take_events`` for it to publish.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
import errno
import logging
import os
import queue
import secrets
import threading
import time
from pathlib import Path
from typing import Any

from ecgmon.archive.adc import Adc, source_adc
from ecgmon.archive.audit import AuditLog
from ecgmon.archive.pcg import PcgArchive
from ecgmon.archive.retention import Retention
from ecgmon.archive.stream import ArchiveBusy, StreamArchive
from ecgmon.chunk import Chunk
from ecgmon.schema import (
    DAEMON_STREAM, AlarmMessage, BeatMessage, EventMessage, Message, PcgClassMessage, PcgMessage, SegmentMessage,
)

log = logging.getLogger("ecgmon.archive")

EVENT_EVERY_S = 10.0  # at most one queue-full event per this many seconds
_STOP = object()


@dataclass(frozen=True)
class ArchiveEvent:
    """A technical event of the archive, for the daemon to publish as an EventMessage."""

    stream: str
    level: str
    code: str
    text: str
    counts: dict[str, int]


class ArchiveWriter:
    """Archives every stream it is fed into ``root`` (one folder per stream)."""

    def __init__(self, root: Path, segment_s: float = 60.0, keep_days: float = 0.0, max_gb: float = 0.0,
                 queue_items: int = 10000, sources: list[str] | None = None) -> None:
        self.root = Path(root).expanduser()
        self.segment_s = segment_s
        self.run = secrets.token_hex(4)
        self._queue: queue.Queue = queue.Queue(maxsize=queue_items)
        self._events: deque[ArchiveEvent] = deque(maxlen=1000)
        self._streams: dict[str, StreamArchive | None] = {}  # None: this stream cannot be archived
        self._pcg: dict[str, PcgArchive] = {}  # heart-sound streams (an ECG may share the id)
        self._alarm_state: dict[str, tuple] = {}  # alarm id → (ack by, silenced until, suppressed)
        self._failing: set[str] = set()  # fault kinds reported and not yet recovered
        self._retention = Retention(self.root, keep_days, max_gb)
        self._sources = list(sources or [])
        self._audit: AuditLog | None = None
        self._thread: threading.Thread | None = None
        self._last_drop_event = -1e9
        self.dropped = 0
        self.totals: dict[str, int] = {"chunks": 0, "messages": 0, "write_errors": 0}

    # -- the daemon's side: never blocks ------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="ecgmon-archive", daemon=True)
        self._thread.start()
        self._put(("start", time.time()))

    def feed(self, chunk: Chunk, source: object = None) -> None:
        """A chunk of an ECG stream; its ``source``'s gains are looked up at the first chunk."""
        self._put(("chunk", chunk, source))

    def feed_pcg(self, chunk: Chunk) -> None:
        """A chunk of a heart-sound stream (audio)."""
        self._put(("pcg_chunk", chunk))

    def message(self, msg: Message) -> None:
        """A published message; only what the archive keeps is queued (beats, alarms, events,
        rhythm verdicts), as plain values taken now (the alarm engine reuses its messages)."""
        if isinstance(msg, BeatMessage):
            self._put(("beat", msg.stream, msg.sample, msg.label))
        elif isinstance(msg, AlarmMessage):
            self._put(("alarm", msg.stream, msg.model_dump(mode="json")))
        elif isinstance(msg, EventMessage):
            self._put(("event", msg.stream, msg.level, msg.code, msg.text, dict(msg.counts), msg.wall or time.time()))
        elif isinstance(msg, SegmentMessage):
            self._put(("verdict", msg.stream, msg.start, msg.label, msg.probability))
        elif isinstance(msg, (PcgMessage, PcgClassMessage)):
            self._put(("pcg", msg.stream, msg.model_dump(mode="json", exclude={"v", "pub", "seq"})))

    def take_events(self) -> list[ArchiveEvent]:
        out = []
        while self._events:
            out.append(self._events.popleft())
        return out

    def close(self, timeout_s: float = 30.0) -> None:
        """Write the open segments and the stop entry; waits at most ``timeout_s`` (the queue
        is bounded, so this is bounded too)."""
        if self._thread is None:
            return
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self._queue.put(_STOP, timeout=0.1)
                break
            except queue.Full:
                if time.monotonic() > deadline:
                    return
        self._thread.join(max(0.0, deadline - time.monotonic()))
        self._thread = None

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until everything queued so far is written (for tests and benchmarks; the
        daemon never waits); False if that took longer than ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while self._queue.unfinished_tasks:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True

    def _put(self, item: Any) -> None:
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self.dropped += 1
            now = time.monotonic()
            if now - self._last_drop_event >= EVENT_EVERY_S:
                self._last_drop_event = now
                stream = item[1].stream if item[0] == "chunk" else (item[1] if isinstance(item[1], str) else DAEMON_STREAM)
                self._report(stream, "warning", "archive_queue_full",
                             f"the archive writer is behind: {self.dropped} items dropped so far "
                             f"(dropped samples are gaps in the archive)", {"archive_dropped": self.dropped})

    def _report(self, stream: str, level: str, code: str, text: str, counts: dict[str, int] | None = None) -> None:
        getattr(log, "error" if level == "error" else level)("%s: %s", stream, text)
        self._events.append(ArchiveEvent(stream, level, code, text, dict(counts or {})))

    # -- the writer thread --------------------------------------------------------------

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                try:
                    self._stop()
                except Exception as err:  # never leave close() waiting on a dead thread
                    self._report(DAEMON_STREAM, "error", "archive_error",
                                 f"internal error closing the archive: {type(err).__name__}: {err}")
                self._queue.task_done()
                return
            try:
                self._handle(item)
            except OSError as err:
                self._disk_fault(item, err)
            except Exception as err:  # a bug: reported, and the writer goes on with the next item
                log.debug("archive item failed", exc_info=True)
                self._report(DAEMON_STREAM, "error", "archive_error",
                             f"internal error in the archive writer: {type(err).__name__}: {err}")
            finally:
                self._queue.task_done()

    def _handle(self, item: tuple) -> None:
        kind = item[0]
        if kind == "chunk":
            self.totals["chunks"] += 1
            chunk: Chunk = item[1]
            st = self._stream(chunk, item[2])
            if st is not None:
                written = st.bytes_written
                st.add_samples(chunk.start, chunk.samples, chunk.received,
                               lambda gap: self._gap(chunk.stream, gap))
                if st.bytes_written > written:  # only a write that worked says the disk is back
                    self._recovered("disk")
                if st.layout.entries and self._retention.due():
                    self._retention.run(self._active_layouts())
            return
        if kind == "pcg_chunk":
            chunk = item[1]
            pcg = self._pcg.get(chunk.stream)
            if pcg is None or pcg.fs != chunk.fs:
                if pcg is not None:
                    pcg.close()
                pcg = self._pcg[chunk.stream] = PcgArchive(self.root, chunk.stream, chunk.fs, self.segment_s, self.run)
            written = pcg.bytes_written
            pcg.add_samples(chunk.start, chunk.samples, chunk.received)
            if pcg.bytes_written > written:
                self._recovered("disk")
            return
        self.totals["messages"] += 1
        if kind == "pcg":
            if item[1] in self._pcg:
                self._pcg[item[1]].add_message(item[2])
            return
        st = self._streams.get(item[1])
        if kind == "beat":
            if st is not None:
                st.add_beat(item[2], item[3])
        elif kind == "verdict":
            if st is not None:
                st.add_verdict(item[2], item[3], item[4])
        elif kind == "alarm":
            self._alarm(st, item[2])
        elif kind == "event":
            _, stream, level, code, text, counts, wall = item
            if st is not None:
                st.add_event(level, code, text)
            self._write_audit("event", wall, stream=stream, level=level, code=code, text=text, counts=counts)
        elif kind == "start":
            self._write_audit("daemon_start", item[1], run=self.run, pid=os.getpid(), sources=self._sources,
                              segment_s=self.segment_s)

    def _alarm(self, st: StreamArchive | None, alarm: dict) -> None:
        """Alarms are audited when raised and cleared and when someone acknowledges or
        silences them (the updates of a value in between are not)."""
        aid = alarm["id"]
        mark = (alarm.get("acknowledged_by"), alarm.get("silenced_until_wall"), alarm.get("suppressed"))
        before = self._alarm_state.get(aid)
        actions = []
        if alarm["state"] == "raised" or before is None:
            actions.append("raised" if alarm["state"] != "cleared" else "cleared")
        if before is not None and mark[0] != before[0] and mark[0]:
            actions.append("acknowledged")
        if before is not None and mark[1] != before[1] and mark[1]:
            actions.append("silenced")
        if alarm["state"] == "cleared" and "cleared" not in actions:
            actions.append("cleared")
        if alarm["state"] == "cleared":
            self._alarm_state.pop(aid, None)
        else:
            self._alarm_state[aid] = mark
        for action in actions:
            if st is not None:
                st.add_alarm(alarm, action)
            by = {"acknowledged": alarm.get("acknowledged_by"), "silenced": alarm.get("silenced_by")}.get(action)
            self._write_audit(
                "alarm", alarm.get("acknowledged_wall") if action == "acknowledged" and alarm.get("acknowledged_wall")
                else alarm.get("wall") or time.time(),
                action=action, stream=alarm["stream"], id=aid, alarm=alarm["alarm"], category=alarm["category"],
                priority=alarm["priority"], text=alarm["text"], onset_s=alarm["onset_s"],
                raised_s=alarm["raised_s"], cleared_s=alarm.get("cleared_s"), by=by,
                silenced_until_wall=alarm.get("silenced_until_wall") if action == "silenced" else None,
            )

    def _stream(self, chunk: Chunk, source: object) -> StreamArchive | None:
        if chunk.stream in self._streams:
            st = self._streams[chunk.stream]
            if st is None or (st.spec.fs == chunk.fs and st.spec.channels == chunk.channels):
                return st
            st.close(time.time())  # another rate or other channels: a new layout record
        if _replays_folder(source, self.root / chunk.stream):
            # An archived stream replayed under its own name: archiving it would append the
            # stream to itself.
            self._streams[chunk.stream] = None
            self._report(chunk.stream, "warning", "archive_skipped",
                         f"{chunk.stream} replays {self.root / chunk.stream}, its own archive: not archived again "
                         f"(name the replay apart, e.g. --source copy=archive:..., or use --no-archive)")
            return None
        try:
            adc: Adc | None = source if isinstance(source, list) else source_adc(source)
            st = StreamArchive(self.root, chunk.stream, chunk.fs, chunk.channels, adc, self.segment_s,
                               self.run, time.time())
        except ArchiveBusy as err:
            self._streams[chunk.stream] = None
            self._report(chunk.stream, "error", "archive_busy", str(err))
            return None
        self._streams[chunk.stream] = st
        what = f"continues {st.layout.name} after a gap" if st.resumed else f"starts {st.layout.name}"
        log.info("%s: archive %s in %s", chunk.stream, what, st.folder)
        return st

    def _active_layouts(self):
        return {st.folder / st.layout.name: st.layout for st in self._streams.values() if st is not None}

    def _gap(self, stream: str, samples: int) -> None:
        log.debug("%s: archive gap of %d samples", stream, samples)

    def _write_audit(self, entry_type: str, wall: float, **fields: Any) -> None:
        try:
            if self._audit is None:
                self.root.mkdir(parents=True, exist_ok=True)
                self._audit = AuditLog(self.root)
            self._audit.append(entry_type, wall, **fields)
            self._recovered("audit")
        except (OSError, ValueError) as err:  # ValueError: a file object left unusable by a failed write
            if self._audit is not None:
                self._audit.close()
                self._audit = None
            why = _why(err) if isinstance(err, OSError) else str(err)
            self._fault("audit", DAEMON_STREAM, f"cannot append to the audit log in {self.root}: {why}")

    def _disk_fault(self, item: tuple, err: OSError) -> None:
        self.totals["write_errors"] += 1
        stream = item[1].stream if item[0] == "chunk" else (item[1] if isinstance(item[1], str) else DAEMON_STREAM)
        if item[0] == "chunk" and stream not in self._streams:
            # The stream's folder cannot even be made: try again at its next chunk.
            pass
        if err.errno == errno.ENOSPC:
            try:
                self._retention.run(self._active_layouts(), force=True)
            except OSError:
                pass
        self._fault("disk", stream, f"cannot write the archive in {self.root}: {_why(err)}; "
                                    f"monitoring goes on, this stretch is not archived")

    def _fault(self, kind: str, stream: str, text: str) -> None:
        if kind not in self._failing:
            self._failing.add(kind)
            self._report(stream, "error", "archive_failed", text, {"archive_write_errors": self.totals["write_errors"]})

    def _recovered(self, kind: str) -> None:
        if kind in self._failing:
            self._failing.discard(kind)
            self._report(DAEMON_STREAM, "info", "archive_recovered", f"the archive in {self.root} is written again")

    def _stop(self) -> None:
        now = time.time()
        for pcg in self._pcg.values():
            try:
                pcg.close()
            except OSError as err:
                self._fault("disk", pcg.stream, f"cannot write the last heart-sound segment of {pcg.stream}: {_why(err)}")
        for st in self._streams.values():
            if st is None:
                continue
            try:
                st.close(now)
            except OSError as err:
                self._fault("disk", st.stream, f"cannot write the last segment of {st.stream}: {_why(err)}")
            except Exception as err:
                self._report(st.stream, "error", "archive_error", f"closing the archive: {type(err).__name__}: {err}")
        try:
            self._retention.run(self._active_layouts(), force=True)
        except OSError as err:
            self._fault("disk", DAEMON_STREAM, f"retention: {_why(err)}")
        self._write_audit("daemon_stop", now, run=self.run, dropped=self.dropped,
                          write_errors=self.totals["write_errors"])
        if self._audit is not None:
            self._audit.close()


def _replays_folder(source: object, folder: Path) -> bool:
    path = getattr(getattr(source, "record", None), "path", None)
    if path is None:
        return False
    try:
        return Path(path).resolve().is_relative_to(folder.resolve())
    except OSError:
        return False


def _why(err: OSError) -> str:
    if err.errno == errno.ENOSPC:
        return "the disk is full"
    if err.errno == errno.EROFS:
        return "the filesystem is read-only"
    if err.errno == errno.EACCES:
        return "permission denied"
    return err.strerror or str(err)

