"""Is a service serving? One answer per service, judged by what a client gets.

A tcp service is healthy when a client that connects gets a session as bootctrl says: the
socket listens where bootctrl says, the chain's first program exists and the service's
user may run it, the rules cdb can be read and is not older than its text, the service
runs (no crash loop), and its recent sessions did not all fail to start. `qbootctl status`,
`qbootctl verify`, `eqmaild` and qboot-tcpsrv's STATUS= line all judge by `assess`.

`assess` is pure: facts in, a Health out. The observers after it gather the facts (the
file system, the accounts, the journal; systemd and /proc through the caller's manager);
their imports are inside them, so that qboot-tcpsrv, which judges its own chain and rules
with the same `assess`, loads none of the admin's modules.
"""

from __future__ import annotations

import enum
import os
import stat

from .._startup import TYPE_CHECKING, NamedTuple
from ..problems import Problem
from . import SEND

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

    from ..bootctrl import Bootctrl, Service
    from ..systemd import UnitState


class State(enum.StrEnum):
    RUNNING = "running"  # clients get what bootctrl says
    DEGRADED = "degraded"  # clients get sessions, but not (all) as bootctrl says
    STOPPED = "stopped"  # not running: stopped, or not enabled
    DOWN = "down"  # meant to serve, but a client gets no session


# LSB init-script `status` codes: 0 running, 3 not running. A service that serves clients,
# but not as bootctrl says, is neither: 150 is from the range LSB leaves to applications.
LSB_RUNNING = 0
LSB_NOT_RUNNING = 3
LSB_DEGRADED = 150
_LSB = {
    State.RUNNING: LSB_RUNNING,
    State.DEGRADED: LSB_DEGRADED,
    State.STOPPED: LSB_NOT_RUNNING,
    State.DOWN: LSB_NOT_RUNNING,
}
_RANK = {State.RUNNING: 0, State.DEGRADED: 1, State.STOPPED: 2, State.DOWN: 3}

# Session outcomes judged from the journal: enough to see a pattern, little to read.
RECENT_SESSIONS = 20


class Finding(NamedTuple):
    """One reason a service is not healthy: what it does to clients, and what to do."""

    state: State  # DOWN: clients get no session; DEGRADED: they do, not as bootctrl says
    text: str  # names the file (and line) it comes from when there is one
    hint: str = ""

    def __str__(self) -> str:
        return f"{self.text} ({self.hint})" if self.hint else self.text


class Health(NamedTuple):
    state: State
    findings: tuple[Finding, ...] = ()

    @property
    def lsb_status(self) -> int:
        return _LSB[self.state]

    @property
    def serving(self) -> bool:
        return self.state in (State.RUNNING, State.DEGRADED)

    def lines(self) -> list[str]:
        return [str(finding) for finding in self.findings]

    def as_json(self) -> dict[str, object]:
        return {
            "state": self.state.value,
            "findings": [
                {"state": f.state.value, "text": f.text, "hint": f.hint} for f in self.findings
            ],
        }


def worst(states: Sequence[State]) -> State:
    """The state of several services together (RUNNING for none)."""
    return max(states, key=_RANK.__getitem__, default=State.RUNNING)


def lsb_status(healths: Sequence[Health]) -> int:
    """One exit status for several services: not running wins over degraded."""
    return _LSB[worst([health.state for health in healths])]


# --- the facts ------------------------------------------------------------------------------
class ProgramFact(NamedTuple):
    """The chain's first program, as the server would exec it."""

    path: str
    problem: str | None = None  # why the service's user cannot run it
    where: str = ""  # the setting that names it (file:line SMTPD=), when known


class RulesFact(NamedTuple):
    path: str
    problem: str | None = None  # why the service cannot read it
    missing_ok: bool = False  # -X: no file means allow all
    missing: bool = False
    newer_source: str | None = None  # a .txt edited after the cdb was compiled


