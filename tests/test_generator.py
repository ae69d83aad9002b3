from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qboot_systemd import generator, units

from .bootctrl_trees import copy_shipped, stage_copy
from .conftest import ROOT
from .generated import ALLOWED
from .golden import check_golden, check_golden_tree, read_tree

CASES = ROOT / "tests" / "generator"
PATHS = units.Paths(tcpsrv="/usr/bin/qboot-tcpsrv", unit_dir="/usr/lib/systemd/system")


def run_case(case: Path, output: Path) -> tuple[dict[str, str], str]:
    staged = output.parent / f"{output.name}.bootctrl"
    bootctrl_dir = (
        stage_copy((case / "bootctrl").resolve(), staged) if not staged.exists() else staged
    )
    log = output.parent / f"{output.name}.log"
    status = generator.run(output, bootctrl_dir, Path("/var/qmail"), PATHS, str(log))
    assert status == 0
    problems = log.read_text() if log.exists() else ""
    problems = re.sub(r"\[\d+\]", "[PID]", problems).replace(str(bootctrl_dir), "@BOOTCTRL@")
    return read_tree(output, bootctrl_dir), problems


@pytest.mark.parametrize("case", sorted(p.name for p in CASES.iterdir() if p.is_dir()))
def test_golden(case: str, tmp_path: Path) -> None:
    actual, problems = run_case(CASES / case, tmp_path / "out")
    check_golden_tree(CASES / case / "expected", actual)
    check_golden(CASES / case / "expected-problems.log", problems)


def test_idempotent(tmp_path: Path) -> None:
    first, _ = run_case(CASES / "02-several", tmp_path / "out")
    second, _ = run_case(CASES / "02-several", tmp_path / "out")
    assert first == second


@pytest.mark.parametrize("case", sorted(p.name for p in CASES.iterdir() if p.is_dir()))
def test_no_setting_outside_the_fixed_set(case: str, tmp_path: Path) -> None:
    actual, _ = run_case(CASES / case, tmp_path / "out")
    for relative, text in actual.items():
        if text.startswith("-> "):
            assert text.startswith("-> /usr/lib/systemd/system/")
            continue
        for line in text.splitlines():
            assert ALLOWED.match(line), f"{relative}: {line!r}"


def test_injection_attempts_stay_values(tmp_path: Path) -> None:
    actual, problems = run_case(CASES / "03-escaping", tmp_path / "out")
    service = actual["qmail-tcpd@inject.service.d/qboot.conf"]
    assert not any(line.startswith("ExecStartPre") for line in service.splitlines())
    assert 'Environment="EVIL=x\\\\nExecStartPre=/bin/rm -rf /"' in service
    assert "qmail-semicolon.env:2: PRESMTPD: a lone ';'" in problems
    assert "qmail-tcpd@semicolon" not in " ".join(actual)
    assert "qmail-multiline.env:2: newline inside a quoted value" in problems


def test_late_var_links_the_boot_oneshot(tmp_path: Path) -> None:
    log = tmp_path / "log"
    status = generator.run(
        tmp_path / "out", tmp_path / "not-mounted", Path("/var/qmail"), PATHS, str(log)
    )
    assert status == 0
    link = tmp_path / "out" / "multi-user.target.wants" / units.BOOT_UNIT
    assert os.readlink(link) == f"/usr/lib/systemd/system/{units.BOOT_UNIT}"
    assert "not there yet" in log.read_text()


