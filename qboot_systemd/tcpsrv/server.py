"""The accept loop: limits, rules, spawning the chain, reaping, signals.

One thread runs the loop. Reverse DNS and ident are non-blocking sockets driven by the
same loop (lookups.py, a Reactor whose epoll fd the loop watches), and spawning runs in
spawner threads (posix_spawnp with the GIL released, see spawn.py), so nothing a client
does can stall the loop. A spawner thread books its child itself, under a lock; the loop
hears only of failed spawns and SIGCHLD, through a wake-up socket, and reaps with
waitpid as tcpserver does. Every thread switch and syscall costs the loop its share of the
GIL, so the common path has as few as possible.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import itertools
import os
import queue
import select
import signal
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO

from ..rules import Decision, RulesError, RuleSet
from . import logline, quick
from .dns import Resolver
from .environ import Endpoints, base_environment, connection_environment, ipv4_form
from .lookups import NO_NAMES, ConnectionLookups, Names, lookup_key
from .notify import Notifier
from .options import Options
from .ratelimit import REPLY_421, RateLimiter
from .rbl import RblConfig, Verdict, rblsmtpd_log
from .reactor import Reactor
from .screen import RblScreen
from .spawn import best_spawner

# accept() errors that mean "out of resources for now": back off instead of spinning.
_RESOURCE_ERRORS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
# Spawner threads: each waits in the kernel for one child's exec (see spawn.py).
# Measured at concurrency 10 and 50: 2 and 3 threads were slower, 6 no faster.
SPAWN_THREADS = 4
EXIT_DENY_STATUS = 100 << 8
EXIT_DROP_STATUS = 111 << 8
DEFAULT_ALLOW = Decision(False, (), None)  # no rules file, or no rule matched
# Lookups in flight per client address (IPv6: per /64): more connections from there go
# on at once without names, so one address cannot hold the -c slots for -t seconds.
MAX_LOOKUPS_PER_ADDRESS = 8


def lookups_per_address(limit: int) -> int:
    return max(1, min(MAX_LOOKUPS_PER_ADDRESS, limit // 4))


@dataclass
class Pending:
    """An accepted connection waiting for its lookups."""

    ident: int
    fd: int
    endpoints: Endpoints
    key: str  # lookup_key() of the client
    lookups: ConnectionLookups | None = None


@dataclass
class SpawnJob:
    fd: int
    client: str
    log_local: tuple[str | None, str, str]
    log_remote: tuple[str | None, str, str | None, str]
    pid: int = 0
    error: str | None = None


@dataclass
class Counters:
    served: int = 0
    denied: int = 0


@dataclass
class Server:
    options: Options
    listeners: list[socket.socket]
    rules: RuleSet | None
    log: TextIO = field(default_factory=lambda: sys.stderr)
    under_systemd: bool = False
    rbl: RblConfig | None = None  # the in-core rblsmtpd (-L), program being the rest

    def __post_init__(self) -> None:
        self.verbose = self.options.verbosity >= 2  # -v: build log lines only then
        self.poller = select.epoll()
        self.handlers: dict[int, Callable[[], None]] = {}
        self.notifier = Notifier()
        self.program = [os.fsencode(word) for word in self.options.program]
        self.running = 0
        self.per_ip: Counter[str] = Counter()
        # Both touched by spawner threads and the loop, always under self.books.
        self.children: dict[int, str] = {}  # pid -> client address
        self.exited_early: dict[int, int] = {}  # reaped before its spawner booked it
        self.books = threading.Lock()
        self.log_lock = threading.Lock()
        self.child_exited = False
        self.local_endpoints = {id(sock): _fixed_local(sock) for sock in self.listeners}
        self.pending: dict[int, Pending] = {}
        self.lookups_by_key: Counter[str] = Counter()
        self.max_lookups = lookups_per_address(self.options.limit)
        self.reactor = Reactor()  # started at the first lookup
        self.resolver: Resolver | None = None
        self.counters = Counters()
        self.accepting = False
        self.backoff_until: float | None = None
        self.backoff = 0.05
        self.stop_at: float | None = None
        self.signals: list[int] = []
        self.local_names: dict[str, str | None] = {}
        self.ids = itertools.count(1)
        self.spawner = best_spawner(self.program, base_environment(dict(os.environ)))
        self.spawning = 0
        self.spawn_queue: queue.SimpleQueue[tuple[SpawnJob, dict[str, str]]] = queue.SimpleQueue()
        # Sessions that ended without the loop reaping them: failed spawns and early exits.
        self.ended: queue.SimpleQueue[tuple[SpawnJob, int]] = queue.SimpleQueue()
        for number in range(SPAWN_THREADS):
            threading.Thread(target=self._spawn_worker, name=f"spawn-{number}", daemon=True).start()
        self.wake_read, self.wake_write = socket.socketpair()
        self.wake_read.setblocking(False)
        self.wake_write.setblocking(False)
        self._watch(self.wake_read.fileno(), self._on_wake)
        for listener in self.listeners:
            listener.setblocking(False)
        # Screening (issue 16): components the loop calls at one or two points each.
        self.screen = RblScreen(self.rbl, os.environ, self._dns) if self.rbl else None
        self.rate = RateLimiter(self.options.rate) if self.options.rate else None

    # --- logging -----------------------------------------------------------------------
    def _say(self, line: str, level: int = 2) -> None:
        if self.options.verbosity >= level:
            # spawner threads log too: whole lines only. A log that cannot be written
            # (a reader gone) is ignored, as tcpserver ignores it.
            with self.log_lock, contextlib.suppress(OSError, ValueError):
                self.log.write(line)
                self.log.flush()

    def _status_changed(self) -> None:
        if self.verbose:
            self._say(logline.status(self.running, self.options.limit))
        self._publish()

    def _publish(self) -> None:
        """STATUS= for systemctl status (the notifier throttles it)."""
        if not self.notifier.enabled:
            return
        self.notifier.status(
            f"{self.running}/{self.options.limit} sessions, "
            f"{self.counters.served} served, {self.counters.denied} denied"
        )

    # --- accepting -----------------------------------------------------------------------
    def _set_accepting(self, wanted: bool) -> None:
        if wanted == self.accepting:
            return
        for listener in self.listeners:
            if wanted:
                self._watch(listener.fileno(), functools.partial(self._on_listener, listener))
            else:
                self._unwatch(listener.fileno())
        self.accepting = wanted

    def _may_accept(self) -> bool:
        return (
            self.stop_at is None
            and self.backoff_until is None
            and self.running < self.options.limit
        )

    def _on_listener(self, listener: socket.socket) -> None:
        # A few accepts per wake-up keep the loop fair between listeners and children.
        for _ in range(16):
            if not self._may_accept():
                break
            try:
                fd, address = quick.accept(listener)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                if error.errno in _RESOURCE_ERRORS:
                    self._say(
                        logline.warning(
                            f"unable to accept: {error.strerror}; pausing {self.backoff:.2f} s"
                        ),
                        1,
                    )
                    self.backoff_until = time.monotonic() + self.backoff
                    self.backoff = min(self.backoff * 2, 1.0)
                    self._set_accepting(False)
                    return
                continue  # ECONNABORTED, EPROTO, EPERM: that client is gone
            self.backoff = 0.05
            self._on_connection(listener, fd, address)
        self._set_accepting(self._may_accept())

    def _on_connection(self, listener: socket.socket, fd: int, address: tuple[str, int]) -> None:
        local = self.local_endpoints[id(listener)]
        if local is None:  # a wildcard listener: ask which address the client reached
            try:
                local = quick.local_address(fd)
            except OSError:
                quick.close(fd)
                return
        remote_ip = address[0]
        if "%" in remote_ip:  # a link-local client's scope
            remote_ip = remote_ip.partition("%")[0]
        endpoints = Endpoints(local[0], local[1], remote_ip, address[1])
        client = ipv4_form(endpoints.remote_ip)
        if self.rate is not None and not self.rate.allow(client):
            self._over_rate(fd, client)
            return
        if self.options.per_ip and self.per_ip[client] >= self.options.per_ip:
            self._say(
                logline.warning(
                    f"per-IP limit {self.options.per_ip} reached, "
                    f"dropping connection from {logline.safe(client)}"
                ),
                1,
            )
            quick.close(fd)
            return
        # accept() gave a blocking fd (accept4 without SOCK_NONBLOCK): the child needs that.
        if self.options.per_ip:
            self.per_ip[client] += 1
        self.running += 1
        self._status_changed()
        self._prepare_socket(fd, listener.family)
        if self.options.banner:
            quick.send_now(fd, self.options.banner.encode("utf-8", "surrogateescape"))
        needs_local = self.options.localname is None and endpoints.local_ip not in self.local_names
        if not (self.options.remote_host or self.options.remote_info or needs_local):
            self._decide(fd, endpoints, self._local_name(endpoints), None, None)
            return
        self._start_lookups(fd, endpoints, needs_local)

    def _prepare_socket(self, fd: int, family: int) -> None:
        if self.options.nodelay:
            quick.set_option(fd, socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.options.kill_ip_options and family == socket.AF_INET:
            quick.set_option(fd, socket.IPPROTO_IP, socket.IP_OPTIONS, None)

    # --- lookups -------------------------------------------------------------------------
    def _local_name(self, endpoints: Endpoints) -> str | None:
        if self.options.localname is not None:
            return self.options.localname
        return self.local_names.get(endpoints.local_ip)

    def _start_lookups(self, fd: int, endpoints: Endpoints, needs_local: bool) -> None:
        key = lookup_key(endpoints.remote_ip)
        if self.lookups_by_key[key] >= self.max_lookups:
            # This address has enough in flight: on at once, without its names.
            self._decide(fd, endpoints, self._local_name(endpoints), None, None)
            return
        resolver = self._dns()
        self.lookups_by_key[key] += 1
        pending = Pending(next(self.ids), fd, endpoints, key)
        self.pending[pending.ident] = pending
        pending.lookups = ConnectionLookups(
            self.reactor,
            resolver,
            endpoints,
            time.monotonic() + self.options.timeout,
            (needs_local, self.options.remote_host, self.options.remote_info),
            self.options.paranoid,
            functools.partial(self._lookups_done, pending.ident),
        )
        pending.lookups.start()  # may call _lookups_done at once

    def _dns(self) -> Resolver:
        """The resolver, its reactor started and watched by the loop at the first use."""
        if self.resolver is None:
            self.reactor.start()
            self._watch(self.reactor.fileno(), self.reactor.run_ready)
            self.resolver = Resolver(self.reactor)
        return self.resolver

    def _lookups_done(self, ident_: int, names: Names) -> None:
        pending = self.pending.pop(ident_, None)
        if pending is None:
            return
        self.lookups_by_key[pending.key] -= 1
        if self.lookups_by_key[pending.key] <= 0:
            del self.lookups_by_key[pending.key]
        if self.options.localname is None and names.local_host is not None:
            self.local_names[pending.endpoints.local_ip] = names.local_host
        local = names.local_host
        if local is None:
            local = self._local_name(pending.endpoints)
        self._decide(pending.fd, pending.endpoints, local, names.remote_host, names.remote_info)

    def _cut_lookups_short(self) -> None:
        """SIGTERM: every pending connection goes on now, with the names it has."""
        for pending in list(self.pending.values()):
            names = pending.lookups.names() if pending.lookups is not None else NO_NAMES
            if pending.lookups is not None:
                pending.lookups.close()
            self._lookups_done(pending.ident, names)

    # --- the decision and the spawn ----------------------------------------------------
    def _decide(
        self,
        fd: int,
        endpoints: Endpoints,
        local_host: str | None,
        remote_host: str | None,
        remote_info: str | None,
    ) -> None:
        client = ipv4_form(endpoints.remote_ip)
        log_local = (local_host, endpoints.local_ip, str(endpoints.local_port))
        log_remote = (remote_host, endpoints.remote_ip, remote_info, str(endpoints.remote_port))
        decision = DEFAULT_ALLOW
        if self.rules is not None:
            found = self.rules.match(client, remote_host, remote_info)
            if isinstance(found, RulesError):
                if not (found.missing and self.options.missing_rules_ok):
                    message = logline.warning(f"dropping connection, {found}")
                    self._refuse(fd, client, EXIT_DROP_STATUS, message)
                    return
            else:
                decision = found
        if decision.deny:
            self.counters.denied += 1
            self._refuse(
                fd,
                client,
                EXIT_DENY_STATUS,
                logline.verdict("deny", os.getpid(), log_local, log_remote),
            )
            return
        extra = connection_environment(
            endpoints, local_host, remote_host, remote_info, self.options.ipv6_env
        )
        extra.update(decision.env)  # rules may override TCP* and the server's own
        if self.screen is not None:
            self._screen(fd, client, log_local, log_remote, extra)
            return
        self._spawn_chain(fd, client, log_local, log_remote, extra)

    def _spawn_chain(
        self,
        fd: int,
        client: str,
        log_local: tuple[str | None, str, str],
        log_remote: tuple[str | None, str, str | None, str],
        extra: dict[str, str],
    ) -> None:
        job = SpawnJob(fd, client, log_local, log_remote)
        with self.books:
            self.spawning += 1
        self.counters.served += 1  # taken back if the chain cannot be run
        self._publish()
        self.spawn_queue.put((job, extra))

    # --- screening (issue 16): the in-core rblsmtpd and the rate limit ----------------
    def _screen(
        self,
        fd: int,
        client: str,
        log_local: tuple[str | None, str, str],
        log_remote: tuple[str | None, str, str | None, str],
        extra: dict[str, str],
    ) -> None:
        assert self.screen is not None

        def resume(verdict: Verdict) -> None:
            if verdict.line is None:
                self._spawn_chain(fd, client, log_local, log_remote, extra)
                return
            # Logged as tcpserver and rblsmtpd would; the dialogue needs no -c slot.
            pid = os.getpid()
            self.counters.denied += 1
            if self.verbose:
                self._say(logline.pid_from(pid, client))
                self._say(logline.verdict("ok", pid, log_local, log_remote))
            self._say(rblsmtpd_log(extra.get("TCPREMOTEIP", ""), pid, verdict.line), 0)
            if self.verbose:
                self._say(logline.end(pid, 0))
            self._session_over(client)
            assert self.screen is not None
            self.screen.converse(fd, verdict.line)

        self.screen.screen(fd, extra, resume)

    def _over_rate(self, fd: int, client: str) -> None:
        assert self.rate is not None
        self._say(
            logline.warning(
                f"rate limit {self.rate.per_minute}/min reached, "
                f"dropping connection from {logline.safe(client)}"
            ),
            1,
        )
        if self.options.rate_reply:
            quick.send_now(fd, REPLY_421)
        quick.close(fd)

    def _screening(self) -> bool:
        return self.screen is not None and self.screen.active

    def _spawn_worker(self) -> None:
        """Runs in a spawner thread: the kernel's part of spawning happens here, and the
        child is booked here, so the loop is not woken for it."""
        while True:
            job, env = self.spawn_queue.get()
            self._spawn_one(job, env)

    def _spawn_one(self, job: SpawnJob, env: dict[str, str]) -> None:
        try:
            job.pid = self.spawner.spawn(env, job.fd)
        except OSError as error:
            job.error = error.strerror or str(error)
        except Exception as error:  # one job is refused, the thread goes on
            job.error = f"{type(error).__name__}: {error}"
        quick.close(job.fd)
        with self.books:
            self.spawning -= 1
            if job.error is None:
                if self.verbose:  # before the loop can reap it and log its end
                    self._say(logline.pid_from(job.pid, job.client))
                    self._say(logline.verdict("ok", job.pid, job.log_local, job.log_remote))
                status = self.exited_early.pop(job.pid, None)
                if status is None:
                    self.children[job.pid] = job.client
                    return
            else:
                status = EXIT_DROP_STATUS
            self.ended.put((job, status))
        with contextlib.suppress(OSError):
            self.wake_write.send(b"s")

    def _finish_ended(self) -> None:
        while True:
            try:
                job, status = self.ended.get_nowait()
            except queue.Empty:
                return
            if job.error is not None:
                self.counters.served -= 1
                program = logline.safe(os.fsdecode(self.program[0]))
                message = f"unable to run {program}: {job.error}"
                self._refuse(None, job.client, status, logline.warning(message), level=1)
            else:
                self._child_over(job.pid, job.client, status)

    def _refuse(self, fd: int | None, client: str, status: int, line: str, level: int = 2) -> None:
        """Close (unless a spawner did) without running anything; log it the way
        tcpserver's child would."""
        if fd is not None:
            quick.close(fd)
        pid = os.getpid()
        self._say(logline.pid_from(pid, client))
        self._say(line, level)
        self._say(logline.end(pid, status))
        self._session_over(client)

    def _session_over(self, client: str) -> None:
        self.running -= 1
        if self.options.per_ip:
            self.per_ip[client] -= 1
            if self.per_ip[client] <= 0:
                del self.per_ip[client]
        self._status_changed()
        self._set_accepting(self._may_accept())

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            with self.books:
                client = self.children.pop(pid, None)
                if client is None:  # its spawner thread has not booked it yet
                    self.exited_early[pid] = status
                    continue
            self._child_over(pid, client, status)

    def _child_over(self, pid: int, client: str, status: int) -> None:
        if self.verbose:
            self._say(logline.end(pid, status))
        self._session_over(client)

    # --- signals and the loop ------------------------------------------------------------
    def _watch(self, fd: int, handler: Callable[[], None]) -> None:
        self.poller.register(fd, select.EPOLLIN)
        self.handlers[fd] = handler

    def _unwatch(self, fd: int) -> None:
        self.poller.unregister(fd)
        del self.handlers[fd]

    def _on_wake(self) -> None:
        # One read: what is left wakes the loop again, cheaper than a read that fails.
        with contextlib.suppress(BlockingIOError, InterruptedError):
            self.wake_read.recv(4096)

    def _on_signal(self, number: int, _frame: object) -> None:
        self.signals.append(number)

    def _on_sigchld(self, _number: int, _frame: object) -> None:
        self.child_exited = True

    def _handle_signals(self) -> None:
        while self.signals:
            number = self.signals.pop(0)
            if number == signal.SIGHUP:
                self.notifier.send("RELOADING=1")
                if self.rules is not None:
                    self.rules = RuleSet(self.rules.path)
                self.local_names.clear()
                if self.resolver is not None:
                    self.resolver.reload()
                if self.screen is not None:
                    self.screen.forget()
                self._say(logline.warning("SIGHUP: rules and names reloaded"), 2)
                self.notifier.send("READY=1")
            elif self.stop_at is None:
                self.notifier.send("STOPPING=1")
                drain = self.options.drain if self.under_systemd else 0.0
                self.stop_at = time.monotonic() + drain
                self._set_accepting(False)
                for listener in self.listeners:
                    listener.close()
                self._cut_lookups_short()
                if self.screen is not None:
                    self.screen.cut_short()

    def _timed(self) -> bool:
        """Is anything waiting for a moment rather than for an fd?"""
        return bool(
            self.pending
            or self._screening()
            or self.backoff_until is not None
            or self.stop_at is not None
            or self.notifier.next_flush() is not None
        )

    def _timeout(self) -> float:
        """Seconds epoll may wait: -1 (for ever) on the common path."""
        if not self._timed():
            return -1
        candidates = [
            t
            for t in (
                self.backoff_until,
                self.notifier.next_flush(),
                self.stop_at if self._busy() else None,
            )
            if t is not None
        ]
        if self.pending or self._screening():
            lookup_deadline = self.reactor.next_deadline()
            if lookup_deadline is not None:
                candidates.append(lookup_deadline)
        return max(0.0, min(candidates) - time.monotonic()) if candidates else -1

    def _busy(self) -> bool:
        with self.books:
            return bool(self.children or self.pending or self.spawning)

    def serve(self) -> int:
        signal.set_wakeup_fd(self.wake_write.fileno(), warn_on_full_buffer=False)
        for number in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
            signal.signal(number, self._on_signal)
        signal.signal(signal.SIGCHLD, self._on_sigchld)
        self._set_accepting(True)
        self.notifier.send("READY=1")
        self._status_changed()
        while True:
            for fd, _ in self.poller.poll(self._timeout()):
                handler = self.handlers.get(fd)  # an earlier one may have unwatched it
                if handler is not None:
                    handler()
            if self.signals:
                self._handle_signals()
            if self.child_exited:
                self.child_exited = False
                self._reap()
            if not self.ended.empty():
                self._finish_ended()
            if not self._timed():
                continue
            now = time.monotonic()
            if self.pending or self._screening():
                self.reactor.run_timers(now)
            if self.backoff_until is not None and now >= self.backoff_until:
                self.backoff_until = None
                self._set_accepting(self._may_accept())
            self.notifier.flush(now)
            if self.stop_at is not None and (now >= self.stop_at or not self._busy()):
                return 0


def _fixed_local(listener: socket.socket) -> tuple[str, int] | None:
    """The local address every connection on this listener has, unless it is a wildcard."""
    address = listener.getsockname()
    if str(address[0]) in ("0.0.0.0", "::"):
        return None
    return str(address[0]).partition("%")[0], int(address[1])