class SessionsFact(NamedTuple):
    """The recent sessions of the running server (its log lines)."""

    started: int
    failed: int
    last_failure: str = ""


class CertFact(NamedTuple):
    """The certificate a TLS server serves (from its STATUS=) and its file as it is now."""

    path: str  # CERTFILE as the running server was given it
    served: str  # the first hex digits of the served certificate's SHA-256
    served_until: str  # its notAfter date, YYYY-MM-DD
    on_disk: str | None  # the file's certificate's SHA-256 (None: unreadable now)
    today: str  # YYYY-MM-DD, UTC: assess() reads no clock


# A certificate this close to its end was not renewed (certbot renews 30 days ahead).
EXPIRY_WARNING_DAYS = 7


class Facts(NamedTuple):
    name: str
    enabled: bool  # bootctrl enables it (its rc link, broken or not)
    active: bool  # the socket listens (tcp service) or the service runs (send)
    unit: str = ""  # the service unit, for hints
    crash_looping: bool = False
    problems: tuple[Problem, ...] = ()  # why bootctrl's files cannot run now
    kept: bool = False  # runs (or is ready to run) its last good settings
    program: ProgramFact | None = None
    rules: RulesFact | None = None
    sessions: SessionsFact | None = None
    pending: str | None = None  # how what runs differs from bootctrl now
    # The server process runs (not only its socket): started before its problems came (a
    # certificate replaced by a bad one, an account deleted), it serves as it was started.
    running: bool = False
    certificate: CertFact | None = None


def assess(facts: Facts) -> Health:
    """What a client of this service gets."""
    serving_problems = _serving_problems(facts)
    found: list[Finding] = []
    if not facts.active:
        if facts.problems and not facts.kept:
            found += _broken(facts)
        elif facts.enabled:
            what = (
                "mail is queued, not delivered"
                if facts.name == SEND
                else ("connections are refused")
            )
            found.append(
                Finding(
                    State.STOPPED, f"not running: {what}", f"start it: qbootctl start {facts.name}"
                )
            )
        state = worst([f.state for f in found]) if found else State.STOPPED
        return Health(state, tuple(found))
    if facts.problems:
        started_before = facts.running and not facts.kept
        if started_before and not any(f.state is State.DOWN for f in serving_problems):
            # It serves as started, but would not start again: a restart takes it down.
            found += [
                Finding(
                    State.DEGRADED,
                    f"serves as started, but would not start again: {problem}",
                    "fix this before a restart (a restart would stop it)",
                )
                for problem in facts.problems
            ]
        elif not facts.kept or any(f.state is State.DOWN for f in serving_problems):
            # Last good settings are good only while they can serve.
            found += _broken(facts)
        else:
            # Each problem names its file and line, and most say what to do.
            found += [
                Finding(State.DEGRADED, f"degraded, runs its last good settings: {problem}")
                for problem in facts.problems
            ]
    found += serving_problems
    if not facts.enabled:
        found.append(
            Finding(
                State.DEGRADED,
                f"runs, but bootctrl does not enable it (no qmail-{facts.name}.rc)",
                f"qbootctl stop {facts.name}, or: systemctl daemon-reload",
            )
        )
    rules = facts.rules
    if rules is not None and rules.problem is None and rules.newer_source is not None:
        found.append(
            Finding(
                State.DEGRADED,
                f"{rules.newer_source} is newer than {rules.path}: clients get the old rules",
                f"run mktcprules {os.path.dirname(rules.newer_source) or '.'}",
            )
        )
    if facts.pending is not None:
        found.append(Finding(State.DEGRADED, facts.pending))
    if facts.certificate is not None:
        found += _certificate_findings(facts.certificate, facts.unit or facts.name)
    state = worst([f.state for f in found]) if found else State.RUNNING
    return Health(state, tuple(found))


