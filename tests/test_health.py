"""One health per service, judged by what a client gets (qboot_systemd.health): the pure
judgement over facts, and the observers of the chain, the rules and the sessions that
`qbootctl status`, `qbootctl verify`, `eqmaild` and qboot-tcpsrv's STATUS= share."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from qboot_systemd import cli, mktcprules
from qboot_systemd.apply import health
from qboot_systemd.apply.health import (
    CertFact,
    Facts,
    ProgramFact,
    RulesFact,
    SessionsFact,
    State,
)
from qboot_systemd.problems import Problem

from .conftest import SHIPPED_BOOTCTRL, require_tool
from .tcpsrv_harness import ours

BAD_KEY = Problem("/b/qmail-smtps.env", 7, "/c/k.pem: private key readable by everyone (mode 0644)")
TYPO = Problem("/b/qmail-smtp.env", 3, "PORT='25x': expected a number")
MISSING_CDB = RulesFact("/b/tcprules-smtp.cdb", "No such file or directory", missing=True)
# A certificate served (its fingerprint's first digits, its end) and the file now.
SERVED = CertFact(
    "/c/cert.pem", "0123456789abcdef", "2027-03-01", "0123456789abcdef" + "0" * 48, "2026-12-03"
)
SMTPDX = ProgramFact("/var/qmail/bin/qmail-smtpdx", "No such file or directory", "env:12: SMTPD")


@pytest.mark.parametrize(
    ("facts", "state", "lsb", "words"),
    [
        (Facts("smtp", True, True), State.RUNNING, 0, []),
        (Facts("smtp", True, False), State.STOPPED, 3, ["not running"]),
        (Facts("subm", False, False), State.STOPPED, 3, []),
        # a typo in SMTPD=: the socket listens, every client is closed without a greeting
        (Facts("smtp", True, True, program=SMTPDX), State.DOWN, 3, ["cannot run", "env:12"]),
        # the cdb removed while it runs: every connection is dropped
        (Facts("smtp", True, True, rules=MISSING_CDB), State.DOWN, 3, ["cannot read the rules"]),
        # -X: a missing cdb allows everyone, as tcpserver's
        (
            Facts("smtp", True, True, rules=MISSING_CDB._replace(missing_ok=True)),
            State.RUNNING,
            0,
            [],
        ),
        # last good settings that can serve: degraded, and why
        (
            Facts("smtp", True, True, problems=(TYPO,), kept=True),
            State.DEGRADED,
            150,
            ["degraded, runs its last good settings: /b/qmail-smtp.env:3: PORT='25x'"],
        ),
        # last good settings that cannot serve (their cdb is gone): down, and why
        (
            Facts("smtp", True, True, problems=(TYPO,), kept=True, rules=MISSING_CDB),
            State.DOWN,
            3,
            ["broken: /b/qmail-smtp.env:3", "cannot read the rules /b/tcprules-smtp.cdb"],
        ),
        (Facts("qmtp", True, False, problems=(TYPO,)), State.DOWN, 3, ["broken: /b/qmail"]),
        (Facts("smtp", True, True, crash_looping=True), State.DOWN, 3, ["again and again"]),
        (
            Facts("smtp", True, True, sessions=SessionsFact(0, 4, "unable to run x: ENOENT")),
            State.DOWN,
            3,
            ["the last 4 sessions failed to start: unable to run x"],
        ),
        # some sessions failing do not make last good settings bad
        (
            Facts("smtp", True, True, problems=(TYPO,), kept=True, sessions=SessionsFact(6, 1)),
            State.DEGRADED,
            150,
            ["degraded, runs its last good settings", "1 of the last 7 sessions failed"],
        ),
        (Facts("send", True, False), State.STOPPED, 3, ["mail is queued, not delivered"]),
        (
            Facts("smtp", True, True, sessions=SessionsFact(6, 1, "unable to run x")),
            State.DEGRADED,
            150,
            ["1 of the last 7 sessions failed"],
        ),
        (
            Facts("smtp", True, True, rules=RulesFact("/b/r.cdb", newer_source="/b/r.txt")),
            State.DEGRADED,
            150,
            ["/b/r.txt is newer than /b/r.cdb", "mktcprules"],
        ),
        (Facts("smtp", True, True, pending="pending: x"), State.DEGRADED, 150, ["pending: x"]),
        (Facts("gone", False, True), State.DEGRADED, 150, ["bootctrl does not enable it"]),
        # its certificate replaced by a bad one after it started: it serves as started,
        # and only a restart would take it down
        (
            Facts("smtps", True, True, problems=(BAD_KEY,), running=True),
            State.DEGRADED,
            150,
            ["serves as started, but would not start again", "mode 0644", "before a restart"],
        ),
        # TLS: the served certificate is the file's and far from its end
        (Facts("smtps", True, True, certificate=SERVED), State.RUNNING, 0, []),
        # renewed, never reloaded: clients get the old one
        (
            Facts(
                "smtps", True, True, unit="u@smtps", certificate=SERVED._replace(on_disk="f" * 64)
            ),
            State.DEGRADED,
            150,
            [
                "/c/cert.pem was replaced after the server loaded it",
                "until 2027-03-01",
                "systemctl reload u@smtps",
            ],
        ),
        (
            Facts("smtps", True, True, certificate=SERVED._replace(today="2027-03-02")),
            State.DEGRADED,
            150,
            ["expired on 2027-03-01", "renew it"],
        ),
        (
            Facts("smtps", True, True, certificate=SERVED._replace(today="2027-02-22")),
            State.DEGRADED,
            150,
            ["expires on 2027-03-01"],
        ),
        (
            Facts("smtps", True, True, certificate=SERVED._replace(today="2027-02-21")),
            State.RUNNING,
            0,
            [],
        ),
        # the file unreadable now: a start problem says so, not this
        (
            Facts("smtps", True, True, certificate=SERVED._replace(on_disk=None)),
            State.RUNNING,
            0,
            [],
        ),
        # the same settings with no server running: nothing serves
        (Facts("smtps", True, True, problems=(BAD_KEY,)), State.DOWN, 3, ["broken: "]),
        (
            Facts("smtps", True, True, problems=(BAD_KEY,), running=True, crash_looping=True),
            State.DOWN,
            3,
            ["broken: ", "again and again"],
        ),
    ],
)
def test_assess(facts: Facts, state: State, lsb: int, words: list[str]) -> None:
    judged = health.assess(facts)
    text = "\n".join(judged.lines())
    assert (judged.state, judged.lsb_status) == (state, lsb), text
    for word in words:
        assert word in text
    assert judged.serving == (state in (State.RUNNING, State.DEGRADED))


def test_several_services_not_running_wins_over_degraded() -> None:
    degraded = health.Health(State.DEGRADED)
    assert health.lsb_status([degraded, health.Health(State.RUNNING)]) == 150
    assert health.lsb_status([degraded, health.Health(State.DOWN)]) == 3
    assert health.lsb_status([]) == 0


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory every user may search (pytest's own tmp_path is root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="qboot-health."))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def test_access_is_judged_for_the_services_user(open_dir: Path) -> None:
    tmp_path = open_dir
    program = tmp_path / "qmail-smtpd"
    program.write_text("#!/bin/sh\n")
    program.chmod(0o700)
    assert health.access_problem(str(program), 0, 0, 1) is None
    nobody = 65534
    assert "not executable by" in str(health.access_problem(str(program), nobody, nobody, 1))
    program.chmod(0o755)
    assert health.access_problem(str(program), nobody, nobody, 1) is None
    tmp_path.chmod(0o700)
    try:
        found = health.access_problem(str(program), nobody, nobody, 1)
        assert found is not None and "is not searchable" in found
    finally:
        tmp_path.chmod(0o755)
    assert health.access_problem(str(tmp_path / "nosuch"), 0, 0, 1) == "No such file or directory"


def test_chain_facts_from_the_command_line(tmp_path: Path) -> None:
    cdb = tmp_path / "tcprules-smtp.cdb"
    shutil.copy(SHIPPED_BOOTCTRL / "tcprules-default.cdb", cdb)
    argv = ["qboot-tcpsrv", "-v", "-c", "40", "-x", str(cdb), "-", "-"]
    program, rules = health.chain_facts([*argv, "/var/qmail/bin/qmail-smtpdx"])
    assert program is not None and program.problem == "No such file or directory"
    assert rules == RulesFact(str(cdb))
    # The in-core rblsmtpd screens; the first program exec'd is the one after it.
    program, _ = health.chain_facts([*argv[:1], "-L", *argv[1:], "rblsmtpd", "-r", "z", "sh"])
    assert program is not None and (program.path, program.problem) == ("sh", None)
    program, _ = health.chain_facts([*argv, "qmail-nosuch-program"])
    assert program is not None and "not found in" in str(program.problem)
    cdb.unlink()
    _, rules = health.chain_facts([*argv, "sh"])
    assert rules is not None and rules.missing and rules.problem == "No such file or directory"


def test_a_default_rules_text_newer_than_its_cdb_is_found_through_the_link(
    tmp_path: Path,
) -> None:
    for second, name in enumerate(("tcprules-default.txt", "tcprules-default.cdb"), 1):
        shutil.copyfile(SHIPPED_BOOTCTRL / name, tmp_path / name)
        # Times set, not the checkout's (which wrote the .cdb first: it sorts first).
        os.utime(tmp_path / name, ns=(second * 10**9, second * 10**9))
    link = tmp_path / "tcprules-subm.cdb"
    link.symlink_to("tcprules-default.cdb")
    assert health.rules_fact(str(link), 0, 0).newer_source is None
    source = tmp_path / "tcprules-default.txt"
    os.utime(tmp_path / "tcprules-default.cdb", ns=(0, 0))  # a copy that kept no times
    assert health.rules_fact(str(link), 0, 0).newer_source is None  # same rules, same bytes
    with source.open("a") as handle:
        handle.write("10.9.:deny\n")
    found = health.rules_fact(str(link), 0, 0)
    assert found.newer_source == str(source), found
    text = "\n".join(health.assess(Facts("subm", True, True, rules=found)).lines())
    assert f"{source} is newer than {link}" in text and "mktcprules" in text
    mktcprules.compile_one(source, tmp_path / "tcprules-default.cdb")
    assert health.rules_fact(str(link), 0, 0).newer_source is None


def test_sessions_from_the_servers_log_lines() -> None:
    ok = "qboot-tcpsrv: ok 12 me:127.0.0.1:25 :127.0.0.1::4000"
    failed = "qboot-tcpsrv: warning: unable to run /x/qmail-smtpdx: No such file or directory"
    noise = ["qboot-tcpsrv: status: 1/40", "qboot-tcpsrv: pid 12 from 127.0.0.1"]
    assert health.sessions_fact(noise) is None  # -q, or no session yet
    assert health.sessions_fact([*noise, failed, failed]) == SessionsFact(
        0, 2, "unable to run /x/qmail-smtpdx: No such file or directory"
    )
    assert health.sessions_fact([failed, ok]) == SessionsFact(1, 1, failed[23:])
    assert health.sessions_fact([failed] * 5 + [ok] * 30) == SessionsFact(20, 0, "")


def test_own_status_is_what_the_server_puts_in_status(tmp_path: Path) -> None:
    assert health.own_status("sh", None, health.SERVICE_PATH) == ""
    words = health.own_status(str(tmp_path / "qmail-smtpdx"), None, health.SERVICE_PATH)
    assert words.startswith("down: cannot run ") and "No such file" in words
    gone = RulesFact("/b/tcprules-smtp.cdb", "No such file or directory", missing=True)
    assert health.own_status("sh", gone, health.SERVICE_PATH).startswith(
        "down: cannot read the rules /b/tcprules-smtp.cdb"
    )


def test_verify_finds_a_chain_that_cannot_run(tmp_path: Path) -> None:
    """Units systemd accepts, for a service that serves nobody: not "verified"."""
    require_tool("systemd-analyze")
    directory = tmp_path / "bootctrl"
    directory.mkdir()
    for name in ("qmail-tcpd", "tcprules-default.cdb", "tcprules-default.txt"):
        shutil.copy2(SHIPPED_BOOTCTRL / name, directory / name)
        (directory / name).chmod(0o755 if name == "qmail-tcpd" else 0o644)  # not umask 002's
    (directory / "qmail-smtp.rc").symlink_to("qmail-tcpd")
    (directory / "tcprules-smtp.cdb").symlink_to("tcprules-default.cdb")
    env = directory / "qmail-smtp.env"
    env.write_text("PORT=2525\nUSER=nobody\nGROUP=nogroup\nSMTPD=/bin/true\n")

    def verify() -> tuple[int, str]:
        done = CliRunner().invoke(
            cli.qbootctl, ["verify", "--bootctrl", str(directory), "--qmail-home", "/bin"]
        )
        return done.exit_code, done.output

    status, out = verify()
    assert "cannot run" not in out, out
    env.write_text("PORT=2525\nUSER=nobody\nGROUP=nogroup\nSMTPD=/bin/truex\n")
    status, out = verify()
    assert status == 1 and "verified" not in out
    assert f"problem: smtp: {env}:4: SMTPD: cannot run /bin/truex: No such file" in out


def _status_lines(receiver: socket.socket, wanted: str, timeout: float = 10) -> list[str]:
    """sd_notify datagrams until a STATUS= line holds `wanted`."""
    deadline = time.monotonic() + timeout
    seen: list[str] = []
    while time.monotonic() < deadline:
        receiver.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            message = receiver.recv(4096).decode()
        except TimeoutError:
            break
        seen += [line for line in message.splitlines() if line.startswith("STATUS=")]
        if any(wanted in line for line in seen):
            return seen
    raise AssertionError(f"no STATUS= with {wanted!r}: {seen}")


def test_the_server_says_down_in_its_status_and_reloads_without_a_warning(
    tmp_path: Path,
) -> None:
    """qboot-tcpsrv judges its own chain and rules as the user it runs as: STATUS= (what
    `systemctl status` shows) starts with `down: why` while no client can be served."""
    rules = tmp_path / "tcprules-smtp.cdb"
    shutil.copy(SHIPPED_BOOTCTRL / "tcprules-default.cdb", rules)
    program = tmp_path / "qmail-smtpd"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(tmp_path / "notify"))
    server = ours(
        *("-v", "-HR", "-l", "x", "-x", str(rules), "0", "0", str(program)),
        env={"NOTIFY_SOCKET": str(tmp_path / "notify")},
    )
    try:
        _status_lines(receiver, f"STATUS=down: cannot run {program}: No such file")
        program.write_text("#!/bin/sh\necho hello\n")
        program.chmod(0o755)
        server.process.send_signal(signal.SIGHUP)
        assert _status_lines(receiver, "STATUS=0/40 sessions")[-1].startswith("STATUS=0/40")
        assert server.request() == b"hello\n"
        rules.unlink()
        assert server.request() == b""  # dropped: no rules to decide by
        _status_lines(receiver, f"STATUS=down: cannot read the rules {rules}")
        log = server.log()
        assert "qboot-tcpsrv: SIGHUP: rules and names reloaded\n" in log
        assert "warning: SIGHUP" not in log
    finally:
        server.stop()
        receiver.close()


def _wrapped_bootctrl(tmp_path: Path, env: str) -> Path:
    directory = tmp_path / "bootctrl"
    directory.mkdir(mode=0o755)
    for name, mode in (("qmail-tcpd", 0o755), ("tcprules-default.cdb", 0o644)):
        (directory / name).write_bytes((SHIPPED_BOOTCTRL / name).read_bytes())
        (directory / name).chmod(mode)  # not the checkout's modes (umask 002)
    (directory / "qmail-smtps.rc").symlink_to("qmail-tcpd")
    (directory / "tcprules-smtps.cdb").symlink_to("tcprules-default.cdb")
    (directory / "qmail-smtps.env").write_text(env)
    return directory


@pytest.mark.parametrize("smtpd", ["/bin/truex", "/bin/true"])
def test_verify_judges_the_smtpd_behind_a_presmtpd_wrapper(open_dir: Path, smtpd: str) -> None:
    """PRESMTPD=/usr/bin/env (any wrapper that execs the rest, as softlimit or envdir) with
    SMTPD mistyped: every client is closed, so verify must not say verified; with SMTPD
    right, it does."""
    require_tool("systemd-analyze")
    directory = _wrapped_bootctrl(
        open_dir, f"PORT=4465\nUSER=nobody\nGROUP=nogroup\nPRESMTPD=/usr/bin/env\nSMTPD={smtpd}\n"
    )
    done = CliRunner().invoke(
        cli.qbootctl, ["verify", "--bootctrl", str(directory), "--qmail-home", "/bin"]
    )
    if smtpd == "/bin/true":
        assert done.exit_code == 0 and "verified" in done.output, done.output
    else:
        assert done.exit_code != 0, done.output
        assert "verified" not in done.output and "/bin/truex" in done.output, done.output
        assert "qmail-smtps.env:5" in done.output, done.output  # the SMTPD= line


def test_a_tls_server_names_its_certificate_in_status_and_a_reload_changes_it(
    tmp_path: Path,
) -> None:
    """STATUS= names the certificate new sessions get; cert_fact compares it with the
    file: one replaced without a reload is found, and the reload makes them one again."""
    from qboot_systemd.tcpsrv.tls.certinfo import leaf_info

    from .tcpsrv_harness import Running
    from .tls_harness import make_pair, tls_server_argv

    first = make_pair(tmp_path, "server")
    renewed = make_pair(tmp_path, "renewed", kind="rsa")
    new_words = leaf_info(renewed.cert.read_bytes())
    assert new_words is not None
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(tmp_path / "notify"))
    argv = [*tls_server_argv(first, "implicit", "-HR", "-l", "x"), "127.0.0.1", "0", "true"]
    server = Running(argv, env={"NOTIFY_SOCKET": str(tmp_path / "notify")})

    def judged(status: str) -> health.Health:
        fact = health.cert_fact(argv, status.removeprefix("STATUS="))
        assert fact is not None, status
        return health.assess(Facts("smtps", True, True, unit="u@smtps", certificate=fact))

    try:
        status = _status_lines(receiver, "STATUS=0/40 sessions")[-1]
        assert judged(status).state is State.RUNNING, judged(status).lines()
        shutil.copy(renewed.cert, first.cert)  # certbot's renewal, and no reload yet
        shutil.copy(renewed.key, first.key)
        assert judged(status).state is State.DEGRADED
        assert "was replaced after the server loaded it" in judged(status).lines()[0]
        server.process.send_signal(signal.SIGHUP)
        status = _status_lines(receiver, new_words.status_words())[-1]
        assert judged(status).state is State.RUNNING, judged(status).lines()
    finally:
        server.stop()
        receiver.close()
