"""The accept loop: limits, rules, spawning the chain, reaping, signals.

One thread runs the loop. Reverse DNS and ident are non-blocking sockets driven by the
same loop (lookups.py, a Reactor whose epoll fd the loop watches), and spawning runs in a
pool of spawner threads (spawn.py: the _core extension's own threads, which never take
the GIL, or Python threads without it), so nothing a client does can stall the loop. The
pool reports each pid or failure through an fd the loop watches; the loop books the child,
hears of its exit by SIGCHLD through a wake-up socket, and reaps with waitpid as tcpserver
does. Every thread switch and syscall costs the loop its share of the CPU, so the common
path has as few as possible.

With the _core extension every server hands its per-connection path to the ConnectionLoop
(_loop.c): accept, -c, rules (tcpserver's key order, with names), environment, booking the
pool's spawns, reaping and the -v lines in C, in this thread. What takes time or judgement
is asked of Python at two points. hold() (_c_loop_hold), before the banner: the rate
(-N/-M), -C, then the names: answered at once from the cache, or the connection is held
here without a -c slot (holding.py) while lookups.py asks, and handed back decided with
ConnectionLoop.admit(). screen() (_c_loop_screen), after the rules: the in-core rblsmtpd's verdict,
known at once, or held the same way; a listed client's dialogue stays here. Python keeps
the rest: signals, reloading the rules, the back-off after EMFILE, STATUS= and the drain.

A held connection is a Pending with the stage it is in (cancel() stops it). Another
pre-session stage (a TLS handshake) plugs in the same way: hold the connection, run the
stage on the reactor, give it back decided (ConnectionLoop.admit with the fd the chain is to get)
or drop it.

The Python loop below does the same per connection without the extension (not built, or
QBOOT_NO_EXTENSION=1); tests/test_c_loop.py holds the two paths to the same bytes,
environment and log lines, as CPython's tests hold json to _json.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import itertools
import os
import select
import signal
import socket
import sys
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import NamedTuple

from .._startup import TYPE_CHECKING
from ..addresses import unmap_ipv4
from ..rules import Decision, RulesError, RuleSet
from . import logline, syscalls
from .environ import Endpoints, base_environment, connection_environment
from .holding import Hold, HoldTable, held_cap
from .notify import Notifier
from .options import Options
from .reactor import Reactor
from .spawn import ExtensionPool, PythonPool, best_spawner, spawn_pool

if TYPE_CHECKING:  # dns, lookups and screening are imported when used: a server without
    from typing import TextIO  # -h, -r, names or -L never needs them, nor their memory

    from ._core import ConnectionLoop, HeldNames
    from .dns import Resolver
    from .dnscache import CachingResolver
    from .lookups import ConnectionLookups, Names
    from .ratelimit import RateLimiter
    from .rbl import Verdict
    from .rblcommand import RblConfig
    from .screen import RblScreen
    from .tls.relay import Session
    from .tls.service import TlsService

# accept() errors that mean "out of resources for now": back off instead of spinning.
_RESOURCE_ERRORS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
# Spawner threads: each waits in the kernel for one child's exec (see spawn.py). With
# Python threads 2 and 3 were slower and 6 no faster; with the pool 2 measured the same.
SPAWN_THREADS = 4
EXIT_DENY_STATUS = 100 << 8  # the wait statuses of tcpserver's child for a deny, a drop
EXIT_DROP_STATUS = 111 << 8
ACCEPTS_PER_WAKE = 16  # keeps a loop fair between listeners and children
BACKOFF_LEAST, BACKOFF_MOST = 0.05, 1.0  # seconds of pause after accept() ran out
DEFAULT_ALLOW = Decision(False, (), None)  # no rules file, or no rule matched
# A reverse name that could not be had (no answer by the deadline, every server failing)
# is asked again after this long; meanwhile connections from there go on without it.
NAME_FAILURE_SECONDS = 5.0


def import_what_options_need(options: Options) -> None:
    """Import the lookups', screening's and rate limit's modules when these options use
    them. They are not imported with this module (a server without -h, -r, unknown local
    names, -L or -N/-M never needs them, nor their memory), but they must be before the
    server drops privileges: the user of -u may not be able to read the library."""
    if options.remote_host or options.remote_info or options.localname is None:
        from . import dns, lookups  # noqa: F401
    if options.rbl_incore:
        from . import rbl, screen  # noqa: F401
    if options.rate:
        from . import ratelimit  # noqa: F401


def c_loop_fits(options: Options) -> bool:
    """Can the _core extension's ConnectionLoop serve these options? Names, ident, rates and -C it
    takes through hold(), the in-core rblsmtpd through screen(); TLS (-S) is the Python
    loop's."""
    return syscalls.EXTENSION is not None and options.tls is None


def c_loop_holds(options: Options) -> bool:
    """Does each of the C loop's connections go through hold() (names, ident, a rate, -C)?"""
    return bool(
        options.remote_host
        or options.remote_info
        or options.localname is None
        or options.rate
        or options.per_ip
    )


class Pending:
    """An accepted connection held before its session (holding.py): waiting for its
    names, then (in-core rblsmtpd) for its blocklist verdict. cancel() stops the stage it
    is in without a callback; None between stages."""

    __slots__ = ("cancel", "endpoints", "fd", "ident", "lookups")

    def __init__(self, ident: int, fd: int, endpoints: Endpoints) -> None:
        self.ident = ident
        self.fd = fd
        self.endpoints = endpoints
        self.cancel: Callable[[], None] | None = None
        self.lookups: ConnectionLookups | None = None


LogLocal = tuple[str | None, str, str]
LogRemote = tuple[str | None, str, str | None, str]


class Decided(NamedTuple):
    """A connection decided, waiting for a -c slot: run the chain with `extra`, or (extra
    None) refuse it, logging `line` at `level` and ending with `status`."""

    fd: int
    client: str
    log_local: LogLocal
    log_remote: LogRemote
    extra: dict[str, str] | None
    status: int = 0
    line: str = ""
    level: int = 2