def _certificate_findings(cert: CertFact, unit: str) -> list[Finding]:
    """What TLS clients are shown, against what the files say and the calendar."""
    reload = f"systemctl reload {unit}"
    if cert.on_disk is not None and not cert.on_disk.startswith(cert.served):
        text = (
            f"{cert.path} was replaced after the server loaded it: clients still get "
            f"the certificate valid until {cert.served_until}"
        )
        return [Finding(State.DEGRADED, text, reload)]
    if cert.served_until < cert.today:
        text = f"clients get a certificate that expired on {cert.served_until} ({cert.path})"
        return [Finding(State.DEGRADED, text, f"renew it, then: {reload}")]
    if cert.served_until <= _days_after(cert.today, EXPIRY_WARNING_DAYS):
        text = f"the certificate clients get expires on {cert.served_until} ({cert.path})"
        return [Finding(State.DEGRADED, text, f"renew it, then: {reload}")]
    return []


def _days_after(day: str, days: int) -> str:
    import datetime

    return (datetime.date.fromisoformat(day) + datetime.timedelta(days=days)).isoformat()


def _broken(facts: Facts) -> list[Finding]:
    return [Finding(State.DOWN, f"broken: {problem}") for problem in facts.problems] or [
        Finding(State.DOWN, "broken: see qbootctl show")
    ]


def _serving_problems(facts: Facts) -> list[Finding]:
    """What makes every session fail while the socket listens."""
    found = []
    unit = facts.unit or f"qmail-tcpd@{facts.name}.service"
    if facts.crash_looping:
        found.append(
            Finding(
                State.DOWN,
                f"{unit} fails and is restarted again and again",
                f"see: journalctl -u {unit}",
            )
        )
    program = facts.program
    if program is not None and program.problem is not None:
        where = f"{program.where}: " if program.where else ""
        found.append(
            Finding(
                State.DOWN,
                f"{where}cannot run {program.path}: {program.problem}; every client is closed "
                "without a greeting",
                "fix the path or install the program, then: systemctl daemon-reload",
            )
        )
    rules = facts.rules
    if rules is not None and rules.problem is not None and not (rules.missing and rules.missing_ok):
        found.append(
            Finding(
                State.DOWN,
                f"cannot read the rules {rules.path}: {rules.problem}; every connection is dropped",
                f"run mktcprules, or: ln -s tcprules-default.cdb {os.path.basename(rules.path)}",
            )
        )
    sessions = facts.sessions
    if sessions is not None and sessions.failed:
        total = sessions.started + sessions.failed
        if not sessions.started:
            which = "the last session" if total == 1 else f"the last {total} sessions"
            text = f"{which} failed to start: {sessions.last_failure}"
            found.append(Finding(State.DOWN, text, f"see: journalctl -u {unit}"))
        else:
            text = f"{sessions.failed} of the last {total} sessions failed to start: "
            text += sessions.last_failure
            found.append(Finding(State.DEGRADED, text, f"see: journalctl -u {unit}"))
    return found


# --- observing: the file system and the accounts ---------------------------------------------
# PATH of a systemd service (systemd 252's default): where a bare program name is looked up.
SERVICE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _allowed(info: os.stat_result, uid: int, gid: int, bits: int) -> bool:
    """May uid:gid (no other groups: qboot-tcpsrv clears them) use the file this way?
    bits: the `other` permission bits wanted (4 read, 1 execute/search)."""
    if uid == 0:
        # root passes every read and search check; it executes a file with any x bit.
        return bits != 1 or stat.S_ISDIR(info.st_mode) or bool(info.st_mode & 0o111)
    if info.st_uid == uid:
        return bool(info.st_mode & (bits << 6))
    if info.st_gid == gid:
        return bool(info.st_mode & (bits << 3))
    return bool(info.st_mode & bits)


