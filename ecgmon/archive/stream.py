"""One stream's archive: its open segment in memory, its closed segments on disk, the
layout header listing them, and the annotations waiting for their segment's files.

Only the archive's writer thread touches a StreamArchive. Indices: the *archive index* of a
sample counts from the start of the stream's layout record (gaps included) and never goes
back; a run of the daemon maps its stream indices onto it linearly (``run_base``), and a
hole in the stream (a dropped chunk, a jump of the source's sample clock, a restart of the
daemon) becomes a ``~`` null segment of the missing length.
"""

from __future__ import annotations

import fcntl
import math
import os
from pathlib import Path
import shutil
import time

import numpy as np
import wfdb

from ecgmon.archive.annotations import (
    BEAT_EXT, EVENT_EXT, Entry, NORMAL_RHYTHM, RHYTHM_AUX, beat_symbol, clip_aux, read_annotations,
    write_annotations,
)
from ecgmon.archive.fsio import TMP_DIR
from ecgmon.archive.layout import NULL, SEGMENT_NAME, Layout, SignalSpec
from ecgmon.archive.segment import segment_comments, to_digital, write_segment

# Beats are published up to a few seconds after their R peak (detection, then the beat
# model waits for the next beat): a segment's annotation files are written when it closes,
# and what comes for it afterwards is merged into them once the stream is this far past its
# end (one rewrite, not one per late beat). Later still is merged when it comes.
ANNOTATION_LAG_S = 10.0
LOCK_FILE = ".lock"


class ArchiveBusy(Exception):
    """Another process (a second daemon) is archiving this stream into the same folder."""


def _gain_spec(fs: float, channels: tuple[str, ...], adc: list[tuple[float, int, str]] | None) -> SignalSpec:
    """The spec of a new stream: the source's own gains where it has them (a record's header),
    else 1000 units/mV (1 µV steps, ±32 mV in format 16)."""
    n = len(channels)
    if adc is None or len(adc) != n:
        adc = [(1000.0, 0, "mV")] * n
    return SignalSpec(fs, channels, tuple(a[2] for a in adc), tuple(float(a[0]) for a in adc),
                      tuple(int(a[1]) for a in adc))


