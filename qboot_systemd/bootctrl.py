"""The bootctrl model: what qboot's directory says should run, and every problem in it.

`load()` does all the reading; the result is plain frozen data that the generator, the
CLI and the tests consume without further I/O.
"""

from __future__ import annotations

import os
import stat

from . import envfile, settings, strictmodes
from ._startup import TYPE_CHECKING, NamedTuple, absolute_path, join_path, pure_path
from .problems import Problem, quote
from .settings import DEFAULT_PORT as DEFAULT_PORT  # admin.py reads it here
from .tcpflags import split_interface

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from pathlib import Path

# Paths are text here (os.path and _startup): the generator does without pathlib.
DEFAULT_QMAIL_HOME = "/var/qmail"
DEFAULT_DELIVERY = "./Maildir/"
# tcpserver's -l when control/me is missing: its man page's "common choice", no DNS lookup.
FALLBACK_LOCAL_NAME = "0"
RC_TARGET = "qmail-tcpd"
SEND_RC = "qmail-init.rc"

_DEFAULT_SERVERS = {"qmtp": "qmail-qmtpd", "qmqp": "qmail-qmqpd"}

# Names are checked against sets of ASCII characters, not regular expressions: the
# generator starts without re (see _startup).
_ALNUM = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
_SERVICE_CHARS = _ALNUM | frozenset("_.-")
_HOST_CHARS = _ALNUM | frozenset(".-")


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
    given: tuple[tuple[str, str], ...] = ()  # each setting the env file sets, as it reads
    dnsbl: tuple[str, ...] = ()  # DNSBL: blocklists, each an rblsmtpd -r
    dnsblflags: tuple[str, ...] = ()  # DNSBLFLAGS: rblsmtpd options before them
    rbl_incore: bool = True  # RBL_INCORE: a leading rblsmtpd runs inside qboot-tcpsrv
    rate: int | None = None  # RATE: new connections per minute per address
    rate_reply: bool = False  # RATE_ANSWER=421 (else a plain close)
    tls: str | None = None  # TLS: one of settings.TLS_MODES but no (-S)
    certfile: str | None = None  # CERTFILE (-E)
    keyfile: str | None = None  # KEYFILE (-K); None: the key is in CERTFILE
    ccafile: str | None = None  # CCAFILE (-A)
    ciphers: str | None = None  # CIPHERS (-F)

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
    check_accounts: also report what stops a start that the generator cannot see: USER and
    GROUP names unknown here, TLS certificate files that cannot serve (qbootctl only).
    holders: the ListenStream= values each service runs with now; in a clash, the
    service that already holds the address keeps it."""
    if qmail_home is None:
        qmail_home = os.environ.get("QBOOT_QMAIL_HOME", DEFAULT_QMAIL_HOME)
    home = pure_path(qmail_home)
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
            problems.extend(start_problems(service))
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
    source = join_path(absolute_path(home), "control", "defaultdelivery")
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


def option_typos(env: envfile.EnvFile) -> list[Problem]:
    """`PROT=2588` is a variable nobody reads: a warning (the service still runs) when an
    unknown UPPERCASE name that nothing exports looks like a setting."""
    exported = {name for name, _ in env.exported()}
    found = []
    for name, line in env.lines():
        near = None if name in exported else settings.typo_of(name)
        if near is not None:
            found.append(
                Problem(
                    env.path,
                    line,
                    f"warning: {name} is not a setting qboot reads; did you mean {near}? "
                    f"(a variable for $NAME needs no change)",
                )
            )
    return found


class _Values:
    """Every setting's value for one service: the env file's, parsed by its row, or the
    row's default. Typed accessors, as the rows hold values of several types."""

    def __init__(self, env: envfile.EnvFile | None, service: str) -> None:
        self.env = env
        # The definition in force at the end of the file, of each setting it gives.
        self.given: dict[str, envfile.Assignment] = {}
        if env is not None:
            for assignment in env.assignments:
                if assignment.name in settings.BY_NAME:
                    self.given[assignment.name] = assignment
        self.values: dict[str, object] = {}
        for setting in settings.SETTINGS:
            found = self.given.get(setting.name)
            if found is None:
                self.values[setting.name] = setting.unset
                continue
            try:
                self.values[setting.name] = setting.parse(setting.name, found.value, service)
            except settings.Invalid as error:
                assert env is not None
                raise _ServiceProblem(Problem(env.path, found.line, error.message)) from None

    def number(self, name: str) -> int | None:
        value = self.values[name]
        assert value is None or isinstance(value, int)
        return value

    def text(self, name: str) -> str | None:
        value = self.values[name]
        assert value is None or isinstance(value, str)
        return value

    def words(self, name: str) -> tuple[str, ...]:
        value = self.values[name]
        assert isinstance(value, tuple)
        return value

    def line(self, name: str) -> int:
        found = self.given.get(name)
        return found.line if found is not None else 0

    def problem(self, name: str, message: str) -> _ServiceProblem:
        found = self.given[name]
        assert self.env is not None
        return _ServiceProblem(
            Problem(self.env.path, found.line, f"{name}={quote(found.value)}: {message}")
        )


def start_problems(service: Service) -> list[Problem]:
    """What stops qboot-tcpsrv from starting with these settings, which the generator
    cannot see (it looks up no account and reads no certificate): the reconcile refuses
    such settings and keeps the last good ones running, instead of a restart loop."""
    return unknown_accounts(service) + certificate_problems(service)


