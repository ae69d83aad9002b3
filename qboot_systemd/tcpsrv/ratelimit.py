"""New connections per minute per client address (IPv6: per /64), as token buckets.

Each address has a bucket of `per_minute` tokens that refills at per_minute/60 a second; a
connection takes one, and finds none when the address has opened more than per_minute in
the last minute (bursts included). The table holds at most max_entries addresses: past
that the one seen longest ago is forgotten (it would have had a full bucket again soon),
so a flood of distinct addresses costs fixed memory.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from .lookups import lookup_key

MAX_ENTRIES = 65536
REPLY_421 = b"421 too many connections from your address; try again later\r\n"


class RateLimiter:
    def __init__(
        self,
        per_minute: int,
        max_entries: int = MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if per_minute < 1:
            raise ValueError("per_minute must be at least 1")
        self.per_minute = per_minute
        self.rate = per_minute / 60.0
        self.max_entries = max_entries
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # tokens, when

    def __len__(self) -> int:
        return len(self._buckets)

    def allow(self, ip: str) -> bool:
        """Take a token for ip's address (or /64); False when it has none left."""
        key = lookup_key(ip)
        now = self._clock()
        entry = self._buckets.get(key)
        if entry is None:
            tokens = float(self.per_minute)
        else:
            tokens, then = entry
            tokens = min(float(self.per_minute), tokens + (now - then) * self.rate)
            self._buckets.move_to_end(key)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        self._buckets[key] = (tokens, now)
        if len(self._buckets) > self.max_entries:
            self._buckets.popitem(last=False)
        return allowed
