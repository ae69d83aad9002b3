"""The bootctrl model: what qboot's directory says should run, and every problem in it.

`load()` does all the reading; the result is plain frozen data that the generator, the
CLI and the tests consume without further I/O.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping

from . import envfile, purepath, strictmodes
from .problems import Problem, quote
from .records import NamedTuple
from .tcpflags import TcpFlagsError, split_interface, validate_tcpflags

TYPE_CHECKING = False  # typing.TYPE_CHECKING's value, without importing typing
if TYPE_CHECKING:
    from pathlib import Path

# Paths are text here (os.path and purepath): the generator does without pathlib.
DEFAULT_QMAIL_HOME = "/var/qmail"
DEFAULT_DELIVERY = "./Maildir/"
DEFAULT_PORT = 25
DEFAULT_MAXCONN = 40
# tcpserver's -l when control/me is missing: its man page's "common choice", no DNS lookup.
FALLBACK_LOCAL_NAME = "0"
RC_TARGET = "qmail-tcpd"
SERVICES_FILE = "/etc/services"
SEND_RC = "qmail-init.rc"

_DEFAULT_SERVERS = {"qmtp": "qmail-qmtpd", "qmqp": "qmail-qmqpd"}

# Names are checked against sets of ASCII characters, not regular expressions: compiling
# those cost the generator 0.6 ms at every start.
_LETTERS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_ALNUM = _LETTERS | frozenset("0123456789")
_SERVICE_CHARS = _ALNUM | frozenset("_.-")
_HOST_CHARS = _ALNUM | frozenset(".-")
_PORT_NAME_CHARS = _ALNUM | frozenset("_-")


def rc_service(file_name: str) -> str | None:
    """`qmail-NAME.rc` -> NAME, whatever NAME holds (`qmail-.rc` and a name with a
    newline are reported, not passed over); None for other files."""
    if file_name.startswith("qmail-") and file_name.endswith(".rc"):
        return file_name[len("qmail-") : -len(".rc")]
    return None


def valid_service_name(name: str) -> bool:
    """A systemd instance name that needs no escaping, and a plain file name: 1 to 64
    ASCII letters, digits, `_ . -`, starting with a letter or digit."""
    return 0 < len(name) <= 64 and name[0] in _ALNUM and _SERVICE_CHARS.issuperset(name)


def _host_name(text: str) -> bool:
    """control/me as tcpserver -l takes it: a host name (qmail's own `me`), or "0"."""
    return 0 < len(text) <= 255 and _HOST_CHARS.issuperset(text)


def _account_name(text: str) -> bool:
    """USER=/GROUP=: a name or number, 1 to 32 of `A-Z a-z 0-9 _ . -`, no leading . or -."""
    return 0 < len(text) <= 32 and text[0] not in ".-" and _SERVICE_CHARS.issuperset(text)


def _port_name(text: str) -> bool:
    """PORT= as a name from /etc/services (smtp, submission): a letter, then up to 31
    of `A-Z a-z 0-9 _ -`."""
    return 0 < len(text) <= 32 and text[0] in _LETTERS and _PORT_NAME_CHARS.issuperset(text)


def default_bootctrl() -> Path:
    from pathlib import Path  # for the commands; the generator does not call this

    return Path(os.environ.get("QBOOT_BOOTCTRL", f"{DEFAULT_QMAIL_HOME}/etc/bootctrl"))


def default_qmail_home() -> Path:
    from pathlib import Path  # for the commands; the generator does not call this

    return Path(os.environ.get("QBOOT_QMAIL_HOME", DEFAULT_QMAIL_HOME))


class Listen(NamedTuple):
    """One listening address; `address` None means all addresses, IPv4 and IPv6."""

    port: int
    address: str | None = None

    def systemd(self) -> str:
        """The value for ListenStream=."""
        if self.address is None:
            return str(self.port)
        if ":" in self.address:
            return f"[{self.address}]:{self.port}"
        return f"{self.address}:{self.port}"

    def conflicts_with(self, other: Listen) -> bool:
        if self.port != other.port:
            return False
        return self.address is None or other.address is None or self.address == other.address


class Send(NamedTuple):
    rc_file: str
    qmail_home: str
    default_delivery: str
    delivery_source: str  # the file the delivery came from, or "default"

    def as_json(self) -> dict[str, object]:
        return {
            "rc_file": self.rc_file,
            "qmail_home": self.qmail_home,
            "default_delivery": self.default_delivery,
            "delivery_source": self.delivery_source,
        }


class Service(NamedTuple):
    name: str
    rc_file: str
    env_file: str | None
    listen: tuple[Listen, ...]
    rules: str
    maxconn: int
    smtpd: tuple[str, ...]
    presmtpd: tuple[str, ...] = ()
    postsmtpd: tuple[str, ...] = ()
    environment: tuple[tuple[str, str], ...] = ()
    maxperip: int | None = None
    backlog: int | None = None
    user: str | None = None
    group: str | None = None
    banner: str | None = None
    tcpflags: tuple[str, ...] = ()
    interface: str | None = None  # TCPFLAGS' -I: the socket's BindToDevice=
    local_name: str = FALLBACK_LOCAL_NAME  # tcpserver -l: control/me, as lifewithqmail does
    listen_line: int = 0  # line of PORT/IP in env_file, for messages
    lines: tuple[tuple[str, int], ...] = ()  # env file line of each name's last definition
    dnsbl: tuple[str, ...] = ()  # DNSBL: blocklists, each an rblsmtpd -r
    dnsblflags: tuple[str, ...] = ()  # DNSBLFLAGS: rblsmtpd options before them
    rbl_incore: bool = True  # RBL_INCORE: a leading rblsmtpd runs inside qboot-tcpsrv
    rate: int | None = None  # RATE: new connections per minute per address
    rate_reply: bool = False  # RATE_ANSWER=421 (else a plain close)

    @property
    def command(self) -> tuple[str, ...]:
        """The chain run per connection: rblsmtpd for DNSBL, PRESMTPD words, SMTPD,
        POSTSMTPD words."""
        return self.screening + self.presmtpd + self.smtpd + self.postsmtpd

    @property
    def screening(self) -> tuple[str, ...]:
        """`rblsmtpd DNSBLFLAGS -r base ...` for DNSBL, or nothing."""
        if not self.dnsbl:
            return ()
        return ("rblsmtpd", *self.dnsblflags, *[w for base in self.dnsbl for w in ("-r", base)])

    def line_of(self, name: str) -> int:
        return next((line for key, line in self.lines if key == name), 0)

    def as_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "rc_file": self.rc_file,
            "env_file": self.env_file,
            "listen": [item.systemd() for item in self.listen],
            "rules": self.rules,
            "maxconn": self.maxconn,
            "maxperip": self.maxperip,
            "backlog": self.backlog,
            "user": self.user,
            "group": self.group,
            "banner": self.banner,
            "tcpflags": list(self.tcpflags),
            "interface": self.interface,
            "local_name": self.local_name,
            "command": list(self.command),
            "environment": dict(self.environment),
        }


