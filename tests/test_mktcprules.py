from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from qboot_systemd import cli, mktcprules
from qboot_systemd.cdb import CdbReader

from .bootctrl_trees import copy_shipped
from .conftest import SHIPPED_BOOTCTRL, venv_script


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(args), capture_output=True, text=True, check=False, env={**os.environ, **(env or {})}
    )


def test_shipped_rules_compile_to_the_shipped_cdb(tmp_path: Path) -> None:
    directory = copy_shipped(tmp_path)
    (directory / "tcprules-default.cdb").unlink()
    (result,) = mktcprules.compile_directory(directory)
    assert result.outcome is mktcprules.Outcome.COMPILED
    shipped = (SHIPPED_BOOTCTRL / "tcprules-default.cdb").read_bytes()
    assert (directory / "tcprules-default.cdb").read_bytes() == shipped


def test_up_to_date_is_skipped_and_force_recompiles(tmp_path: Path) -> None:
    directory = copy_shipped(tmp_path)
    source = directory / "tcprules-default.txt"
    os.utime(source, (1, 1))
    assert [r.outcome for r in mktcprules.compile_directory(directory)] == [
        mktcprules.Outcome.UP_TO_DATE
    ]
    assert [r.outcome for r in mktcprules.compile_directory(directory, force=True)] == [
        mktcprules.Outcome.COMPILED
    ]


def test_symlinked_cdb_is_replaced_by_its_own_rules(tmp_path: Path) -> None:
    directory = copy_shipped(tmp_path)
    (directory / "tcprules-subm.cdb").symlink_to("tcprules-default.cdb")
    (directory / "tcprules-subm.txt").write_text("10.:deny\n:allow\n")
    done = run(venv_script("mktcprules"), str(directory))
    assert done.returncode == 0, done.stderr
    assert (
        "tcprules-subm.cdb: compiled: 2 keys from tcprules-subm.txt (replaced the symlink "
        "to tcprules-default.cdb)" in done.stdout
    )
    subm = directory / "tcprules-subm.cdb"
    assert not subm.is_symlink()
    assert CdbReader.open(subm).get(b"10.") == b"D\0"
    # the shared default rules are untouched
    assert CdbReader.open(directory / "tcprules-default.cdb").get(b"10.") is None


def test_one_broken_file_does_not_stop_the_others(tmp_path: Path) -> None:
    directory = copy_shipped(tmp_path)
    (directory / "tcprules-default.cdb").unlink()
    (directory / "tcprules-bad.cdb").write_bytes(b"old")
    (directory / "tcprules-bad.txt").write_text(":allow\n1.2.3.4:allow,X\n")
    (directory / "tcprules-zzz.txt").write_text(":deny\n")
    done = run(venv_script("mktcprules"), str(directory))
    assert done.returncode == 1
    assert f"{directory}/tcprules-bad.txt:2: unable to parse: '1.2.3.4:allow,X'" in done.stderr
    assert (directory / "tcprules-bad.cdb").read_bytes() == b"old"
    assert (directory / "tcprules-default.cdb").exists()
    assert (directory / "tcprules-zzz.cdb").exists()
    assert not list(directory.glob("*.tmp"))


def test_mktcprules_uses_qboot_bootctrl_and_reports_a_missing_directory(tmp_path: Path) -> None:
    directory = copy_shipped(tmp_path)
    done = run(venv_script("mktcprules"), "--force", env={"QBOOT_BOOTCTRL": str(directory)})
    assert done.returncode == 0 and "tcprules-default.cdb: compiled" in done.stdout
    done = run(venv_script("mktcprules"), str(tmp_path / "missing"))
    assert done.returncode == 111
    assert "not found" in done.stderr and "Traceback" not in done.stderr


def test_qbootctl_show_json(tmp_path: Path) -> None:
    directory = copy_shipped(tmp_path)
    # In-process: qmaild and nofiles exist for it as on a qmail host (conftest).
    done = CliRunner().invoke(
        cli.qbootctl,
        ["show", "--json"],
        env={"QBOOT_BOOTCTRL": str(directory), "QBOOT_QMAIL_HOME": "/var/qmail"},
    )
    assert done.exit_code == 0, done.output
    model = json.loads(done.stdout)
    assert model["send"]["default_delivery"] == "./Maildir/"
    (smtp,) = model["services"]
    assert (smtp["name"], smtp["listen"], smtp["maxconn"]) == ("smtp", ["25"], 40)
    assert smtp["command"] == ["/var/qmail/bin/qmail-smtpd"]
    assert model["problems"] == []