def access_problem(path: str, uid: int, gid: int, bits: int) -> str | None:
    """Why uid:gid cannot read (bits 4) or execute (bits 1) path, or None. Judged from
    the permission bits as root sees them (ACLs aside): the directories on the way must
    be searchable, the file itself regular."""
    try:
        real = os.path.realpath(path, strict=True)
        info = os.stat(real)
    except OSError as error:
        return error.strerror or "cannot be found"
    if not stat.S_ISREG(info.st_mode):
        return "not a regular file"
    parent = os.path.dirname(real)
    while True:
        try:
            directory = os.stat(parent)
        except OSError as error:
            return error.strerror or "cannot be found"
        if not _allowed(directory, uid, gid, 1):
            return f"{parent} is not searchable by {_who(uid, gid)}"
        if parent == "/":
            break
        parent = os.path.dirname(parent)
    if not _allowed(info, uid, gid, bits):
        verb = "executable" if bits == 1 else "readable"
        return f"not {verb} by {_who(uid, gid)}"
    return None


def _who(uid: int, gid: int) -> str:
    import grp
    import pwd

    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = str(uid)
    try:
        group = grp.getgrgid(gid).gr_name
    except KeyError:
        group = str(gid)
    return f"{user}:{group}"


def find_program(name: str, search: str = SERVICE_PATH) -> str | None:
    """The file a bare name runs (the first PATH entry that has it), or None."""
    if "/" in name:
        return name
    for directory in search.split(":"):
        candidate = os.path.join(directory or ".", name)
        if os.path.exists(candidate):
            return candidate
    return None


def _program_fact(name: str, uid: int, gid: int, search: str, where: str) -> ProgramFact:
    found = find_program(name, search)
    if found is None:
        return ProgramFact(name, f"not found in {search}", where)
    return ProgramFact(name, access_problem(found, uid, gid, 1), where)


def chain_facts(
    argv: Sequence[str],
    where: str = "",
    search: str = SERVICE_PATH,
    later: Sequence[str] = (),
) -> tuple[ProgramFact | None, RulesFact | None]:
    """The first program and the rules of a qboot-tcpsrv command line (ExecStart=), as
    root sees them for the user it drops to. (None, None) when it is no such line.
    later: programs the chain execs after its first one (SMTPD behind a PRESMTPD wrapper
    such as softlimit or envdir): the first of them that cannot run is the fact, as every
    session ends there too."""
    from .. import accounts
    from ..tcpsrv.options import UsageError, parse

    try:
        options = parse(list(argv[1:]))
    except UsageError:
        return None, None
    program = options.program
    if options.rbl_incore:
        from ..tcpsrv.rblcommand import parse_command

        parsed = parse_command(program)
        if parsed is not None:
            program = parsed[1]  # the server screens; the next program is exec'd
    try:
        uid = accounts.user_id(options.user) if options.user is not None else 0
        gid = accounts.group_id(options.group) if options.group is not None else 0
    except accounts.UnknownAccount:
        return None, None  # a problem of its own (unknown account)
    fact = _program_fact(program[0], uid, gid, search, where)
    for name in later:
        if fact.problem is not None:
            break
        if name in program[1:]:  # what runs, not what bootctrl says now
            fact = _program_fact(name, uid, gid, search, where)
    if fact.problem is None:
        fact = ProgramFact(program[0], None, where)
    rules = None if options.rules is None else rules_fact(options.rules, uid, gid)
    if rules is not None and options.missing_rules_ok:
        rules = rules._replace(missing_ok=True)
    return fact, rules


def rules_fact(path: str, uid: int, gid: int) -> RulesFact:
    """Can the service read its cdb (as the server reads it), and is it up to date?"""
    from pathlib import Path

    from .. import mktcprules
    from ..rules import RulesError, RuleSet

    problem = access_problem(path, uid, gid, 4)
    missing = not os.path.exists(path)  # a dangling link too
    if problem is None and os.access(path, os.R_OK):
        state = RuleSet(path).snapshot()  # what the server would make of it
        if isinstance(state, RulesError):
            problem = state.message
    newer = None
    if problem is None:
        cdb = Path(path)
        sources = [cdb.with_suffix(".txt")]
        if cdb.is_symlink():  # tcprules-subm.cdb -> tcprules-default.cdb
            sources.append(cdb.resolve().with_suffix(".txt"))
        for source in sources:
            if (
                source.is_file()
                and not mktcprules.is_up_to_date(source, cdb.resolve())
                and _compiles_otherwise(source, cdb)
            ):
                newer = str(source)
                break
    return RulesFact(path, problem, missing=missing, newer_source=newer)


