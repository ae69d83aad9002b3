"""The in-core rblsmtpd: screening connections in the server's own loop.

A connection whose chain starts with rblsmtpd waits here, without a process, for its
blocklist lookups (non-blocking, cached by TTL, one question per name in flight). A clean
client goes back to the server, which runs the rest of the chain: one exec less. A listed
client gets rblsmtpd's dialogue from a ListedSession in the same loop: no fork, no -c
slot, its own bound (MAX_SESSIONS; past it a client gets the answer line only, as with
-t 0), a bounded output buffer and rblsmtpd's timeout.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import itertools
import resource
import select
import socket
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from . import dns, rbl
from .dnscache import MAX_ENTRIES, CachingResolver, Waiter, cache_seconds
from .rblcommand import RblConfig
from .reactor import Reactor, Timer

MAX_SESSIONS = 512
OUTPUT_CAP = 4096  # unsent replies past this: stop reading until the client reads
READ_SIZE = 4096
# How long a connection waits for its lookups: djb's resolver gives up on one server after
# 1+3+11+45 s, so rblsmtpd waits that long per source at worst.
LOOKUP_DEADLINE = 60.0


def session_cap() -> int:
    """MAX_SESSIONS, or a quarter of the fds we may open if that is less."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_SESSIONS
    return max(1, min(MAX_SESSIONS, soft // 4))


class ListedSession:
    """rblsmtpd's conversation with one listed client; on_close() runs once at the end."""

    def __init__(
        self,
        reactor: Reactor,
        fd: int,
        line: bytes,
        timeout: int,
        on_close: Callable[[ListedSession], None],
    ) -> None:
        self._reactor = reactor
        self._sock = socket.socket(fileno=fd)
        self._dialogue = rbl.Dialogue(line)
        self._timeout = timeout
        self._on_close: Callable[[ListedSession], None] | None = on_close
        self._out = bytearray()
        self._timer: Timer | None = None
        self._events = 0

    def start(self, answer_only: bool = False) -> None:
        self._sock.setblocking(False)
        if answer_only or self._timeout == 0:
            with contextlib.suppress(OSError):
                self._sock.send(self._dialogue.reject)
            self.close()
            return
        self._timer = self._reactor.call_at(time.monotonic() + self._timeout, self.close)
        self._out += rbl.GREETING
        self._flush()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._events:
            self._reactor.unwatch(self._sock.fileno())
            self._events = 0
        self._sock.close()
        on_close, self._on_close = self._on_close, None
        if on_close is not None:
            on_close(self)

    def _want(self, events: int) -> None:
        if events != self._events:
            if events:
                self._reactor.watch(self._sock.fileno(), events, self._ready)
            else:
                self._reactor.unwatch(self._sock.fileno())
            self._events = events

    def _ready(self, events: int) -> None:
        if events & select.EPOLLOUT:
            self._flush()
            if self._on_close is None:
                return
        if events & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR) and not (
            self._dialogue.over or len(self._out) > OUTPUT_CAP
        ):
            self._read()

    def _read(self) -> None:
        try:
            data = self._sock.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.close()
            return
        if not data:
            self.close()  # rblsmtpd: end of input ends it without a word
            return
        self._out += self._dialogue.feed(data)
        self._flush()

    def _flush(self) -> None:
        while self._out:
            try:
                sent = self._sock.send(self._out)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as error:
                if error.errno != errno.EINTR:
                    self.close()
                    return
                continue
            del self._out[:sent]
        if not self._out and self._dialogue.over:
            self.close()
            return
        events = 0
        if self._out:
            events |= select.EPOLLOUT
        if not self._dialogue.over and len(self._out) <= OUTPUT_CAP:
            events |= select.EPOLLIN
        self._want(events)


@dataclass
class Waiting:
    """A connection waiting for its lookups."""

    ident: int
    fd: int
    remote_ip: str  # TCPREMOTEIP as the child would see it
    resume: Callable[[rbl.Verdict], None]
    results: list[rbl.Result] = field(default_factory=list)
    starting: bool = True
    good_for: float = float("inf")  # seconds until the first of its answers expires
    asked: list[Waiter] = field(default_factory=list)  # its places on shared questions


class RblScreen:
    """Decides for connections and runs the listed ones' dialogues; the server calls
    screen() per connection and start()/close()/cut_short() around its loop."""

    def __init__(
        self,
        config: RblConfig,
        base_env: Mapping[str, str],
        resolver: Callable[[], dns.Resolver],
        max_sessions: int | None = None,
    ) -> None:
        self.config = config
        self._base_env = base_env
        self._get_resolver = resolver
        self._cache: CachingResolver | None = None
        self._waiting: dict[int, Waiting] = {}
        self._sessions: set[ListedSession] = set()
        # Verdicts by TCPREMOTEIP, kept as long as the answers they came from: a flood
        # from one address costs a dict lookup per connection. Bounded as the cache is.
        self._verdicts: OrderedDict[str, tuple[float, rbl.Verdict]] = OrderedDict()
        self._ids = itertools.count(1)
        self.max_sessions = session_cap() if max_sessions is None else max_sessions
        self.listed = 0
        self.accepted = 0

    @property
    def active(self) -> bool:
        """Anything that needs the reactor's timers."""
        return bool(self._waiting or self._sessions)

    @property
    def cache(self) -> CachingResolver:
        if self._cache is None:
            self._cache = CachingResolver(self._get_resolver())
        return self._cache

    def verdict_now(self, extra: Mapping[str, str]) -> rbl.Verdict | None:
        """The verdict without DNS (RBLSMTPD set, or no sources), or None."""
        value = rbl.environment_value(extra, self._base_env, "RBLSMTPD")
        found = rbl.from_environment(value)
        if found is not None:
            return found
        return rbl.ACCEPT if not self.config.sources else None

    def known_verdict(self, extra: Mapping[str, str]) -> rbl.Verdict | None:
        """The verdict without asking DNS now (RBLSMTPD, no sources, or one remembered for
        this TCPREMOTEIP), or None."""
        found = self.verdict_now(extra)
        if found is not None:
            return found
        ip = rbl.environment_value(extra, self._base_env, "TCPREMOTEIP") or ""
        known = self._verdicts.get(ip)
        if known is None:
            return None
        if known[0] > time.monotonic():
            return known[1]
        del self._verdicts[ip]
        return None

    def screen(
        self, fd: int, extra: Mapping[str, str], resume: Callable[[rbl.Verdict], None]
    ) -> int | None:
        """resume(verdict) runs once, maybe before screen() returns (then None; else the
        number drop() takes to give up waiting, resume not called)."""
        found = self.known_verdict(extra)
        if found is not None:
            resume(found)
            return None
        ip = rbl.environment_value(extra, self._base_env, "TCPREMOTEIP") or ""
        sources = self.config.sources
        waiting = Waiting(next(self._ids), fd, ip, resume, [rbl.PENDING] * len(sources))
        self._waiting[waiting.ident] = waiting
        deadline = time.monotonic() + LOOKUP_DEADLINE
        for index, source in enumerate(sources):
            done = functools.partial(self._answered, waiting.ident, index)
            try:
                name = dns.encode_name(rbl.query_name(ip, source.base))
            except (ValueError, UnicodeError):
                done(None)  # a name DNS cannot carry: a failed lookup
                continue
            qtype = dns.TYPE_A if source.anti else dns.TYPE_TXT
            waiting.asked.append(self.cache.ask(name, qtype, deadline, done))
        waiting.starting = False
        self._check(waiting)
        return waiting.ident if waiting.ident in self._waiting else None

    def drop(self, ident: int) -> None:
        """A waiting connection given up (its fd is the caller's to close)."""
        waiting = self._waiting.pop(ident, None)
        if waiting is not None:
            for asked in waiting.asked:
                asked.close()

    def _answered(self, ident: int, index: int, answer: dns.Answer | None) -> None:
        waiting = self._waiting.get(ident)
        if waiting is None:
            return
        source = self.config.sources[index]
        result: rbl.Result
        if answer is not None:
            qtype = dns.TYPE_A if source.anti else dns.TYPE_TXT
            waiting.good_for = min(waiting.good_for, cache_seconds(answer, qtype))
        if answer is None:
            result = None
        elif not source.anti:
            result = b"".join(answer.texts())
        else:
            result = any(r.rtype == dns.TYPE_A and len(r.data) == 4 for r in answer.records)
        waiting.results[index] = result
        if not waiting.starting:
            self._check(waiting)

    def _check(self, waiting: Waiting) -> None:
        found = rbl.decide(self.config.sources, waiting.results.__getitem__)
        if found is rbl.PENDING:
            return
        assert isinstance(found, rbl.Verdict)
        del self._waiting[waiting.ident]
        if None not in waiting.results and waiting.good_for > 0:  # failures: asked again
            self._verdicts[waiting.remote_ip] = (time.monotonic() + waiting.good_for, found)
            self._verdicts.move_to_end(waiting.remote_ip)
            while len(self._verdicts) > MAX_ENTRIES:
                self._verdicts.popitem(last=False)
        waiting.resume(found)

    def converse(self, fd: int, line: bytes) -> None:
        """Take over a listed client's fd for rblsmtpd's dialogue."""
        self.listed += 1
        session = ListedSession(
            self.cache.resolver.reactor, fd, line, self.config.timeout, self._sessions.discard
        )
        full = len(self._sessions) >= self.max_sessions
        if not full:
            self._sessions.add(session)
        session.start(answer_only=full)

    def forget(self) -> None:
        """SIGHUP: answers and verdicts are asked again (new servers, a fixed listing)."""
        self._verdicts.clear()
        if self._cache is not None:
            self._cache.forget()

    def cut_short(self) -> None:
        """Shutting down: waiting clients go on as if clean (rblsmtpd's -C), dialogues end."""
        for waiting in list(self._waiting.values()):
            del self._waiting[waiting.ident]
            waiting.resume(rbl.ACCEPT)
        for session in list(self._sessions):
            session.close()

    def close(self) -> None:
        self.cut_short()
        if self._cache is not None:
            self._cache.close()