class Bootctrl(NamedTuple):
    directory: str
    qmail_home: str
    send: Send | None
    services: tuple[Service, ...]
    problems: tuple[Problem, ...] = ()

    def service(self, name: str) -> Service | None:
        return next((s for s in self.services if s.name == name), None)

    def as_json(self) -> dict[str, object]:
        return {
            "directory": self.directory,
            "send": self.send.as_json() if self.send else None,
            "services": [service.as_json() for service in self.services],
            "problems": [problem.as_json() for problem in self.problems],
        }


class _ServiceProblem(Exception):
    def __init__(self, problem: Problem) -> None:
        super().__init__(str(problem))
        self.problem = problem


def load(
    directory: str | os.PathLike[str],
    qmail_home: str | os.PathLike[str] | None = None,
    *,
    check_accounts: bool = False,
    holders: Mapping[str, frozenset[str]] | None = None,
) -> Bootctrl:
    """Read a bootctrl directory. Never raises for bad content: problems are collected.
    check_accounts: also report USER/GROUP names unknown here (qbootctl; not the generator).
    holders: the ListenStream= values each service runs with now; in a clash, the
    service that already holds the address keeps it."""
    if qmail_home is None:
        qmail_home = os.environ.get("QBOOT_QMAIL_HOME", DEFAULT_QMAIL_HOME)
    home = purepath.pure(qmail_home)
    trusted = strictmodes.TrustedDirectory(directory)
    try:
        return _load_trusted(trusted, home, check_accounts, holders or {})
    finally:
        trusted.close()


