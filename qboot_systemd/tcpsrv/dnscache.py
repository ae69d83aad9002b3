"""Answers remembered for their TTL, and one question in flight per name: a flood from one
address asks DNS once, not once per connection (the in-core rblsmtpd's blocklist lookups,
and the server's reverse names).

Both tables are bounded: the cache forgets its least recently used entry past
max_entries, and past max_in_flight distinct questions a new one fails at once (a
temporary lookup error). A question whose every asker has gone (closed its Waiter) is
dropped, so what is in flight never outgrows who is waiting. A failed question (no
answer by its deadline, every server failing) is remembered for failure_seconds.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from .dns import TYPE_PTR, Answer, DnsQuery, Resolver, reverse_name, to_dotted

MAX_ENTRIES = 20000
MAX_IN_FLIGHT = 512
MAX_TTL = 86400
NEGATIVE_TTL_CAP = 3600  # an answer without records and with no SOA: not remembered

Done = Callable[[Answer | None], None]
Key = tuple[bytes, int]


def cache_seconds(answer: Answer, qtype: int) -> int:
    """How long an answer stays good: its records' least TTL, or the SOA's for none."""
    ttls = [r.ttl for r in answer.records if r.rtype == qtype]
    if ttls:
        return min(min(ttls), MAX_TTL)
    if answer.negative_ttl is not None:
        return min(answer.negative_ttl, NEGATIVE_TTL_CAP)
    return 0


class Waiter:
    """One asker's place on a shared question, shaped as a DnsQuery (start, close) so a
    connection's lookups take either: close() leaves the question without done()."""

    __slots__ = ("_cache", "_deadline", "_key", "_name", "done")

    def __init__(
        self, cache: CachingResolver, name: bytes, qtype: int, deadline: float, done: Done
    ) -> None:
        self._cache = cache
        self._name = name
        self._key: Key = (name.lower(), qtype)
        self._deadline = deadline
        self.done: Done | None = done

    def start(self) -> None:
        self._cache.join(self._name, self._key, self._deadline, self)

    def close(self) -> None:
        if self.done is not None:
            self.done = None
            self._cache.leave(self._key, self)

    def answered(self, answer: Answer | None) -> None:
        done, self.done = self.done, None
        if done is not None:
            done(answer)


class CachingResolver:
    def __init__(
        self,
        resolver: Resolver,
        max_entries: int = MAX_ENTRIES,
        max_in_flight: int = MAX_IN_FLIGHT,
        clock: Callable[[], float] = time.monotonic,
        failure_seconds: float = 0.0,
    ) -> None:
        self.resolver = resolver
        self.max_entries = max_entries
        self.max_in_flight = max_in_flight
        self.failure_seconds = failure_seconds
        self._clock = clock
        # None for a remembered failure
        self._cache: OrderedDict[Key, tuple[float, Answer | None]] = OrderedDict()
        self._in_flight: dict[Key, tuple[DnsQuery, list[Waiter]]] = {}
        self.hits = 0
        self.misses = 0

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def __len__(self) -> int:
        return len(self._cache)

    def _remembered(self, key: Key) -> tuple[bool, Answer | None]:
        entry = self._cache.get(key)
        if entry is None:
            return False, None
        if entry[0] <= self._clock():
            del self._cache[key]
            return False, None
        self._cache.move_to_end(key)
        return True, entry[1]

    def remembered_host(self, ip: str) -> tuple[bool, str | None]:
        """(True, the first PTR name as text or None) when ip's reverse name is known."""
        known, answer = self._remembered((reverse_name(ip).lower(), TYPE_PTR))
        if not known or answer is None:
            return known, None
        found = answer.names(TYPE_PTR)
        return True, to_dotted(found[0]) if found else None

    def query(self, name: bytes, qtype: int, deadline: float, done: Done) -> Waiter:
        """A place on the question, not taken yet: start() takes it (done may run within
        start()), close() gives it up."""
        return Waiter(self, name, qtype, deadline, done)

    def ask(self, name: bytes, qtype: int, deadline: float, done: Done) -> Waiter:
        """done(answer or None) runs once, maybe before ask() returns."""
        waiter = self.query(name, qtype, deadline, done)
        waiter.start()
        return waiter

    def join(self, name: bytes, key: Key, deadline: float, waiter: Waiter) -> None:
        known, answer = self._remembered(key)
        if known:
            self.hits += 1
            waiter.answered(answer)
            return
        self.misses += 1
        flying = self._in_flight.get(key)
        if flying is not None:
            flying[1].append(waiter)
            return
        if len(self._in_flight) >= self.max_in_flight:
            waiter.answered(None)
            return
        waiters = [waiter]
        query = self.resolver.query(name, key[1], deadline, lambda a: self._answered(key, a))
        self._in_flight[key] = (query, waiters)
        query.start()

    def leave(self, key: Key, waiter: Waiter) -> None:
        flying = self._in_flight.get(key)
        if flying is None:
            return
        query, waiters = flying
        if waiter in waiters:
            waiters.remove(waiter)
        if not waiters:  # nobody waits: the question goes, and its socket with it
            del self._in_flight[key]
            query.close()

    def _answered(self, key: Key, answer: Answer | None) -> None:
        _, waiters = self._in_flight.pop(key, (None, []))
        if answer is None or answer.truncated:
            self._remember(key, None, self.failure_seconds)
        else:
            self._remember(key, answer, cache_seconds(answer, key[1]))
        for waiter in waiters:
            waiter.answered(answer)

    def _remember(self, key: Key, answer: Answer | None, seconds: float) -> None:
        if seconds <= 0:
            return
        self._cache[key] = (self._clock() + seconds, answer)
        self._cache.move_to_end(key)
        while len(self._cache) > self.max_entries:
            self._cache.popitem(last=False)

    def forget(self) -> None:
        self._cache.clear()

    def close(self) -> None:
        for query, _ in self._in_flight.values():
            query.close()
        self._in_flight.clear()
        self._cache.clear()
