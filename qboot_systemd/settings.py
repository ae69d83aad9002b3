"""The settings of a qmail-SVC.env file: one row each.

A row is the setting's name, the parser of its value, the value when the file leaves it
out, that default as qboot-env(5) writes it, and one line of help. The rows drive the
reading (bootctrl.py), the "did you mean" check for a misspelt name, `qbootctl show SVC`,
and a test holds qboot-env(5) to them. Adding a setting is adding a row (and using its
value where a unit is written).

A parser gets the text the file gave (after quoting and $NAME expansion) and the
service's name, and returns the value or raises Invalid with the message for file:line.
It never looks at another setting: what depends on two (PORT with IP, DNSBLFLAGS with
DNSBL, USER or UID) is put together where the service is built.
"""

from __future__ import annotations

from ._startup import TYPE_CHECKING
from .iptext import canonical, is_unspecified
from .problems import quote
from .tcpflags import TcpFlagsError, validate_tcpflags

if TYPE_CHECKING:
    from collections.abc import Callable

SERVICES_FILE = "/etc/services"
DEFAULT_PORT = 25
DEFAULT_MAXCONN = 40

# Names are checked against sets of ASCII characters, not regular expressions: the
# generator starts without re (see _startup).
_LETTERS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_ALNUM = _LETTERS | frozenset("0123456789")
_ACCOUNT_CHARS = _ALNUM | frozenset("_.-")
_PORT_NAME_CHARS = _ALNUM | frozenset("_-")


