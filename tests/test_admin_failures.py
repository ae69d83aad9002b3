"""What an admin sees when things fail, against a real systemd and real qmail: a reload
that fails, a typo in an env file, an unknown group; no traceback, never "done" for a
failure, status non-zero while something does not run as bootctrl says."""

from __future__ import annotations

import functools
from collections.abc import Iterator

import pytest

from . import sandbox
from .conftest import ROOT
from .e2e_stage import BOOTCTRL, booted_sandbox
from .sandbox import Sandbox, show

QBOOTCTL = str(ROOT / ".venv" / "bin" / "qbootctl")
EQMAILD = str(ROOT / ".venv" / "bin" / "eqmaild")
SMTP_ENV = f"{BOOTCTRL}/qmail-smtp.env"
SERVICE = "qmail-tcpd@smtp.service"


@pytest.fixture(scope="module")
def box() -> Iterator[Sandbox]:
    with booted_sandbox() as sandbox:
        yield sandbox


def ctl(box: Sandbox, *args: str) -> tuple[int, str, str]:
    done = box.run(QBOOTCTL, *args, check=False, timeout=180)
    return done.returncode, done.stdout, done.stderr


wait_for = functools.partial(sandbox.wait_until, interval=0.2)


def greeting(box: Sandbox, port: int = 25) -> str:
    """The first line the service sends: also starts it (socket activation)."""
    script = f"exec 3<>/dev/tcp/127.0.0.1/{port} && timeout 10 head -n 1 <&3"
    return box.run("bash", "-c", script, check=False, timeout=30).stdout


def journal(box: Sandbox, unit: str, after: str) -> str:
    """unit's journal lines after the cursor journal_cursor() gave."""
    done = box.run("journalctl", "-u", unit, "--after-cursor", after, "--no-pager", "-o", "cat")
    return done.stdout


def journal_cursor(box: Sandbox) -> str:
    """The journal's last entry: what comes after it is the test's own (a time in seconds
    would take in what came earlier in the same second)."""
    done = box.run("journalctl", "-n", "1", "--show-cursor", "--no-pager", "-o", "cat")
    return done.stdout.rsplit("-- cursor: ", 1)[1].strip()


def reconciled(box: Sandbox) -> None:
    """daemon-reload, then wait for the reconcile it triggers."""
    box.run("systemctl", "daemon-reload")
    box.run("systemctl", "start", "qboot-reconcile.service", check=False, timeout=120)


def test_reload_reaches_qboot_tcpsrv_running_as_qmaild(box: Sandbox) -> None:
    assert greeting(box).startswith("220 ")
    assert show(box, SERVICE, "ActiveState") == "active"
    pid = show(box, SERVICE, "MainPID")
    since = journal_cursor(box)
    status, out, err = ctl(box, "reload", "smtp")
    assert (status, out) == (0, "reload smtp: done\n"), err
    assert show(box, SERVICE, "MainPID") == pid
    text = journal(box, SERVICE, since)
    assert "SIGHUP: rules and names reloaded" in text, text
    assert "Reload failed" not in text and "Operation not permitted" not in text
    done = box.run("systemctl", "reload", SERVICE, check=False)
    assert done.returncode == 0, done.stderr


def test_a_failing_reload_is_reported(box: Sandbox) -> None:
    dropin = f"/run/systemd/system/{SERVICE}.d/bad-reload.conf"
    box.run("mkdir", "-p", dropin.rsplit("/", 1)[0])
    box.run(
        "sh",
        "-c",
        f"printf '[Service]\\nExecReload=\\nExecReload=/bin/sh -c \"echo no reload; exit 3\"\\n'"
        f" > {dropin}",
    )
    box.run("systemctl", "daemon-reload")
    try:
        assert greeting(box).startswith("220 ")
        status, out, err = ctl(box, "reload", "smtp")
        assert status == 1, out + err
        assert "done" not in out
        assert "reload smtp failed" in err and "Traceback" not in err
        assert "no reload" in err, err
    finally:
        box.run("rm", "-f", dropin)
        box.run("systemctl", "daemon-reload")