def test_qbootctl_show_exits_1_with_problems(tmp_path: Path) -> None:
    directory = copy_shipped(tmp_path)
    (directory / "qmail-subm.rc").symlink_to("qmail-tcpd")
    (directory / "qmail-subm.env").write_text("PORT=99999\n")
    done = run(venv_script("qbootctl"), "show", "--bootctrl", str(directory))
    assert done.returncode == 1
    assert f"{directory}/qmail-subm.env:1: PORT='99999'" in done.stdout
    assert "smtp     listen 25" in done.stdout


def test_qbootctl_missing_bootctrl_is_one_line_with_hint(tmp_path: Path) -> None:
    done = run(venv_script("qbootctl"), "show", "--bootctrl", str(tmp_path / "nope"))
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"qbootctl: error: bootctrl directory {tmp_path / 'nope'} not found",
        "qbootctl: hint: pass --bootctrl DIR or set QBOOT_BOOTCTRL",
    ]


def test_qbootctl_rules_check(tmp_path: Path) -> None:
    directory = copy_shipped(tmp_path)
    ctl = venv_script("qbootctl")
    done = run(
        ctl, "rules", "check", "--bootctrl", str(directory), "--service", "smtp", "::ffff:127.0.0.1"
    )
    assert done.stdout == "rule 127.:\nset environment variable RELAYCLIENT=\nallow connection\n"
    done = run(ctl, "rules", "check", "--bootctrl", str(directory), "192.0.2.1")
    assert done.stdout == "rule :\nallow connection\n"
    done = run(ctl, "rules", "check", "--bootctrl", str(directory), "not-an-ip")
    assert done.returncode == 1 and "not an IP address" in done.stderr


def test_qbootctl_rules_compile(tmp_path: Path) -> None:
    directory = copy_shipped(tmp_path)
    (directory / "tcprules-subm.txt").write_text("10.:deny\n")
    done = run(venv_script("qbootctl"), "rules", "compile", "--bootctrl", str(directory), "subm")
    assert done.returncode == 0 and "tcprules-subm.cdb: compiled: 1 keys" in done.stdout


def test_a_planted_symlink_at_the_old_temporary_name_is_not_written_through(
    tmp_path: Path,
) -> None:
    directory = copy_shipped(tmp_path)
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (directory / "tcprules-default.cdb.tmp").symlink_to(victim)
    (result,) = mktcprules.compile_directory(directory, force=True)
    assert result.outcome is mktcprules.Outcome.COMPILED
    assert victim.read_text() == "precious\n"
    assert (directory / "tcprules-default.cdb.tmp").is_symlink()  # left alone
    assert not [p for p in directory.iterdir() if p.name.startswith(".tcprules")]


