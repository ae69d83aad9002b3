"""The accept loop: limits, rules, spawning the chain, reaping, signals.

One thread runs the loop. Reverse DNS and ident run in worker threads, and spawning runs
in spawner threads (posix_spawnp with the GIL released, see spawn.py); both report back
through a wake-up socket, so nothing a client does can stall the loop. Children are
watched through pidfds.
"""

from __future__ import annotations

import contextlib
import errno
import heapq
import itertools
import os
import queue
import selectors
import signal
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TextIO

from ..rules import Decision, RulesError, RuleSet
from . import logline
from .environ import Endpoints, base_environment, connection_environment, ipv4_form
from .lookups import ident, reverse_name
from .notify import Notifier
from .options import Options
from .spawn import best_spawner, encode_environment

# accept() errors that mean "out of resources for now": back off instead of spinning.
_RESOURCE_ERRORS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
# Spawner threads: each waits in the kernel for one child's exec (see spawn.py).
SPAWN_THREADS = 4
EXIT_DENY_STATUS = 100 << 8
EXIT_DROP_STATUS = 111 << 8


@dataclass
class Pending:
    """An accepted connection waiting for its lookups."""

    ident: int
    conn: socket.socket
    endpoints: Endpoints
    deadline: float


@dataclass
class SpawnJob:
    conn: socket.socket
    client: str
    log_local: tuple[str | None, str, str]
    log_remote: tuple[str | None, str, str | None, str]
    pid: int = 0
    error: str | None = None


