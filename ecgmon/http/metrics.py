"""``GET /metrics``: the daemon's counters in the Prometheus text format.

Most figures are read at scrape time from what the ``status`` message says (publisher sent and
dropped, each stream's samples, beats and fault counters, each model batcher's batches,
items and latencies), so they can never disagree with it. What the status does not keep -
alarms raised by kind, gaps, events by code - is counted by ``MessageCounter`` from the
published messages themselves (``TappedPublisher``).
"""

from __future__ import annotations

from collections import Counter
import math
from typing import Any, Callable, Iterator

from prometheus_client import CollectorRegistry, Counter as PromCounter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ecgmon.schema import AlarmMessage, EventMessage, Message, StatusMessage


class MessageCounter:
    """Counts what the status message does not: alarms raised by kind, events by code."""

    def __init__(self) -> None:
        self.alarms: Counter[tuple[str, str, str]] = Counter()  # (stream, alarm, priority)
        self.events: Counter[tuple[str, str, str]] = Counter()  # (stream, code, level)

    def __call__(self, msg: Message) -> None:
        if isinstance(msg, AlarmMessage):
            if msg.state == "raised":
                self.alarms[(msg.stream, msg.alarm, msg.priority)] += 1
        elif isinstance(msg, EventMessage):
            self.events[(msg.stream, msg.code, msg.level)] += 1


class TappedPublisher:
    """A daemon's publisher that also shows every message to ``tap`` (the daemon itself stays
    unaware of the HTTP face); everything else is the publisher's own."""

    def __init__(self, publisher: Any, tap: Callable[[Message], None]) -> None:
        self._publisher = publisher
        self._tap = tap

    def publish(self, msg: Message) -> bool:
        sent = self._publisher.publish(msg)
        self._tap(msg)
        return sent

    def __getattr__(self, name: str) -> Any:
        return getattr(self._publisher, name)


def _finite(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


class DaemonCollector(Collector):
    """Prometheus families read from ``status()`` (a StatusMessage) and a MessageCounter."""

    def __init__(self, status: Callable[[], StatusMessage | None], counter: MessageCounter) -> None:
        self._status = status
        self._counter = counter

    def collect(self) -> Iterator[Metric]:
        status = self._status()
        if status is None:  # `ecgmon serve` alone, or the daemon not yet started
            return
        yield GaugeMetricFamily("ecgmon_uptime_seconds", "seconds since the daemon started", value=status.uptime_s)
        yield CounterMetricFamily("ecgmon_messages_published", "messages published since the start", value=status.sent)
        yield CounterMetricFamily("ecgmon_messages_dropped", "messages the publisher could not queue",
                                  value=status.dropped)
        samples = CounterMetricFamily("ecgmon_stream_samples", "samples processed per stream", labels=["stream", "lead"])
        beats = CounterMetricFamily("ecgmon_stream_beats", "beats (heart sounds) detected per stream",
                                    labels=["stream", "lead"])
        running = GaugeMetricFamily("ecgmon_stream_up", "1 while the stream runs, else 0", labels=["stream", "state"])
        faults = CounterMetricFamily("ecgmon_stream_faults", "the stream's source fault counters",
                                     labels=["stream", "fault"])
        for st in status.streams:
            samples.add_metric([st.stream, st.lead], st.samples)
            beats.add_metric([st.stream, st.lead], st.beats)
            running.add_metric([st.stream, st.state], 1.0 if st.state == "running" else 0.0)
            for key, n in sorted(st.faults.items()):
                faults.add_metric([st.stream, key], n)
        yield from (samples, beats, running, faults)
        gaps = CounterMetricFamily("ecgmon_stream_gaps", "discontinuities in a stream (bridged or spliced)",
                                   labels=["stream"])
        events = CounterMetricFamily("ecgmon_events", "events published, by stream, code and level",
                                     labels=["stream", "code", "level"])
        for (stream, code, level), n in sorted(self._counter.events.items()):
            events.add_metric([stream, code, level], n)
            if code == "discontinuity":
                gaps.add_metric([stream], n)
        alarms = CounterMetricFamily("ecgmon_alarms_raised", "alarms raised, by stream, kind and priority",
                                     labels=["stream", "alarm", "priority"])
        for (stream, alarm, priority), n in sorted(self._counter.alarms.items()):
            alarms.add_metric([stream, alarm, priority], n)
        yield from (gaps, events, alarms)
        batches = CounterMetricFamily("ecgmon_batcher_batches", "model calls of each inference batcher", labels=["model"])
        items = CounterMetricFamily("ecgmon_batcher_items", "items computed (mean batch size: items / batches)",
                                    labels=["model"])
        failed = CounterMetricFamily("ecgmon_batcher_failed_items", "items whose batch failed", labels=["model"])
        largest = GaugeMetricFamily("ecgmon_batcher_largest_batch", "largest batch so far", labels=["model"])
        pending = GaugeMetricFamily("ecgmon_batcher_pending", "items waiting for a batch", labels=["model"])
        latency = GaugeMetricFamily("ecgmon_batcher_latency_ms", "submit-to-result latency over the latest 4096 "
                                    "items", labels=["model", "quantile"])
        compute = GaugeMetricFamily("ecgmon_batcher_mean_compute_ms", "mean model-call time", labels=["model"])
        for key, s in sorted(status.models.items()):
            batches.add_metric([key], s.get("batches", 0))
            items.add_metric([key], s.get("items", 0))
            failed.add_metric([key], s.get("failed_items", 0))
            largest.add_metric([key], s.get("largest_batch", 0))
            pending.add_metric([key], s.get("pending", 0))
            for q in ("50", "95", "99"):
                v = _finite(s.get(f"latency_p{q}_ms"))
                if v is not None:
                    latency.add_metric([key, f"0.{q}"], v)
            v = _finite(s.get("mean_compute_ms"))
            if v is not None:
                compute.add_metric([key], v)
        yield from (batches, items, failed, largest, pending, latency, compute)


class HttpMetrics:
    """The face's own registry: the daemon's families and the HTTP analyses' counters."""

    def __init__(self, status: Callable[[], StatusMessage | None], counter: MessageCounter,
                 pool_busy: Callable[[], int]) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(DaemonCollector(status, counter))
        self.requests = PromCounter("ecgmon_http_analyses", "analysis requests by endpoint and status",
                                    ["endpoint", "status"], registry=self.registry)
        self.seconds = Histogram("ecgmon_http_analysis_seconds", "time from upload received to answer",
                                 ["endpoint"], registry=self.registry,
                                 buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300))
        class _Busy(Collector):
            def collect(self) -> Iterator[Metric]:
                yield GaugeMetricFamily("ecgmon_http_pool_busy", "analyses running or queued", value=pool_busy())

        self.registry.register(_Busy())