def _load_trusted(
    trusted: strictmodes.TrustedDirectory,
    home: str,
    check_accounts: bool,
    holders: Mapping[str, frozenset[str]],
) -> Bootctrl:
    directory = trusted.path
    try:
        names = trusted.open().names()
    except (FileNotFoundError, NotADirectoryError):
        problem = Problem(directory, 0, "bootctrl directory not found")
        return Bootctrl(directory, home, None, (), (problem,))
    except strictmodes.Untrusted as error:
        problem = Problem(error.path, 0, f"{error.message}; nothing in {directory} is used")
        return Bootctrl(directory, home, None, (), (problem,))
    except OSError as error:
        problem = Problem(directory, 0, f"cannot read directory: {error.strerror}")
        return Bootctrl(directory, home, None, (), (problem,))
    problems: list[Problem] = []
    send = _load_send(directory, home, names, problems)
    services: list[Service] = []
    rc_names = [name for name in names if rc_service(name) is not None and name != SEND_RC]
    me = local_name(home, problems) if rc_names else FALLBACK_LOCAL_NAME
    for name in rc_names:
        service_name = rc_service(name)
        assert service_name is not None
        first = len(problems)
        try:
            services.append(_load_service(trusted, home, service_name, me, problems))
        except _ServiceProblem as error:
            problems.append(error.problem)
        except Exception as error:  # one service's files never stop the others
            where = printable(os.path.join(directory, name))
            problems.append(_unexpected(error, where, service_name))
        problems[first:] = [problem._replace(service=service_name) for problem in problems[first:]]
    services = _drop_conflicting(services, problems, holders)
    if check_accounts:
        for service in services:
            problems.extend(unknown_accounts(service))
    return Bootctrl(directory, home, send, tuple(services), tuple(sorted(problems)))


def _unexpected(error: Exception, where: str, name: str) -> Problem:
    """Whatever else reading one service's files raised (EACCES, ELOOP, MemoryError...)."""
    if isinstance(error, strictmodes.Untrusted):
        return Problem(error.path, 0, f"{error.message}; service {name} skipped")
    if isinstance(error, OSError):
        where = str(error.filename) if error.filename else where
        what = f"cannot read: {error.strerror}"
    else:
        what = f"cannot read: {type(error).__name__}"
    return Problem(where, 0, f"{what}; service {name} skipped")


