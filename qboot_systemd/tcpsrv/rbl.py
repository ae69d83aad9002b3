"""ucspi-tcp's rblsmtpd as pure parts: its command line, its decision, its SMTP dialogue.

Facts from rblsmtpd 0.88 (as Debian's ucspi-tcp-ipv6 builds it), which these follow:
- Options are read in order with getopt "bBcCt:r:a:", and each -r / -a is looked up as it
  is read: -b/-B/-c/-C only change the sources after them. A source is tried only while
  nothing is decided; the first that decides wins.
- RBLSMTPD (environment, usually from the rules) decides first: set and empty accepts,
  `-text` answers 553 text, any other text 451 text.
- -r base: listed when the TXT records of <reversed TCPREMOTEIP>.base hold any text (all
  of them joined); the text is the message. 553 with -b, else 451. A failed lookup
  (temporary) lists with "temporary RBL lookup error" under -c, is ignored under -C, and
  either way makes any later answer a 451.
- -a base: anti-listed (accepted) when that name has an A record; a failed lookup accepts
  under -C, and under -c only makes a later answer a 451.
- The reversed address is TCPREMOTEIP's dot-separated parts backwards, each followed by a
  dot (an IPv6 address has no dots: it stays as it is).
- The answer line is `451 ` or `553 ` and at most 200 bytes of text, bytes outside 32..126
  replaced by '?'. With -t 0 that line is all a client gets. Otherwise: `220
  rblsmtpd.local`, then per line (up to LF, one CR before it dropped, the command being
  what comes before the first space, ASCII case ignored; a NUL is a byte like another,
  qmail's commands.c makes it a LF): QUIT `221 rblsmtpd.local` and
  the end; HELO, EHLO, MAIL, RSET, NOOP `250 rblsmtpd.local`; anything else the answer
  line. End of input ends it without a word; so does the timeout (-t, default 60 s).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence

from .._startup import NamedTuple
from ..tcpflags import TcpFlagsError, getopt

GREETING = b"220 rblsmtpd.local\r\n"
OK_REPLY = b"250 rblsmtpd.local\r\n"
QUIT_REPLY = b"221 rblsmtpd.local\r\n"
ACCEPTED_COMMANDS = frozenset({b"helo", b"ehlo", b"mail", b"rset", b"noop"})
DEFAULT_TIMEOUT = 60
TEXT_LIMIT = 200
FAILED_TEXT = b"temporary RBL lookup error"
# Of a command line we keep this much: enough to tell the longest command word from a
# longer one, so a client sending megabytes without a newline costs us nothing.
LINE_KEEP = 16
_ALARM_MAX = 2**32  # alarm() takes an unsigned int: larger -t values do not time out


class Kind(enum.Enum):
    RBL = "r"
    ANTI = "a"


class Source(NamedTuple):
    kind: Kind
    base: str
    bounce: bool  # -b was in force when this -r was read
    fail_closed: bool  # -c was in force


class RblConfig(NamedTuple):
    sources: tuple[Source, ...]
    timeout: int = DEFAULT_TIMEOUT


def parse_command(words: Sequence[str]) -> tuple[RblConfig, tuple[str, ...]] | None:
    """`rblsmtpd` and its arguments: the configuration and the program it runs, or None
    when rblsmtpd itself would stop with its usage message (an unknown option, a missing
    argument, no program) or the command is not rblsmtpd at all."""
    if not words or words[0].rpartition("/")[2] != "rblsmtpd":
        return None
    try:
        options, operands = getopt(words[1:], "bBcC", "tra")
    except TcpFlagsError:
        return None  # rblsmtpd's usage message
    sources: list[Source] = []
    bounce = fail_closed = False
    timeout = DEFAULT_TIMEOUT
    for letter, argument in options:
        if argument is None:
            bounce = letter == "b" if letter in "bB" else bounce
            fail_closed = letter == "c" if letter in "cC" else fail_closed
        elif letter == "t":
            timeout = _scan_ulong(argument)
        else:
            kind = Kind.RBL if letter == "r" else Kind.ANTI
            sources.append(Source(kind, argument, bounce, fail_closed))
    program = tuple(operands)
    if not program or timeout >= _ALARM_MAX:
        return None
    return RblConfig(tuple(sources), timeout), program


# rblsmtpd where a distribution puts it; one elsewhere may be a patched build (some take
# `-r base:reply`), so it stays a process.
KNOWN_PATHS = ("rblsmtpd", "/usr/bin/rblsmtpd", "/bin/rblsmtpd", "/usr/local/bin/rblsmtpd")


def plain_dns_name(base: str) -> bool:
    """Letters, digits, '-' and '_' in labels of 1 to 63; no label starts with '-', so an
    option (`DNSBL="-b zen.spamhaus.org"`) is never taken for a list."""
    labels = base.rstrip(".").split(".")
    return all(
        0 < len(label) <= 63
        and not label.startswith("-")
        and all(c.isascii() and (c.isalnum() or c in "-_") for c in label)
        for label in labels
    )


def not_in_core(chain: Sequence[str]) -> str | None:
    """Why a chain that starts with rblsmtpd cannot have it in the core (None: it can,
    and qboot-tcpsrv -L takes it over). Only Debian's rblsmtpd, by name or a usual path,
    with the options ucspi-tcp 0.88 knows and plain DNS names as sources."""
    if not chain or chain[0].rpartition("/")[2] != "rblsmtpd":
        return "the chain does not start with rblsmtpd"
    if chain[0] not in KNOWN_PATHS:
        return f"{chain[0]} is not at a usual path (a patched build?)"
    parsed = parse_command(chain)
    if parsed is None:
        return "rblsmtpd's options are not all ones ucspi-tcp 0.88 knows (-bBcC -t -r -a)"
    bad = [s.base for s in parsed[0].sources if not plain_dns_name(s.base)]
    if bad:
        return f"{bad[0]!r} is not a plain DNS name"
    return None


def _scan_ulong(text: str) -> int:
    """djb's scan_ulong: the leading digits (none: 0)."""
    digits = ""
    for char in text:
        if not "0" <= char <= "9":
            break
        digits += char
    return int(digits) % 2**64 if digits else 0