@dataclass
class Child:
    pid: int
    pidfd: int
    client: str


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

    def __post_init__(self) -> None:
        self.verbose = self.options.verbosity >= 2  # -v: build log lines only then
        self.selector = selectors.DefaultSelector()
        self.notifier = Notifier()
        base_env = base_environment(dict(os.environ))
        # Encoded once; per connection only the TCP and rules variables are encoded.
        self.base_entries = list(zip(base_env, encode_environment(base_env), strict=True))
        self.program = [os.fsencode(word) for word in self.options.program]
        self.running = 0
        self.per_ip: Counter[str] = Counter()
        self.children: dict[int, Child] = {}
        self.pending: dict[int, Pending] = {}
        self.deadlines: list[tuple[float, int]] = []
        self.counters = Counters()
        self.accepting = False
        self.backoff_until: float | None = None
        self.backoff = 0.05
        self.stop_at: float | None = None
        self.signals: list[int] = []
        self.local_names: dict[str, str | None] = {}
        self.completed: queue.SimpleQueue[tuple[int, tuple[str | None, ...]]] = queue.SimpleQueue()
        self.workers: ThreadPoolExecutor | None = None
        self.ids = itertools.count(1)
        self.spawner = best_spawner()
        self.spawning = 0
        self.spawn_queue: queue.SimpleQueue[tuple[SpawnJob, list[bytes]]] = queue.SimpleQueue()
        self.spawned: queue.SimpleQueue[SpawnJob] = queue.SimpleQueue()
        for number in range(SPAWN_THREADS):
            threading.Thread(target=self._spawn_worker, name=f"spawn-{number}", daemon=True).start()
        self.wake_read, self.wake_write = socket.socketpair()
        self.wake_read.setblocking(False)
        self.wake_write.setblocking(False)
        self.selector.register(self.wake_read, selectors.EVENT_READ, self._on_wake)
        for listener in self.listeners:
            listener.setblocking(False)

    # --- logging -----------------------------------------------------------------------
    def _say(self, line: str, level: int = 2) -> None:
        if self.options.verbosity >= level:
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
                self.selector.register(listener, selectors.EVENT_READ, self._on_listener)
            else:
                self.selector.unregister(listener)
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
                conn, address = listener.accept()
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
            self._on_connection(conn, address)
        self._set_accepting(self._may_accept())

    def _on_connection(self, conn: socket.socket, address: tuple[object, ...]) -> None:
        try:
            local = conn.getsockname()
        except OSError:
            conn.close()
            return
        endpoints = Endpoints(
            str(local[0]).split("%")[0],
            int(local[1]),
            str(address[0]).split("%")[0],
            int(str(address[1])),
        )
        client = ipv4_form(endpoints.remote_ip)
        if self.options.per_ip and self.per_ip[client] >= self.options.per_ip:
            self._say(
                logline.warning(
                    f"per-IP limit {self.options.per_ip} reached, "
                    f"dropping connection from {logline.safe(client)}"
                ),
                1,
            )
            conn.close()
            return
        # accept() gave a blocking fd (accept4 without SOCK_NONBLOCK): the child needs that.
        self.per_ip[client] += 1
        self.running += 1
        self._status_changed()
        self._prepare_socket(conn)
        if self.options.banner:
            with contextlib.suppress(OSError):
                conn.send(
                    self.options.banner.encode("utf-8", "surrogateescape"), socket.MSG_DONTWAIT
                )
        needs_local = self.options.localname is None and endpoints.local_ip not in self.local_names
        if not (self.options.remote_host or self.options.remote_info or needs_local):
            self._decide(conn, endpoints, self._local_name(endpoints), None, None)
            return
        pending = Pending(next(self.ids), conn, endpoints, time.monotonic() + self.options.timeout)
        self.pending[pending.ident] = pending
        heapq.heappush(self.deadlines, (pending.deadline, pending.ident))
        if self.workers is None:
            self.workers = ThreadPoolExecutor(
                max_workers=min(64, self.options.limit), thread_name_prefix="lookup"
            )
        future = self.workers.submit(self._lookups, endpoints, needs_local)
        future.add_done_callback(self._lookup_done(pending.ident))

    def _prepare_socket(self, conn: socket.socket) -> None:
        try:
            if self.options.nodelay:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.options.kill_ip_options and conn.family == socket.AF_INET:
                conn.setsockopt(socket.IPPROTO_IP, socket.IP_OPTIONS, b"")
        except OSError:
            pass

    # --- lookups -------------------------------------------------------------------------
    def _local_name(self, endpoints: Endpoints) -> str | None:
        if self.options.localname is not None:
            return self.options.localname
        return self.local_names.get(endpoints.local_ip)

    def _lookups(self, endpoints: Endpoints, needs_local: bool) -> tuple[str | None, ...]:
        """Runs in a worker thread."""
        start = time.monotonic()
        local_name = reverse_name(endpoints.local_ip, False) if needs_local else None
        remote_host = (
            reverse_name(endpoints.remote_ip, self.options.paranoid)
            if self.options.remote_host
            else None
        )
        remote_info = None
        if self.options.remote_info:
            left = self.options.timeout - (time.monotonic() - start)
            remote_info = ident(
                (endpoints.remote_ip, endpoints.remote_port),
                (endpoints.local_ip, endpoints.local_port),
                left,
            )
        return (local_name, remote_host, remote_info)

    def _lookup_done(self, ident_: int) -> Callable[[Future[tuple[str | None, ...]]], None]:
        def done(future: Future[tuple[str | None, ...]]) -> None:
            try:
                result = future.result()
            except Exception:
                result = (None, None, None)
            self.completed.put((ident_, result))
            with contextlib.suppress(OSError):
                self.wake_write.send(b"l")

        return done

    def _finish_lookups(self) -> None:
        while True:
            try:
                ident_, (local_name, remote_host, remote_info) = self.completed.get_nowait()
            except queue.Empty:
                return
            pending = self.pending.pop(ident_, None)
            if pending is None:
                continue  # it timed out and went on without the names
            if self.options.localname is None and local_name is not None:
                self.local_names[pending.endpoints.local_ip] = local_name
            local = local_name if local_name is not None else self._local_name(pending.endpoints)
            self._decide(pending.conn, pending.endpoints, local, remote_host, remote_info)

    def _expire_lookups(self, now: float) -> None:
        while self.deadlines and self.deadlines[0][0] <= now:
            _, ident_ = heapq.heappop(self.deadlines)
            pending = self.pending.pop(ident_, None)
            if pending is not None:
                self._decide(
                    pending.conn, pending.endpoints, self._local_name(pending.endpoints), None, None
                )

    # --- the decision and the spawn ----------------------------------------------------
    def _decide(
        self,
        conn: socket.socket,
        endpoints: Endpoints,
        local_host: str | None,
        remote_host: str | None,
        remote_info: str | None,
    ) -> None:
        client = ipv4_form(endpoints.remote_ip)
        log_local = (local_host, endpoints.local_ip, str(endpoints.local_port))
        log_remote = (remote_host, endpoints.remote_ip, remote_info, str(endpoints.remote_port))
        decision = Decision(False, (), None)
        if self.rules is not None:
            found = self.rules.match(client, remote_host, remote_info)
            if isinstance(found, RulesError):
                if not (found.missing and self.options.missing_rules_ok):
                    message = logline.warning(f"dropping connection, {found}")
                    self._refuse(conn, client, EXIT_DROP_STATUS, message)
                    return
            else:
                decision = found
        if decision.deny:
            self.counters.denied += 1
            self._refuse(
                conn,
                client,
                EXIT_DENY_STATUS,
                logline.verdict("deny", os.getpid(), log_local, log_remote),
            )
            return
        extra = connection_environment(
            endpoints, local_host, remote_host, remote_info, self.options.ipv6_env
        )
        extra.update(decision.env)  # rules may override TCP* and the server's own
        env = [entry for name, entry in self.base_entries if name not in extra]
        env += encode_environment(extra)
        job = SpawnJob(conn, client, log_local, log_remote)
        self.spawning += 1
        self.spawn_queue.put((job, env))

    def _spawn_worker(self) -> None:
        """Runs in a spawner thread: the kernel's part of spawning happens here."""
        while True:
            job, env = self.spawn_queue.get()
            try:
                job.pid = self.spawner.spawn(self.program, env, job.conn.fileno())
            except OSError as error:
                job.error = error.strerror or str(error)
            job.conn.close()
            self.spawned.put(job)
            with contextlib.suppress(OSError):
                self.wake_write.send(b"s")

    def _finish_spawns(self) -> None:
        while True:
            try:
                job = self.spawned.get_nowait()
            except queue.Empty:
                return
            self.spawning -= 1
            if job.error is not None:
                program = logline.safe(os.fsdecode(self.program[0]))
                message = f"unable to run {program}: {job.error}"
                self._refuse(
                    job.conn, job.client, EXIT_DROP_STATUS, logline.warning(message), level=1
                )
                continue
            pidfd = os.pidfd_open(job.pid)
            self.children[pidfd] = Child(job.pid, pidfd, job.client)
            self.selector.register(pidfd, selectors.EVENT_READ, self._on_child)
            self.counters.served += 1
            self._publish()
            if self.verbose:
                self._say(logline.pid_from(job.pid, job.client))
                self._say(logline.verdict("ok", job.pid, job.log_local, job.log_remote))

    def _refuse(
        self, conn: socket.socket, client: str, status: int, line: str, level: int = 2
    ) -> None:
        """Close without running anything; log it the way tcpserver's child would."""
        conn.close()
        pid = os.getpid()
        self._say(logline.pid_from(pid, client))
        self._say(line, level)
        self._say(logline.end(pid, status))
        self._session_over(client)

    def _session_over(self, client: str) -> None:
        self.running -= 1
        self.per_ip[client] -= 1
        if self.per_ip[client] <= 0:
            del self.per_ip[client]
        self._status_changed()
        self._set_accepting(self._may_accept())

    def _on_child(self, pidfd: int) -> None:
        child = self.children.pop(pidfd)
        self.selector.unregister(pidfd)
        os.close(pidfd)
        try:
            _, status = os.waitpid(child.pid, 0)
        except ChildProcessError:
            status = 0
        if self.verbose:
            self._say(logline.end(child.pid, status))
        self._session_over(child.client)

    # --- signals and the loop ------------------------------------------------------------
    def _on_wake(self, wake: socket.socket) -> None:
        try:
            while wake.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def _on_signal(self, number: int, _frame: object) -> None:
        self.signals.append(number)

    def _handle_signals(self) -> None:
        while self.signals:
            number = self.signals.pop(0)
            if number == signal.SIGHUP:
                self.notifier.send("RELOADING=1")
                if self.rules is not None:
                    self.rules = RuleSet(self.rules.path)
                self.local_names.clear()
                self._say(logline.warning("SIGHUP: rules and names reloaded"), 2)
                self.notifier.send("READY=1")
            elif self.stop_at is None:
                self.notifier.send("STOPPING=1")
                drain = self.options.drain if self.under_systemd else 0.0
                self.stop_at = time.monotonic() + drain
                self._set_accepting(False)
                for listener in self.listeners:
                    listener.close()

    def _timeout(self, now: float) -> float | None:
        candidates = [
            t
            for t in (
                self.backoff_until,
                self.notifier.next_flush(),
                self.stop_at if self.children or self.pending or self.spawning else None,
            )
            if t is not None
        ]
        if self.deadlines:
            candidates.append(self.deadlines[0][0])
        return max(0.0, min(candidates) - now) if candidates else None

    def serve(self) -> int:
        signal.set_wakeup_fd(self.wake_write.fileno(), warn_on_full_buffer=False)
        for number in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
            signal.signal(number, self._on_signal)
        self._set_accepting(True)
        self.notifier.send("READY=1")
        self._status_changed()
        while True:
            now = time.monotonic()
            for key, _ in self.selector.select(self._timeout(now)):
                key.data(key.fileobj)
            self._handle_signals()
            self._finish_lookups()
            self._finish_spawns()
            now = time.monotonic()
            self._expire_lookups(now)
            if self.backoff_until is not None and now >= self.backoff_until:
                self.backoff_until = None
                self._set_accepting(self._may_accept())
            self.notifier.flush(now)
            if self.stop_at is not None and (
                now >= self.stop_at or not (self.children or self.pending or self.spawning)
            ):
                return 0
