from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qboot_systemd import bootctrl
from qboot_systemd import settings as env_settings
from qboot_systemd.bootctrl import Listen
from qboot_systemd.problems import Problem

from .bootctrl_trees import copy_shipped, make, stage_copy
from .conftest import ROOT
from .golden import check_golden

GOLDEN = ROOT / "tests" / "generator"


def model_json(directory: Path) -> str:
    model = bootctrl.load(directory, "/var/qmail")
    text = json.dumps(model.as_json(), indent=2, sort_keys=True) + "\n"
    return text.replace(str(directory), "@BOOTCTRL@")


@pytest.mark.parametrize(
    "case", sorted(p.name for p in GOLDEN.iterdir() if (p / "bootctrl").is_dir())
)
def test_golden_model(case: str, tmp_path: Path) -> None:
    staged = stage_copy(GOLDEN / case / "bootctrl", tmp_path / "bootctrl")
    check_golden(GOLDEN / case / "model.json", model_json(staged))


def test_shipped_bootctrl_enables_send_and_smtp_without_problems(tmp_path: Path) -> None:
    model = bootctrl.load(copy_shipped(tmp_path), "/var/qmail")
    assert model.problems == ()
    assert model.send is not None and model.send.default_delivery == "./Maildir/"
    assert [s.name for s in model.services] == ["smtp"]
    smtp = model.services[0]
    assert smtp.listen == (Listen(25),)
    assert smtp.command == ("/var/qmail/bin/qmail-smtpd",)
    assert smtp.maxconn == 40


def test_shipped_subm_env_gives_port_587(tmp_path: Path) -> None:
    directory = copy_shipped(tmp_path)
    (directory / "qmail-subm.rc").symlink_to("qmail-tcpd")
    (directory / "tcprules-subm.cdb").symlink_to("tcprules-default.cdb")
    model = bootctrl.load(directory, "/var/qmail")
    assert model.problems == ()
    subm = model.service("subm")
    assert subm is not None and subm.listen == (Listen(587),)


@pytest.mark.parametrize(
    ("env", "line", "fragment"),
    [
        ("PORT=0\n", 1, "expected a number from 1 to 65535"),
        ("\nPORT=70000\n", 2, "expected a number"),
        ("PORT=2x\n", 1, "expected a number"),
        ("IP=1.2.3.999\n", 1, "not an IP address"),
        ("IP='1.2.3.4 0'\n", 1, "all addresses"),
        ("IP='1.2.3.4 1.2.3.4'\n", 1, "listed twice"),
        ("MAXCONN=-1\n", 1, "expected a number"),
        ("USER='root;x'\n", 1, "not a valid user"),
        ("TCPFLAGS=-c5\n", 1, "use MAXCONN= instead of -c"),
        ("TCPFLAGS=-Z\n", 1, "unknown option -Z"),
        ("TCPFLAGS='-v foo'\n", 1, "is not an option"),
        ('BANNER="a\\\tb"\n', 1, "control characters"),
        ("CDB=missing.cdb\n", 1, "missing"),
    ],
)
def test_bad_options_are_problems_at_their_line(
    tmp_path: Path, env: str, line: int, fragment: str
) -> None:
    model = make(tmp_path, env)
    assert model.services == ()
    (problem,) = model.problems
    assert problem.file.endswith("qmail-x.env")
    assert problem.line == line
    assert fragment in problem.message


def test_options_are_read(tmp_path: Path) -> None:
    model = make(
        tmp_path,
        "PORT=2525\nIP='127.0.0.1 [::1]'\nMAXCONN=7\nBACKLOG=64\nUID=1001\nGID=1002\n"
        "BANNER='hello world'\nTCPFLAGS='-vRH -t 5'\nSMTPD='/bin/mailfront smtp echo'\n"
        "PRESMTPD='rblsmtpd -b'\nPOSTSMTPD=/bin/true\nsetenv A 'b c'\n",
    )
    assert model.problems == ()
    (service,) = model.services
    assert service.listen == (Listen(2525, "127.0.0.1"), Listen(2525, "::1"))
    assert [item.systemd() for item in service.listen] == ["127.0.0.1:2525", "[::1]:2525"]
    assert (service.maxconn, service.backlog, service.user, service.group) == (
        7,
        64,
        "1001",
        "1002",
    )
    assert service.banner == "hello world"
    assert service.tcpflags == ("-vRH", "-t", "5")
    assert service.command == ("rblsmtpd", "-b", "/bin/mailfront", "smtp", "echo", "/bin/true")
    assert service.environment == (("A", "b c"),)


