"""qboot-tcpsrv's command line, the way tcpserver takes it."""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..tcpflags import TcpFlagsError, split_options

USAGE = (
    "usage: qboot-tcpsrv [ -146jpPhHrRoOdDqQvUX ] [ -c limit ] [ -C perip ] [ -x rules.cdb ] "
    "[ -B banner ] [ -g gid ] [ -u uid ] [ -b backlog ] [ -l localname ] [ -t timeout ] "
    "[ -W drain ] host port program [ arg ... ]"
)


class UsageError(ValueError):
    pass


@dataclass(frozen=True)
class Options:
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


def _number(letter: str, value: str | None) -> int:
    if value is None or not value.isdigit():
        raise UsageError(f"-{letter} needs a number, not {value!r}")
    return int(value)


def _account(letter: str, value: str | None) -> str:
    """-u/-g take a number as tcpserver does, or a name (resolved when the server starts)."""
    if not value or value.startswith("-") or any(c.isspace() or c == ":" for c in value):
        raise UsageError(f"-{letter} needs a number or a name, not {value!r}")
    return value


def parse(argv: list[str]) -> Options:
    """Parse tcpserver's flags (clustered like -vRl0 or -c40); UsageError on misuse."""
    try:
        options, operands = split_options(argv, extra_arguments="W")
    except TcpFlagsError as error:
        raise UsageError(str(error)) from None
    if len(operands) < 3:
        raise UsageError("need host, port and program")
    values: dict[str, object] = {}
    flag_effects: dict[str, tuple[str, object]] = {
        "X": ("missing_rules_ok", True),
        "h": ("remote_host", True),
        "H": ("remote_host", False),
        "p": ("paranoid", True),
        "P": ("paranoid", False),
        "r": ("remote_info", True),
        "R": ("remote_info", False),
        "d": ("nodelay", False),
        "D": ("nodelay", True),
        "o": ("kill_ip_options", False),
        "O": ("kill_ip_options", True),
        "q": ("verbosity", 0),
        "Q": ("verbosity", 1),
        "v": ("verbosity", 2),
        "1": ("print_port", True),
        "4": ("ipv4_only", True),
        "6": ("ipv6_env", True),
        # -j is qmail-tcpsrv's; accepted so its command lines keep working.
        "j": ("", None),
    }
    for letter, argument in options:
        if letter in flag_effects:
            name, value = flag_effects[letter]
            if name:
                values[name] = value
        elif letter == "c":
            values["limit"] = max(1, _number(letter, argument))
        elif letter == "C":
            values["per_ip"] = _number(letter, argument)
        elif letter == "b":
            values["backlog"] = _number(letter, argument)
        elif letter == "t":
            values["timeout"] = _number(letter, argument)
        elif letter == "W":
            values["drain"] = float(_number(letter, argument))
        elif letter == "x":
            values["rules"] = argument
        elif letter == "B":
            values["banner"] = argument
        elif letter == "l":
            values["localname"] = argument
        elif letter == "u":
            values["user"] = _account(letter, argument)
        elif letter == "g":
            values["group"] = _account(letter, argument)
        elif letter == "U":
            for name, variable in (("user", "UID"), ("group", "GID")):
                text = os.environ.get(variable)
                if text is not None:
                    values[name] = str(_number(letter, text))
        else:  # pragma: no cover - split_options only returns known letters
            raise UsageError(f"unknown option -{letter}")
    host, port, *program = operands
    return Options(host=host, port=port, program=tuple(program), **values)  # type: ignore[arg-type]