def test_a_typo_keeps_the_last_good_settings_and_is_named(box: Sandbox) -> None:
    assert greeting(box).startswith("220 ")
    box.run("cp", SMTP_ENV, "/root/qmail-smtp.env.good")
    box.run("sh", "-c", f"echo PORT=25x >> {SMTP_ENV}")
    line = int(box.run("grep", "-c", "", SMTP_ENV).stdout)
    where = f"{SMTP_ENV}:{line}: PORT='25x'"
    try:
        reconciled(box)
        status, out, err = ctl(box, "status")
        print(out, err)
        assert status != 0
        assert any(row.startswith("smtp") for row in out.splitlines()), out
        assert where in out
        done = box.run(EQMAILD, "status", check=False)
        print(done.stdout, done.stderr)
        assert done.returncode != 0
        assert "qmail-smtp" in done.stdout
        assert where in done.stdout + done.stderr
        for verb in ("restart", "start"):
            status, out, err = ctl(box, verb, "smtp")
            print(verb, out, err)
            assert status != 0 and where in err and "Traceback" not in err
            assert "is the unit name right" not in err
        # a crash of the degraded service: systemd restarts it with its last good settings
        assert greeting(box).startswith("220 ")
        pid = show(box, SERVICE, "MainPID")
        box.run("kill", "-9", pid)
        assert wait_for(lambda: show(box, SERVICE, "MainPID") not in ("0", pid))
        assert greeting(box).startswith("220 ")
    finally:
        box.run("cp", "/root/qmail-smtp.env.good", SMTP_ENV)
        reconciled(box)
    assert ctl(box, "status")[0] == 0


def test_an_unknown_group_is_one_line_and_status_fails(box: Sandbox) -> None:
    assert greeting(box).startswith("220 ")
    box.run("cp", SMTP_ENV, "/root/qmail-smtp.env.good")
    box.run("sed", "-i", "s/^GROUP=nofiles/GROUP=nofile/", SMTP_ENV)
    try:
        status, out, err = ctl(box, "reload-config")
        print(out, err)
        assert status != 0
        assert "Traceback" not in err
        assert f'{SMTP_ENV}:20: unknown group "nofile"' in err
        status, out, err = ctl(box, "status")
        print(out, err)
        assert status == 150  # degraded: smtp keeps serving with its last good group
        assert f'degraded, runs its last good settings: {SMTP_ENV}:20: unknown group "nofile"' in (
            out
        )
        assert greeting(box).startswith("220 ")
        status, out, err = ctl(box, "reconcile")
        print(out, err)
        assert "Traceback" not in err
        assert f'{SMTP_ENV}:20: unknown group "nofile"' in err
    finally:
        box.run("cp", "/root/qmail-smtp.env.good", SMTP_ENV)
        ctl(box, "reload-config")
        box.run("systemctl", "reset-failed", SERVICE, check=False)
    assert wait_for(lambda: ctl(box, "status")[0] == 0, 30)


def test_reconcile_leaves_a_starting_qmail_send_alone(box: Sandbox) -> None:
    """The flaky `Starting qmail-send ... FAILED`: a reconcile that ran while qmail-send
    started read QBOOT_CONFIG from systemd's forked child (not yet qmail-start) and
    restarted it. A FIFO as stdin holds the child before its execve, as load did."""
    fifo = "/run/qboot-test-stdin.fifo"
    dropin = "/run/systemd/system/qmail-send.service.d/slow-exec.conf"
    box.run("mkfifo", fifo)
    box.run("mkdir", "-p", dropin.rsplit("/", 1)[0])
    box.run(
        "sh", "-c", f"printf '[Service]\\nExecStartPre=\\nStandardInput=file:{fifo}\\n' > {dropin}"
    )
    reconciled(box)
    try:
        box.run("systemctl", "restart", "--no-block", "qmail-send.service")
        assert wait_for(lambda: show(box, "qmail-send.service", "MainPID") != "0")
        done = box.run("timeout", "30", QBOOTCTL, "reconcile", check=False, timeout=60)
        print(done.stdout, done.stderr)
        assert (done.returncode, done.stdout) == (0, "nothing changed\n")
    finally:
        box.run("timeout", "10", "sh", "-c", f"exec 3>{fifo}; sleep 1", check=False)
        box.run("rm", "-f", dropin, fifo)
        reconciled(box)
    assert box.run(QBOOTCTL, "restart", "send", check=False).returncode == 0
    done = box.run(EQMAILD, "restart", check=False, timeout=300)
    assert done.returncode == 0 and "FAILED" not in done.stdout
    assert done.stderr == ""  # no "qboot-reconcile.service: inactive (dead)"
