"""qboot-tcpsrv's command line, the way tcpserver takes it."""

from __future__ import annotations

import os
from collections.abc import Callable

from .._startup import NamedTuple
from ..tcpflags import OWN_ARG_OPTIONS, TcpFlagsError, split_options


class UsageError(ValueError):
    pass


class Options(NamedTuple):
    host: str
    port: str
    program: tuple[str, ...]
    limit: int = 40
    per_ip: int = 0  # 0: no per-address cap
    backlog: int = 20
    rules: str | None = None
    missing_rules_ok: bool = False  # -X
    banner: str = ""
    user: str | None = None  # -u: a uid, or a user name resolved at start
    group: str | None = None  # -g: a gid, or a group name resolved at start
    localname: str | None = None
    timeout: int = 26
    remote_host: bool = True  # -h / -H
    paranoid: bool = False  # -p / -P
    remote_info: bool = True  # -r / -R
    nodelay: bool = False  # -D: TCP_NODELAY; -d (default): leave Nagle on
    kill_ip_options: bool = True  # -O (default) / -o
    verbosity: int = 1  # -q 0, -Q 1, -v 2
    print_port: bool = False  # -1
    ipv4_only: bool = False  # -4
    ipv6_env: bool = False  # -6: PROTO=TCP6 and mapped addresses for IPv4 clients too
    drain: float = 50.0  # -W: seconds to let sessions finish after SIGTERM under systemd
    rbl_incore: bool = False  # -L: a leading rblsmtpd of the program runs in the server
    rate: int = 0  # -N/-M: new connections per minute per address (IPv6 /64); 0: no cap
    rate_reply: bool = False  # -M: a 421 line for a connection over the rate; -N: a close
    tls: str | None = None  # -S: one of TLS_MODES
    certfile: str | None = None  # -E: sslserver's CERTFILE
    keyfile: str | None = None  # -K: sslserver's KEYFILE; the certificate file without it
    ccafile: str | None = None  # -A: sslserver's CCAFILE: ask clients for a certificate
    ciphers: str | None = None  # -F: sslserver's CIPHERS (the TLS 1.2 list)


TLS_MODES = ("implicit", "starttls", "starttls-required", "ucspi")


def _tls_mode(value: str) -> str:
    if value not in TLS_MODES:
        raise UsageError(f"-S needs one of {', '.join(TLS_MODES)}, not {value!r}")
    return value


def _path(letter: str, value: str) -> str:
    if not value or "\0" in value:
        raise UsageError(f"-{letter} needs a file name")
    return value


# Every number ends up in a C int (listen(), the limits): larger is a usage error, not an
# OverflowError from deep inside the server.
_LARGEST = 2**31 - 1


def _number(letter: str, value: str) -> int:
    if value is None or not value.isascii() or not value.isdigit():
        raise UsageError(f"-{letter} needs a number, not {value!r}")
    if int(value) > _LARGEST:
        raise UsageError(f"-{letter} {value} is too large (at most {_LARGEST})")
    return int(value)


def _account(letter: str, value: str) -> str:
    """-u/-g take a number as tcpserver does, or a name (resolved when the server starts)."""
    if not value or value.startswith("-") or any(c.isspace() or c == ":" for c in value):
        raise UsageError(f"-{letter} needs a number or a name, not {value!r}")
    return value


# One row per option: what it does to Options. Each setter is checked by mypy against the
# field it sets (NamedTuple._replace; a NamedTuple, not a dataclass: the server starts
# without importing dataclasses), and the usage text comes from the same rows.
Flag = Callable[[Options], Options]
Setter = Callable[[Options, str], Options]