def _load_send(directory: str, home: str, names: list[str], problems: list[Problem]) -> Send | None:
    if SEND_RC not in names:
        return None
    source = purepath.join(purepath.absolute(home), "control", "defaultdelivery")
    rc_file = os.path.join(directory, SEND_RC)
    try:
        text = strictmodes.read_file(source).decode("utf-8")
    except FileNotFoundError:
        return Send(rc_file, home, DEFAULT_DELIVERY, "default")
    except strictmodes.Untrusted as error:
        problems.append(Problem(error.path, 0, f"{error.message}; using {DEFAULT_DELIVERY}"))
        return Send(rc_file, home, DEFAULT_DELIVERY, "default")
    except OSError as error:
        problems.append(
            Problem(source, 0, f"cannot read: {error.strerror}; using {DEFAULT_DELIVERY}")
        )
        return Send(rc_file, home, DEFAULT_DELIVERY, "default")
    except UnicodeDecodeError:
        problems.append(Problem(source, 0, f"not UTF-8; using {DEFAULT_DELIVERY}"))
        return Send(rc_file, home, DEFAULT_DELIVERY, "default")
    # Like the shell's `cat` in backquotes: trailing newlines go, inner ones stay
    # (qmail-start takes several delivery lines).
    delivery = text.rstrip("\n")
    if not delivery.strip() or "\0" in delivery:
        problems.append(Problem(source, 1, f"empty or invalid; using {DEFAULT_DELIVERY}"))
        delivery = DEFAULT_DELIVERY
    return Send(rc_file, home, delivery, source)


def printable(path: str) -> str:
    """A file name for a message: control characters escaped as repr() does (a newline in
    a name must not start a new line in the kernel log)."""
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in path)


def _check_rc_link(bootctrl: strictmodes.TrustedDirectory, name: str, rc_name: str) -> None:
    rc_path = bootctrl.where(rc_name)
    if not valid_service_name(name):
        raise _ServiceProblem(
            Problem(
                printable(rc_path),
                0,
                f"invalid service name {quote(name)}: use 1 to 64 letters, digits, - _ . "
                "(starting with a letter or digit); service ignored",
            )
        )
    status = bootctrl.lstat(rc_name)
    if status is None or not stat.S_ISLNK(status.st_mode):
        raise _ServiceProblem(Problem(rc_path, 0, f"not a symlink to {RC_TARGET}; service ignored"))
    target = bootctrl.readlink(rc_name)
    if os.path.basename(target) != RC_TARGET:
        raise _ServiceProblem(
            Problem(rc_path, 0, f"points to {quote(target)}, not {RC_TARGET}; service ignored")
        )
    try:
        bootctrl.check(rc_name)  # the script it names: trusted like everything else
    except FileNotFoundError:
        raise _ServiceProblem(
            Problem(rc_path, 0, f"dangling symlink to {quote(target)}; service ignored")
        ) from None


def _load_service(
    bootctrl: strictmodes.TrustedDirectory,
    home: str,
    name: str,
    me: str,
    problems: list[Problem],
) -> Service:
    rc_name = f"qmail-{name}.rc"
    _check_rc_link(bootctrl, name, rc_name)
    env_name = f"qmail-{name}.env"
    env_path = bootctrl.where(env_name)
    env: envfile.EnvFile | None = None
    if bootctrl.lstat(env_name) is not None:
        try:
            data = bootctrl.read(env_name)
        except strictmodes.Untrusted as error:
            # Refused before a byte is read: nothing of it reaches a message.
            raise _ServiceProblem(
                Problem(error.path, 0, f"{error.message}; service {name} skipped")
            ) from None
        except OSError as error:
            raise _ServiceProblem(
                Problem(env_path, 0, f"cannot read: {error.strerror}; service {name} skipped")
            ) from None
        env = envfile.parse(data, env_path, {"QMAILHOME": home, "SERVICE": name})
        if env.problems:
            problems.extend(env.problems[1:])
            first = env.problems[0]
            raise _ServiceProblem(
                Problem(first.file, first.line, f"{first.message}; service {name} skipped")
            )
        problems.extend(option_typos(env))
    try:
        return _build_service(bootctrl, home, name, rc_name, me, env)
    except _ServiceProblem as error:
        # Every refused setting costs the service: say so, once.
        found = error.problem
        suffix = f"; service {name} skipped"
        if found.message.endswith(suffix):
            raise
        raise _ServiceProblem(Problem(found.file, found.line, found.message + suffix)) from None


