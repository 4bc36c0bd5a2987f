"""Token buckets by client, for the control socket: each client may send ``burst`` requests at
once, then ``rate_per_s`` a second; what is over is refused, not queued."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
import time


class RateLimiter:
    """One bucket per key (a ROUTER identity, an authenticated key name). At most
    ``max_clients`` buckets are kept: the longest unseen is forgotten first, which costs that
    client nothing but a fresh, full bucket (its own would have refilled by then anyway)."""

    def __init__(
        self,
        rate_per_s: float,
        burst: float,
        clock: Callable[[], float] = time.monotonic,
        max_clients: int = 4096,
    ) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.clock = clock
        self.max_clients = max_clients
        self._buckets: OrderedDict[Hashable, tuple[float, float]] = OrderedDict()  # key -> (tokens, when)

    def allow(self, *keys: Hashable) -> bool:
        """Take one token from the bucket of every key, if each has one; else take none."""
        now = self.clock()
        levels = []
        for key in keys:
            tokens, when = self._buckets.pop(key, (self.burst, now))
            levels.append((key, min(self.burst, tokens + (now - when) * self.rate_per_s)))
        ok = all(tokens >= 1.0 for _, tokens in levels)
        for key, tokens in levels:
            self._buckets[key] = (tokens - 1.0 if ok else tokens, now)
        while len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)
        return ok