def test_unwritable_output_is_the_only_failure(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    env = {**os.environ, "QBOOT_BOOTCTRL": str(copy_shipped(tmp_path))}
    done = subprocess.run(
        [sys.executable, "-m", "qboot_systemd.generator", str(blocker / "x")],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 1 and "cannot write" in done.stderr
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "qboot_systemd.generator",
            str(tmp_path / "o"),
            str(tmp_path / "e"),
            str(tmp_path / "l"),
        ],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0
    assert (tmp_path / "o" / "sockets.target.wants" / "qmail-tcpd@smtp.socket").is_symlink()
    done = subprocess.run(
        [sys.executable, "-m", "qboot_systemd.generator"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 100 and "usage" in done.stderr


def test_generator_imports_stay_light() -> None:
    code = (
        "import sys, qboot_systemd.generator; "
        "print(sorted(m for m in ('click','jinja2','pystemd') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_generator_takes_only_stamps_from_apply() -> None:
    """The apply package's observing, planning and applying are the commands' cost."""
    code = (
        "import sys, qboot_systemd.generator; "
        "print(sorted(m for m in sys.modules if m.startswith('qboot_systemd.apply')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["['qboot_systemd.apply',", "'qboot_systemd.apply.stamps']"]


@pytest.mark.parametrize(
    ("argument", "quoted"),
    [
        ("plain/arg-1.0", "plain/arg-1.0"),
        ("a b", '"a b"'),
        ("100%", '"100%%"'),
        ("$HOME", '"$$HOME"'),
        ('say "x"', '"say \\"x\\""'),
        ("a\\b", '"a\\\\b"'),
        ("tab\there", '"tab\\there"'),
        ("\x01", '"\\x01"'),
        ("", '""'),
        ("nel\x85", '"nel\\u0085"'),
        ("ls\u2028", '"ls\\u2028"'),
    ],
)
def test_exec_argument_quoting(argument: str, quoted: str) -> None:
    assert units.quote_exec_argument(argument) == quoted


def test_unsafe_values_are_refused() -> None:
    for bad in (";", "a\0b"):
        with pytest.raises(units.UnsafeValue):
            units.quote_exec_argument(bad)
    with pytest.raises(units.UnsafeValue):
        units.environment_assignment("A=B", "x")
    with pytest.raises(units.UnsafeValue):
        units.path_setting("relative/path")
    with pytest.raises(units.UnsafeValue):
        units.path_setting("/a\nb")


def test_listen_stream_doubles_percent() -> None:
    from qboot_systemd.bootctrl import Listen, Service

    service = Service(
        name="x",
        rc_file="/b/qmail-x.rc",
        env_file=None,
        listen=(Listen(25, "fe80::1%eth0"),),
        rules="/b/tcprules-x.cdb",
        maxconn=40,
        smtpd=("/bin/true",),
    )
    assert "ListenStream=[fe80::1%%eth0]:25\n" in units.socket_dropin(service)


def test_scoped_ipv6_address_is_refused_with_a_hint(tmp_path: Path) -> None:
    from qboot_systemd import bootctrl

    directory = copy_shipped(tmp_path)
    (directory / "qmail-subm.rc").symlink_to("qmail-tcpd")
    (directory / "tcprules-subm.cdb").symlink_to("tcprules-default.cdb")
    (directory / "qmail-subm.env").write_text("PORT=587\nIP=fe80::1%eth0\n")
    model = bootctrl.load(directory, "/var/qmail")
    assert [s.name for s in model.services] == ["smtp"]
    (problem,) = model.problems
    assert problem.line == 2
    assert "cannot take a scope id; use IP=fe80::1 and BindToDevice=eth0" in problem.message


ENCODING_ENV = {"PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0", "PYTHONIOENCODING": ""}


@pytest.mark.parametrize("locale", [{"LANG": "C"}, {"LC_ALL": "POSIX"}])
def test_units_are_utf8_whatever_the_locale(tmp_path: Path, locale: dict[str, str]) -> None:

    directory = copy_shipped(tmp_path)
    (directory / "qmail-smtp.env").write_text(
        "setenv GREETING 'héllo wörld ✓'\nBANNER='Grüße'\n", encoding="utf-8"
    )
    (directory / "qmail-subm.rc").symlink_to("qmail-tcpd")
    (directory / "qmail-subm.env").write_text("IP=ünïcode\n", encoding="utf-8")
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("LC_") and key not in ("LANG", "LANGUAGE", "PYTHONIOENCODING")
    }
    env.update(ENCODING_ENV, **locale)
    log = tmp_path / "log"
    code = (
        "import sys; from pathlib import Path; from qboot_systemd import generator, units; "
        "sys.exit(generator.run(Path(sys.argv[1]), Path(sys.argv[2]), Path('/var/qmail'), "
        "units.Paths(), sys.argv[3]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "out"), str(directory), str(log)],
        env=env,
        capture_output=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    service = (tmp_path / "out" / "qmail-tcpd@smtp.service.d" / "qboot.conf").read_bytes()
    assert 'Environment="GREETING=héllo wörld ✓"'.encode() in service
    assert "Grüße".encode() in service
    assert "IP: 'ünïcode' is not an IP address".encode() in log.read_bytes()


def test_any_exception_reading_one_service_skips_only_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from qboot_systemd import bootctrl, envfile

    directory = copy_shipped(tmp_path)
    (directory / "qmail-subm.rc").symlink_to("qmail-tcpd")
    (directory / "tcprules-subm.cdb").symlink_to("tcprules-default.cdb")
    real_parse = envfile.parse

    def parse(data: bytes, path: str, predefined: object = None) -> envfile.EnvFile:
        if path.endswith("qmail-subm.env"):
            raise MemoryError
        return real_parse(data, path, predefined)  # type: ignore[arg-type]

    monkeypatch.setattr(envfile, "parse", parse)
    log = tmp_path / "log"
    assert generator.run(tmp_path / "out", directory, Path("/var/qmail"), PATHS, str(log)) == 0
    assert (tmp_path / "out" / "sockets.target.wants" / "qmail-tcpd@smtp.socket").is_symlink()
    assert f"{directory}/qmail-subm.rc: cannot read: MemoryError; service subm skipped" in (
        log.read_text()
    )
    assert bootctrl.load(directory, "/var/qmail").service("smtp") is not None


def test_generate_into_an_unwritable_output_is_one_line(tmp_path: Path) -> None:

    directory = copy_shipped(tmp_path)
    blocker = tmp_path / "file"
    blocker.write_text("")
    # The module, not .venv's script: this test also runs against the built Debian package.
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "qboot_systemd.cli",
            "generate",
            "--bootctrl",
            str(directory),
            "--output",
            str(blocker / "out"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr
    first = done.stderr.splitlines()[0]
    assert first.startswith(f"qbootctl: error: {blocker / 'out'}")
    assert first.endswith(": Not a directory")
    assert done.stderr.splitlines()[1].startswith("qbootctl: hint: ")


def _c_escape_every_character(text: str) -> str:
    """units' escaping without its shortcut for text that needs none."""
    out = []
    for char in text:
        if char in units._C_ESCAPES:
            out.append(units._C_ESCAPES[char])
        elif char == "%":
            out.append("%%")
        elif ord(char) < 32 or ord(char) == 127:
            out.append(f"\\x{ord(char):02x}")
        elif 128 <= ord(char) < 160 or char in "\u2028\u2029":
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return "".join(out)


@given(st.text(st.sampled_from("a %$\\\"'\n\t\r\x00\x1f\x7f\x80\x9f\xa0\u2028\u2029é")) | st.text())
def test_escaping_shortcut_changes_nothing(text: str) -> None:
    assert units._c_escape(text) == _c_escape_every_character(text)