def test_default_server_by_service_name(tmp_path: Path) -> None:
    model = make(tmp_path, "PORT=209\n", name="qmtp")
    assert model.services[0].command == ("/q/bin/qmail-qmtpd",)


def test_invalid_service_name(tmp_path: Path) -> None:
    directory = tmp_path / "b"
    directory.mkdir()
    (directory / "qmail-tcpd").write_text("")
    (directory / "qmail-a b.rc").symlink_to("qmail-tcpd")
    model = bootctrl.load(directory, "/q")
    assert model.services == ()
    assert "invalid service name" in model.problems[0].message


def test_regular_file_rc_is_not_a_service(tmp_path: Path) -> None:
    directory = tmp_path / "b"
    directory.mkdir()
    (directory / "qmail-foo.rc").write_text("#!/bin/sh\n")
    model = bootctrl.load(directory, "/q")
    assert model.services == () and "not a symlink" in model.problems[0].message


def test_missing_directory_is_a_problem_not_an_exception(tmp_path: Path) -> None:
    model = bootctrl.load(tmp_path / "nope", "/q")
    assert model.services == () and model.send is None
    assert model.problems[0].message == "bootctrl directory not found"


def test_default_delivery_from_control(tmp_path: Path) -> None:
    home = tmp_path / "qmail"
    (home / "control").mkdir(parents=True)
    (home / "control" / "defaultdelivery").write_text("|preline procmail\n./Maildir/\n\n")
    directory = tmp_path / "b"
    directory.mkdir()
    (directory / "qmail-init.rc").write_text("")
    model = bootctrl.load(directory, home)
    assert model.send is not None
    assert model.send.default_delivery == "|preline procmail\n./Maildir/"


def test_specific_addresses_on_one_port_do_not_clash(tmp_path: Path) -> None:
    directory = tmp_path / "b"
    directory.mkdir()
    (directory / "qmail-tcpd").write_text("")
    for name, ip in (("a", "127.0.0.1"), ("b", "127.0.0.2"), ("c", "0")):
        (directory / f"qmail-{name}.rc").symlink_to("qmail-tcpd")
        (directory / f"tcprules-{name}.cdb").write_bytes(b"")
        (directory / f"qmail-{name}.env").write_text(f"PORT=26\nIP={ip}\n")
    model = bootctrl.load(directory, "/q")
    assert [s.name for s in model.services] == ["a", "b"]
    assert "127.0.0.1:26 is already used by service a" not in model.problems[0].message
    assert "is already used by service a; service c skipped" in model.problems[0].message


@pytest.mark.parametrize(
    ("rc_name", "shown", "fragment"),
    [
        ("qmail-.rc", "qmail-.rc", "invalid service name ''"),
        ("qmail-nl\nx.rc", "qmail-nl\\nx.rc", "invalid service name 'nl\\nx'"),
        ("qmail-" + "a" * 240 + ".rc", "qmail-" + "a" * 240 + ".rc", "(240 characters)"),
        ("qmail-\x1b[2J.rc", "qmail-\\x1b[2J.rc", "invalid service name '\\x1b[2J'"),
    ],
)
def test_every_ignored_rc_link_is_reported_with_its_name_escaped(
    tmp_path: Path, rc_name: str, shown: str, fragment: str
) -> None:
    directory = tmp_path / "b"
    directory.mkdir()
    (directory / "qmail-tcpd").write_text("")
    (directory / rc_name).symlink_to("qmail-tcpd")
    model = bootctrl.load(directory, "/q")
    assert model.services == ()
    (problem,) = model.problems
    assert problem.file == f"{directory}/{shown}"
    assert fragment in problem.message and "1 to 64 letters" in problem.message
    assert problem.message.endswith("; service ignored")
    assert all(char.isprintable() for char in str(problem))


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ("IP=fe80::1%eth0\n", "systemctl edit qmail-tcpd@subm.socket)"),
        ('IP="127.0.0.1 ::1 0"\n', "use IP=0 alone"),
        ("IP=::\n", "means all addresses"),
        ("PORT=0\n", "expected a number"),
        ("TCPFLAGS=-Z\n", "unknown option -Z"),
        ("CDB=missing.cdb\n", "missing"),
    ],
)
def test_a_refused_setting_says_the_service_is_skipped_once(
    tmp_path: Path, env: str, fragment: str
) -> None:
    model = make(tmp_path, env, name="subm")
    assert model.services == ()
    (problem,) = model.problems
    assert fragment in problem.message and "SVC" not in problem.message
    assert problem.message.endswith("; service subm skipped")
    assert problem.message.count("skipped") == 1


