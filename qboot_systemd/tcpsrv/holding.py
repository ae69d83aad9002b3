"""Connections held before their session: accepted, waiting for what decides them (names,
ident, a blocklist answer), holding no -c slot.

Held connections are bounded per client (an IPv4 address, an IPv6 /64) and in total. A
client at its own bound gets no more held: its next connection is dropped. When the total
is reached, a newcomer is still held, and the connection dropped for it is the oldest of
the client holding the most: whoever floods pays, and a client with one connection (whose
answer is cached or quick) is never the one turned away nor the one that waits.
"""

from __future__ import annotations

import resource
from enum import Enum

MAX_HELD = 1024  # in total, or a quarter of the fd limit if that is less


def held_cap() -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_HELD
    return max(1, min(MAX_HELD, soft // 4))


class Hold(Enum):
    HELD = "held"
    CLIENT_FULL = "client full"  # this client holds its bound: drop the newcomer


class HoldTable:
    """Who is held, by client key, oldest first. Pure bookkeeping: the caller closes."""

    def __init__(self, per_client: int, total: int) -> None:
        self.per_client = max(1, per_client)
        self.total = max(1, total)
        self._by_key: dict[str, dict[int, None]] = {}  # key -> idents, oldest first
        self._key_of: dict[int, str] = {}

    def __len__(self) -> int:
        return len(self._key_of)

    def count(self, key: str) -> int:
        held = self._by_key.get(key)
        return len(held) if held else 0

    def hold(self, ident: int, key: str) -> tuple[Hold, int | None]:
        """Hold ident for key: (HELD, the ident to drop for it or None), or CLIENT_FULL."""
        if self.count(key) >= self.per_client:
            return Hold.CLIENT_FULL, None
        evicted = self._evict() if len(self._key_of) >= self.total else None
        self._by_key.setdefault(key, {})[ident] = None
        self._key_of[ident] = key
        return Hold.HELD, evicted

    def release(self, ident: int) -> None:
        key = self._key_of.pop(ident, None)
        if key is None:
            return
        held = self._by_key[key]
        del held[ident]
        if not held:
            del self._by_key[key]

    def _evict(self) -> int:
        # The heaviest client; of those that hold as many, the one whose oldest is oldest.
        heaviest = max(self._by_key.values(), key=lambda held: (len(held), -next(iter(held))))
        victim = next(iter(heaviest))
        self.release(victim)
        return victim
