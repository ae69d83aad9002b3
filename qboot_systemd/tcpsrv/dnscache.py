"""Answers remembered for their TTL, and one question in flight per name, for the in-core
rblsmtpd: a flood from one listed address asks DNS once, not once per connection.

Both tables are bounded: the cache forgets its least recently used entry past
max_entries, and past max_in_flight distinct questions a new one fails at once (a
temporary lookup error, which rblsmtpd's -c / -C decide about).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from .dns import Answer, DnsQuery, Resolver

MAX_ENTRIES = 20000
MAX_IN_FLIGHT = 512
MAX_TTL = 86400
NEGATIVE_TTL_CAP = 3600  # an answer without records and with no SOA: not remembered

Done = Callable[[Answer | None], None]


def cache_seconds(answer: Answer, qtype: int) -> int:
    """How long an answer stays good: its records' least TTL, or the SOA's for none."""
    ttls = [r.ttl for r in answer.records if r.rtype == qtype]
    if ttls:
        return min(min(ttls), MAX_TTL)
    if answer.negative_ttl is not None:
        return min(answer.negative_ttl, NEGATIVE_TTL_CAP)
    return 0


class CachingResolver:
    def __init__(
        self,
        resolver: Resolver,
        max_entries: int = MAX_ENTRIES,
        max_in_flight: int = MAX_IN_FLIGHT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.resolver = resolver
        self.max_entries = max_entries
        self.max_in_flight = max_in_flight
        self._clock = clock
        self._cache: OrderedDict[tuple[bytes, int], tuple[float, Answer]] = OrderedDict()
        self._in_flight: dict[tuple[bytes, int], tuple[DnsQuery, list[Done]]] = {}
        self.hits = 0
        self.misses = 0

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def __len__(self) -> int:
        return len(self._cache)

    def cached(self, name: bytes, qtype: int) -> Answer | None:
        key = (name.lower(), qtype)
        entry = self._cache.get(key)
        if entry is None:
            return None
        if entry[0] <= self._clock():
            del self._cache[key]
            return None
        self._cache.move_to_end(key)
        return entry[1]

    def ask(self, name: bytes, qtype: int, deadline: float, done: Done) -> None:
        """done(answer or None) runs once, maybe before ask() returns."""
        answer = self.cached(name, qtype)
        if answer is not None:
            self.hits += 1
            done(answer)
            return
        self.misses += 1
        key = (name.lower(), qtype)
        flying = self._in_flight.get(key)
        if flying is not None:
            flying[1].append(done)
            return
        if len(self._in_flight) >= self.max_in_flight:
            done(None)
            return
        waiters = [done]
        query = self.resolver.query(name, qtype, deadline, lambda a: self._answered(key, a))
        self._in_flight[key] = (query, waiters)
        query.start()

    def _answered(self, key: tuple[bytes, int], answer: Answer | None) -> None:
        _, waiters = self._in_flight.pop(key, (None, []))
        if answer is not None and not answer.truncated:
            seconds = cache_seconds(answer, key[1])
            if seconds > 0:
                self._cache[key] = (self._clock() + seconds, answer)
                self._cache.move_to_end(key)
                while len(self._cache) > self.max_entries:
                    self._cache.popitem(last=False)
        for done in waiters:
            done(answer)

    def forget(self) -> None:
        self._cache.clear()

    def close(self) -> None:
        for query, _ in self._in_flight.values():
            query.close()
        self._in_flight.clear()
        self._cache.clear()