def test_concurrent_runs_do_not_clobber_each_other(tmp_path: Path) -> None:
    import threading

    directory = copy_shipped(tmp_path)
    lines = "".join(f"10.{i // 250}.{i % 250}.:deny\n" for i in range(20000))
    (directory / "tcprules-default.txt").write_text(lines + ":allow\n")
    outcomes: list[mktcprules.Outcome] = []

    def compile_many() -> None:
        for _ in range(4):
            (result,) = mktcprules.compile_directory(directory, force=True)
            outcomes.append(result.outcome)

    threads = [threading.Thread(target=compile_many) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes == [mktcprules.Outcome.COMPILED] * 12
    reader = CdbReader.open(directory / "tcprules-default.cdb")
    assert reader.get(b"10.79.249.") == b"D\0" and reader.get(b"") == b""
    assert not [p for p in directory.iterdir() if p.name.startswith(".tcprules")]


def test_cdb_mode_is_644_whatever_the_umask(tmp_path: Path) -> None:
    directory = copy_shipped(tmp_path)
    previous = os.umask(0o077)
    try:
        mktcprules.compile_directory(directory, force=True)
    finally:
        os.umask(previous)
    assert (directory / "tcprules-default.cdb").stat().st_mode & 0o777 == 0o644


def test_group_writable_rules_text_is_not_compiled(tmp_path: Path) -> None:
    directory = copy_shipped(tmp_path)
    old = (directory / "tcprules-default.cdb").read_bytes()
    (directory / "tcprules-default.txt").chmod(0o664)
    (result,) = mktcprules.compile_directory(directory, force=True)
    assert result.outcome is mktcprules.Outcome.FAILED
    assert "writable by group; run chmod go-w" in result.detail
    assert (directory / "tcprules-default.cdb").read_bytes() == old


def test_parse_error_quotes_a_cut_and_escaped_line(tmp_path: Path) -> None:
    directory = copy_shipped(tmp_path)
    (directory / "tcprules-default.txt").write_bytes(b"\x1b[2J" + b"k" * 5000 + b"\n")
    (result,) = mktcprules.compile_directory(directory, force=True)
    assert result.outcome is mktcprules.Outcome.FAILED
    assert "\x1b" not in result.detail and len(result.detail) < 400


def test_unreadable_directory_is_one_line(tmp_path: Path) -> None:
    done = run(venv_script("mktcprules"), str(tmp_path / "file" / "x"))
    assert done.returncode == 111 and "Traceback" not in done.stderr
    (tmp_path / "file").write_text("")
    done = run(venv_script("mktcprules"), str(tmp_path / "file"))
    assert done.returncode == 111 and "Traceback" not in done.stderr


def test_eqmaild_os_error_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from qboot_systemd import bootctrl, eqmaild

    def unreadable(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied", str(tmp_path / "bootctrl"))

    monkeypatch.setenv("QBOOT_BOOTCTRL", str(copy_shipped(tmp_path)))
    monkeypatch.setattr(bootctrl, "load", unreadable)
    assert eqmaild.main(["status"]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"eqmaild: error: {tmp_path / 'bootctrl'}: Permission denied",
        "eqmaild: hint: run it as root, or check the permissions of that path",
    ]


def test_qbootctl_show_with_a_300_character_cdb_is_a_problem_not_a_traceback(
    tmp_path: Path,
) -> None:
    directory = copy_shipped(tmp_path)
    (directory / "qmail-subm.rc").symlink_to("qmail-tcpd")
    (directory / "qmail-subm.env").write_text("PORT=587\nCDB=" + "x" * 296 + ".cdb\n")
    done = run(venv_script("qbootctl"), "show", "--bootctrl", str(directory))
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert f"{directory}/qmail-subm.env:2: rules 'xxx" in done.stdout
    assert "File name too long; service subm skipped" in done.stdout
    assert "smtp     listen 25" in done.stdout


SECRET = "root:SECRET-HASH-6f1d:19000:0:99999:7:::"


@pytest.mark.parametrize("how", ["link-out", "link-out-relative", "owner", "fifo"])
def test_a_refused_rules_text_is_not_read_nor_quoted(tmp_path: Path, how: str) -> None:
    directory = copy_shipped(tmp_path)
    key = tmp_path / "shadow"
    key.write_text(SECRET + "\n")
    key.chmod(0o600)
    source = directory / "tcprules-x.txt"
    if how == "link-out":
        source.symlink_to(key)
    elif how == "link-out-relative":
        source.symlink_to("../shadow")
    elif how == "owner":
        source.write_text(SECRET + "\n")
        source.chmod(0o644)
        os.chown(source, 65534, 65534)
    else:
        os.mkfifo(source, 0o644)
    results = mktcprules.compile_directory(directory, force=True)
    failed = [r for r in results if r.outcome is mktcprules.Outcome.FAILED]
    assert [r.target.name for r in failed] == ["tcprules-x.cdb"]
    assert "SECRET" not in failed[0].detail and "root:" not in failed[0].detail
    assert not (directory / "tcprules-x.cdb").exists()
    done = run(venv_script("mktcprules"), str(directory))
    assert done.returncode == 1 and "SECRET" not in done.stdout + done.stderr
    assert "tcprules-x.cdb: FAILED" in done.stderr
    done = run(venv_script("qbootctl"), "rules", "compile", "--bootctrl", str(directory), "x")
    assert done.returncode != 0 and "SECRET" not in done.stdout + done.stderr


def test_a_link_to_another_rules_text_in_bootctrl_is_compiled(tmp_path: Path) -> None:
    directory = copy_shipped(tmp_path)
    (directory / "tcprules-x.txt").symlink_to("tcprules-default.txt")
    results = mktcprules.compile_directory(directory, force=True)
    assert {r.outcome for r in results} == {mktcprules.Outcome.COMPILED}
    assert (directory / "tcprules-x.cdb").read_bytes() == (
        directory / "tcprules-default.cdb"
    ).read_bytes()


def test_parse_error_snippet_is_short(tmp_path: Path) -> None:
    directory = copy_shipped(tmp_path)
    (directory / "tcprules-default.txt").write_text("bad line " + "z" * 200 + "\n")
    (result,) = mktcprules.compile_directory(directory, force=True)
    assert result.outcome is mktcprules.Outcome.FAILED
    assert "z" * 41 not in result.detail and "(209 characters)" in result.detail
