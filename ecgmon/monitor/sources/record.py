"""A WFDB record replayed as a live stream: its chosen lead and the lead beside it, paced to the
monotonic clock."""

from __future__ import annotations

import re
import weakref
from typing import AsyncIterator

from ecgmon.chunk import Chunk
from ecgmon.config import Config, DataConfig
from ecgmon.monitor.sources.base import SourceError
from ecgmon.rates import ecg_rate_problem
from ecgmon.replay.pacing import Pacer
from ecgmon.replay.records import Record, RecordError, load_record, record_stream_id, resolve_record

_STREAM_ID = re.compile(r"^[A-Za-z0-9_-]+$")

# Records replayed by several sources of one process are read once and shared (200 beds
# replaying 27 MIT-BIH records held 200 records and 200 copies of their leads, 10 MB a bed):
# the samples are made read-only, and the record lives as long as a source replays it.
_SHARED: weakref.WeakValueDictionary[tuple, Record] = weakref.WeakValueDictionary()


def shared_record(spec: str, data: DataConfig) -> Record:
    """``load_record(spec, data, annotations=False)``, the same object for the same spec and
    files while any source holds it; read again when the header or signal file changed."""
    base = resolve_record(spec, data)
    try:
        stats = [(f.name, f.stat()) for f in sorted(base.parent.glob(base.name + ".*"))]
    except OSError:  # a file went away meanwhile: read it unshared, load_record says what is wrong
        return load_record(spec, data, annotations=False)
    key = (spec.strip(), str(base), tuple((name, st.st_mtime_ns, st.st_size) for name, st in stats))
    record = _SHARED.get(key)
    if record is None:
        record = load_record(spec, data, annotations=False)
        record.signal.flags.writeable = False  # shared: no source may alter another's samples
        _SHARED[key] = record
    return record


class RecordSource:
    """Replays channel ``config.replay.channel`` of record ``spec`` in chunks of ``chunk_s``,
    with the record's second lead (``Record.second_channel``) as the chunks' second column when
    it has one and ``replay.second_lead`` is on: beat models may use it, everything else reads
    the first.

    The record is loaded (and downloaded if need be) in the constructor, so a bad spec or a
    rate the detector does not support is reported before anything starts. A live replay
    reads the samples only: the reference annotations are for evaluators, which load the
    record themselves and pass it as ``record`` (a corrupt ``.atr`` must not stop a replay).
    """

    def __init__(
        self,
        spec: str,
        config: Config,
        stream: str | None = None,
        record: Record | None = None,
    ) -> None:
        self.spec = spec
        self.config = config
        try:
            self.record = record if record is not None else shared_record(spec, config.data)
            self.channel = self.record.channel_index(config.replay.channel)
        except RecordError as err:
            raise SourceError(str(err)) from None
        problem = ecg_rate_problem(self.record.fs)
        if problem:
            raise SourceError(f"record {spec}: {problem}")
        self.stream = stream if stream is not None else record_stream_id(spec)
        if not _STREAM_ID.match(self.stream):
            raise SourceError(
                f"stream id '{self.stream}' may hold only letters, digits, '-' and '_'"
            )
        if self.record.n_samples == 0:
            raise SourceError(f"record {spec} has no samples to replay")
        self.fs = self.record.fs
        self.lead = self.record.channels[self.channel]
        second = self.record.second_channel(self.channel) if config.replay.second_lead else None
        self.columns = [self.channel] + ([] if second is None else [second])
        self.channels = tuple(self.record.channels[c] for c in self.columns)  # the chunks' channel names
        # The replayed columns, contiguous so that each chunk is a cheap slice: the record's own
        # array when it is a shared read-only one and they are all its columns in order
        # (MIT-BIH's two leads), else a copy (a record passed in stays the caller's to change).
        signal = self.record.signal
        if not signal.flags.writeable and self.columns == list(range(signal.shape[1])) and signal.flags.c_contiguous:
            self._samples = signal
        else:
            self._samples = signal[:, self.columns].copy()

    @property
    def chunk_samples(self) -> int:
        return max(1, round(self.config.replay.chunk_s * self.fs))

    async def chunks(self) -> AsyncIterator[Chunk]:
        """Chunks until the record ends, or forever with ``replay.loop``.

        ``start`` keeps counting across loops, so the stream never jumps back in time.
        Each chunk is yielded once its last sample is due at ``replay.speed``.
        """
        pacer = Pacer(self.fs, self.config.replay.speed)
        step = self.chunk_samples
        total = self._samples.shape[0]
        offset = 0
        while True:
            for pos in range(0, total, step):
                block = self._samples[pos : pos + step]
                start = offset + pos
                await pacer.wait_until(start + block.shape[0])
                # A copy: consumers own their chunk and may not alter the record.
                yield Chunk(self.stream, self.fs, self.channels, start, block.copy())
            if not self.config.replay.loop:
                return
            offset += total