def _compiles_otherwise(source: Path, cdb: Path) -> bool:
    """Does the text give another cdb than this one? A copy that kept no times (a git
    checkout writes the .cdb before the .txt) is not out of date."""
    import io

    from .. import mktcprules, rules
    from ..cdb import write_cdb

    try:
        with open(source, "rb") as handle:
            data = handle.read(mktcprules.MAX_SOURCE)
        compiled = io.BytesIO()
        write_cdb(compiled, rules.records(rules.parse(data)))
        with open(cdb, "rb") as handle:
            return handle.read(len(compiled.getvalue()) + 1) != compiled.getvalue()
    except (OSError, ValueError):
        return True  # unreadable or no longer valid text: not what the cdb holds


def setting_where(service: Service, program: str) -> str:
    """The env file line that names the chain's first program (file:SETTING= when the
    program is the default)."""
    for setting, words in (("PRESMTPD", service.presmtpd), ("SMTPD", service.smtpd)):
        if words and words[0] == program:
            line = service.line_of(setting)
            if line and service.env_file:
                return f"{service.env_file}:{line}: {setting}"
            if setting == "SMTPD":
                return f"{service.env_file or service.rc_file}: SMTPD (default)"
    return ""


def static_facts(service: Service, tcpsrv: str = "qboot-tcpsrv") -> Facts:
    """What bootctrl's files say, without systemd: for qbootctl verify."""
    from .. import units

    argv = [tcpsrv, *units.tcpsrv_argv(service, units.Paths(tcpsrv=tcpsrv))[1:]]
    program, rules = chain_facts(argv, search=_search_path(service), later=service.smtpd[:1])
    if program is not None:
        program = program._replace(where=setting_where(service, program.path))
    return Facts(service.name, True, True, program=program, rules=rules)


def _search_path(service: Service | None) -> str:
    environment = dict(service.environment) if service is not None else {}
    return environment.get("PATH", SERVICE_PATH)


# --- observing: the journal -----------------------------------------------------------------
_STARTED = "qboot-tcpsrv: ok "
_FAILED = "qboot-tcpsrv: warning: unable to run "


def sessions_fact(lines: Sequence[str], limit: int = RECENT_SESSIONS) -> SessionsFact | None:
    """The last `limit` session outcomes among a server's log lines (None: no session
    logged, as with -q)."""
    outcomes = [line for line in lines if line.startswith((_STARTED, _FAILED))][-limit:]
    if not outcomes:
        return None
    failures = [line for line in outcomes if line.startswith(_FAILED)]
    last = failures[-1].removeprefix("qboot-tcpsrv: warning: ") if failures else ""
    return SessionsFact(len(outcomes) - len(failures), len(failures), last)


def server_log(unit: str, pid: int, lines: int = 400) -> list[str]:
    """The log lines of one run of a service's main process ([] when unreadable)."""
    from ..run import run

    try:
        done = run(
            [
                *("journalctl", f"_SYSTEMD_UNIT={unit}", f"_PID={pid}", "-n", str(lines)),
                *("-o", "cat", "-q", "--no-pager"),
            ],
            timeout=20,
        )
    except OSError:
        return []
    return done.stdout.splitlines() if done.returncode == 0 else []


