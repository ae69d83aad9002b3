"""qbootctl's D-Bus verbs and eqmaild against a real systemd and real qmail (see
test_e2e_systemd)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from qboot_systemd.eqmaild import line

from .conftest import ROOT
from .e2e_stage import BOOTCTRL, booted_sandbox
from .sandbox import Sandbox, show

QBOOTCTL = str(ROOT / ".venv" / "bin" / "qbootctl")
EQMAILD = str(ROOT / ".venv" / "bin" / "eqmaild")


@pytest.fixture(scope="module")
def box() -> Iterator[Sandbox]:
    with booted_sandbox() as sandbox:
        yield sandbox


def ctl(box: Sandbox, *args: str, check: bool = False) -> tuple[int, str, str]:
    done = box.run(QBOOTCTL, *args, check=check)
    return done.returncode, done.stdout, done.stderr


def listening(box: Sandbox, port: int) -> bool:
    return bool(box.run("ss", "-Htln", f"sport = :{port}", check=False).stdout.strip())


def test_status_json_matches_systemctl_show(box: Sandbox) -> None:
    status, out, _ = ctl(box, "status", "--json")
    assert status == 0
    entries = {entry["name"]: entry for entry in json.loads(out)}
    assert set(entries) == {"send", "smtp"}
    smtp = entries["smtp"]
    assert smtp["enabled"] and smtp["running"] and smtp["listen"] == ["25"]
    for unit, state in smtp["units"].items():
        assert state["active"] == show(box, unit, "ActiveState")
        assert state["sub"] == show(box, unit, "SubState")
    assert smtp["units"]["qmail-tcpd@smtp.socket"]["listen"] == ["[::]:25"]
    assert entries["send"]["units"]["qmail-send.service"]["main_pid"] == int(
        show(box, "qmail-send.service", "MainPID")
    )


def test_enable_starts_and_disable_stops(box: Sandbox) -> None:
    status, out, err = ctl(box, "enable", "subm")
    assert status == 0, err
    assert "created qmail-subm.rc -> qmail-tcpd" in out
    assert "created tcprules-subm.cdb -> tcprules-default.cdb" in out
    assert box.run("readlink", f"{BOOTCTRL}/qmail-subm.rc").stdout.strip() == "qmail-tcpd"
    assert listening(box, 587)
    status, out, _ = ctl(box, "status", "subm")
    assert status == 0 and "listen 587" in out
    status, _, err = ctl(box, "disable", "subm")
    assert status == 0, err
    assert not listening(box, 587)
    assert box.run("test", "-e", f"{BOOTCTRL}/qmail-subm.rc", check=False).returncode == 1
    status, out, _ = ctl(box, "status", "subm")
    assert status == 3 and "disabled" in out


def test_enable_refuses_a_broken_service(box: Sandbox) -> None:
    box.run("sh", "-c", f"printf 'PORT=99999\\n' > {BOOTCTRL}/qmail-qmtp.env")
    status, _, err = ctl(box, "enable", "qmtp")
    assert status == 1
    assert f"{BOOTCTRL}/qmail-qmtp.env:1: PORT='99999'" in err
    assert "Traceback" not in err
    box.run("rm", "-f", f"{BOOTCTRL}/qmail-qmtp.rc", f"{BOOTCTRL}/tcprules-qmtp.cdb")


def test_stop_start_restart_reload(box: Sandbox) -> None:
    assert ctl(box, "stop", "smtp")[0] == 0
    assert not listening(box, 25)
    assert ctl(box, "status", "smtp")[0] == 3
    assert ctl(box, "start", "smtp")[0] == 0
    assert listening(box, 25) and show(box, "qmail-tcpd@smtp.service", "ActiveState") == "active"
    pid = show(box, "qmail-tcpd@smtp.service", "MainPID")
    assert ctl(box, "reload", "smtp")[0] == 0
    assert show(box, "qmail-tcpd@smtp.service", "MainPID") == pid  # SIGHUP, same process
    assert ctl(box, "restart", "smtp")[0] == 0
    assert show(box, "qmail-tcpd@smtp.service", "MainPID") != pid
    assert ctl(box, "restart", "send")[0] == 0
    # SIGHUP to qmail-send alone (it re-reads locals and virtualdomains): same process
    pid = show(box, "qmail-send.service", "MainPID")
    status, out, err = ctl(box, "reload", "send")
    assert (status, out, err) == (0, "reload send: done\n", "")
    assert show(box, "qmail-send.service", "MainPID") == pid


def test_unknown_user_is_a_problem_and_start_says_why(box: Sandbox) -> None:
    box.run("sh", "-c", f"printf 'PORT=2600\\nUSER=nosuchuser\\n' > {BOOTCTRL}/qmail-smtps.env")
    box.run("ln", "-s", "qmail-tcpd", f"{BOOTCTRL}/qmail-smtps.rc")
    box.run("ln", "-s", "tcprules-default.cdb", f"{BOOTCTRL}/tcprules-smtps.cdb")
    status, out, _ = ctl(box, "show")
    assert status == 1
    where = f'{BOOTCTRL}/qmail-smtps.env:2: unknown user "nosuchuser"'
    assert where in out
    box.run("systemctl", "daemon-reload")
    status, _, err = ctl(box, "start", "smtps")
    assert status == 1
    # the file's line, not a crash loop, not a traceback
    print(err)
    assert f"qbootctl: start smtps: {where}" in err
    assert "start smtps: not done, fix the file first" in err
    assert "Traceback" not in err
    assert show(box, "qmail-tcpd@smtps.service", "NRestarts") == "0"
    ctl(box, "stop", "smtps")
    box.run("sed", "-i", "/^USER=/d", f"{BOOTCTRL}/qmail-smtps.env")
    box.run("systemctl", "daemon-reload")
    box.run("systemctl", "reset-failed", "qmail-tcpd@smtps.service")


def test_start_reports_a_crash_loop_of_qmail_send(box: Sandbox) -> None:
    # The bug this project shipped once: no PATH, so qmail-start cannot find its helpers.
    dropin = "/run/systemd/system/qmail-send.service.d/no-path.conf"
    box.run("mkdir", "-p", dropin.rsplit("/", 1)[0])
    box.run("sh", "-c", f"printf '[Service]\\nEnvironment=PATH=/usr/bin:/bin\\n' > {dropin}")
    box.run("systemctl", "daemon-reload")
    try:
        status, out, err = ctl(box, "restart", "send")
        print(err)
        assert status == 1, out + err
        assert "restart send failed: qmail-send.service:" in err
        done = box.run(EQMAILD, "start", check=False)
        assert done.returncode == 1
        assert line("Starting", "send", ok=False) in done.stdout.splitlines()
        assert "qmail-send.service:" in done.stderr
        status, out, _ = ctl(box, "status", "send")
        assert status == 3 and "restarted" in out, out
    finally:
        box.run("rm", "-f", dropin)
        box.run("systemctl", "daemon-reload")
        box.run("systemctl", "reset-failed", "qmail-send.service", check=False)
    status, _, err = ctl(box, "restart", "send")
    assert status == 0, err


def test_reload_config_restarts_only_what_changed(box: Sandbox) -> None:
    ctl(box, "start", "smtps")
    smtp_pid = show(box, "qmail-tcpd@smtp.service", "MainPID")
    box.run("sed", "-i", "s/^PORT=2600/PORT=2601/", f"{BOOTCTRL}/qmail-smtps.env")
    status, out, err = ctl(box, "reload-config")
    assert status == 0, err
    assert "restarted qmail-tcpd@smtps.socket (listen settings changed)" in out
    assert listening(box, 2601) and not listening(box, 2600)
    assert show(box, "qmail-tcpd@smtp.service", "MainPID") == smtp_pid
    status, out, _ = ctl(box, "reload-config")
    assert "nothing changed" in out


def test_eqmaild_prints_the_seed_lines(box: Sandbox) -> None:
    box.run("rm", "-f", f"{BOOTCTRL}/qmail-smtps.rc")
    box.run("systemctl", "daemon-reload")
    done = box.run(EQMAILD, "restart", check=False)
    assert done.stdout.splitlines() == [
        "Stopping qmail-send ...           OK",
        "Starting qmail-send ...           OK",
        "Stopping qmail-smtp ...           OK",
        "Starting qmail-smtp ...           OK",
    ]
    box.run(QBOOTCTL, "stop", "smtp")
    done = box.run(EQMAILD, "status", check=False)
    assert done.returncode == 3
    assert "Checking qmail-smtp ...         FAILED" in done.stdout
    done = box.run("env", "NORESULT=1", EQMAILD, "start", check=False)
    assert done.stdout.splitlines() == ["Starting qmail-send ...", "Starting qmail-smtp ..."]
    assert done.returncode == 0 and listening(box, 25)


def test_errors_are_one_line_with_a_hint(box: Sandbox) -> None:
    status, _, err = ctl(box, "start", "nosuch")
    assert status != 0 and "Traceback" not in err and "DBusBaseError" not in err
    status, _, err = ctl(box, "status", "--bootctrl", "/nonexistent")
    assert status == 1
    assert err.splitlines() == [
        "qbootctl: error: bootctrl directory /nonexistent not found",
        "qbootctl: hint: pass --bootctrl DIR or set QBOOT_BOOTCTRL",
    ]
    done = box.run(
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        QBOOTCTL,
        "stop",
        "smtp",
        check=False,
    )
    assert done.returncode == 1 and "needs root" in done.stderr
