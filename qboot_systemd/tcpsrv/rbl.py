"""ucspi-tcp's rblsmtpd as pure parts: its decision and its SMTP dialogue (its command line
is rblcommand.py).

Facts from rblsmtpd 0.88 (as Debian's ucspi-tcp-ipv6 builds it), which these follow:
- The sources (-r, -a) are tried in the order of the command line, only while nothing
  is decided; the first that decides wins.
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
from .rblcommand import Source

GREETING = b"220 rblsmtpd.local\r\n"
OK_REPLY = b"250 rblsmtpd.local\r\n"
QUIT_REPLY = b"221 rblsmtpd.local\r\n"
ACCEPTED_COMMANDS = frozenset({b"helo", b"ehlo", b"mail", b"rset", b"noop"})
TEXT_LIMIT = 200
FAILED_TEXT = b"temporary RBL lookup error"
# Of a command line we keep this much: enough to tell the longest command word from a
# longer one, so a client sending megabytes without a newline costs us nothing.
LINE_KEEP = 16


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
        if not source.anti:
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