FLAGS: dict[str, Flag] = {
    "1": lambda o: o._replace(print_port=True),
    "4": lambda o: o._replace(ipv4_only=True),
    "6": lambda o: o._replace(ipv6_env=True),
    # -j is qmail-tcpsrv's; accepted so its command lines keep working.
    "j": lambda o: o,
    "p": lambda o: o._replace(paranoid=True),
    "P": lambda o: o._replace(paranoid=False),
    "h": lambda o: o._replace(remote_host=True),
    "H": lambda o: o._replace(remote_host=False),
    "r": lambda o: o._replace(remote_info=True),
    "R": lambda o: o._replace(remote_info=False),
    "o": lambda o: o._replace(kill_ip_options=False),
    "O": lambda o: o._replace(kill_ip_options=True),
    "d": lambda o: o._replace(nodelay=False),
    "D": lambda o: o._replace(nodelay=True),
    "q": lambda o: o._replace(verbosity=0),
    "Q": lambda o: o._replace(verbosity=1),
    "v": lambda o: o._replace(verbosity=2),
    "U": lambda o: _from_environment(o),
    "X": lambda o: o._replace(missing_rules_ok=True),
    "L": lambda o: o._replace(rbl_incore=True),
}
ARGUMENTS: dict[str, tuple[str, Setter]] = {
    "c": ("limit", lambda o, a: o._replace(limit=max(1, _number("c", a)))),
    "C": ("perip", lambda o, a: o._replace(per_ip=_number("C", a))),
    "x": ("rules.cdb", lambda o, a: o._replace(rules=a)),
    "B": ("banner", lambda o, a: o._replace(banner=a)),
    "g": ("gid", lambda o, a: o._replace(group=_account("g", a))),
    "u": ("uid", lambda o, a: o._replace(user=_account("u", a))),
    "b": ("backlog", lambda o, a: o._replace(backlog=_number("b", a))),
    "l": ("localname", lambda o, a: o._replace(localname=a)),
    "t": ("timeout", lambda o, a: o._replace(timeout=_number("t", a))),
    "W": ("drain", lambda o, a: o._replace(drain=float(_number("W", a)))),
    "N": ("perminute", lambda o, a: o._replace(rate=_number("N", a), rate_reply=False)),
    "M": ("perminute", lambda o, a: o._replace(rate=_number("M", a), rate_reply=True)),
    "S": ("tlsmode", lambda o, a: o._replace(tls=_tls_mode(a))),
    "E": ("certfile", lambda o, a: o._replace(certfile=_path("E", a))),
    "K": ("keyfile", lambda o, a: o._replace(keyfile=_path("K", a))),
    "A": ("ccafile", lambda o, a: o._replace(ccafile=_path("A", a))),
    "F": ("ciphers", lambda o, a: o._replace(ciphers=a)),
}
USAGE = (
    f"usage: qboot-tcpsrv [ -{''.join(FLAGS)} ] "
    + " ".join(f"[ -{letter} {metavar} ]" for letter, (metavar, _) in ARGUMENTS.items())
    + " host port program [ arg ... ]"
)


def _from_environment(options: Options) -> Options:
    """-U: -u $UID -g $GID, each when set."""
    for variable, letter in (("UID", "u"), ("GID", "g")):
        text = os.environ.get(variable)
        if text is not None:
            options = ARGUMENTS[letter][1](options, str(_number("U", text)))
    return options


def parse(argv: list[str]) -> Options:
    """Parse tcpserver's flags (clustered like -vRl0 or -c40); UsageError on misuse."""
    try:
        found, operands = split_options(argv, extra_arguments="".join(sorted(OWN_ARG_OPTIONS)))
    except TcpFlagsError as error:
        raise UsageError(str(error)) from None
    if len(operands) < 3:
        raise UsageError("need host, port and program")
    host, port, *program = operands
    options = Options(host=host, port=port, program=tuple(program))
    for letter, argument in found:
        if letter in FLAGS:
            options = FLAGS[letter](options)
        elif letter in ARGUMENTS and argument is not None:
            options = ARGUMENTS[letter][1](options, argument)
        else:  # pragma: no cover - split_options only returns known letters
            raise UsageError(f"unknown option -{letter}")
    return _check_tls(options)


def _check_tls(options: Options) -> Options:
    """-S needs a certificate (-E); the certificate options mean nothing without -S."""
    if options.tls is None:
        given = [
            f"-{letter}"
            for letter, value in (
                ("E", options.certfile),
                ("K", options.keyfile),
                ("A", options.ccafile),
                ("F", options.ciphers),
            )
            if value is not None
        ]
        if given:
            raise UsageError(f"{' '.join(given)} without -S (TLS mode)")
        return options
    if options.certfile is None:
        raise UsageError(f"-S {options.tls} needs -E certfile")
    return options
