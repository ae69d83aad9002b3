"""tcpserver's option letters, shared by the env file's TCPFLAGS and qboot-tcpsrv."""

from __future__ import annotations

from ._startup import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable

# Flags without an argument, as tcpserver and qmail-tcpsrv take them.
PLAIN_FLAGS = frozenset("146jpPhHrRoOdDqQvUXL")
# qboot-tcpsrv's own options with an argument (-W drain seconds, -N/-M connections per
# minute per address; TLS: -S mode, -E certfile, -K keyfile, -A ccafile, -F ciphers).
OWN_ARG_OPTIONS = frozenset("WNMSEKAF")
# Options with an argument.
ARG_OPTIONS = frozenset("cCxBgubtl")
# eQmail's qmail-tcpsrv -I interface: under systemd the socket binds, so TCPFLAGS' -I
# becomes BindToDevice= on the socket and never reaches qboot-tcpsrv.
BIND_OPTIONS = frozenset("I")


def owned_options() -> dict[str, str]:
    """Options that have their own env file setting (the table's flags column), each with
    that setting's name: TCPFLAGS must not fight with it."""
    from .settings import SETTINGS  # here: settings imports this module

    return {letter: setting.name for setting in SETTINGS for letter in setting.flags}


class TcpFlagsError(ValueError):
    pass


def split_options(
    args: Iterable[str], extra_arguments: str = ""
) -> tuple[list[tuple[str, str | None]], list[str]]:
    """tcpserver's options (plus extra_arguments, letters that take an argument) from
    args: the (letter, argument) pairs and the remaining operands."""
    return getopt(args, PLAIN_FLAGS, ARG_OPTIONS | frozenset(extra_arguments))


def getopt(
    args: Iterable[str], plain: Iterable[str], with_argument: Iterable[str]
) -> tuple[list[tuple[str, str | None]], list[str]]:
    """djb-style getopt (tcpserver's, rblsmtpd's): clustered flags, `-c40` or `-c 40`,
    `--` ends options. Raises TcpFlagsError for an unknown letter or a missing argument."""
    flags, takes_argument = frozenset(plain), frozenset(with_argument)
    items = list(args)
    options: list[tuple[str, str | None]] = []
    index = 0
    while index < len(items):
        word = items[index]
        if word == "--":
            index += 1
            break
        if not word.startswith("-") or word == "-":
            break
        position = 1
        while position < len(word):
            letter = word[position]
            if letter in takes_argument:
                rest = word[position + 1 :]
                if rest:
                    options.append((letter, rest))
                else:
                    index += 1
                    if index >= len(items):
                        raise TcpFlagsError(f"option -{letter} needs an argument")
                    options.append((letter, items[index]))
                break
            if letter not in flags:
                raise TcpFlagsError(f"unknown option -{letter}")
            options.append((letter, None))
            position += 1
        index += 1
    return options, items[index:]


def split_interface(words: tuple[str, ...]) -> tuple[str | None, tuple[str, ...]]:
    """TCPFLAGS' -I interface (the last one counts) and the flags without it."""
    options, _ = split_options(words, "".join(OWN_ARG_OPTIONS | BIND_OPTIONS))
    interface = None
    rest: list[str] = []
    for letter, argument in options:
        if letter in BIND_OPTIONS:
            interface = argument
        else:
            rest += [f"-{letter}"] if argument is None else [f"-{letter}", argument]
    if interface is None:
        return None, words
    return interface, tuple(rest)


def validate_tcpflags(words: tuple[str, ...]) -> None:
    """TCPFLAGS may hold flags and -t/-l/-W/-I, nothing that is not an option. They come
    after the defaults (-v -R -l control/me), so -r, -q, -Q or another -l override those."""
    options, operands = split_options(words, "".join(OWN_ARG_OPTIONS | BIND_OPTIONS))
    if operands:
        raise TcpFlagsError(f"{operands[0]!r} is not an option")
    owned = owned_options()
    for letter, argument in options:
        if letter in owned:
            raise TcpFlagsError(f"use {owned[letter]}= instead of -{letter}")
        if letter == "t" and (argument is None or not argument.isdigit()):
            raise TcpFlagsError(f"-t needs a number of seconds, not {argument!r}")
        if letter == "W" and (argument is None or not argument.isdigit()):
            raise TcpFlagsError(f"-W needs a number of seconds, not {argument!r}")
        if letter == "l" and (
            not argument or any(c.isspace() or not c.isprintable() for c in argument)
        ):
            raise TcpFlagsError(f"-l needs a host name without spaces, not {argument!r}")
        if letter in BIND_OPTIONS and not _interface_name(argument or ""):
            raise TcpFlagsError(f"-I needs a network interface name, not {argument!r}")


def _interface_name(name: str) -> bool:
    """What Linux accepts as an interface name: 1 to 15 bytes, no '/', ':' or space."""
    return (
        0 < len(name.encode()) < 16
        and name not in (".", "..")
        and all(char.isascii() and char.isprintable() and char not in "/: " for char in name)
    )