# --- observing: systemd ---------------------------------------------------------------------
def observe(
    model: Bootctrl, name: str, states: tuple[UnitState, ...], output: Path | None = None
) -> Facts:
    """The facts of one target (`send` or a tcp service) from the states systemd gave
    for its units (socket first, the service's loaded ExecStart= among them), what the
    generator wrote (output), the files and the journal."""
    from .. import listening
    from . import observe, stamps

    if name == SEND:
        service_state = states[-1]
        return Facts(
            name,
            enabled=model.send is not None,
            active=service_state.active in ("active", "reloading"),
            unit=service_state.name,
            crash_looping=service_state.crash_looping,
            pending=_pending(model, name, None, service_state, output),
        )
    socket, service_state = states[0], states[-1]
    found = (
        observe.broken_services(model)
        if output is None
        else (observe.broken_services(model, output))
    )
    broken = next((b for b in found if b.name == name), None)
    enabled = name in stamps.enabled_names(model.directory)
    current = model.service(name)
    program = rules = sessions = certificate = None
    if socket.active == "active" and service_state.exec_start:
        program, rules = chain_facts(
            service_state.exec_start,
            search=_search_path(current),
            later=current.smtpd[:1] if current is not None else (),
        )
        if program is not None and current is not None:
            program = program._replace(where=setting_where(current, program.path))
        main = service_state.main_pid if service_state.active == "active" else 0
        if main and listening.readable(main):
            sessions = sessions_fact(server_log(service_state.name, main))
        if main:
            certificate = cert_fact(service_state.exec_start, service_state.status_text)
    return Facts(
        name,
        enabled=enabled,
        active=socket.active == "active",
        unit=service_state.name,
        crash_looping=service_state.crash_looping,
        problems=broken.problems if broken is not None else (),
        kept=broken is not None and broken.kept,
        program=program,
        rules=rules,
        sessions=sessions,
        pending=_pending(model, name, socket, service_state, output),
        running=service_state.active == "active" and service_state.main_pid > 0,
        certificate=certificate,
    )


def cert_fact(argv: Sequence[str], status_text: str) -> CertFact | None:
    """The served certificate (qboot-tcpsrv's STATUS= names it) against its file now;
    None for a server without TLS or one that has not said yet."""
    import time

    from ..tcpsrv.options import UsageError, parse
    from ..tcpsrv.tls import certinfo

    try:
        options = parse(list(argv[1:]))
    except UsageError:
        return None
    served = certinfo.served(status_text)
    if options.certfile is None or served is None:
        return None
    try:
        with open(options.certfile, "rb") as file:
            found = certinfo.leaf_info(file.read(1 << 20))
    except OSError:
        found = None
    today = time.strftime("%Y-%m-%d", time.gmtime())
    on_disk = found.fingerprint if found is not None else None
    return CertFact(options.certfile, served[0], served[1], on_disk, today)


def _pending(
    model: Bootctrl,
    name: str,
    socket: UnitState | None,
    service: UnitState,
    output: Path | None,
) -> str | None:
    """How what runs differs from bootctrl now (an edit not reloaded, a reload not
    applied), as reconcile compares them."""
    from . import observe

    if output is None:
        notes = observe.status_notes(model, name, socket, service)
    else:
        notes = observe.status_notes(model, name, socket, service, output)
    # status_notes also names broken services; the facts carry those as problems.
    return next((note for note in notes if note.startswith("pending")), None)


# --- a server judging itself ----------------------------------------------------------------
def own_status(program: str, rules: RulesFact | None, search: str) -> str:
    """The words qboot-tcpsrv puts before its figures in STATUS=: "" while it can serve,
    else `down: why; `. It runs as the service's user, so os.access answers for it."""
    found = find_program(program, search)
    if found is None:
        problem: str | None = f"not found in {search}"
    elif not os.path.exists(found):
        problem = os.strerror(2)  # ENOENT, as execve would say
    elif not os.access(found, os.X_OK):
        problem = "not executable by this server's user"
    else:
        problem = None
    judged = assess(Facts("", True, True, program=ProgramFact(program, problem), rules=rules))
    if not judged.findings or judged.state is not State.DOWN:
        return ""
    return f"{judged.state.value}: {judged.findings[0].text}; "
