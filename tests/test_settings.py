"""The env-file settings table against its users: the reader, the typo warning,
qboot-env(5) and `qbootctl show SVC`."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from qboot_systemd import bootctrl, cli
from qboot_systemd.settings import SETTINGS

from .bootctrl_trees import make_directory as make
from .conftest import ROOT

MAN_PAGE = ROOT / "qboot_systemd/man/qboot-env.5"
NAMES = [setting.name for setting in SETTINGS]


def man_entries() -> dict[str, str]:
    """Each `.TP` entry of OPTIONS: its name and its `Default: ...` text."""
    text = MAN_PAGE.read_text()
    options = text.split(".SH OPTIONS\n", 1)[1].split("\n.SH ", 1)[0]
    entries: dict[str, str] = {}
    for entry in options.split(".TP\n")[1:]:
        head, _, body = entry.partition("\n")
        assert head.startswith(".B "), f"one setting per entry, as `.B NAME`: {head!r}"
        name = head[len(".B ") :]
        defaults = re.findall(r"^Default: (.*)\.$", body, re.MULTILINE)
        assert len(defaults) == 1, f"{name}: one `Default: ...` line, got {defaults}"
        assert name not in entries, f"{name} documented twice"
        entries[name] = defaults[0]
    return entries


def test_the_man_page_documents_every_setting_and_nothing_else() -> None:
    entries = man_entries()
    assert list(entries) == NAMES
    assert entries == {setting.name: setting.default for setting in SETTINGS}


def test_every_row_has_one_line_of_help_and_parses_its_own_default() -> None:
    for setting in SETTINGS:
        assert setting.help and "\n" not in setting.help and len(setting.help) <= 60
        if setting.default.isdigit() or setting.default in ("yes", "close"):
            assert setting.parse(setting.name, setting.default, "x") == setting.unset


def misspellings(name: str) -> list[str]:
    """What a tired admin types: a letter doubled, an S, a letter dropped."""
    found = [name + name[-1], name + "S"]
    if len(name) > 4:
        found.append(name[:2] + name[3:])
    return found


@pytest.mark.parametrize(
    ("name", "typo"), [(name, typo) for name in NAMES for typo in misspellings(name)]
)
def test_every_setting_misspelt_is_a_warning_naming_it(
    tmp_path: Path, name: str, typo: str
) -> None:
    directory = make(tmp_path, f"PORT=2525\n{typo}=1\n")
    model = bootctrl.load(directory, "/q")
    assert [service.name for service in model.services] == ["x"]  # a warning: it runs
    assert [str(problem) for problem in model.problems] == [
        f"{directory}/qmail-x.env:2: warning: {typo} is not a setting qboot reads; "
        f"did you mean {name}? (a variable for $NAME needs no change)"
    ]


@pytest.mark.parametrize("variable", ["MY_PORT", "RBL", "SMTP_HOST", "QMAIL_CDB", "port"])
def test_the_admins_own_variables_are_no_typos(tmp_path: Path, variable: str) -> None:
    model = bootctrl.load(make(tmp_path, f"{variable}=1\nsetenv DNSBLS x\n"), "/q")
    assert model.problems == ()


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ("DNSBL='zen.spamhaus.org -b'\n", "'-b' is not a DNS name"),
        ("DNSBL=zen.spamhaus.org\nDNSBLFLAGS=-Z\n", "rblsmtpd options only"),
        ("DNSBLFLAGS=-b\n", "set DNSBL too"),
        ("RBL_INCORE=maybe\n", "expected yes or no"),
        ("RATE=0\n", "expected a number from 1 to 1000000"),
        ("RATE_ANSWER=450\n", "expected close or 421"),
        ("MAXPERIP=x\n", "expected a number from 1 to 100000"),
        ("BACKLOG=65536\n", "expected a number from 1 to 65535"),
        ("GID=a:b\n", "not a valid user/group name"),
        ("CDB=rules/x.cdb\n", "or give an absolute path"),
    ],
)
def test_each_row_refuses_its_bad_values_at_their_line(
    tmp_path: Path, env: str, fragment: str
) -> None:
    model = bootctrl.load(make(tmp_path, env), "/q")
    assert model.services == ()
    (problem,) = model.problems
    assert problem.line == env.count("\n")
    assert fragment in problem.message and problem.message.endswith("; service x skipped")


def show(directory: Path, *args: str) -> tuple[int, str]:
    done = CliRunner().invoke(
        cli.qbootctl, ["show", "--bootctrl", str(directory), "--qmail-home", "/q", *args]
    )
    return done.exit_code, done.output


def test_show_service_lists_every_setting_with_its_source(tmp_path: Path) -> None:
    directory = make(tmp_path, "# smtp\nPORT=2525\nA='x y'\nBANNER=\"$A\"\nDNSBL=zen.example\n")
    status, output = show(directory, "x")
    assert status == 0
    lines = output.splitlines()
    assert lines[0] == f"x: settings from {directory}/qmail-x.env"
    rows = {line.split()[0]: line for line in lines[1:]}
    assert list(rows) == NAMES
    env = f"{directory}/qmail-x.env"
    assert rows["PORT"].split() == ["PORT", "2525", f"{env}:2"]
    assert rows["BANNER"].split() == ["BANNER", "x", "y", f"{env}:4"]
    assert rows["DNSBL"].split() == ["DNSBL", "zen.example", f"{env}:5"]
    assert rows["MAXCONN"].split() == ["MAXCONN", "40", "default"]
    assert rows["CDB"].split() == ["CDB", f"{directory}/tcprules-x.cdb", "default"]
    assert rows["SMTPD"].split() == ["SMTPD", "/q/bin/qmail-smtpd", "default"]

    status, output = show(directory, "--json", "x")
    document = json.loads(output)
    assert status == 0 and [item["name"] for item in document["settings"]] == NAMES
    assert document["settings"][0] == {
        "name": "PORT",
        "value": "2525",
        "source": f"{env}:2",
        "help": SETTINGS[0].help,
    }


def test_show_of_a_service_that_is_not_there_is_one_line_with_a_hint(tmp_path: Path) -> None:
    status, output = show(make(tmp_path, "PORT=2525\n"), "nosuch")
    assert status == 1
    assert "service nosuch is not enabled or has problems" in output


@pytest.mark.parametrize(
    ("letter", "name"),
    [(letter, setting.name) for setting in SETTINGS for letter in setting.flags],
)
def test_tcpflags_may_not_give_an_option_a_setting_owns(
    tmp_path: Path, letter: str, name: str
) -> None:
    given = f"-{letter}" if letter == "L" else f"-{letter} 1"  # -L takes no argument
    directory = make(tmp_path, f"PORT=2525\nTCPFLAGS='{given}'\n")
    model = bootctrl.load(directory, "/q")
    assert model.services == ()
    (problem,) = model.problems
    assert problem.line == 2 and f"use {name}= instead of -{letter}" in problem.message