class Invalid(Exception):
    """A value a setting cannot take; the message is written after file:line."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


if TYPE_CHECKING:
    Parser = Callable[[str, str, str], object]  # (setting name, value, service name) -> value


class Setting:
    """A row. Not a NamedTuple: building that class would be most of this module's
    import, which the generator pays at every start (see _startup)."""

    __slots__ = ("default", "flags", "help", "name", "parse", "unset")

    def __init__(
        self, name: str, parse: Parser, unset: object, default: str, help: str, flags: str = ""
    ) -> None:
        self.name = name
        self.parse = parse
        self.unset = unset  # the value when the file does not set it (None: none, or computed)
        self.default = default  # the default as qboot-env(5) and qbootctl show write it
        self.help = help
        self.flags = flags  # the qboot-tcpsrv options it sets: TCPFLAGS may not give them

    def __repr__(self) -> str:
        return f"Setting({self.name!r})"


def account_name(text: str) -> bool:
    """USER=/GROUP=: a name or number, 1 to 32 of `A-Z a-z 0-9 _ . -`, no leading . or -."""
    return 0 < len(text) <= 32 and text[0] not in ".-" and _ACCOUNT_CHARS.issuperset(text)


def port_name(text: str) -> bool:
    """PORT= as a name from /etc/services (smtp, submission): a letter, then up to 31
    of `A-Z a-z 0-9 _ -`."""
    return 0 < len(text) <= 32 and text[0] in _LETTERS and _PORT_NAME_CHARS.issuperset(text)


def service_port(name: str, services: str = SERVICES_FILE) -> int | None:
    """A tcp service's port from /etc/services, read as a file: the generator must not
    ask NSS (which may talk to another process)."""
    try:
        with open(services, errors="replace") as stream:
            lines = stream.read().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split("#", 1)[0].split()
        if len(fields) < 2 or not fields[1].endswith("/tcp"):
            continue
        if name in (fields[0], *fields[2:]) and fields[1][:-4].isdigit():
            port = int(fields[1][:-4])
            return port if 0 < port < 65536 else None
    return None


def number(low: int, high: int) -> Parser:
    def parse(name: str, value: str, service: str) -> int:
        text = value.strip()
        if not text.isascii() or not text.isdigit() or not low <= int(text) <= high:
            raise Invalid(f"{name}={quote(value)}: expected a number from {low} to {high}")
        return int(text)

    return parse


def choice(*allowed: str) -> Parser:
    """One of a few words; the value is the word."""

    def parse(name: str, value: str, service: str) -> str:
        text = value.strip()
        if text not in allowed:
            raise Invalid(f"{name}={quote(value)}: expected {' or '.join(allowed)}")
        return text

    return parse


def words(name: str, value: str, service: str) -> tuple[str, ...]:
    return tuple(value.split())


def port(name: str, value: str, service: str) -> int:
    """A number or, like tcpserver, a name from /etc/services (smtp, submission)."""
    text = value.strip()
    if text and not text.isdigit() and port_name(text):
        found = service_port(text)
        if found is None:
            raise Invalid(f"PORT={text!r}: not a port number, nor a tcp service in {SERVICES_FILE}")
        return found
    parsed = number(1, 65535)(name, value, service)
    assert isinstance(parsed, int)
    return parsed


def addresses(name: str, value: str, service: str) -> tuple[str, ...]:
    """IP=: the addresses in their canonical text; () for all (0 or empty)."""
    given = value.split()
    if not given or given == ["0"]:
        return ()
    found: list[str] = []
    for word in given:
        if word == "0":
            raise Invalid("IP: 0 means all addresses; use IP=0 alone")
        text = word[1:-1] if word.startswith("[") and word.endswith("]") else word
        address = canonical(text)
        if address is None:
            raise Invalid(f"IP: {quote(word)} is not an IP address")
        bare, _, scope = address.partition("%")
        if scope:
            # systemd's ListenStream= takes no scope id (252 refuses `[fe80::1%eth0]:25`).
            raise Invalid(
                f"IP: {quote(word)}: ListenStream= cannot take a scope id; use "
                f"IP={bare} and BindToDevice={scope} "
                f"in a drop-in for the socket (systemctl edit qmail-tcpd@{service}.socket)"
            )
        if is_unspecified(address):
            raise Invalid(f"IP: {quote(word)} means all addresses; use IP=0 alone")
        if address in found:
            raise Invalid(f"IP: {word} listed twice")
        found.append(address)
    return tuple(found)


def rules_file(name: str, value: str, service: str) -> str | None:
    """CDB=: a .cdb in the bootctrl directory or an absolute path (whether it is there and
    trusted is checked with the directory); empty is the default."""
    if not value:
        return None
    if not value.endswith(".cdb") or (not value.startswith("/") and "/" in value):
        raise Invalid(
            f"CDB={quote(value)}: name a .cdb file in the bootctrl directory "
            "(tcprules-SVC.cdb) or give an absolute path to one"
        )
    return value


def account(name: str, value: str, service: str) -> str | None:
    """A user or group name or number (whether it exists: bootctrl.unknown_accounts)."""
    if not value:
        return None
    if not account_name(value):
        raise Invalid(f"{name}={value!r}: not a valid user/group name or number")
    return value


def banner(name: str, value: str, service: str) -> str:
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise Invalid("BANNER contains control characters")
    return value


def tcpflags(name: str, value: str, service: str) -> tuple[str, ...]:
    flags = tuple(value.split())
    try:
        validate_tcpflags(flags)
    except TcpFlagsError as error:
        raise Invalid(f"TCPFLAGS: {error}") from None
    return flags


def dnsbl(name: str, value: str, service: str) -> tuple[str, ...]:
    lists = tuple(value.split())
    if lists:
        from .tcpsrv.rblcommand import plain_dns_name

        bad = [base for base in lists if not plain_dns_name(base)]
        if bad:
            raise Invalid(
                f"DNSBL={quote(value)}: {quote(bad[0])} is not a DNS name (zen.spamhaus.org)"
            )
    return lists


def dnsblflags(name: str, value: str, service: str) -> tuple[str, ...]:
    flags = tuple(value.split())
    if flags:
        from .tcpsrv.rblcommand import parse_command

        parsed = parse_command(["rblsmtpd", *flags, "smtpd"])
        if parsed is None or parsed[1] != ("smtpd",):
            raise Invalid(
                f"DNSBLFLAGS={quote(value)}: rblsmtpd options only: "
                "-a base, -b, -B, -c, -C, -t seconds"
            )
    return flags


def absolute_file(name: str, value: str, service: str) -> str | None:
    """CERTFILE=, KEYFILE=, CCAFILE=: an absolute path (whether it can be read, and is safe,
    is checked before the settings are applied: bootctrl.start_problems)."""
    if not value:
        return None
    if not value.startswith("/") or any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise Invalid(f"{name}={quote(value)}: give the absolute path of a PEM file")
    return value


def ciphers(name: str, value: str, service: str) -> str | None:
    """CIPHERS=: an OpenSSL cipher list (OpenSSL itself says whether it selects any)."""
    if not value:
        return None
    if not value.isascii() or any(c.isspace() or ord(c) < 32 for c in value.strip()):
        raise Invalid(f"{name}={quote(value)}: an OpenSSL cipher list, such as ECDHE+AESGCM")
    return value.strip()


TLS_MODES = ("no", "implicit", "starttls", "starttls-required", "ucspi")

SETTINGS: tuple[Setting, ...] = (
    Setting("PORT", port, DEFAULT_PORT, str(DEFAULT_PORT), "port, or tcp service name"),
    Setting("IP", addresses, (), "0", "listen addresses, space separated; 0: all"),
    Setting(
        "CDB",
        rules_file,
        None,
        "tcprules-SVC.cdb",
        "rules file, in bootctrl or absolute",
        flags="x",
    ),
    Setting(
        "MAXCONN",
        number(1, 100000),
        DEFAULT_MAXCONN,
        str(DEFAULT_MAXCONN),
        "concurrent sessions (-c)",
        flags="c",
    ),
    Setting(
        "MAXPERIP", number(1, 100000), None, "no limit", "sessions per address (-C)", flags="C"
    ),
    Setting("BACKLOG", number(1, 65535), None, "systemd's", "listen backlog (Backlog=)", flags="b"),
    Setting(
        "USER", account, None, "none", "user that runs the chain (-u): name or number", flags="u"
    ),
    Setting("UID", account, None, "none", "USER's other name (USER wins)"),
    Setting(
        "GROUP", account, None, "none", "group that runs the chain (-g): name or number", flags="g"
    ),
    Setting("GID", account, None, "none", "GROUP's other name (GROUP wins)"),
    Setting("BANNER", banner, None, "none", "text sent before anything else (-B)", flags="B"),
    Setting("TCPFLAGS", tcpflags, (), "none", "more qboot-tcpsrv flags, after -v -R -l"),
    Setting("SMTPD", words, (), "$QMAILHOME/bin/qmail-smtpd", "the server program"),
    Setting("PRESMTPD", words, (), "none", "programs run before SMTPD"),
    Setting("POSTSMTPD", words, (), "none", "arguments after SMTPD"),
    Setting("DNSBL", dnsbl, (), "none", "DNS blocklists: rblsmtpd -r each"),
    Setting("DNSBLFLAGS", dnsblflags, (), "none", "rblsmtpd options for DNSBL"),
    Setting(
        "RBL_INCORE", choice("yes", "no"), "yes", "yes", "rblsmtpd inside qboot-tcpsrv", flags="L"
    ),
    Setting(
        "RATE",
        number(1, 1000000),
        None,
        "no limit",
        "new connections a minute per address",
        flags="NM",
    ),
    Setting("RATE_ANSWER", choice("close", "421"), "close", "close", "over RATE: close, or 421"),
    Setting(
        "TLS",
        choice(*TLS_MODES),
        "no",
        "no",
        "no, implicit, starttls, starttls-required or ucspi",
        flags="S",
    ),
    Setting("CERTFILE", absolute_file, None, "none", "certificate chain, PEM (-E)", flags="E"),
    Setting("KEYFILE", absolute_file, None, "CERTFILE", "private key, PEM (-K)", flags="K"),
    Setting("CCAFILE", absolute_file, None, "none", "CAs for client certificates (-A)", flags="A"),
    Setting(
        "CIPHERS", ciphers, None, "Mozilla intermediate", "TLS 1.2 cipher list (-F)", flags="F"
    ),
)

BY_NAME = {setting.name: setting for setting in SETTINGS}


def typo_of(name: str) -> str | None:
    """The setting an unknown UPPERCASE name most likely misspells, or None. A name with
    an underscore is compared with the settings that have one only: MY_PORT is the
    admin's own variable, RATE_ANSWR a typo."""
    if name in BY_NAME or not name.isupper():
        return None
    candidates = [s for s in BY_NAME if "_" in s] if "_" in name else list(BY_NAME)
    import difflib  # only for a likely typo

    near = difflib.get_close_matches(name, candidates, n=1, cutoff=0.75)
    return near[0] if near else None
