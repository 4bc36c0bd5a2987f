"""A WFDB record replayed as a live stream: its chosen lead and the lead beside it, paced to the
monotonic clock."""

from __future__ import annotations

import re
from typing import AsyncIterator

from ecgmon.chunk import Chunk
from ecgmon.config import Config
from ecgmon.monitor.sources.base import SourceError
from ecgmon.rates import ecg_rate_problem
from ecgmon.replay.pacing import Pacer
from ecgmon.replay.records import Record, RecordError, load_record, record_stream_id

_STREAM_ID = re.compile(r"^[A-Za-z0-9_-]+$")


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
            self.record = record if record is not None else load_record(spec, config.data, annotations=False)
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
        # A contiguous copy of the replayed columns, so each chunk is a cheap slice of it.
        self._samples = self.record.signal[:, self.columns].copy()

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