# The env file settings qboot reads; any other name is a variable for $NAME expansion.
OPTIONS = (
    "PORT",
    "IP",
    "CDB",
    "MAXCONN",
    "MAXPERIP",
    "BACKLOG",
    "USER",
    "UID",
    "GROUP",
    "GID",
    "BANNER",
    "TCPFLAGS",
    "SMTPD",
    "PRESMTPD",
    "POSTSMTPD",
)


def option_typos(env: envfile.EnvFile) -> list[Problem]:
    """`PROT=2588` is a variable nobody reads: a warning (the service still runs) when an
    unknown UPPERCASE name that nothing exports looks like a setting (names with an
    underscore are taken for the admin's own variables)."""
    exported = {name for name, _ in env.exported()}
    found = []
    for name, line in env.lines():
        if name in OPTIONS or name in exported or not name.isupper() or "_" in name:
            continue
        import difflib  # only for a likely typo: its import costs the generator 1 ms

        near = difflib.get_close_matches(name, OPTIONS, n=1, cutoff=0.75)
        if near:
            found.append(
                Problem(
                    env.path,
                    line,
                    f"warning: {name} is not a setting qboot reads; did you mean {near[0]}? "
                    f"(a variable for $NAME needs no change)",
                )
            )
    return found


def _option(env: envfile.EnvFile | None, name: str) -> envfile.Assignment | None:
    return env.last(name) if env is not None else None


def _positive_int(env: envfile.EnvFile | None, name: str, low: int, high: int) -> int | None:
    assignment = _option(env, name)
    if assignment is None:
        return None
    value = assignment.value.strip()
    if not value.isascii() or not value.isdigit() or not low <= int(value) <= high:
        assert env is not None
        raise _ServiceProblem(
            Problem(
                env.path,
                assignment.line,
                f"{name}={quote(assignment.value)}: expected a number from {low} to {high}",
            )
        )
    return int(value)


def _port(env: envfile.EnvFile | None) -> int:
    """PORT= as a number or, like tcpserver, a name from /etc/services (smtp, submission)."""
    assignment = _option(env, "PORT")
    name = assignment.value.strip() if assignment is not None else ""
    if name and not name.isdigit() and _port_name(name):
        number = service_port(name)
        if number is None:
            assert env is not None and assignment is not None
            raise _ServiceProblem(
                Problem(
                    env.path,
                    assignment.line,
                    f"PORT={name!r}: not a port number, nor a tcp service in {SERVICES_FILE}",
                )
            )
        return number
    return _positive_int(env, "PORT", 1, 65535) or DEFAULT_PORT


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


def _listen(env: envfile.EnvFile | None, port: int, name: str) -> tuple[Listen, ...]:
    assignment = _option(env, "IP")
    if assignment is None:
        return (Listen(port),)
    assert env is not None
    words = assignment.value.split()
    if not words or words == ["0"]:
        return (Listen(port),)
    import ipaddress  # here: the shipped env files listen on all addresses (1 to 1.5 ms)

    addresses: list[Listen] = []
    for word in words:
        if word == "0":
            raise _ServiceProblem(
                Problem(env.path, assignment.line, "IP: 0 means all addresses; use IP=0 alone")
            )
        text = word[1:-1] if word.startswith("[") and word.endswith("]") else word
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            raise _ServiceProblem(
                Problem(env.path, assignment.line, f"IP: {quote(word)} is not an IP address")
            ) from None
        if isinstance(address, ipaddress.IPv6Address) and address.scope_id is not None:
            # systemd's ListenStream= takes no scope id (252 refuses `[fe80::1%eth0]:25`).
            raise _ServiceProblem(
                Problem(
                    env.path,
                    assignment.line,
                    f"IP: {quote(word)}: ListenStream= cannot take a scope id; use "
                    f"IP={address.compressed.split('%')[0]} and BindToDevice={address.scope_id} "
                    f"in a drop-in for the socket (systemctl edit qmail-tcpd@{name}.socket)",
                )
            )
        if address.is_unspecified:
            raise _ServiceProblem(
                Problem(
                    env.path,
                    assignment.line,
                    f"IP: {quote(word)} means all addresses; use IP=0 alone",
                )
            )
        item = Listen(port, str(address))
        if item in addresses:
            raise _ServiceProblem(Problem(env.path, assignment.line, f"IP: {word} listed twice"))
        addresses.append(item)
    return tuple(addresses)


