"""USER/GROUP as qboot-tcpsrv -u/-g, and the tcpserver defaults the generator writes."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from qboot_systemd import bootctrl, units
from qboot_systemd.problems import Problem
from qboot_systemd.tcpflags import TcpFlagsError, validate_tcpflags
from qboot_systemd.tcpsrv.options import UsageError, parse

from .conftest import venv_script
from .tcpsrv_harness import Running, read_all

PATHS = units.Paths(tcpsrv="/usr/bin/qboot-tcpsrv")


def make(tmp_path: Path, env: str, home: Path | None = None) -> bootctrl.Bootctrl:
    directory = tmp_path / "b"
    directory.mkdir()
    (directory / "qmail-tcpd").write_text("#!/bin/sh\n")
    (directory / "qmail-x.rc").symlink_to("qmail-tcpd")
    (directory / "tcprules-x.cdb").write_bytes(b"\0" * 2048)
    (directory / "qmail-x.env").write_text(env)
    return bootctrl.load(directory, home or tmp_path / "q", check_accounts=True)


def test_u_and_g_take_names_or_numbers() -> None:
    options = parse(["-u", "qmaild", "-gnofiles", "0", "25", "prog"])
    assert (options.user, options.group) == ("qmaild", "nofiles")
    assert parse(["-u", "7791", "0", "25", "p"]).user == "7791"
    for bad in (["-u", "", "0", "25", "p"], ["-u", "a b", "0", "25", "p"]):
        with pytest.raises(UsageError):
            parse(bad)


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs root")
def test_privileges_dropped_after_the_socket_with_groups_cleared() -> None:
    flags = ["-1", "-H", "-u", "nobody", "-g", "nogroup"]
    ids = ["/bin/sh", "-c", "id -u; id -g; id -G"]
    server = Running([venv_script("qboot-tcpsrv"), *flags, "127.0.0.1", "0", *ids])
    try:
        with server.connect() as client:
            lines = read_all(client).decode().split()
    finally:
        server.stop()
    nobody = subprocess.run(["id", "-u", "nobody"], capture_output=True, text=True).stdout
    nogroup = subprocess.run(["getent", "group", "nogroup"], capture_output=True, text=True)
    gid = nogroup.stdout.split(":")[2]
    assert lines == [nobody.strip(), gid, gid]  # no supplementary group of root's left


def test_unknown_user_is_a_clear_fatal_error() -> None:
    done = subprocess.run(
        [venv_script("qboot-tcpsrv"), "-u", "qmaildx", "127.0.0.1", "0", "/bin/true"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 111
    assert done.stderr == "qboot-tcpsrv: fatal: unknown user qmaildx\n"
    done = subprocess.run(
        [venv_script("qboot-tcpsrv"), "-g", "nofilesx", "127.0.0.1", "0", "/bin/true"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert (done.returncode, done.stderr) == (111, "qboot-tcpsrv: fatal: unknown group nofilesx\n")


def test_unknown_account_is_a_problem_at_its_line(tmp_path: Path) -> None:
    model = make(tmp_path, "PORT=2525\nUSER=nosuchuser\nGROUP=nosuchgroup\n")
    assert [str(p).split("/")[-1] for p in model.problems] == [
        'qmail-x.env:2: unknown user "nosuchuser" (USER=): no such user on this system; '
        "create it or fix the name",
        'qmail-x.env:3: unknown group "nosuchgroup" (GROUP=): no such group on this system; '
        "create it or fix the name",
    ]
    # still generated: the account may exist by the time the service starts
    assert [service.name for service in model.services] == ["x"]
    # the generator does not look names up (nss-systemd would ask PID 1 while it waits)
    assert bootctrl.load(tmp_path / "b", tmp_path / "q").problems == ()


def test_dropin_runs_the_lifewithqmail_defaults(tmp_path: Path) -> None:
    home = tmp_path / "q"
    (home / "control").mkdir(parents=True)
    (home / "control" / "me").write_text("mx.example.org\nignored\n")
    model = make(tmp_path, "USER=qmaild\nGROUP=nofiles\nTCPFLAGS='-r -q'\n", home)
    assert model.problems == ()
    (service,) = model.services
    argv = units.tcpsrv_argv(service, PATHS)
    assert argv[:10] == [
        "/usr/bin/qboot-tcpsrv",
        *("-v", "-R", "-l", "mx.example.org"),
        *("-r", "-q"),  # TCPFLAGS after the defaults: tcpserver's last flag wins
        *("-c", "40", "-u"),
    ]
    options = parse(argv[1:])
    assert (options.verbosity, options.remote_info, options.localname) == (
        0,
        True,
        "mx.example.org",
    )
    assert (options.user, options.group) == ("qmaild", "nofiles")
    dropin = units.service_dropin(service, PATHS)
    assert "User=" not in dropin and "Group=" not in dropin


@pytest.mark.parametrize(
    ("content", "expected", "reported"),
    [
        (None, "0", False),  # qmail not configured yet: the documented fallback, silently
        (b"", "0", True),
        (b"two words\n", "0", True),
        (b"\xff\n", "0", True),
        (b"mx.example\n", "mx.example", False),
        (b"mx.example \t\nsecond line\n", "mx.example", False),
    ],
)
def test_local_name_from_control_me(
    tmp_path: Path, content: bytes | None, expected: str, reported: bool
) -> None:
    if content is not None:
        (tmp_path / "control").mkdir(mode=0o755)
        (tmp_path / "control").chmod(0o755)
        (tmp_path / "control" / "me").write_bytes(content)
        (tmp_path / "control" / "me").chmod(0o644)
    problems: list[Problem] = []
    assert bootctrl.local_name(tmp_path, problems) == expected
    assert bool(problems) == reported
    for problem in problems:
        assert str(problem).startswith(f"{tmp_path}/control/me:") and "-l 0" in str(problem)
        assert "words" not in str(problem)


def test_tcpflags_may_override_the_defaults() -> None:
    for words in (("-r",), ("-q",), ("-Q",), ("-l", "other.example"), ("-l0",), ("-W", "5")):
        validate_tcpflags(words)
    for words, message in ((("-l", "a b"), "-l needs"), (("-W", "x"), "-W needs")):
        with pytest.raises(TcpFlagsError, match=message):
            validate_tcpflags(words)
    with pytest.raises(TcpFlagsError, match="use USER= instead of -u"):
        validate_tcpflags(("-u", "qmaild"))
