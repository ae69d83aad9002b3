"""A connection's names: reverse DNS (-h, -p), the local name, ident (-r, RFC 1413).

tcpserver does these in its forked child, one after the other. We run them side by side
as non-blocking sockets in the server's own loop (a Reactor), so a slow identd or
resolver costs only its own connection, never a thread, and all of them share the
connection's one absolute deadline (-t). What comes back is cut as tcpserver cuts it:
ident answers by remoteinfo.c's rules (at most 257 bytes, up to a NUL), DNS names
escaped by djb's dns_domain_todot (only [a-z0-9_-] and '.' stay as they are).
"""

from __future__ import annotations

import errno
import select
import socket
from collections.abc import Callable
from typing import NamedTuple

from ..addresses import unmap_ipv4
from . import dns
from .dnscache import CachingResolver, Waiter
from .environ import Endpoints
from .reactor import Reactor, Timer

IDENT_PORT = 113
IDENT_VALUE_CAP = 257  # remoteinfo.c stops once it holds more than 256 bytes
IDENT_READ_CAP = 1024  # we stop reading there; tcpserver reads until -t


class Names(NamedTuple):
    local_host: str | None
    remote_host: str | None
    remote_info: str | None


NO_NAMES = Names(None, None, None)


def ident_value(answer: bytes) -> bytes | None:
    """TCPREMOTEINFO from what the identd sent, as remoteinfo.c reads it: spaces, tabs
    and CRs dropped, the bytes after the third colon, up to the newline or 257 bytes.
    None until a newline or the cap (an identd that closes before: no answer)."""
    cleaned = answer.translate(None, b" \t\r")
    start = 0
    for _ in range(3):
        colon = cleaned.find(b":", start)
        newline = cleaned.find(b"\n", start)
        if newline != -1 and (colon == -1 or newline < colon):
            return b""  # the line ended early: set, and empty
        if colon == -1:
            return None
        start = colon + 1
    newline = cleaned.find(b"\n", start)
    value = cleaned[start:] if newline == -1 else cleaned[start:newline]
    if len(value) >= IDENT_VALUE_CAP:
        return value[:IDENT_VALUE_CAP]
    return None if newline == -1 else value


def as_c_string(value: bytes) -> str:
    """What a C program holding the bytes sees: everything up to the first NUL."""
    return value.partition(b"\0")[0].decode("utf-8", "surrogateescape")


class IdentQuery:
    """Ask the client's identd who owns the connection; done(value or None) runs once.
    close() ends it without calling done()."""

    def __init__(
        self,
        reactor: Reactor,
        remote: tuple[str, int],
        local: tuple[str, int],
        done: Callable[[str | None], None],
    ) -> None:
        self._reactor = reactor
        self._remote = (unmap_ipv4(remote[0]), remote[1])
        self._local = (unmap_ipv4(local[0]), local[1])
        self._done: Callable[[str | None], None] | None = done
        self._socket: socket.socket | None = None
        self._request = f"{remote[1]} , {local[1]}\r\n".encode()
        self._answer = b""

    def start(self) -> None:
        family = socket.AF_INET6 if ":" in self._remote[0] else socket.AF_INET
        try:
            sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        except OSError:
            self._finish(None)
            return
        self._socket = sock
        try:
            sock.bind((self._local[0], 0))
            code = sock.connect_ex((self._remote[0], IDENT_PORT))
        except OSError:
            self._finish(None)
            return
        if code not in (0, errno.EINPROGRESS):
            self._finish(None)
            return
        self._reactor.watch(sock.fileno(), select.EPOLLOUT, self._writable)

    def close(self) -> None:
        self._done = None
        self._drop_socket()

    def _drop_socket(self) -> None:
        if self._socket is not None:
            self._reactor.unwatch(self._socket.fileno())
            self._socket.close()
            self._socket = None

    def _finish(self, value: str | None) -> None:
        done, self._done = self._done, None
        self._drop_socket()
        if done is not None:
            done(value)

    def _writable(self, _events: int) -> None:
        sock = self._socket
        assert sock is not None
        try:
            if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                self._finish(None)
                return
            sent = sock.send(self._request)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._finish(None)
            return
        self._request = self._request[sent:]
        if not self._request:
            self._reactor.watch(sock.fileno(), select.EPOLLIN, self._readable)

    def _readable(self, _events: int) -> None:
        sock = self._socket
        assert sock is not None
        try:
            chunk = sock.recv(IDENT_READ_CAP - len(self._answer))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._finish(None)
            return
        self._answer += chunk
        value = ident_value(self._answer)
        if value is not None:
            self._finish(as_c_string(value))
        elif not chunk or len(self._answer) >= IDENT_READ_CAP:
            self._finish(None)  # closed before a newline, or too long: no answer


def literal_ipv4s(dotted: str) -> set[str] | None:
    """djb's dns_ip4 takes a name of only digits, dots and brackets as addresses
    without asking DNS; the paranoid check does the same."""
    if any(ch not in "0123456789.[]" for ch in dotted):
        return None
    codes = bytearray()
    code = 0
    for ch in dotted + ".":
        if ch in "[]":
            continue
        if ch == ".":
            codes.append(code)
            code = 0
        else:
            code = (code * 10 + int(ch)) & 0xFF
    return {
        socket.inet_ntop(socket.AF_INET, bytes(codes[i : i + 4]))
        for i in range(0, len(codes) - len(codes) % 4, 4)
    }