def _account(env: envfile.EnvFile | None, names: tuple[str, str]) -> str | None:
    """USER/UID or GROUP/GID: a name or a number (its existence: unknown_accounts)."""
    for name in names:
        assignment = _option(env, name)
        if assignment is None or not assignment.value:
            continue
        assert env is not None
        if not _account_name(assignment.value):
            raise _ServiceProblem(
                Problem(
                    env.path,
                    assignment.line,
                    f"{name}={assignment.value!r}: not a valid user/group name or number",
                )
            )
        return assignment.value
    return None


def unknown_accounts(service: Service) -> list[Problem]:
    """A named user or group that does not exist here (qboot-tcpsrv refuses to start
    then). The reconcile refuses such settings and keeps the last good ones running.
    Not for the generator: a lookup of a missing name may ask systemd itself (nss-systemd)
    while it waits for the generators, or the network (NSS) before it is up."""
    from . import accounts  # not the generator's: it needs no grp and pwd

    found = []
    for value, exists, kind, names in (
        (service.user, accounts.user_exists, "user", ("USER", "UID")),
        (service.group, accounts.group_exists, "group", ("GROUP", "GID")),
    ):
        if value is None or exists(value):
            continue
        setting = next((name for name in names if service.line_of(name)), names[0])
        found.append(
            Problem(
                service.env_file or service.rc_file,
                service.line_of(setting),
                f'unknown {kind} "{value}" ({setting}=): no such {kind} on this system; '
                f"create it or fix the name",
                service.name,
            )
        )
    return found


def local_name(home: str | os.PathLike[str], problems: list[Problem]) -> str:
    """The first line of control/me, as lifewithqmail's run script passes it to tcpserver -l;
    the fallback "0" when qmail is not configured yet (no file) or the file is refused.
    Read like defaultdelivery (StrictModes, regular file, capped, never blocking): its
    line reaches every unit's command line and every session's TCPLOCALHOST."""
    source = purepath.join(purepath.absolute(home), "control", "me")
    fallback = f"using -l {FALLBACK_LOCAL_NAME}"
    try:
        data = strictmodes.read_file(source)
    except FileNotFoundError:
        return FALLBACK_LOCAL_NAME
    except strictmodes.Untrusted as error:
        problems.append(Problem(error.path, 0, f"{error.message}; {fallback}"))
        return FALLBACK_LOCAL_NAME
    except OSError as error:
        problems.append(Problem(source, 0, f"cannot read: {error.strerror}; {fallback}"))
        return FALLBACK_LOCAL_NAME
    # qmail's control_readline: the first line, trailing spaces and tabs dropped.
    first = data.split(b"\n", 1)[0].rstrip(b" \t").decode("ascii", "replace")
    if not _host_name(first):
        # The content is not quoted: the file may be a link to anything root can read.
        problems.append(
            Problem(
                source,
                1,
                "not a host name (1 to 255 letters, digits, '-' and '.'); "
                f"{fallback} (put this host's name on the first line)",
            )
        )
        return FALLBACK_LOCAL_NAME
    return first


def _words(env: envfile.EnvFile | None, name: str) -> tuple[str, ...]:
    assignment = _option(env, name)
    return tuple(assignment.value.split()) if assignment else ()


