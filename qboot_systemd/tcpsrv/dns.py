"""A small non-blocking DNS stub resolver, driven by a Reactor (reactor.py).

As djb's clients do, it asks the servers in $DNSCACHEIP, or else the nameservers of
/etc/resolv.conf (127.0.0.1 when there are none), over UDP: a fresh socket and a random
query id per attempt, an answer only counts when it comes from the server asked (connected
socket) with the same id and question; attempts wait 1, 3, 11, 45 s per round of servers,
all inside the caller's absolute deadline. A truncated answer is no answer (no TCP).

Pure parts (names, packets) are plain functions; DnsQuery is one question's lifecycle.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import select
import socket
import struct
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from .reactor import Reactor, Timer

TYPE_A = 1
TYPE_CNAME = 5
TYPE_PTR = 12
TYPE_SOA = 6
TYPE_TXT = 16
TYPE_AAAA = 28
CLASS_IN = 1
RCODE_OK = 0
RCODE_SERVFAIL = 2
RCODE_NXDOMAIN = 3
ATTEMPT_TIMEOUTS = (1.0, 3.0, 11.0, 45.0)  # djb's dns_transmit
MAX_NAME = 255  # wire bytes, RFC 1035
MAX_LABEL = 63
MAX_SERVERS = 16
RESOLV_CONF = "/etc/resolv.conf"
_RESOLV_CONF_CAP = 65536
_RECV_SIZE = 4096  # no EDNS is sent: servers answer in 512 bytes
_HEADER = struct.Struct("!HHHHHH")
_FIXED = struct.Struct("!HHIH")  # type, class, ttl, rdlength
_FLAG_QR = 0x8000
_FLAG_TC = 0x0200
_FLAG_RD = 0x0100
_SAFE_NAME_BYTES = frozenset(b"abcdefghijklmnopqrstuvwxyz0123456789-_")


class DnsFormatError(ValueError):
    """A malformed packet (bad pointer, name too long, record past the end)."""


# --- servers ---------------------------------------------------------------------------
def parse_servers(environ: Mapping[str, str], resolv_conf: str) -> tuple[str, ...]:
    """$DNSCACHEIP (addresses separated by spaces or commas) wins over resolv.conf."""
    if environ.get("DNSCACHEIP"):
        words = environ["DNSCACHEIP"].replace(",", " ").split()
    else:
        words = []
        for line in resolv_conf.splitlines():
            fields = line.split()
            if len(fields) >= 2 and fields[0] == "nameserver":
                words.append(fields[1])
    servers = []
    for word in words:
        try:
            servers.append(str(ipaddress.ip_address(word.partition("%")[0])))
        except ValueError:
            continue
    return tuple(servers[:MAX_SERVERS]) or ("127.0.0.1",)


def load_servers(environ: Mapping[str, str] | None = None) -> tuple[str, ...]:
    environ = os.environ if environ is None else environ
    text = ""
    if not environ.get("DNSCACHEIP"):
        try:
            fd = os.open(RESOLV_CONF, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            try:
                text = os.read(fd, _RESOLV_CONF_CAP).decode("ascii", "replace")
            finally:
                os.close(fd)
        except OSError:
            pass
    return parse_servers(environ, text)


# --- names -----------------------------------------------------------------------------
def encode_name(dotted: str) -> bytes:
    """`mx.example.com` as wire labels; ValueError for an empty or too long label."""
    wire = bytearray()
    for label in dotted.rstrip(".").split("."):
        raw = label.encode("ascii")
        if not raw or len(raw) > MAX_LABEL:
            raise ValueError(f"bad DNS label in {dotted!r}")
        wire.append(len(raw))
        wire += raw
    wire.append(0)
    if len(wire) > MAX_NAME:
        raise ValueError(f"DNS name too long: {dotted!r}")
    return bytes(wire)


def reverse_name(ip: str) -> bytes:
    """The in-addr.arpa or ip6.arpa name of ip (an IPv4-mapped address as IPv4)."""
    address = ipaddress.ip_address(ip)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return encode_name(address.reverse_pointer)


def to_dotted(wire: bytes) -> str:
    """djb's dns_domain_todot: lower case; bytes other than [a-z0-9_-] as \\ooo, so a
    name never carries a NUL, a control character, '=' or a non-ASCII byte."""
    if wire == b"\0":
        return "."
    labels = []
    position = 0
    while wire[position]:
        length = wire[position]
        label = wire[position + 1 : position + 1 + length].lower()
        labels.append("".join(chr(b) if b in _SAFE_NAME_BYTES else f"\\{b:03o}" for b in label))
        position += 1 + length
    return ".".join(labels)


def names_equal(first: bytes, second: bytes) -> bool:
    return first.lower() == second.lower()


def read_name(packet: bytes, offset: int) -> tuple[bytes, int]:
    """The name at offset (compression followed) and the offset after it. A pointer must
    point before the label that holds it, so a packet cannot make it loop."""
    wire = bytearray()
    end: int | None = None
    position = offset
    limit = offset  # pointers must go below this
    while True:
        if position >= len(packet):
            raise DnsFormatError("name past the end")
        length = packet[position]
        if length & 0xC0 == 0xC0:
            if position + 1 >= len(packet):
                raise DnsFormatError("pointer past the end")
            target = ((length & 0x3F) << 8) | packet[position + 1]
            if end is None:
                end = position + 2
            if target >= limit:
                raise DnsFormatError("compression pointer does not point back")
            position = limit = target
            continue
        if length & 0xC0:
            raise DnsFormatError("unknown label type")
        if position + 1 + length > len(packet):
            raise DnsFormatError("label past the end")
        wire += packet[position : position + 1 + length]
        if len(wire) > MAX_NAME:
            raise DnsFormatError("name too long")
        position += 1 + length
        if length == 0:
            return bytes(wire), (position if end is None else end)


# --- packets ---------------------------------------------------------------------------
def build_query(query_id: int, name: bytes, qtype: int) -> bytes:
    return _HEADER.pack(query_id, _FLAG_RD, 1, 0, 0, 0) + name + struct.pack("!HH", qtype, CLASS_IN)


@dataclass(frozen=True)
class Record:
    name: bytes
    rtype: int
    ttl: int
    data: bytes  # raw rdata (A: 4 bytes, AAAA: 16, TXT: length-prefixed strings)
    target: bytes | None = None  # PTR and CNAME: the name, decompressed


@dataclass(frozen=True)
class Answer:
    rcode: int
    truncated: bool
    records: tuple[Record, ...]
    # For an answer without records: how long the zone says to remember that (RFC 2308:
    # the lesser of its SOA's TTL and MINIMUM); None when no SOA came with it.
    negative_ttl: int | None = None

    @property
    def final(self) -> bool:
        """An answer to keep (else: ask the next server)."""
        return self.truncated or self.rcode in (RCODE_OK, RCODE_NXDOMAIN)

    def names(self, rtype: int = TYPE_PTR) -> list[bytes]:
        return [r.target for r in self.records if r.rtype == rtype and r.target is not None]

    def texts(self) -> list[bytes]:
        """Each TXT record's strings joined, as rblsmtpd reads them; a string that runs
        past its record ends the record there."""
        found = []
        for record in self.records:
            if record.rtype != TYPE_TXT:
                continue
            data, position, parts = record.data, 0, []
            while position < len(data):
                length = data[position]
                parts.append(data[position + 1 : position + 1 + length])
                position += 1 + length
            found.append(b"".join(parts))
        return found

    def addresses(self) -> list[str]:
        found = []
        for record in self.records:
            if record.rtype == TYPE_A and len(record.data) == 4:
                found.append(socket.inet_ntop(socket.AF_INET, record.data))
            elif record.rtype == TYPE_AAAA and len(record.data) == 16:
                found.append(socket.inet_ntop(socket.AF_INET6, record.data))
        return found


def parse_response(packet: bytes, query_id: int, name: bytes, qtype: int) -> Answer | None:
    """The answer to our question, or None when the packet is not one (wrong id or
    question, not a response): the query keeps waiting, as djb's does. A packet that is
    the answer to our question but malformed past it counts as that server failing (the
    next one is asked at once), not as silence that costs the client the whole -t."""
    try:
        position = _answers_our_question(packet, query_id, name, qtype)
    except (DnsFormatError, struct.error):
        return None
    if position is None:
        return None
    try:
        return _parse(packet, position)
    except (DnsFormatError, struct.error):
        return Answer(RCODE_SERVFAIL, False, ())


def _answers_our_question(packet: bytes, query_id: int, name: bytes, qtype: int) -> int | None:
    """Where the answer section starts, if packet is a response to our question."""
    if len(packet) < _HEADER.size:
        return None
    answer_id, flags, questions, _, _, _ = _HEADER.unpack_from(packet, 0)
    if answer_id != query_id or not flags & _FLAG_QR or (flags >> 11) & 0xF or questions != 1:
        return None
    asked, position = read_name(packet, _HEADER.size)
    asked_type, asked_class = struct.unpack_from("!HH", packet, position)
    if not names_equal(asked, name) or asked_type != qtype or asked_class != CLASS_IN:
        return None
    return position + 4


def _parse(packet: bytes, position: int) -> Answer:
    _, flags, _, answers, _, _ = _HEADER.unpack_from(packet, 0)
    rcode = flags & 0xF
    if flags & _FLAG_TC:
        return Answer(rcode, True, ())
    records = []
    if rcode == RCODE_OK:
        for _ in range(answers):
            owner, position = read_name(packet, position)
            rtype, rclass, ttl, length = _FIXED.unpack_from(packet, position)
            position += _FIXED.size
            if position + length > len(packet):
                raise DnsFormatError("record past the end")
            if rclass == CLASS_IN:
                target = None
                if rtype in (TYPE_PTR, TYPE_CNAME):
                    target, _ = read_name(packet, position)
                records.append(
                    Record(owner, rtype, ttl, packet[position : position + length], target)
                )
            position += length
    return Answer(rcode, False, tuple(records), _negative_ttl(packet, position, flags, records))


def _negative_ttl(packet: bytes, position: int, flags: int, records: list[Record]) -> int | None:
    """The SOA of the authority section of a NXDOMAIN or NODATA answer, if any (a broken
    authority section only means: not remembered)."""
    try:
        return _soa_ttl(packet, position, flags, records)
    except (DnsFormatError, struct.error):
        return None


def _soa_ttl(packet: bytes, position: int, flags: int, records: list[Record]) -> int | None:
    if records or (flags & 0xF) not in (RCODE_OK, RCODE_NXDOMAIN):
        return None
    _, _, _, answers, authorities, _ = _HEADER.unpack_from(packet, 0)
    if flags & 0xF == RCODE_NXDOMAIN:  # its answer section (a CNAME chain) was not read
        for _ in range(answers):
            _, position = read_name(packet, position)
            position += _FIXED.size + _FIXED.unpack_from(packet, position)[3]
    for _ in range(authorities):
        _, position = read_name(packet, position)
        rtype, rclass, ttl, length = _FIXED.unpack_from(packet, position)
        position += _FIXED.size
        if rtype == TYPE_SOA and rclass == CLASS_IN and length >= 20:
            minimum = int.from_bytes(packet[position + length - 4 : position + length], "big")
            return min(int(ttl), minimum)
        position += length
    return None


# --- one question ----------------------------------------------------------------------
class DnsQuery:
    """One question asked of the servers in turn until an answer or the deadline; done()
    runs once, with the Answer or None. close() ends it without calling done()."""

    def __init__(
        self,
        reactor: Reactor,
        servers: tuple[str, ...],
        name: bytes,
        qtype: int,
        deadline: float,
        done: Callable[[Answer | None], None],
    ) -> None:
        self._reactor = reactor
        self._servers = servers
        self.name = name
        self.qtype = qtype
        self._deadline = deadline
        self._done: Callable[[Answer | None], None] | None = done
        self._attempt = 0
        self._socket: socket.socket | None = None
        self._timer: Timer | None = None
        self._id = 0

    def start(self) -> None:
        self._next_attempt()

    def close(self) -> None:
        self._done = None
        self._drop_socket()

    def _drop_socket(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._socket is not None:
            self._reactor.unwatch(self._socket.fileno())
            self._socket.close()
            self._socket = None

    def _finish(self, answer: Answer | None) -> None:
        done, self._done = self._done, None
        self._drop_socket()
        if done is not None:
            done(answer)

    def _next_attempt(self) -> None:
        while self._done is not None:
            self._drop_socket()
            now = time.monotonic()
            round_, index = divmod(self._attempt, len(self._servers))
            if round_ >= len(ATTEMPT_TIMEOUTS) or now >= self._deadline:
                self._finish(None)
                return
            self._attempt += 1
            server = self._servers[index]
            family = socket.AF_INET6 if ":" in server else socket.AF_INET
            try:
                sock = socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK)
            except OSError:
                self._finish(None)  # out of fds: give up rather than spin
                return
            self._socket = sock
            self._id = int.from_bytes(os.urandom(2), "big")  # secrets would load libcrypto: 3 MB
            try:
                sock.connect((server, 53))
                sock.send(build_query(self._id, self.name, self.qtype))
            except OSError:
                continue  # unreachable: the next server at once
            self._reactor.watch(sock.fileno(), select.EPOLLIN, self._readable)
            wait = min(self._deadline, now + ATTEMPT_TIMEOUTS[round_])
            self._timer = self._reactor.call_at(wait, self._next_attempt)
            return

    def _readable(self, _events: int) -> None:
        sock = self._socket
        for _ in range(8):  # a few stray packets per wake-up, then back to the loop
            if sock is None or sock is not self._socket:
                return
            try:
                packet = sock.recv(_RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                if error.errno in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH):
                    self._next_attempt()
                    return
                continue
            answer = parse_response(packet, self._id, self.name, self.qtype)
            if answer is None:
                continue
            if answer.final:
                self._finish(answer)
            else:
                self._next_attempt()  # SERVFAIL, REFUSED, ...: the next server
            return


class Resolver:
    """Asks questions for whoever drives the Reactor; servers re-read by reload()."""

    def __init__(self, reactor: Reactor, servers: tuple[str, ...] | None = None) -> None:
        self.reactor = reactor
        self.servers = servers if servers is not None else load_servers()

    def reload(self) -> None:
        self.servers = load_servers()

    def query(
        self, name: bytes, qtype: int, deadline: float, done: Callable[[Answer | None], None]
    ) -> DnsQuery:
        """A question not asked yet: start() asks it (done may run within start())."""
        return DnsQuery(self.reactor, self.servers, name, qtype, deadline, done)

    def ask(
        self, name: bytes, qtype: int, deadline: float, done: Callable[[Answer | None], None]
    ) -> DnsQuery:
        query = self.query(name, qtype, deadline, done)
        query.start()
        return query
