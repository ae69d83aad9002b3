"""rblsmtpd's command line, as ucspi-tcp 0.88 reads it: which DNS lists, in which order,
with which answers. The generator, qbootctl and qboot-tcpsrv -L read it; it imports
nothing the generator's start-up budget cannot afford (see _startup), and the decision
and the dialogue (rbl.py) are not needed for it.

Options are read in order with getopt "bBcCt:r:a:"; -b/-B/-c/-C change only the -r and -a
sources read after them; -t takes djb's scan_ulong of its argument (leading digits), and
rblsmtpd stops with its usage message for an unknown option, a missing argument, no
program, or a -t alarm() cannot take.
"""

from __future__ import annotations

from .._startup import TYPE_CHECKING, NamedTuple
from ..tcpflags import TcpFlagsError, getopt

if TYPE_CHECKING:
    from collections.abc import Sequence

DEFAULT_TIMEOUT = 60
_ALARM_MAX = 2**32  # alarm() takes an unsigned int: larger -t values do not time out


class Source(NamedTuple):
    base: str
    anti: bool  # -a (accept when listed) rather than -r (answer when listed)
    bounce: bool  # -b was in force when this -r was read
    fail_closed: bool  # -c was in force


class RblConfig(NamedTuple):
    sources: tuple[Source, ...]
    timeout: int = DEFAULT_TIMEOUT


def starts_with_rblsmtpd(words: Sequence[str]) -> bool:
    return bool(words) and words[0].rpartition("/")[2] == "rblsmtpd"


def parse_command(words: Sequence[str]) -> tuple[RblConfig, tuple[str, ...]] | None:
    """`rblsmtpd` and its arguments: the configuration and the program it runs, or None
    when rblsmtpd itself would stop with its usage message (an unknown option, a missing
    argument, no program) or the command is not rblsmtpd at all."""
    if not starts_with_rblsmtpd(words):
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
            sources.append(Source(argument, letter == "a", bounce, fail_closed))
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
    if not starts_with_rblsmtpd(chain):
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