class ConnectionLookups:
    """Everything one connection asks for, side by side under one deadline; done(Names)
    runs once, with what arrived in time. close() cancels without calling done()."""

    def __init__(
        self,
        reactor: Reactor,
        resolver: dns.Resolver | CachingResolver,
        endpoints: Endpoints,
        deadline: float,
        want: tuple[bool, bool, bool],  # local name, remote name, ident
        paranoid: bool,
        done: Callable[[Names], None],
    ) -> None:
        self._reactor = reactor
        self._resolver = resolver
        self._endpoints = endpoints
        self._deadline = deadline
        self._want_local, self._want_host, self._want_info = want
        self._paranoid = paranoid
        self._done: Callable[[Names], None] | None = done
        self._open: dict[str, dns.DnsQuery | Waiter | IdentQuery] = {}
        self._timer: Timer | None = None
        self.local_host: str | None = None
        self.remote_host: str | None = None
        self.remote_info: str | None = None
        self._starting = False

    def start(self) -> None:
        # A query can fail within its own start() (no route, no fds) and call back at
        # once: each is registered before it starts, and nothing ends before all started.
        self._starting = True
        self._timer = self._reactor.call_at(self._deadline, self._expire)
        ends = self._endpoints
        if self._want_local:
            self._ask_ptr("local", ends.local_ip, self._local_done)
        if self._want_host:
            self._ask_ptr("remote", ends.remote_ip, self._remote_done)
        if self._want_info:
            ident = IdentQuery(
                self._reactor,
                (ends.remote_ip, ends.remote_port),
                (ends.local_ip, ends.local_port),
                self._info_done,
            )
            self._begin("ident", ident)
        self._starting = False
        self._check()

    def _begin(self, key: str, query: dns.DnsQuery | Waiter | IdentQuery) -> None:
        self._open[key] = query
        query.start()

    def names(self) -> Names:
        return Names(self.local_host, self.remote_host, self.remote_info)

    def close(self) -> None:
        """Stop every query; done() is not called."""
        self._done = None
        for query in list(self._open.values()):
            query.close()
        self._open.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _ask_ptr(self, key: str, ip: str, done: Callable[[dns.Answer | None], None]) -> None:
        try:
            name = dns.reverse_name(unmap_ipv4(ip))
        except ValueError:
            return
        self._begin(key, self._resolver.query(name, dns.TYPE_PTR, self._deadline, done))

    def _first_name(self, answer: dns.Answer | None) -> bytes | None:
        names = answer.names(dns.TYPE_PTR) if answer is not None else []
        return names[0] if names else None

    def _local_done(self, answer: dns.Answer | None) -> None:
        self._open.pop("local", None)
        wire = self._first_name(answer)
        self.local_host = dns.to_dotted(wire) if wire is not None else None
        self._check()

    def _remote_done(self, answer: dns.Answer | None) -> None:
        self._open.pop("remote", None)
        wire = self._first_name(answer)
        if wire is not None:
            dotted = dns.to_dotted(wire)
            if not self._paranoid:
                self.remote_host = dotted
            else:
                self._verify(wire, dotted)
        self._check()

    def _verify(self, wire: bytes, dotted: str) -> None:
        """-p: keep the name only if it maps back to the client's address."""
        ip = unmap_ipv4(self._endpoints.remote_ip)
        six = ":" in ip
        literal = None if six else literal_ipv4s(dotted)
        if literal is not None:
            self.remote_host = dotted if ip in literal else None
            return

        def forward_done(answer: dns.Answer | None) -> None:
            self._open.pop("forward", None)
            found = {str(ipaddress_of(a)) for a in answer.addresses()} if answer else set()
            if str(ipaddress_of(ip)) in found:
                self.remote_host = dotted
            self._check()

        qtype = dns.TYPE_AAAA if six else dns.TYPE_A
        self._begin("forward", self._resolver.query(wire, qtype, self._deadline, forward_done))

    def _info_done(self, value: str | None) -> None:
        self._open.pop("ident", None)
        self.remote_info = value
        self._check()

    def _check(self) -> None:
        if not self._open and not self._starting and self._done is not None:
            self._end()

    def _expire(self) -> None:
        self._timer = None
        self._end()

    def _end(self) -> None:
        done = self._done
        self.close()
        if done is not None:
            done(self.names())


def ipaddress_of(text: str) -> str:
    """A canonical text form, so `::1` and `0::1` compare equal."""
    try:
        return socket.inet_ntop(socket.AF_INET6, socket.inet_pton(socket.AF_INET6, text))
    except OSError:
        return text


def lookup_key(ip: str) -> str:
    """Whose lookups count together: an IPv4 address, or an IPv6 /64."""
    ip = unmap_ipv4(ip)
    if ":" not in ip:
        return ip
    try:
        packed = socket.inet_pton(socket.AF_INET6, ip)
    except OSError:
        return ip
    return socket.inet_ntop(socket.AF_INET6, packed[:8] + bytes(8)) + "/64"