class StreamArchive:
    """Archives one stream into ``folder``; opened at its first chunk, closed at shutdown."""

    def __init__(self, root: Path, stream: str, fs: float, channels: tuple[str, ...],
                 adc: list[tuple[float, int, str]] | None, segment_s: float, run: str, now: float) -> None:
        self.stream = stream
        self.folder = root / stream
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock = self._take_lock()
        shutil.rmtree(self.folder / TMP_DIR, ignore_errors=True)  # a crash's half-written files
        self.run = run
        self.layout, self.resumed = self._open_layout(_gain_spec(fs, channels, adc), now)
        self.spec = self.layout.spec
        self.segment_samples = max(1, round(segment_s * self.spec.fs))
        self.number = self.layout.next_number()
        self._lag = round(ANNOTATION_LAG_S * self.spec.fs)
        # Mapping of this run's stream indices onto archive indices (set by the first chunk).
        self.run_base = self.layout.end_sample
        self.run_first: int | None = None
        self.expected: int | None = None  # next stream index expected
        # The open segment.
        self._buf: list[np.ndarray] = []
        self._buf_n = 0
        self._open_start = self.layout.end_sample  # archive index of its first sample
        self._open_stream_start = 0
        self._open_wall = now
        # Closed segments of this run: name → (archive start, samples, stream start),
        # and the annotations not yet in their files: (archive index, ext, symbol, aux).
        self._segments: dict[str, tuple[int, int, int]] = {}
        self._pending: list[tuple[int, str, str, str]] = []
        self._late = False  # an annotation for a segment past its settling time is pending
        self._settling: list[str] = []  # closed segments still within ANNOTATION_LAG_S
        self._rhythms: dict[str, str] = {}  # active rhythm alarms: alarm id → rhythm code
        self._verdict: str | None = None
        self.bytes_written = 0
        self.clipped = 0
        self.segments_lost = 0

    # -- opening ------------------------------------------------------------------------

    def _take_lock(self) -> int:
        fd = os.open(self.folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ArchiveBusy(f"{self.folder} is being written by another ecgmon; "
                              f"stream '{self.stream}' is not archived by this one") from None
        return fd

    def _layout_names(self) -> list[str]:
        names = [p.name[: -len("_layout.hea")] for p in self.folder.glob("*_layout.hea")]
        return sorted(names, key=lambda n: (n != self.stream, len(n), n))

    def _open_layout(self, spec: SignalSpec, now: float) -> tuple[Layout, bool]:
        """The stream's layout record, continued after a gap when its signals match; a new
        record (``<stream>_p2``, …) when they do not (another rate, other channels)."""
        names = self._layout_names()
        if names:
            last = names[-1]
            try:
                layout = Layout.load(self.folder, last)
            except (OSError, ValueError, IndexError):
                layout = None  # unreadable: a new record beside it; the old one stays as it is
            if layout is not None and layout.spec.compatible(spec):
                self._recover_orphans(layout)
                gap = self._downtime_samples(layout, now)
                layout.append(NULL, gap)
                layout.save()
                return layout, True
            name = f"{self.stream}_p{len(names) + 1}"
        else:
            name = self.stream
        layout = Layout(self.folder, name, spec)
        layout.save()
        return layout, False

    def _recover_orphans(self, layout: Layout) -> None:
        """Segments renamed into place before a crash let the layout header be replaced:
        complete (their header is the last file renamed), so they are listed now."""
        listed = {seg for seg, _ in layout.entries}
        last = max((int(m["n"]) for seg in listed if (m := SEGMENT_NAME.match(seg))), default=0)
        for path in sorted(self.folder.glob(f"{layout.name}_*.hea")):
            m = SEGMENT_NAME.match(path.stem)
            if m is None or m["base"] != layout.name or int(m["n"]) <= last or path.stem in listed:
                continue
            try:
                n = int(wfdb.rdheader(str(path.with_suffix(""))).sig_len)
            except Exception:  # unreadable: left out, `archive verify` names it
                continue
            layout.append(path.stem, n)

    def _downtime_samples(self, layout: Layout, now: float) -> int:
        """The gap mark for the time the daemon was down: from the last closed segment's
        closing to now (what the open segment held at a crash is inside it); at least 1."""
        for seg, _ in reversed(layout.entries):
            if seg == NULL:
                continue
            try:
                closed = float(segment_comments(self.folder, seg).get("closed_wall", "nan"))
            except (OSError, ValueError):
                closed = math.nan
            if math.isfinite(closed):
                return max(1, round((now - closed) * layout.spec.fs))
            break
        return 1

    # -- samples ------------------------------------------------------------------------

    def archive_index(self, stream_index: int) -> int:
        first = self.run_first if self.run_first is not None else stream_index
        return self.run_base + max(0, stream_index - first)

    @property
    def position(self) -> int:
        """Archive index one past the last sample received."""
        return self._open_start + self._buf_n

    def add_samples(self, start: int, samples: np.ndarray, received: float, on_gap) -> None:
        """Append a chunk's samples (stream indices ``start`` …); a jump forward becomes a gap,
        samples already archived are dropped."""
        n = samples.shape[0]
        if self.run_first is None:
            self.run_first, self.expected = start, start
            self._open_stream_start = start
            self._open_wall = received - n / self.spec.fs
        assert self.expected is not None
        failed: OSError | None = None
        if start > self.expected:
            gap = start - self.expected
            try:
                self.close_segment(received)
            except OSError as err:  # the gap is listed all the same: indices stay in step
                failed = err
            self.layout.append(NULL, gap)
            self._open_start += gap
            self._open_stream_start = start
            on_gap(gap)
        elif start < self.expected:
            # Samples already archived (a resend): dropped, as the pipeline drops them, so
            # that the stream's indices and the archive's stay in step.
            if start + n <= self.expected:
                return
            samples = samples[self.expected - start:]
            start = self.expected
        self.expected = start + samples.shape[0]
        pos, total = 0, samples.shape[0]
        while pos < total:
            if self._buf_n == 0:
                self._open_wall = received - (total - pos) / self.spec.fs
                self._open_stream_start = start + pos
            take = min(self.segment_samples - self._buf_n, total - pos)
            # Physical samples until the segment closes: converted once per segment, not per chunk.
            self._buf.append(samples[pos : pos + take])
            self._buf_n += take
            pos += take
            if self._buf_n >= self.segment_samples:
                try:
                    self.close_segment(received)
                except OSError as err:  # the rest of the chunk still goes on, in step
                    failed = err
        if self._late or (self._settling and self._due(self._settling[0])):
            self._flush_due_annotations()
        if failed is not None:
            raise failed

    def close_segment(self, now: float) -> None:
        """Write the open segment (if it holds anything) and list it; on a disk error its span
        is listed as a gap, so the indices after it stay right, and the error propagates."""
        if self._buf_n == 0:
            return
        digital, clipped = to_digital(np.concatenate(self._buf), self.spec)
        self.clipped += clipped
        n, start = self._buf_n, self._open_start
        self._buf, self._buf_n = [], 0
        self._open_start = start + n
        name = self.layout.segment_name(self.number)
        self.number += 1
        stream_start = self._open_stream_start
        self._open_stream_start += n
        try:
            self.bytes_written += write_segment(
                self.folder, name, self.spec, digital, self._open_wall,
                {"stream": self.stream, "stream_start": stream_start, "archive_start": start,
                 "start_wall": f"{self._open_wall:.3f}", "closed_wall": f"{time.time():.3f}", "run": self.run},
            )
        except BaseException:
            self.segments_lost += 1
            for part in (self.folder / TMP_DIR).glob(f"{name}.*"):  # on a full disk, free what it took
                try:
                    part.unlink()
                except OSError:
                    pass
            self.layout.append(NULL, n)
            self._pending = [p for p in self._pending if not start <= p[0] < start + n]
            self._save_layout_quietly()
            raise
        self._segments[name] = (start, n, stream_start)
        # Its annotation files now, so that a crash loses only what comes for it later, and
        # before the layout lists it: a listed segment has its files (a crash in between
        # leaves a complete segment that the next start lists).
        failed: OSError | None = None
        try:
            self._write_pending({name}, merge=False)
        except OSError as err:  # the signal is safe; listed all the same, so indices stay right
            failed = err
        self._settling.append(name)
        self.layout.append(name, n)
        self.layout.save()
        if failed is not None:
            raise failed

    def _save_layout_quietly(self) -> None:
        try:
            self.layout.save()
        except OSError:
            pass  # the disk error is being reported already; the next save writes it all

    # -- annotations --------------------------------------------------------------------

    def _at(self, seconds: float | None) -> int:
        if seconds is None or not math.isfinite(seconds):
            return max(self.position - 1, self.run_base)
        return self.archive_index(round(seconds * self.spec.fs))

    def _written_end(self) -> int:
        """Archive index before which closed segments are past their settling time."""
        return self._segments[self._settling[0]][0] if self._settling else self._open_start

    def _add(self, index: int, ext: str, symbol: str, aux: str) -> None:
        self._pending.append((index, ext, symbol, aux))
        if index < self._written_end():
            self._late = True

    def _note(self, index: int, text: str) -> None:
        self._add(index, EVENT_EXT, '"', clip_aux(text))

    def add_beat(self, sample: int, label: str | None) -> None:
        self._add(self.archive_index(sample), BEAT_EXT, beat_symbol(label), "")

    def add_alarm(self, alarm: dict, action: str) -> None:
        """An alarm's change: a rhythm annotation where it names a rhythm (at its onset when
        raised; back to the rhythm still alarmed, or ``(N``, when cleared), and a note."""
        kind, aid = alarm["alarm"], alarm["id"]
        if action == "raised" and kind in RHYTHM_AUX and alarm["category"] == "physiological":
            self._rhythms[aid] = RHYTHM_AUX[kind]
            self._add(self._at(alarm["onset_s"]), EVENT_EXT, "+", RHYTHM_AUX[kind])
        elif action == "cleared" and aid in self._rhythms:
            del self._rhythms[aid]
            rest = list(self._rhythms.values())
            self._add(self._at(alarm.get("cleared_s")), EVENT_EXT, "+", rest[-1] if rest else NORMAL_RHYTHM)
        where = {"raised": alarm["raised_s"], "cleared": alarm.get("cleared_s")}.get(action)
        who = alarm.get("acknowledged_by") if action == "acknowledged" else alarm.get("silenced_by")
        text = f"alarm {kind} {action}" + (f" by {who}" if action in ("acknowledged", "silenced") else "")
        self._note(self._at(where), f"{text}: {alarm['priority']} {alarm['category']}: {alarm['text']}")

    def add_event(self, level: str, code: str, text: str) -> None:
        self._note(self._at(None), f"{level} {code}: {text}")

    def add_verdict(self, start: int, label: str, probability: float) -> None:
        """The rhythm model's verdict, as a note when it changes."""
        if label != self._verdict:
            self._verdict = label
            self._note(self.archive_index(start), f"rhythm model {label} {probability:.2f}")

    def _segment_of(self, index: int) -> str | None:
        for name, (start, n, _) in self._segments.items():
            if start <= index < start + n:
                return name
        return None

    def _due(self, segment: str) -> bool:
        start, n, _ = self._segments[segment]
        return start + n + self._lag <= self.position

    def _flush_due_annotations(self, everything: bool = False) -> None:
        """Merge what came for closed segments after they closed into their files: for those
        the stream is far enough past (all with ``everything``), and at once for those past
        their settling time already."""
        self._late = False
        due = {s for s in self._settling if everything or self._due(s)}
        written_end = self._written_end()
        targets = set(due)
        for p in self._pending:
            if p[0] < written_end:
                seg = self._segment_of(p[0])
                if seg is not None:
                    targets.add(seg)
        self._write_pending(targets, merge=True)
        self._settling = [s for s in self._settling if s not in due]
        # Keep the map of closed segments short: annotations older than a few segments are
        # not expected any more (the rhythm onset of a long-held alarm reaches a few back).
        while len(self._segments) > 8 and next(iter(self._segments)) not in self._settling:
            self._segments.pop(next(iter(self._segments)))

    def _write_pending(self, segments: set[str], merge: bool) -> None:
        """Write the pending annotations of closed ``segments`` into their files (added to what
        the files hold with ``merge``); drop those that fall in no segment kept (a gap, a lost
        segment, one too old to be touched again)."""
        if not segments and not self._late:
            return
        items: dict[str, list[tuple[int, str, str, str]]] = {}
        keep = []
        for p in self._pending:
            if p[0] >= self._open_start:
                keep.append(p)  # the open segment's
                continue
            seg = self._segment_of(p[0])
            if seg is None:
                continue
            if seg in segments:
                items.setdefault(seg, []).append(p)
            else:
                keep.append(p)
        self._pending = keep
        for seg, mine in items.items():
            start = self._segments[seg][0]
            for ext in (BEAT_EXT, EVENT_EXT):
                new: list[Entry] = [(p[0] - start, p[2], p[3]) for p in mine if p[1] == ext]
                if new:
                    old = read_annotations(self.folder, seg, ext) if merge else []
                    write_annotations(self.folder, seg, ext, self.spec.fs, old + new)

    def close(self, now: float) -> None:
        """Write what is open (a short last segment) and every annotation; release the folder."""
        try:
            self.close_segment(now)
            self._flush_due_annotations(everything=True)
        finally:
            os.close(self._lock)