def _rules_path(
    bootctrl: strictmodes.TrustedDirectory, env: envfile.EnvFile | None, name: str
) -> str:
    """CDB= names a file in bootctrl, or an absolute path; either must pass StrictModes."""
    assignment = _option(env, "CDB")
    value = assignment.value if assignment and assignment.value else f"tcprules-{name}.cdb"
    given = env is not None and assignment is not None and bool(assignment.value)
    where = (
        (env.path, assignment.line) if env and assignment and given else (bootctrl.where(value), 0)
    )

    def problem(message: str) -> _ServiceProblem:
        return _ServiceProblem(Problem(where[0], where[1], f"{message}; service {name} skipped"))

    if given and (not value.endswith(".cdb") or (not os.path.isabs(value) and "/" in value)):
        raise problem(
            f"CDB={quote(value)}: name a .cdb file in the bootctrl directory "
            "(tcprules-SVC.cdb) or give an absolute path to one"
        )
    try:
        if os.path.isabs(value):
            strictmodes.check_file(os.path.normpath(value), bootctrl.trusted)
            return os.path.normpath(value)
        return bootctrl.check(value)
    except FileNotFoundError:
        path = quote(value) if given else bootctrl.where(value)
        linked = not os.path.isabs(value) and bootctrl.lstat(value) is not None
        what = "dangling symlink" if linked else "missing"
        raise problem(
            f"rules {path} {what}: create tcprules-{name}.txt and run "
            f"mktcprules, or link tcprules-{name}.cdb to tcprules-default.cdb"
        ) from None
    except strictmodes.Untrusted as error:
        raise problem(f"rules {error.path}: {error.message}") from None
    except OSError as error:
        raise problem(f"rules {quote(value)}: {error.strerror}") from None


def _build_service(
    bootctrl: strictmodes.TrustedDirectory,
    home: str,
    name: str,
    rc_name: str,
    me: str,
    env: envfile.EnvFile | None,
) -> Service:
    port = _port(env)
    listen = _listen(env, port, name)
    listen_line = max(
        (a.line for a in (_option(env, "PORT"), _option(env, "IP")) if a is not None), default=0
    )
    banner_assignment = _option(env, "BANNER")
    banner = banner_assignment.value if banner_assignment else None
    if banner is not None and any(ord(c) < 32 or ord(c) == 127 for c in banner):
        assert env is not None and banner_assignment is not None
        raise _ServiceProblem(
            Problem(env.path, banner_assignment.line, "BANNER contains control characters")
        )
    tcpflags = _words(env, "TCPFLAGS")
    try:
        validate_tcpflags(tcpflags)
    except TcpFlagsError as error:
        flags_line = _option(env, "TCPFLAGS")
        assert env is not None and flags_line is not None
        raise _ServiceProblem(Problem(env.path, flags_line.line, f"TCPFLAGS: {error}")) from None
    screening = _screening(env)
    server = _DEFAULT_SERVERS.get(name, "qmail-smtpd")
    smtpd = _words(env, "SMTPD") or (purepath.join(home, "bin", server),)
    return Service(
        name=name,
        rc_file=bootctrl.where(rc_name),
        env_file=env.path if env else None,
        listen=listen,
        rules=_rules_path(bootctrl, env, name),
        maxconn=_positive_int(env, "MAXCONN", 1, 100000) or DEFAULT_MAXCONN,
        maxperip=_positive_int(env, "MAXPERIP", 1, 100000),
        backlog=_positive_int(env, "BACKLOG", 1, 65535),
        user=_account(env, ("USER", "UID")),
        group=_account(env, ("GROUP", "GID")),
        banner=banner,
        tcpflags=split_interface(tcpflags)[1],
        interface=split_interface(tcpflags)[0],
        local_name=me,
        smtpd=smtpd,
        presmtpd=_words(env, "PRESMTPD"),
        postsmtpd=_words(env, "POSTSMTPD"),
        dnsbl=screening.dnsbl,
        dnsblflags=screening.dnsblflags,
        rbl_incore=screening.rbl_incore,
        rate=screening.rate,
        rate_reply=screening.rate_reply,
        environment=env.exported() if env else (),
        listen_line=listen_line,
        lines=env.lines() if env else (),
    )


