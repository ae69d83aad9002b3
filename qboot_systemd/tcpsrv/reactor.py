"""A small event loop for many short network exchanges (ident, DNS), run by another loop.

It owns an epoll set whose fd the server's own loop watches, plus a heap of timers; the
server calls run_ready() when that fd is readable and run_timers() when next_deadline()
has passed. Everything runs on the server's thread: no locks, no worker threads.
"""

from __future__ import annotations

import heapq
import itertools
import select
import time
from collections.abc import Callable


class Timer:
    """A callback due at a moment; cancel() makes it a no-op."""

    __slots__ = ("callback", "when")

    def __init__(self, when: float, callback: Callable[[], None] | None) -> None:
        self.when = when
        self.callback = callback

    def cancel(self) -> None:
        self.callback = None


class Reactor:
    def __init__(self) -> None:
        self._poller: select.epoll | None = None
        self._handlers: dict[int, Callable[[int], None]] = {}
        self._timers: list[tuple[float, int, Timer]] = []
        self._order = itertools.count()

    def start(self) -> None:
        if self._poller is None:
            self._poller = select.epoll()

    def fileno(self) -> int:
        assert self._poller is not None, "start() first"
        return self._poller.fileno()

    def close(self) -> None:
        if self._poller is not None:
            self._poller.close()
            self._poller = None
        self._handlers.clear()
        self._timers.clear()

    # --- fds ---------------------------------------------------------------------------
    def watch(self, fd: int, events: int, handler: Callable[[int], None]) -> None:
        """handler(events) runs when fd is ready; watching a watched fd changes its events."""
        assert self._poller is not None, "start() first"
        if fd in self._handlers:
            self._poller.modify(fd, events)
        else:
            self._poller.register(fd, events)
        self._handlers[fd] = handler

    def unwatch(self, fd: int) -> None:
        if self._handlers.pop(fd, None) is not None and self._poller is not None:
            self._poller.unregister(fd)

    def run_ready(self) -> None:
        if self._poller is None:
            return
        for fd, events in self._poller.poll(0):
            handler = self._handlers.get(fd)  # an earlier handler may have unwatched it
            if handler is not None:
                handler(events)

    # --- timers --------------------------------------------------------------------------
    def call_at(self, when: float, callback: Callable[[], None]) -> Timer:
        timer = Timer(when, callback)
        heapq.heappush(self._timers, (when, next(self._order), timer))
        return timer

    def next_deadline(self) -> float | None:
        while self._timers and self._timers[0][2].callback is None:
            heapq.heappop(self._timers)
        return self._timers[0][0] if self._timers else None

    def run_timers(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        while self._timers and self._timers[0][0] <= now:
            _, _, timer = heapq.heappop(self._timers)
            callback, timer.callback = timer.callback, None
            if callback is not None:
                callback()

    @property
    def idle(self) -> bool:
        return not self._handlers and self.next_deadline() is None