def certificate_problems(service: Service) -> list[Problem]:
    """CERTFILE/KEYFILE/CCAFILE missing, unreadable, world-readable (the key), not PEM,
    or a key that does not match, or CIPHERS that select nothing: as qboot-tcpsrv reads
    them at start (as root, before it drops privileges)."""
    if service.tls is None or service.certfile is None:
        return []
    from .tcpsrv.tls.certs import CertPaths, program_account  # ssl, only for a TLS service
    from .tcpsrv.tls.context import check

    program = program_account(service.user, service.group)
    keyfile = service.keyfile or service.certfile
    paths = CertPaths(service.certfile, keyfile, service.ccafile, program)
    error = check(paths, service.ciphers)
    if error is None:
        return []
    text = str(error)
    named = (("KEYFILE", service.keyfile), ("CCAFILE", service.ccafile))
    setting = next((name for name, path in named if path and text.startswith(path)), "CERTFILE")
    if "cipher" in text.lower() and service.ciphers is not None:
        setting = "CIPHERS"
    return [Problem(service.env_file or service.rc_file, service.line_of(setting), text)]


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
    source = join_path(absolute_path(home), "control", "me")
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


def _rules_path(bootctrl: strictmodes.TrustedDirectory, values: _Values, name: str) -> str:
    """CDB= names a file in bootctrl, or an absolute path; either must pass StrictModes."""
    given = values.text("CDB")
    value = given or f"tcprules-{name}.cdb"
    env = values.env
    where = (env.path, values.line("CDB")) if env and given else (bootctrl.where(value), 0)

    def problem(message: str) -> _ServiceProblem:
        return _ServiceProblem(Problem(where[0], where[1], f"{message}; service {name} skipped"))

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
    values = _Values(env, name)
    port = values.number("PORT")
    assert port is not None
    listen = tuple(Listen(port, address) for address in values.words("IP")) or (Listen(port),)
    dnsbl = values.words("DNSBL")
    if values.words("DNSBLFLAGS") and not dnsbl:
        raise values.problem("DNSBLFLAGS", "set DNSBL too (the blocklists these options are for)")
    rules = _rules_path(bootctrl, values, name)
    server = _DEFAULT_SERVERS.get(name, "qmail-smtpd")
    interface, tcpflags = split_interface(values.words("TCPFLAGS"))
    user, group = (
        values.text("USER") or values.text("UID"),
        values.text("GROUP") or values.text("GID"),
    )
    maxconn = values.number("MAXCONN")
    assert maxconn is not None
    tls = values.text("TLS")
    certfile = values.text("CERTFILE")
    if tls != "no" and certfile is None:
        raise values.problem("TLS", "set CERTFILE too (the certificate chain, PEM)")
    # Without TLS, CERTFILE and the others are only exported (setenv) for a TLS program of
    # the admin's own in the chain, as before.
    return Service(
        name=name,
        rc_file=bootctrl.where(rc_name),
        env_file=env.path if env else None,
        listen=listen,
        rules=rules,
        maxconn=maxconn,
        maxperip=values.number("MAXPERIP"),
        backlog=values.number("BACKLOG"),
        user=user,
        group=group,
        banner=values.text("BANNER"),
        tcpflags=tcpflags,
        interface=interface,
        local_name=me,
        smtpd=values.words("SMTPD") or (join_path(home, "bin", server),),
        presmtpd=values.words("PRESMTPD"),
        postsmtpd=values.words("POSTSMTPD"),
        dnsbl=dnsbl,
        dnsblflags=values.words("DNSBLFLAGS"),
        rbl_incore=values.text("RBL_INCORE") == "yes",
        rate=values.number("RATE"),
        rate_reply=values.text("RATE_ANSWER") == "421",
        tls=None if tls == "no" else tls,
        certfile=certfile,
        keyfile=values.text("KEYFILE"),
        ccafile=values.text("CCAFILE"),
        ciphers=values.text("CIPHERS"),
        environment=env.exported() if env else (),
        listen_line=max(values.line("PORT"), values.line("IP")),
        lines=env.lines() if env else (),
        given=tuple((name, found.value) for name, found in values.given.items()),
    )


# The defaults that depend on the service, shown as they came out for it.
_DEFAULT_SHOWN: dict[str, Callable[[Service], str]] = {
    "CDB": lambda service: service.rules,
    "SMTPD": lambda service: " ".join(service.smtpd),
}


def settings_of(service: Service) -> list[dict[str, str]]:
    """Every setting of service, in the table's order, as `qbootctl show SVC` prints it:
    name, value (as the env file gives it, quoting and $NAME done, or the default),
    source ("FILE:LINE" or "default") and help."""
    given = dict(service.given)
    shown: list[dict[str, str]] = []
    for setting in settings.SETTINGS:
        if setting.name in given:
            value, source = (
                given[setting.name],
                f"{service.env_file}:{service.line_of(setting.name)}",
            )
        elif setting.name in _DEFAULT_SHOWN:
            value, source = _DEFAULT_SHOWN[setting.name](service), "default"
        else:
            value, source = setting.default, "default"
        shown.append({"name": setting.name, "value": value, "source": source, "help": setting.help})
    return shown


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