def reversed_address(ip: str) -> str:
    """rblsmtpd's ip_reverse: `1.2.3.4` -> `4.3.2.1.`; no dots: the text and a dot."""
    if not ip:
        return ""
    return "".join(part + "." for part in reversed(ip.split(".")))


def query_name(ip: str, base: str) -> str:
    return reversed_address(ip) + base


# --- the decision ----------------------------------------------------------------------
class Verdict(NamedTuple):
    """Accept (run the program), or answer the client with line (no CR LF)."""

    line: bytes | None

    @property
    def accept(self) -> bool:
        return self.line is None


ACCEPT = Verdict(None)


class Pending(enum.Enum):
    PENDING = "pending"


# A source's result: -r: the joined TXT text; -a: whether an A record came; None: the
# lookup failed (temporarily); PENDING: not in yet.
Result = bytes | bool | None | Pending
PENDING = Pending.PENDING


def answer_line(code: bytes, text: bytes) -> bytes:
    line = bytearray(code + b" " + text[:TEXT_LIMIT])
    for index, byte in enumerate(line):
        if byte < 32 or byte > 126:
            line[index] = 63
    return bytes(line)


def from_environment(value: str | None) -> Verdict | None:
    """RBLSMTPD's verdict, or None when it is not set (the sources decide)."""
    if value is None:
        return None
    raw = value.partition("\0")[0].encode("utf-8", "surrogateescape")  # a C string
    if not raw:
        return ACCEPT
    if raw.startswith(b"-"):
        return Verdict(answer_line(b"553", raw[1:]))
    return Verdict(answer_line(b"451", raw))


def decide(sources: Sequence[Source], result: Callable[[int], Result]) -> Verdict | Pending:
    """The verdict once the sources that matter are in (result(i) of sources[i])."""
    must_not_bounce = False
    for index, source in enumerate(sources):
        found = result(index)
        if found is PENDING:
            return PENDING
        if source.kind is Kind.RBL:
            if found is None:
                must_not_bounce = True
                if source.fail_closed:
                    return Verdict(answer_line(b"451", FAILED_TEXT))
                continue
            assert isinstance(found, bytes)
            if found:
                bounce = source.bounce and not must_not_bounce
                return Verdict(answer_line(b"553" if bounce else b"451", found))
        else:
            if found is None:
                must_not_bounce = True
                if not source.fail_closed:
                    return ACCEPT
                continue
            if found:
                return ACCEPT
    return ACCEPT


# --- the dialogue ------------------------------------------------------------------------
class Dialogue:
    """rblsmtpd's limited SMTP conversation with a listed client, fed what it sends."""

    def __init__(self, line: bytes) -> None:
        self.reject = line + b"\r\n"
        self.over = False
        self._line = bytearray()
        self._long = False

    def feed(self, data: bytes) -> bytes:
        """The replies to data; over is set after QUIT (the rest of data is ignored)."""
        out = bytearray()
        start = 0
        while not self.over:
            newline = data.find(b"\n", start)
            piece = data[start:] if newline == -1 else data[start:newline]
            room = LINE_KEEP + 1 - len(self._line)
            if len(piece) > room:
                self._long = True
            self._line += piece[: max(room, 0)]
            if newline == -1:
                break
            out += self._reply()
            start = newline + 1
        return bytes(out)

    def _reply(self) -> bytes:
        line = bytes(self._line)
        if not self._long and line.endswith(b"\r"):
            line = line[:-1]
        self._line.clear()
        self._long = False
        space = line.find(b" ")
        end = len(line) if space == -1 else space
        command = line[:end].lower() if end <= LINE_KEEP else b"-"
        if command == b"quit":
            self.over = True
            return QUIT_REPLY
        if command in ACCEPTED_COMMANDS:
            return OK_REPLY
        return self.reject


def rblsmtpd_log(ip: str, pid: int, line: bytes) -> str:
    """What rblsmtpd writes to its stderr for a client it turns away."""
    return f"rblsmtpd: {ip} pid {pid}: {line.decode('ascii')}\n"


def environment_value(extra: Mapping[str, str], base: Mapping[str, str], name: str) -> str | None:
    """A variable as the child would see it: the connection's own, else the server's."""
    if name in extra:
        return extra[name]
    return base.get(name)