class _Screening(NamedTuple):
    dnsbl: tuple[str, ...]
    dnsblflags: tuple[str, ...]
    rbl_incore: bool
    rate: int | None
    rate_reply: bool


def _screening(env: envfile.EnvFile | None) -> _Screening:
    """DNSBL, DNSBLFLAGS, RBL_INCORE, RATE and RATE_ANSWER (issue 16)."""

    def problem(name: str, message: str) -> _ServiceProblem:
        assignment = _option(env, name)
        assert env is not None and assignment is not None
        return _ServiceProblem(
            Problem(env.path, assignment.line, f"{name}={quote(assignment.value)}: {message}")
        )

    dnsbl = _words(env, "DNSBL")
    flags = _words(env, "DNSBLFLAGS")
    if dnsbl or flags:
        # Only here: rblsmtpd's parser brings enum (2.5 ms at start-up, installed).
        from .tcpsrv.rbl import parse_command, plain_dns_name

        bad = [base for base in dnsbl if not plain_dns_name(base)]
        if bad:
            raise problem("DNSBL", f"{quote(bad[0])} is not a DNS name (zen.spamhaus.org)")
        parsed = parse_command(["rblsmtpd", *flags, "smtpd"])
        if parsed is None or parsed[1] != ("smtpd",):
            raise problem(
                "DNSBLFLAGS", "rblsmtpd options only: -a base, -b, -B, -c, -C, -t seconds"
            )
    if flags and not dnsbl:
        raise problem("DNSBLFLAGS", "set DNSBL too (the blocklists these options are for)")
    switches = {}
    for name, choices in (("RBL_INCORE", ("yes", "no")), ("RATE_ANSWER", ("close", "421"))):
        assignment = _option(env, name)
        value = assignment.value.strip() if assignment is not None else choices[0]
        if value not in choices:
            raise problem(name, f"expected {' or '.join(choices)}")
        switches[name] = value == choices[0]
    rate = _positive_int(env, "RATE", 1, 1000000)
    return _Screening(dnsbl, flags, switches["RBL_INCORE"], rate, not switches["RATE_ANSWER"])


def _drop_conflicting(
    services: list[Service], problems: list[Problem], holders: Mapping[str, frozenset[str]]
) -> list[Service]:
    """Two services cannot bind the same address and port. The one running there now
    keeps it; then one that names its port (PORT=/IP= in its env file) keeps it against
    one that only has the default port 25 (`ln -s qmail-tcpd qmail-nosuch.rc` must not
    take smtp's port); among equals the first by name keeps it."""

    def priority(service: Service) -> tuple[bool, bool, str]:
        held = {item.systemd() for item in service.listen} <= holders.get(service.name, set())
        return (not held, service.listen_line == 0, service.name)

    kept: list[Service] = []
    on_port: dict[int, list[int]] = {}  # port -> indexes in kept: only those can clash
    for service in sorted(services, key=priority):
        near = sorted({index for mine in service.listen for index in on_port.get(mine.port, ())})
        clash = next(
            (
                (kept[index], mine)
                for index in near
                for mine in service.listen
                for theirs in kept[index].listen
                if mine.conflicts_with(theirs)
            ),
            None,
        )
        if clash is None:
            for item in service.listen:
                on_port.setdefault(item.port, []).append(len(kept))
            kept.append(service)
            continue
        other, mine = clash
        where = service.env_file or service.rc_file
        problems.append(
            Problem(
                where,
                service.listen_line if service.env_file else 0,
                f"{mine.systemd()} is already used by service {other.name}; "
                f"service {service.name} skipped",
                service.name,
            )
        )
    return sorted(kept, key=lambda s: s.name)