# The name checks were regular expressions; these are the expressions, as a reference.
_REFERENCES = [
    (bootctrl.valid_service_name, r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z"),
    (bootctrl._host_name, r"[A-Za-z0-9.-]{1,255}\Z"),
    (env_settings.account_name, r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}\Z"),
    (env_settings.port_name, r"[A-Za-z][A-Za-z0-9_-]{0,31}\Z"),
]
_NAME_TEXT = st.text(st.sampled_from("aZ09_.-/ \n\x00é٣\uff21K")) | st.text(max_size=300)


@pytest.mark.parametrize(("check", "pattern"), _REFERENCES)
@settings(max_examples=300)
@given(text=_NAME_TEXT)
def test_name_checks_accept_what_their_expression_matches(
    check: Callable[[str], bool], pattern: str, text: str
) -> None:
    assert check(text) == bool(re.match(pattern, text))


@pytest.mark.parametrize(("check", "pattern"), _REFERENCES)
@pytest.mark.parametrize("length", [1, 31, 32, 33, 63, 64, 65, 255, 256])
def test_name_checks_length_limits(check: Callable[[str], bool], pattern: str, length: int) -> None:
    for text in ("a" * length, "a" + "-" * (length - 1), "1" * length):
        assert check(text) == bool(re.match(pattern, text))


@given(st.text(st.sampled_from("qmail-.rcx\n")) | st.text())
def test_rc_service_is_what_the_rc_expression_took(name: str) -> None:
    match = re.match(r"qmail-(.*)\.rc\Z", name, re.DOTALL)
    assert bootctrl.rc_service(name) == (match.group(1) if match else None)


def _drop_conflicting_reference(
    services: list[bootctrl.Service], problems: list[Problem], holders: dict[str, frozenset[str]]
) -> list[bootctrl.Service]:
    """Every pair compared, as the clash check was written before it looked up by port."""

    def priority(service: bootctrl.Service) -> tuple[bool, bool, str]:
        held = {item.systemd() for item in service.listen} <= holders.get(service.name, set())
        return (not held, service.listen_line == 0, service.name)

    kept: list[bootctrl.Service] = []
    for service in sorted(services, key=priority):
        clash = next(
            (
                (other, mine)
                for other in kept
                for mine in service.listen
                for theirs in other.listen
                if mine.conflicts_with(theirs)
            ),
            None,
        )
        if clash is None:
            kept.append(service)
            continue
        other, mine = clash
        problems.append(
            Problem(
                service.env_file or service.rc_file,
                service.listen_line if service.env_file else 0,
                f"{mine.systemd()} is already used by service {other.name}; "
                f"service {service.name} skipped",
                service.name,
            )
        )
    return sorted(kept, key=lambda s: s.name)


_LISTEN = st.builds(
    Listen, st.sampled_from([25, 465, 587]), st.sampled_from([None, "::1", "10.0.0.1"])
)


@settings(max_examples=300)
@given(
    st.lists(
        st.tuples(st.lists(_LISTEN, min_size=1, max_size=3, unique=True), st.integers(0, 2)),
        max_size=7,
    ),
    st.sets(st.integers(0, 6)),
)
def test_clashes_found_by_port_as_by_every_pair(
    specs: list[tuple[list[Listen], int]], held: set[int]
) -> None:
    services = [
        bootctrl.Service(
            name=f"s{index}",
            rc_file=f"/b/qmail-s{index}.rc",
            env_file=f"/b/qmail-s{index}.env" if line else None,
            listen=tuple(listen),
            rules="/b/r.cdb",
            maxconn=1,
            smtpd=("/bin/true",),
            listen_line=line,
        )
        for index, (listen, line) in enumerate(specs)
    ]
    holders = {
        f"s{index}": frozenset(item.systemd() for item in specs[index][0])
        for index in held
        if index < len(specs)
    }
    found: list[Problem] = []
    expected: list[Problem] = []
    assert bootctrl._drop_conflicting(services, found, holders) == _drop_conflicting_reference(
        services, expected, holders
    )
    assert found == expected