class SpawnJob:
    """A connection with the spawner pool: what its log lines and session need."""

    __slots__ = ("client", "fd", "log_local", "log_remote")

    def __init__(
        self,
        fd: int,
        client: str,
        log_local: tuple[str | None, str, str],
        log_remote: tuple[str | None, str, str | None, str],
    ) -> None:
        self.fd = fd
        self.client = client
        self.log_local = log_local
        self.log_remote = log_remote


class Counters:
    __slots__ = ("denied", "served")

    def __init__(self) -> None:
        self.served = 0
        self.denied = 0


class Server:
    """The accept loop of one qboot-tcpsrv. start() sets up its threads and fds, serve()
    runs it until SIGTERM has been handled, close() lets go of what start() made."""

    def __init__(
        self,
        options: Options,
        listeners: list[socket.socket],
        rules: RuleSet | None,
        log: TextIO | None = None,
        under_systemd: bool = False,
        systemd_sockets: bool = False,
        rbl: RblConfig | None = None,  # the in-core rblsmtpd (-L), program being the rest
        tls: TlsService | None = None,  # -S, its certificate loaded
    ) -> None:
        # What was asked for.
        self.options = options
        self.listeners = listeners
        self.rules = rules
        self.rbl = rbl
        self.log = sys.stderr if log is None else log
        self.under_systemd = under_systemd
        self.verbose = options.verbosity >= 2  # -v: build log lines only then
        # Addresses in ok/deny lines: as Debian's tcpserver logs them on a socket it bound
        # (mapped on `::`); systemd's dual-stack sockets stand for the IPv4 and IPv6
        # listeners a tcpserver per address would have had, so IPv4 clients show as IPv4.
        self.logged_ip: Callable[[str], str] = unmap_ipv4 if systemd_sockets else str
        self.program = [os.fsencode(word) for word in options.program]
        self.health_words = ""  # STATUS=: "down: why; " while it cannot serve
        self.local_endpoints = {id(sock): _fixed_local(sock) for sock in listeners}
        self.notifier = Notifier()
        # The loop: epoll, a handler per watched fd, and what signals and spawners told it.
        self.poller: select.epoll | None = None
        self.handlers: dict[int, Callable[[], None]] = {}
        self.wake_read: socket.socket | None = None
        self.wake_write: socket.socket | None = None
        self.signals: list[int] = []
        self.child_exited = False
        # Accepting: paused at the -c limit, after EMFILE and alike, and when stopping.
        self.accepting = False
        self.backoff_until: float | None = None
        self.backoff = BACKOFF_LEAST
        self.accepted = 0  # the ConnectionLoop's count, when it last told
        self.stop_at: float | None = None
        # Sessions (the loop's alone: spawner threads only report through the pool).
        self.running = 0
        self.per_ip: Counter[str] = Counter()
        self.children: dict[int, str] = {}  # pid -> client address
        self.exited_early: dict[int, int] = {}  # reaped before its spawn was reported
        self.counters = Counters()
        # Lookups (reverse DNS, ident, the local name), driven by the reactor. A connection
        # waiting for them is held (holding.py): no -c slot until it is decided; then it
        # waits in `admitted` for a slot if none is free.
        self.pending: dict[int, Pending] = {}
        self.holds = HoldTable(options.limit, held_cap())
        self.admitted: deque[Decided] = deque()
        self.admitting = False
        self.reactor = Reactor()  # started at the first lookup
        self.resolver: Resolver | None = None
        self.names: CachingResolver | None = None  # one question in flight per name
        self.local_names: dict[str, str | None] = {}
        self.ids = itertools.count(1)
        # Spawning: jobs go to the pool's threads, which report pids and failures back.
        self.spawner = best_spawner(self.program, base_environment(dict(os.environ)))
        self.spawns: ExtensionPool | PythonPool | None = None
        self.spawning: dict[int, SpawnJob] = {}  # by job ident
        # The C path, when c_loop_fits() (made by start()).
        self.c_loop: ConnectionLoop | None = None
        self.in_c_loop_hold = False  # in _c_loop_hold(): lookups done at once answer it
        self.c_loop_hold_answer: HeldNames | None = None
        # Screening: the in-core rblsmtpd (made by start()) and the rate limit.
        self.screen: RblScreen | None = None
        self.rate: RateLimiter | None = None
        # TLS: a handshake holds no -c slot; a finished one waits here for a slot, and its
        # SSL_* variables wait by the fd its chain gets.
        self.tls = tls
        self.tls_waiting: deque[tuple[Session, Endpoints, dict[str, str]]] = deque()
        self.tls_env: dict[int, dict[str, str]] = {}
        self.reactor_watched = False
        if options.rate:
            from .ratelimit import RateLimiter

            self.rate = RateLimiter(options.rate)

    def start(self) -> None:
        """The epoll fd, the wake-up socket pair and the spawner pool."""
        self.poller = select.epoll()
        self.wake_read, self.wake_write = socket.socketpair()
        self.wake_read.setblocking(False)
        self.wake_write.setblocking(False)
        self._watch(self.wake_read.fileno(), self._on_wake)
        for listener in self.listeners:
            listener.setblocking(False)
        self.spawns = spawn_pool(self.spawner, SPAWN_THREADS)
        # Screening: components the loop calls at one or two points each.
        if self.rbl is not None:
            from .screen import RblScreen

            self.screen = RblScreen(self.rbl, os.environ, self._dns)
        log_fd = _fileno(self.log)
        if log_fd is not None and c_loop_fits(self.options):
            assert isinstance(self.spawns, ExtensionPool), "c_loop_fits() wants the extension"
            self.c_loop = self._make_c_loop(log_fd, self.spawns)
            return
        self._watch(self.spawns.fileno(), self._on_spawned)

    def _make_c_loop(self, log_fd: int, pool: ExtensionPool) -> ConnectionLoop:
        assert syscalls.EXTENSION is not None and self.wake_read is not None
        localname = self.options.localname
        c_loop: ConnectionLoop = syscalls.EXTENSION.ConnectionLoop(
            pool=pool.c_pool,
            wake_fd=self.wake_read.fileno(),
            log_fd=log_fd,
            limit=self.options.limit,
            verbosity=self.options.verbosity,
            local_host=None if localname is None else _encode(localname),
            local_host_log=logline.safe(localname).encode("ascii"),
            banner=_encode(self.options.banner),
            program_log=logline.safe(os.fsdecode(self.program[0])).encode("ascii"),
            ipv6_env=self.options.ipv6_env,
            nodelay=self.options.nodelay,
            kill_ip_options=self.options.kill_ip_options,
            unmap_in_log=self.logged_ip is unmap_ipv4,
            deny_status=EXIT_DENY_STATUS,
            drop_status=EXIT_DROP_STATUS,
            accepts_per_wake=ACCEPTS_PER_WAKE,
            hold=self._c_loop_hold if c_loop_holds(self.options) else None,
            ended=self._c_loop_session_ended if self.options.per_ip else None,
            screen=self._c_loop_screen if self.screen is not None else None,
        )
        for listener in self.listeners:
            c_loop.add_listener(listener.fileno(), self.local_endpoints[id(listener)])
        self._give_c_loop_rules(c_loop)
        c_loop.start()
        return c_loop

    def _give_c_loop_rules(self, c_loop: ConnectionLoop) -> None:
        """The rules file the ConnectionLoop reads (it asks _rules_state again when stat() shows
        another file), and the line for a file that is not a cdb."""
        if self.rules is None:
            c_loop.set_rules(None, None, b"")
            return
        unreadable = RulesError(self.rules.path, "invalid argument")
        c_loop.set_rules(
            os.fsencode(self.rules.path),
            self._rules_state,
            _encode(logline.warning(f"dropping connection, {unreadable}")),
        )

    def _rules_state(self) -> tuple[tuple[int, int, int, int] | None, bytes | None, bytes | None]:
        """For the C loop: (identity, cdb bytes, None), or (None, None, the warning to log as
        each connection is dropped), or (None, None, None) to allow all (-X, no file)."""
        assert self.rules is not None
        state = self.rules.snapshot()
        self._judge(state if isinstance(state, RulesError) else None)
        if not isinstance(state, RulesError):
            return state[0], state[1], None
        if state.missing and self.options.missing_rules_ok:
            return None, None, None
        return None, None, _encode(logline.warning(f"dropping connection, {state}"))

    def close(self) -> None:
        """Stop the spawner pool (after the jobs queued) and close our own fds."""
        if self.tls is not None:
            self.tls.close()
        if self.c_loop is not None:
            self.c_loop.close()
            self.c_loop = None
        if self.spawns is not None:
            self.spawns.close()
            self.spawns = None
        self.reactor.close()
        for sock in (self.wake_read, self.wake_write):
            if sock is not None:
                sock.close()
        self.wake_read = self.wake_write = None
        if self.poller is not None:
            self.poller.close()
            self.poller = None
        self.handlers.clear()
        self.accepting = False

    # --- logging -----------------------------------------------------------------------
    def log_verbose(self, line: str, level: int = 2) -> None:
        if self.options.verbosity >= level:
            # Only the loop logs. A log that cannot be written (a reader gone) is
            # ignored, as tcpserver ignores it.
            with contextlib.suppress(OSError, ValueError):
                self.log.write(line)
                self.log.flush()

    def _status_changed(self) -> None:
        if self.verbose:
            self.log_verbose(logline.status(self.running, self.options.limit))
        self._publish()

    def _publish(self) -> None:
        """STATUS= for systemctl status (the notifier throttles it)."""
        if not self.notifier.enabled:
            return
        if self.c_loop is not None:
            running, served, denied, _, _ = self.c_loop.counts()
            denied += self.counters.denied  # listed by the in-core rblsmtpd, here
        else:
            running, served, denied = self.running, self.counters.served, self.counters.denied
        certificate = ""
        if self.tls is not None and self.tls.certificate is not None:
            certificate = f", {self.tls.certificate.status_words()}"  # qbootctl status reads it
        self.notifier.status(
            f"{self.health_words}{running}/{self.options.limit} sessions, "
            f"{served} served, {denied} denied{certificate}"
        )

    def _judge(self, rules: RulesError | None = None) -> None:
        """STATUS= starts with "down: why" while its chain or rules cannot serve."""
        if not self.notifier.enabled:
            return  # no STATUS= to say it in (and no health module in memory)
        from ..apply.health import SERVICE_PATH, RulesFact, own_status

        if rules is None and self.rules is not None:
            state = self.rules.snapshot()
            rules = state if isinstance(state, RulesError) else None
        fact = None
        if rules is not None:
            missing_ok = self.options.missing_rules_ok
            fact = RulesFact(rules.path, rules.message, missing_ok, rules.missing)
        search = os.environ.get("PATH", SERVICE_PATH)
        self.health_words = own_status(os.fsdecode(self.program[0]), fact, search)

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
            and self.running + len(self.admitted) < self.options.limit
            and (self.tls is None or self.tls.handshaking < self.tls.cap)
        )

    def _on_listener(self, listener: socket.socket) -> None:
        # A few accepts per wake-up keep the loop fair between listeners and children.
        for _ in range(ACCEPTS_PER_WAKE):
            if not self._may_accept():
                break
            try:
                fd, address = syscalls.accept(listener)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                if error.errno in _RESOURCE_ERRORS:
                    self._out_of_resources(error.errno)
                    self._set_accepting(False)
                    return
                continue  # ECONNABORTED, EPROTO, EPERM: that client is gone
            self._accepted()
            if self.tls is not None and not self.tls.config.mode.starttls:
                self._tls_handshake(listener, fd, address)
            else:
                self._on_connection(listener, fd, address)
        self._set_accepting(self._may_accept())

    def _out_of_resources(self, number: int) -> None:
        """accept() failed for lack of fds or memory: pause, longer each time in a row."""
        self.log_verbose(
            logline.warning(
                f"unable to accept: {os.strerror(number)}; pausing {self.backoff:.2f} s"
            ),
            1,
        )
        self.backoff_until = time.monotonic() + self.backoff
        self.backoff = min(self.backoff * 2, BACKOFF_MOST)

    def _accepted(self) -> None:
        """A connection accepted: the next pause is the least again."""
        self.backoff = BACKOFF_LEAST

    def _on_connection(self, listener: socket.socket, fd: int, address: tuple[str, int]) -> None:
        endpoints = self._admissible(listener, fd, address)
        if endpoints is None:
            return
        self._prepare_socket(fd, listener.family)
        self._begin(fd, endpoints)

    def _admissible(
        self, listener: socket.socket, fd: int, address: tuple[str, int]
    ) -> Endpoints | None:
        """The connection's endpoints, or None when the rate or per-address limit closed it."""
        local = self.local_endpoints[id(listener)]
        if local is None:  # a wildcard listener: ask which address the client reached
            try:
                local = syscalls.local_address(fd)
            except OSError:
                syscalls.close(fd)
                return None
        remote_ip = address[0]
        if "%" in remote_ip:  # a link-local client's scope
            remote_ip = remote_ip.partition("%")[0]
        endpoints = Endpoints(local[0], local[1], remote_ip, address[1])
        client = unmap_ipv4(endpoints.remote_ip)
        if self.rate is not None and not self.rate.allow(client):
            self._over_rate(fd, client)
            return None
        if self.options.per_ip and self.per_ip[client] >= self.options.per_ip:
            self._drop_per_ip(fd, client)
            return None
        return endpoints

    def _begin(self, fd: int, endpoints: Endpoints) -> None:
        """A connection on its way to a session: the banner, then its names (held without
        a -c slot), the rules and the screening; the slot when it is decided."""
        if self.options.banner:
            syscalls.send_now(fd, self.options.banner.encode("utf-8", "surrogateescape"))
        needs_local = self.options.localname is None and endpoints.local_ip not in self.local_names
        if not (self.options.remote_host or self.options.remote_info or needs_local):
            self._decide(None, fd, endpoints, self._local_name(endpoints), None, None)
            return
        pending = self._hold(fd, endpoints)
        if pending is not None:
            self._start_lookups(pending, needs_local)

    def _admit(self, decided: Decided) -> None:
        """A decided connection: its session now, or when a -c slot is free."""
        if self.running >= self.options.limit:
            self.admitted.append(decided)
            return
        client = decided.client
        if self.options.per_ip:
            if self.per_ip[client] >= self.options.per_ip:  # sessions started while it was held
                self._drop_per_ip(decided.fd, client)
                return
            self.per_ip[client] += 1
        self.running += 1
        self._status_changed()
        if decided.extra is not None:
            self._spawn_chain(
                decided.fd, client, decided.log_local, decided.log_remote, decided.extra
            )
            return
        if decided.status == EXIT_DENY_STATUS:
            self.counters.denied += 1
        self._refuse(decided.fd, client, decided.status, decided.line, decided.level)

    def _drop_per_ip(self, fd: int, client: str) -> None:
        self.log_verbose(
            logline.warning(
                f"per-IP limit {self.options.per_ip} reached, "
                f"dropping connection from {logline.safe(client)}"
            ),
            1,
        )
        syscalls.close(fd)
        self.tls_env.pop(fd, None)

    # --- TLS ---------------------------------------------------------------------------
    def _tls_handshake(self, listener: socket.socket, fd: int, address: tuple[str, int]) -> None:
        """Implicit TLS: the handshake first, in the loop and without a -c slot; the
        finished session then takes its slot like a new connection, its chain reading
        and writing clear text on the session's socket pair."""
        assert self.tls is not None
        endpoints = self._admissible(listener, fd, address)
        if endpoints is None:
            return
        if self.tls.crowded(endpoints.remote_ip):
            client = logline.safe(unmap_ipv4(endpoints.remote_ip))
            self.log_verbose(logline.warning(f"TLS from {client}: too many handshakes from there"))
            syscalls.close(fd)
            return
        self._prepare_socket(fd, listener.family)

        def ready(session: Session, env: dict[str, str]) -> None:
            self.tls_waiting.append((session, endpoints, env))
            self._tls_take_slots()

        def failed(reason: str) -> None:
            client = logline.safe(unmap_ipv4(endpoints.remote_ip))
            words = "".join(c if c.isascii() and c.isprintable() else "?" for c in reason)
            self.log_verbose(logline.warning(f"TLS from {client}: {words[:200]}"))
            self._set_accepting(self._may_accept())

        self.tls.handshake(self._reactor(), fd, endpoints.remote_ip, ready, failed)

    def _tls_take_slots(self) -> None:
        """Finished handshakes go on as new connections: their names and rules (held,
        without a -c slot), then a slot when decided, first come first."""
        while self.tls_waiting:
            session, endpoints, env = self.tls_waiting.popleft()
            if session.closed:  # the client left while it waited
                continue
            fd = session.chain_end()
            self.tls_env[fd] = env
            self._begin(fd, endpoints)
        self._set_accepting(self._may_accept())

    def _reactor(self) -> Reactor:
        """The reactor, started and watched by the loop at the first use."""
        if not self.reactor_watched:
            self.reactor.start()
            if self.c_loop is not None:  # run() returns when it is readable
                self.c_loop.watch(self.reactor.fileno())
            else:
                self._watch(self.reactor.fileno(), self.reactor.run_ready)
            self.reactor_watched = True
        return self.reactor

    def _tls_reload(self) -> None:
        """SIGHUP: a new context from the certificate files, for new sessions only. The
        spawns in flight finish first: OpenSSL opens the key's memfd without
        close-on-exec, and a chain cloned in that moment would inherit it."""
        assert self.tls is not None
        from .tls.certs import CertError

        if not self._spawns_settle():
            self.log_verbose(logline.warning("TLS certificate kept: spawns still running"), 1)
            return
        try:
            self.tls.reload()
        except CertError as error:
            self.log_verbose(logline.warning(f"TLS certificate kept: {error}"), 1)
        self._publish()

    def _spawns_settle(self, timeout: float = 5.0) -> bool:
        """Wait for the spawns in flight to be reported (none starts meanwhile: only this
        thread submits them); False if they take longer than timeout."""
        deadline = time.monotonic() + timeout
        assert self.spawns is not None
        while self.spawning and time.monotonic() < deadline:
            select.select([self.spawns.fileno()], [], [], 0.05)
            self._on_spawned()
        return not self.spawning

    def _tls_busy(self) -> bool:
        return self.tls is not None and bool(self.tls.sessions)

    def _prepare_socket(self, fd: int, family: int) -> None:
        if self.options.nodelay:
            syscalls.set_option(fd, socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.options.kill_ip_options and family == socket.AF_INET:
            syscalls.set_option(fd, socket.IPPROTO_IP, socket.IP_OPTIONS, None)

    # --- lookups -------------------------------------------------------------------------
    def _local_name(self, endpoints: Endpoints) -> str | None:
        if self.options.localname is not None:
            return self.options.localname
        return self.local_names.get(endpoints.local_ip)

    def _hold(self, fd: int, endpoints: Endpoints) -> Pending | None:
        """Hold a connection for what decides it (holding.py's bounds); None: dropped."""
        from .lookups import lookup_key

        ident = next(self.ids)
        held, evicted = self.holds.hold(ident, lookup_key(endpoints.remote_ip))
        if held is Hold.CLIENT_FULL:
            self._drop_held(fd, endpoints, "held connections")
            return None
        if evicted is not None:
            dropped = self.pending.pop(evicted)
            if dropped.cancel is not None:
                dropped.cancel()
            self._drop_held(dropped.fd, dropped.endpoints, "held connections in all")
        pending = Pending(ident, fd, endpoints)
        self.pending[ident] = pending
        return pending

    def _release(self, pending: Pending | None) -> None:
        """A held connection decided: out of the hold, its stage over."""
        if pending is not None:
            self.pending.pop(pending.ident, None)
            self.holds.release(pending.ident)
            pending.cancel = None
            pending.lookups = None

    def _start_lookups(self, pending: Pending, needs_local: bool) -> None:
        from .lookups import ConnectionLookups

        lookups = ConnectionLookups(
            self.reactor,
            self._names(),
            pending.endpoints,
            time.monotonic() + self.options.timeout,
            (needs_local, self.options.remote_host, self.options.remote_info),
            self.options.paranoid,
            functools.partial(self._lookups_done, pending),
        )
        pending.lookups = lookups
        pending.cancel = lookups.close
        lookups.start()  # may call _lookups_done at once

    def _dns(self) -> Resolver:
        """The resolver, its reactor started and watched by the loop at the first use."""
        if self.resolver is None:
            from .dns import Resolver

            self.resolver = Resolver(self._reactor())
        return self.resolver

    def _names(self) -> CachingResolver:
        """The shared, cached questions of every connection's lookups."""
        if self.names is None:
            from .dnscache import CachingResolver

            # Each held connection asks at most two questions at a time (its local name
            # and its remote name, then the name's address for -p).
            self.names = CachingResolver(
                self._dns(),
                max_in_flight=2 * self.holds.total + 2,
                failure_seconds=NAME_FAILURE_SECONDS,
            )
        return self.names

    def _drop_held(self, fd: int, endpoints: Endpoints, what: str) -> None:
        """A held connection closed, as holding.py's policy says, before its session."""
        client = unmap_ipv4(endpoints.remote_ip)
        bound = self.holds.per_client if what == "held connections" else self.holds.total
        self.log_verbose(
            logline.warning(
                f"limit of {bound} {what} reached, dropping connection from {logline.safe(client)}"
            ),
            1,
        )
        syscalls.close(fd)
        self.tls_env.pop(fd, None)

    def _lookups_done(self, pending: Pending, names: Names) -> None:
        if self.pending.get(pending.ident) is not pending:
            return  # dropped meanwhile
        pending.cancel = None
        pending.lookups = None
        if self.options.localname is None and names.local_host is not None:
            self.local_names[pending.endpoints.local_ip] = names.local_host
        local = names.local_host
        if local is None:
            local = self._local_name(pending.endpoints)
        if self.c_loop is not None:  # handed back decided: the ConnectionLoop does the rest
            self._release(pending)
            decided = self._c_loop_names(local, names.remote_host, names.remote_info)
            if self.in_c_loop_hold:  # done within hold(): its answer, before the banner
                self.c_loop_hold_answer = decided
                return
            client = unmap_ipv4(pending.endpoints.remote_ip)
            if self.options.per_ip and self.per_ip[client] >= self.options.per_ip:
                self._drop_per_ip(pending.fd, client)  # sessions started while it was held
                return
            self._c_loop_session(client, decided)
            ends = pending.endpoints
            self.c_loop.admit(
                pending.fd,
                ends.local_ip,
                ends.local_port,
                ends.remote_ip,
                ends.remote_port,
                decided,
            )
            return
        self._decide(
            pending, pending.fd, pending.endpoints, local, names.remote_host, names.remote_info
        )

    # --- the ConnectionLoop's held connections ----------------------------------------------------
    def _c_loop_hold(
        self, fd: int, local_ip: str, local_port: int, remote_ip: str, remote_port: int
    ) -> HeldNames | bool | None:
        """A connection the ConnectionLoop accepted: None when over its rate (closed here); its
        names at once when they are known (the remote name cached); else True, held
        here until admit()."""
        options = self.options
        client = unmap_ipv4(remote_ip)
        if self.rate is not None and not self.rate.allow(client):
            self._over_rate(fd, client)
            return None
        if options.per_ip and self.per_ip[client] >= options.per_ip:
            self._drop_per_ip(fd, client)
            return None
        endpoints = Endpoints(local_ip, local_port, remote_ip, remote_port)
        needs_local = options.localname is None and local_ip not in self.local_names
        if not (options.remote_info or options.paranoid or needs_local):
            local = self._local_name(endpoints)
            if not options.remote_host:
                return self._c_loop_session(client, self._c_loop_names(local, None, None))
            known, host = self._names().remembered_host(remote_ip)
            if known:
                return self._c_loop_session(client, self._c_loop_names(local, host, None))
        pending = self._hold(fd, endpoints)
        if pending is None:
            return None  # over the hold's bounds: closed
        self.in_c_loop_hold = True
        try:
            self._start_lookups(pending, needs_local)  # may end at once (ident refused)
        finally:
            self.in_c_loop_hold = False
        answer, self.c_loop_hold_answer = self.c_loop_hold_answer, None
        return True if answer is None else self._c_loop_session(client, answer)

    def _c_loop_session(self, client: str, names: HeldNames) -> HeldNames:
        """A connection the ConnectionLoop starts (or queues for a slot) with these names: counted
        for -C until ended() tells its end."""
        if self.options.per_ip:
            self.per_ip[client] += 1
        return names

    def _c_loop_session_ended(self, client: str) -> None:
        self.per_ip[client] -= 1
        if self.per_ip[client] <= 0:
            del self.per_ip[client]

    def _c_loop_names(self, local: str | None, remote: str | None, info: str | None) -> HeldNames:
        """The names as the ConnectionLoop takes them: each value, and as the -v lines show it."""
        shown = self.verbose
        return (
            None if local is None else _encode(local),
            logline.safe(local).encode("ascii") if shown else None,
            None if remote is None else _encode(remote),
            logline.safe(remote).encode("ascii") if shown else None,
            None if info is None else _encode(info),
            logline.safe(info).encode("ascii") if shown else None,
        )

    def _c_loop_screen(
        self,
        fd: int,
        local_ip: str,
        local_port: int,
        remote_ip: str,
        remote_port: int,
        local_host: bytes | None,
        remote_host: bytes | None,
        remote_info: bytes | None,
        rule_rblsmtpd: bytes | None,
        rule_remote_ip: bytes | None,
    ) -> bool:
        """The C loop's connection after its rules, for the in-core rblsmtpd: True when known
        clean now (the C loop's again); else ours: listed (its dialogue here), or held for
        the verdict and handed back with admit(..., screened=True)."""
        assert self.screen is not None
        endpoints = Endpoints(local_ip, local_port, remote_ip, remote_port)
        local, remote, info = (
            None if name is None else name.decode("utf-8", "surrogateescape")
            for name in (local_host, remote_host, remote_info)
        )
        extra = connection_environment(endpoints, local, remote, info, self.options.ipv6_env)
        for name, value in (("RBLSMTPD", rule_rblsmtpd), ("TCPREMOTEIP", rule_remote_ip)):
            if value is not None:  # the rule's own: what the chain would see
                extra[name] = value.decode("utf-8", "surrogateescape")
        client = unmap_ipv4(remote_ip)
        log_local = (local, self.logged_ip(local_ip), str(local_port))
        log_remote = (remote, self.logged_ip(remote_ip), info, str(remote_port))
        go = Decided(fd, client, log_local, log_remote, extra)
        known = self.screen.known_verdict(extra)  # the common case: no hold, no closure
        if known is not None:
            if known.line is None:
                return True
            self._c_loop_listed(go, known)
            return False
        pending = self._hold(fd, endpoints)
        if pending is None:
            self._c_loop_no_session(client)
            return False
        outcome: list[Verdict] = []  # a verdict known at once (cached) answers the ConnectionLoop

        def resume(verdict: Verdict) -> None:
            self._release(pending)
            if verdict.line is not None:
                self._c_loop_listed(go, verdict)
            elif not waiting_started:
                outcome.append(verdict)
            else:
                assert self.c_loop is not None
                names = self._c_loop_names(local, remote, info)
                self.c_loop.admit(fd, local_ip, local_port, remote_ip, remote_port, names, True)

        waiting_started = False
        waiting = self.screen.screen(fd, extra, resume)
        waiting_started = True
        if outcome:
            return True
        if waiting is not None and self.pending.get(pending.ident) is pending:
            screen = self.screen

            def cancel() -> None:  # dropped for the hold's bounds: no session after all
                screen.drop(waiting)
                self._c_loop_no_session(client)

            pending.cancel = cancel
        return False

    def _c_loop_listed(self, go: Decided, verdict: Verdict) -> None:
        self._c_loop_no_session(go.client)
        self._listed(go, verdict)

    def _c_loop_no_session(self, client: str) -> None:
        """A connection counted for -C in hold() that the screen kept from its session."""
        if self.options.per_ip:
            self._c_loop_session_ended(client)

    def _cut_lookups_short(self) -> None:
        """SIGTERM: every connection still in its lookups goes on now, with what it has."""
        for pending in list(self.pending.values()):
            lookups = pending.lookups
            if lookups is not None:
                names = lookups.names()
                lookups.close()
                self._lookups_done(pending, names)

    # --- the decision and the spawn ----------------------------------------------------
    def _decide(
        self,
        pending: Pending | None,
        fd: int,
        endpoints: Endpoints,
        local_host: str | None,
        remote_host: str | None,
        remote_info: str | None,
    ) -> None:
        """The rules' decision for a connection (held or not), then its screening."""
        client = unmap_ipv4(endpoints.remote_ip)
        log_local = (local_host, self.logged_ip(endpoints.local_ip), str(endpoints.local_port))
        log_remote = (
            remote_host,
            self.logged_ip(endpoints.remote_ip),
            remote_info,
            str(endpoints.remote_port),
        )
        decision = DEFAULT_ALLOW
        if self.rules is not None:
            found = self.rules.match(client, remote_host, remote_info)
            if isinstance(found, RulesError):
                if not (found.missing and self.options.missing_rules_ok):
                    message = logline.warning(f"dropping connection, {found}")
                    # A warning, as tcpserver's: shown unless -q.
                    refusal = Decided(
                        fd, client, log_local, log_remote, None, EXIT_DROP_STATUS, message, 1
                    )
                    self._release(pending)
                    self._admit(refusal)
                    return
            else:
                decision = found
        if decision.deny:
            line = logline.verdict("deny", os.getpid(), log_local, log_remote)
            self._release(pending)
            self._admit(Decided(fd, client, log_local, log_remote, None, EXIT_DENY_STATUS, line))
            return
        extra = connection_environment(
            endpoints, local_host, remote_host, remote_info, self.options.ipv6_env
        )
        extra.update(decision.env)  # rules may override TCP* and the server's own
        if self.tls_env:
            extra = {**self.tls_env.pop(fd, {}), **extra}
        go = Decided(fd, client, log_local, log_remote, extra)
        if self.screen is None:
            self._release(pending)
            self._admit(go)
            return
        known = self.screen.verdict_now(extra)
        if known is not None:
            self._screened(pending, go, known)
            return
        if pending is None:
            pending = self._hold(fd, endpoints)
            if pending is None:
                return
        self._screen(pending, go)

    def _spawn_chain(
        self,
        fd: int,
        client: str,
        log_local: LogLocal,
        log_remote: LogRemote,
        extra: dict[str, str],
    ) -> None:
        ucspi_fd = -1
        if self.tls is not None and self.tls.config.mode.starttls:
            # The chain talks to the SMTP shim, which offers STARTTLS on the client's side;
            # or (UCSPI-TLS) offers it itself and asks for TLS on its fd 3.
            session = self.tls.plain(self._reactor(), fd)
            fd = session.chain_end()
            if self.tls.config.mode.ucspi:
                from .tls.service import UCSPI_ENVIRONMENT  # loaded with TLS already

                ucspi_fd = session.ucspi_end()
                extra = {**extra, **UCSPI_ENVIRONMENT}
        job = SpawnJob(fd, client, log_local, log_remote)
        ident = next(self.ids)
        self.counters.served += 1  # taken back if the chain cannot be run
        self._publish()
        assert self.spawns is not None, "start() first"
        try:
            self.spawns.submit(ident, extra, fd, ucspi_fd)
        except Exception as error:  # a bad variable name from the rules: this one only
            syscalls.close(fd)
            if ucspi_fd != -1:
                syscalls.close(ucspi_fd)
            self._spawn_failed(job, f"{type(error).__name__}: {error}")
            return
        self.spawning[ident] = job

    def _on_spawned(self) -> None:
        """The pool's reports: book each child (or end its session if the loop reaped it
        already), or refuse the connection whose chain could not be run."""
        assert self.spawns is not None, "start() first"
        for ident, pid, error in self.spawns.finished():
            job = self.spawning.pop(ident)
            if error is not None:
                # a child that could not exec, reaped by the loop before the pool could
                self.exited_early.pop(pid, None)
                self._spawn_failed(job, error)
                continue
            if self.verbose:  # before its end line, as tcpserver's child logs them
                self.log_verbose(logline.pid_from(pid, job.client))
                self.log_verbose(logline.verdict("ok", pid, job.log_local, job.log_remote))
            status = self.exited_early.pop(pid, None)
            if status is None:
                self.children[pid] = job.client
            else:
                self._child_over(pid, job.client, status)
        if not self.spawning:  # every spawn reported: the rest were not our children
            self.exited_early.clear()

    def _spawn_failed(self, job: SpawnJob, error: str) -> None:
        self.counters.served -= 1
        program = logline.safe(os.fsdecode(self.program[0]))
        message = logline.warning(f"unable to run {program}: {error}")
        self._refuse(None, job.client, EXIT_DROP_STATUS, message, level=1)

    # --- screening: the in-core rblsmtpd and the rate limit ----------------
    def _screen(self, pending: Pending, go: Decided) -> None:
        """Held for the in-core rblsmtpd's verdict."""
        assert self.screen is not None and go.extra is not None
        screen = self.screen
        waiting = screen.screen(
            go.fd, go.extra, lambda verdict: self._screened(pending, go, verdict)
        )
        if waiting is not None and self.pending.get(pending.ident) is pending:
            pending.cancel = functools.partial(screen.drop, waiting)

    def _screened(self, pending: Pending | None, go: Decided, verdict: Verdict) -> None:
        self._release(pending)
        if verdict.line is None:
            self._admit(go)
            return
        self._listed(go, verdict)

    def _listed(self, go: Decided, verdict: Verdict) -> None:
        """A listed client: rblsmtpd's dialogue here, no session, no -c slot."""
        from .rbl import rblsmtpd_log

        assert verdict.line is not None

        # Logged as tcpserver and rblsmtpd would; the dialogue needs no -c slot.
        assert self.screen is not None and go.extra is not None
        pid = os.getpid()
        self.counters.denied += 1
        if self.verbose:
            self.log_verbose(logline.pid_from(pid, go.client))
            self.log_verbose(logline.verdict("ok", pid, go.log_local, go.log_remote))
        self.log_verbose(rblsmtpd_log(go.extra.get("TCPREMOTEIP", ""), pid, verdict.line), 0)
        if self.verbose:
            self.log_verbose(logline.end(pid, 0))
        self._publish()
        self.screen.converse(go.fd, verdict.line)

    def _over_rate(self, fd: int, client: str) -> None:
        assert self.rate is not None
        self.log_verbose(
            logline.warning(
                f"rate limit {self.rate.per_minute}/min reached, "
                f"dropping connection from {logline.safe(client)}"
            ),
            1,
        )
        if self.options.rate_reply:
            from .ratelimit import REPLY_421

            syscalls.send_now(fd, REPLY_421)
        syscalls.close(fd)

    def _screening(self) -> bool:
        return self.screen is not None and self.screen.active

    def _refuse(self, fd: int | None, client: str, status: int, line: str, level: int = 2) -> None:
        """Close (unless a spawner did) without running anything; log it the way
        tcpserver's child would."""
        if fd is not None:
            syscalls.close(fd)
            self.tls_env.pop(fd, None)
        pid = os.getpid()
        self.log_verbose(logline.pid_from(pid, client))
        self.log_verbose(line, level)
        self.log_verbose(logline.end(pid, status))
        self._session_over(client)

    def _session_over(self, client: str) -> None:
        self.running -= 1
        if self.options.per_ip:
            self.per_ip[client] -= 1
            if self.per_ip[client] <= 0:
                del self.per_ip[client]
        self._status_changed()
        self._admit_waiting()
        self._set_accepting(self._may_accept())

    def _admit_waiting(self) -> None:
        """Sessions for decided connections while slots are free; a session that ends
        at once (a deny) comes back here: the outer call goes on with the queue."""
        if self.admitting:
            return
        self.admitting = True
        try:
            while self.admitted and self.running < self.options.limit:
                self._admit(self.admitted.popleft())
        finally:
            self.admitting = False

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            client = self.children.pop(pid, None)
            if client is None:
                # Its spawn is not reported yet; or, with none in flight, it is not a
                # child we spawned (one from before our exec, an orphan we got as a pid
                # 1): forgotten, or its pid coming back for a spawn would end that session.
                if self.spawning:
                    self.exited_early[pid] = status
                continue
            self._child_over(pid, client, status)

    def _child_over(self, pid: int, client: str, status: int) -> None:
        if self.verbose:
            self.log_verbose(logline.end(pid, status))
        self._session_over(client)

    # --- signals and the loop ------------------------------------------------------------
    def _watch(self, fd: int, handler: Callable[[], None]) -> None:
        assert self.poller is not None, "start() first"
        self.poller.register(fd, select.EPOLLIN)
        self.handlers[fd] = handler

    def _unwatch(self, fd: int) -> None:
        assert self.poller is not None, "start() first"
        self.poller.unregister(fd)
        del self.handlers[fd]

    def _on_wake(self) -> None:
        # One read: what is left wakes the loop again, cheaper than a read that fails.
        assert self.wake_read is not None, "start() first"
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
                    if self.c_loop is not None:
                        self._give_c_loop_rules(self.c_loop)
                self.local_names.clear()
                if self.resolver is not None:
                    self.resolver.reload()
                if self.names is not None:
                    self.names.forget()
                if self.screen is not None:
                    self.screen.forget()
                if self.tls is not None:
                    self._tls_reload()
                self._judge()
                self.log_verbose(f"{logline.PROGRAM}: SIGHUP: rules and names reloaded\n", 2)
                self.notifier.send("READY=1")
            elif self.stop_at is None:
                self.notifier.send("STOPPING=1")
                drain = self.options.drain if self.under_systemd else 0.0
                self.stop_at = time.monotonic() + drain
                self._set_accepting(False)
                if self.c_loop is not None:
                    self.c_loop.stop()  # out of its epoll set before they are closed
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
            or self._tls_busy()
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
        if self.pending or self._screening() or self._tls_busy():
            lookup_deadline = self.reactor.next_deadline()
            if lookup_deadline is not None:
                candidates.append(lookup_deadline)
        return max(0.0, min(candidates) - time.monotonic()) if candidates else -1

    def _busy(self) -> bool:
        if self.c_loop is not None:
            running, _, _, waiting, _ = self.c_loop.counts()
            return bool(running or waiting or self.pending)
        return bool(
            self.children or self.pending or self.spawning or self.admitted or self._tls_busy()
        )

    def serve(self) -> int:
        """The loop, from READY=1 until the last session after SIGTERM; start() first."""
        assert self.poller is not None and self.wake_write is not None, "start() first"
        signal.set_wakeup_fd(self.wake_write.fileno(), warn_on_full_buffer=False)
        for number in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
            # SIGHUP or SIGINT ignored by our parent (nohup, a background job) stays
            # ignored, here and in the children (exec keeps only ignored dispositions):
            # tcpserver's children keep them so.
            if number != signal.SIGTERM and signal.getsignal(number) == signal.SIG_IGN:
                continue
            signal.signal(number, self._on_signal)
        signal.signal(signal.SIGCHLD, self._on_sigchld)
        self._judge()
        self.notifier.send("READY=1")
        if self.c_loop is not None:
            return self._serve_c_loop(self.c_loop)
        self._set_accepting(True)
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
            if not self._timed():
                continue
            now = time.monotonic()
            if self.pending or self._screening() or self._tls_busy():
                self.reactor.run_timers(now)
            if self.backoff_until is not None and now >= self.backoff_until:
                self.backoff_until = None
                self._set_accepting(self._may_accept())
            self.notifier.flush(now)
            if self.stop_at is not None and (now >= self.stop_at or not self._busy()):
                return 0

    def _serve_c_loop(self, c_loop: ConnectionLoop) -> int:
        """serve() when the ConnectionLoop does the connections: between its returns, the signals,
        the back-off, STATUS=, the lookups of held connections and the end of the drain."""
        run_outcomes = syscalls.EXTENSION
        assert run_outcomes is not None
        self._status_changed()
        while True:
            timeout = self._timeout()
            if self.notifier.enabled:  # the ConnectionLoop's counts reach STATUS= this often
                interval = self.notifier.interval
                timeout = interval if timeout < 0 else min(timeout, interval)
            with contextlib.suppress(OSError, ValueError):
                self.log.flush()  # before the ConnectionLoop writes to the same fd
            outcome, number = c_loop.run(timeout)
            accepted = c_loop.counts()[4]
            if accepted != self.accepted:
                self.accepted = accepted
                self._accepted()
            if outcome == run_outcomes.RUN_RESOURCE:
                self._out_of_resources(number)
                c_loop.pause(True)
            if outcome == run_outcomes.RUN_WATCHED:
                self.reactor.run_ready()
            if self.signals:
                self._handle_signals()
            now = time.monotonic()
            if self.pending or self._screening():
                self.reactor.run_timers(now)
            if self.backoff_until is not None and now >= self.backoff_until:
                self.backoff_until = None
                c_loop.pause(False)
            self._publish()
            self.notifier.flush(now)
            if self.stop_at is not None and (now >= self.stop_at or not self._busy()):
                return 0


def _fileno(stream: TextIO) -> int | None:
    """The fd under a log stream, for the ConnectionLoop to write to; None for one without."""
    try:
        return stream.fileno()
    except (OSError, ValueError, AttributeError):
        return None


def _encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def _fixed_local(listener: socket.socket) -> tuple[str, int] | None:
    """The local address every connection on this listener has, unless it is a wildcard."""
    address = listener.getsockname()
    if str(address[0]) in ("0.0.0.0", "::"):
        return None
    return str(address[0]).partition("%")[0], int(address[1])
