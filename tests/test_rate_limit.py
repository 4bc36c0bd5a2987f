"""The control socket's token buckets, on a clock the test moves."""

from __future__ import annotations

from ecgmon.monitor.rate_limit import RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_rate_per_client() -> None:
    clock = Clock()
    limiter = RateLimiter(rate_per_s=2.0, burst=5, clock=clock)
    assert [limiter.allow("a") for _ in range(7)] == [True] * 5 + [False] * 2
    assert limiter.allow("b")  # another client has its own bucket
    clock.now += 1.0  # two tokens back, no more than that
    assert [limiter.allow("a") for _ in range(3)] == [True, True, False]
    clock.now += 3600.0  # never more than the burst
    assert sum(limiter.allow("a") for _ in range(10)) == 5


def test_a_request_needs_a_token_from_every_key_and_takes_none_when_refused() -> None:
    limiter = RateLimiter(rate_per_s=0.0, burst=2, clock=Clock())
    # One key name (nurse1) over two connections: the key's bucket limits both.
    assert limiter.allow("conn1", "nurse1") and limiter.allow("conn2", "nurse1")
    assert not limiter.allow("conn3", "nurse1")
    assert limiter.allow("conn3") and limiter.allow("conn3")  # the refusal took nothing from conn3


def test_buckets_are_bounded() -> None:
    limiter = RateLimiter(rate_per_s=0.0, burst=1, clock=Clock(), max_clients=3)
    for client in range(1000):
        assert limiter.allow(client)
    assert len(limiter._buckets) == 3
