"""What status says is what clients get, tried as a new admin would, against a real
systemd and real qmail (one sandbox for the module; the tests run in order).

Each test is one of the admin's mishaps: a mistyped SMTPD=, a cdb removed while the
service runs, an unknown USER= and an enabled service with no rules, stop-all with a
degraded service; and the seed's own flow (subm by two links: unprivileged, a port edit
shown as pending until the reload, applied by a plain daemon-reload and logged once).
`qbootctl status`, `qbootctl verify`, `eqmaild` and `systemctl status` must all say what
a client gets: no OK over a dead port, no FAILED over a port that serves.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from qboot_systemd.eqmaild import line

from .admin_sandbox import (
    EQMAILD,
    QBOOTCTL,
    greeting,
    listening_on,
    reload_and_settle,
    settled,
    user_of,
)
from .conftest import ROOT
from .e2e_stage import BOOTCTRL, booted_sandbox
from .sandbox import Sandbox, show, wait_until

SMTP_ENV = f"{BOOTCTRL}/qmail-smtp.env"
SUBM_ENV = f"{BOOTCTRL}/qmail-subm.env"
SMTP = "qmail-tcpd@smtp.service"
SUBM = "qmail-tcpd@subm.service"


@pytest.fixture(scope="module")
def box() -> Iterator[Sandbox]:
    with booted_sandbox() as sandbox:
        assert wait_until(lambda: settled(sandbox), 30)
        yield sandbox


def ctl(box: Sandbox, *args: str) -> tuple[int, str, str]:
    done = box.run(QBOOTCTL, *args, check=False, timeout=180)
    print(f"qbootctl {' '.join(args)}: exit {done.returncode}\n{done.stdout}{done.stderr}")
    return done.returncode, done.stdout, done.stderr


def eqmaild(box: Sandbox, verb: str) -> tuple[int, str, str]:
    done = box.run(EQMAILD, verb, check=False, timeout=300)
    print(f"eqmaild {verb}: exit {done.returncode}\n{done.stdout}{done.stderr}")
    return done.returncode, done.stdout, done.stderr


def now(box: Sandbox) -> str:
    return box.run("date", "+%Y-%m-%d %H:%M:%S").stdout.strip()


def journal(box: Sandbox, unit: str, since: str) -> str:
    return box.run("journalctl", "-u", unit, "--since", since, "--no-pager", "-o", "cat").stdout


def lines_of(path: str, box: Sandbox) -> int:
    return int(box.run("grep", "-c", "", path).stdout)


def test_subm_by_the_seed_steps_is_unprivileged_and_a_port_edit_is_pending_then_applied(
    box: Sandbox,
) -> None:
    box.run("ln", "-s", "qmail-tcpd", f"{BOOTCTRL}/qmail-subm.rc")
    box.run("ln", "-s", "tcprules-default.cdb", f"{BOOTCTRL}/tcprules-subm.cdb")
    reload_and_settle(box)
    assert greeting(box, 587).startswith("220 ")
    # qmail-smtpd on the submission port never runs as root unless the file says so
    assert user_of(box, SUBM) == "qmaild"
    # An edit before the reload: 587 still listens, 2587 is what bootctrl says now.
    box.run("sed", "-i", "s/^PORT=587/PORT=2587/", SUBM_ENV)
    status, out, _ = ctl(box, "status", "subm")
    assert status == 150 and "listen 587 (pending: 2587)" in out
    assert "pending: bootctrl changed since the last reload" in out
    since = now(box)
    reload_and_settle(box)
    assert wait_until(lambda: listening_on(box, 2587) and not listening_on(box, 587))
    status, out, _ = ctl(box, "status")
    assert status == 0 and "listen 2587  rules" in out and "pending" not in out
    # Said once in the journal, and shown by each unit it concerns.
    moved = "restarted qmail-tcpd@subm.socket (listen settings changed): [::]:587 -> [::]:2587"
    everything = box.run("journalctl", "--since", since, "--no-pager", "-o", "cat").stdout
    assert everything.count(moved) == 1, everything
    for unit in (SUBM, "qmail-tcpd@subm.socket", "qboot-reconcile.service"):
        assert moved in journal(box, unit, since), unit
    # A setenv edit and a plain daemon-reload: restarted once, and said once.
    pid = show(box, SUBM, "MainPID")
    since = now(box)
    box.run("sh", "-c", f"echo 'setenv DATABYTES 1000' >> {SUBM_ENV}")
    reload_and_settle(box)
    assert wait_until(lambda: show(box, SUBM, "MainPID") not in ("0", pid))
    everything = box.run("journalctl", "--since", since, "--no-pager", "-o", "cat").stdout
    assert everything.count(f"restarted {SUBM} (command or environment changed)") == 1
    # A plain reload is no warning.
    since = now(box)
    assert ctl(box, "reload", "subm")[0] == 0
    text = journal(box, SUBM, since)
    assert "qboot-tcpsrv: SIGHUP: rules and names reloaded" in text, text
    assert "warning: SIGHUP" not in text


def test_default_rules_edited_but_not_compiled_are_flagged_through_the_links(
    box: Sandbox,
) -> None:
    """tcprules-smtp.cdb and tcprules-subm.cdb link to tcprules-default.cdb: an edit of
    tcprules-default.txt without mktcprules reaches neither, and status says so."""
    text = f"{BOOTCTRL}/tcprules-default.txt"
    box.run("sh", "-c", f"echo '10.9.:deny' >> {text}")
    status, out, _ = ctl(box, "status")
    assert status == 150
    for name in ("smtp", "subm"):
        assert f"{text} is newer than {BOOTCTRL}/tcprules-{name}.cdb" in out
    box.run(str(ROOT / ".venv/bin/mktcprules"), BOOTCTRL)
    assert ctl(box, "status")[0] == 0


def test_a_mistyped_smtpd_is_down_in_every_tool(box: Sandbox) -> None:
    box.run("cp", SMTP_ENV, "/root/qmail-smtp.env.good")
    box.run("sh", "-c", f"echo SMTPD=/var/qmail/bin/qmail-smtpdx >> {SMTP_ENV}")
    where = f"{SMTP_ENV}:{lines_of(SMTP_ENV, box)}: SMTPD"
    cannot = "cannot run /var/qmail/bin/qmail-smtpdx: No such file or directory"
    try:
        reload_and_settle(box)
        assert greeting(box, 25) == ""  # closed without a greeting (and the server started)
        assert wait_until(lambda: show(box, SMTP, "StatusText").startswith(f"down: {cannot}"))
        status, out, _ = ctl(box, "status")
        assert status == 3
        assert any(row.split()[:2] == ["smtp", "down"] for row in out.splitlines()), out
        assert f"{where}: {cannot}; every client is closed without a greeting" in out
        status, out, _ = ctl(box, "verify")
        assert status == 1 and "verified" not in out and f"{where}: {cannot}" in out
        status, out, _ = eqmaild(box, "status")
        assert status == 3 and line("Checking", "smtp", "FAILED") in out.splitlines()
        assert f"{where}: {cannot}" in out
        status, out, _ = eqmaild(box, "restart")
        assert status == 1 and line("Starting", "smtp", "FAILED") in out.splitlines()
        status, out, err = ctl(box, "restart", "smtp")
        assert status == 1 and "done" not in out and cannot in err
    finally:
        box.run("cp", "/root/qmail-smtp.env.good", SMTP_ENV)
        reload_and_settle(box)
    assert wait_until(lambda: greeting(box, 25).startswith("220 "))
    assert wait_until(lambda: ctl(box, "status")[0] == 0)


def test_last_good_settings_that_cannot_serve_are_down(box: Sandbox) -> None:
    """The cdb removed while smtp runs: every connection is dropped. Its last good
    settings name the same file: not "runs its last good settings", but down and why."""
    cdb = f"{BOOTCTRL}/tcprules-smtp.cdb"
    cannot = f"cannot read the rules {cdb}: No such file or directory"
    assert greeting(box, 25).startswith("220 ")
    box.run("rm", cdb)
    since = now(box)
    try:
        assert greeting(box, 25) == ""
        for reload in (False, True):  # as it is, then after the admin's daemon-reload
            if reload:
                reload_and_settle(box)
                said = journal(box, SMTP, since)
                assert f"(smtp is down: its last good settings cannot serve: {cannot}" in said
                assert "keeps running its last good settings" not in said
            status, out, _ = ctl(box, "status")
            assert status == 3 and cannot in out
            assert "runs its last good settings" not in out
            assert f"broken: {cdb}: rules {cdb} missing" in out
            status, out, _ = eqmaild(box, "status")
            assert status == 3 and line("Checking", "smtp", "FAILED") in out.splitlines()
    finally:
        box.run("ln", "-sf", "tcprules-default.cdb", cdb)
        reload_and_settle(box)
    assert greeting(box, 25).startswith("220 ")
    assert wait_until(lambda: ctl(box, "status")[0] == 0)


def test_eqmaild_says_degraded_and_failed_as_they_are(box: Sandbox) -> None:
    box.run("cp", SMTP_ENV, "/root/qmail-smtp.env.good")
    box.run("sed", "-i", "s/^USER=qmaild$/USER=nosuch/", SMTP_ENV)
    unknown = f'{SMTP_ENV}:19: unknown user "nosuch"'
    try:
        status, out, _ = eqmaild(box, "restart")
        assert status == 1 and line("Starting", "smtp", "DEGRADED") in out.splitlines()
        assert f"degraded, runs its last good settings: {unknown}" in out
        assert greeting(box, 25).startswith("220 ")  # it serves mail
        # Serving mail: neither OK nor FAILED ("not running" to monitoring).
        status, out, _ = eqmaild(box, "status")
        assert status == 150 and line("Checking", "smtp", "DEGRADED") in out.splitlines()
        assert ctl(box, "status")[0] == 150
        # Enabled by the rc link alone, no rules: said, not skipped.
        box.run("ln", "-s", "qmail-tcpd", f"{BOOTCTRL}/qmail-qmtp.rc")
        status, out, _ = eqmaild(box, "restart")
        assert status == 1 and line("Starting", "qmtp", "FAILED") in out.splitlines()
        assert f"rules {BOOTCTRL}/tcprules-qmtp.cdb missing" in out
        assert ctl(box, "status")[0] == 3
    finally:
        box.run("rm", "-f", f"{BOOTCTRL}/qmail-qmtp.rc")
        box.run("cp", "/root/qmail-smtp.env.good", SMTP_ENV)
    status, out, _ = eqmaild(box, "restart")
    assert status == 0 and "DEGRADED" not in out and "FAILED" not in out


def test_stop_all_stops_a_degraded_service_too(box: Sandbox) -> None:
    box.run("ln", "-sf", "qmail-tcpd", f"{BOOTCTRL}/qmail-subm.rc")
    box.run("ln", "-sf", "tcprules-default.cdb", f"{BOOTCTRL}/tcprules-subm.cdb")
    box.run("sed", "-i", "s/^PORT=.*/PORT=2587/", SUBM_ENV)
    reload_and_settle(box)
    box.run("cp", SUBM_ENV, "/root/qmail-subm.env.good")
    box.run("sh", "-c", f"echo 'BANNER=\"unterminated' >> {SUBM_ENV}")
    try:
        reload_and_settle(box)
        assert greeting(box, 2587).startswith("220 ")  # its last good settings
        assert ctl(box, "status")[0] == 150
        for stop, start in (((QBOOTCTL, "stop"), (QBOOTCTL, "start")), ((EQMAILD, "stop"), ())):
            box.run(*stop, check=False, timeout=300)
            assert not listening_on(box, 2587) and not listening_on(box, 25)
            for unit in (SUBM, "qmail-tcpd@subm.socket", SMTP, "qmail-send.service"):
                assert show(box, unit, "ActiveState") in ("inactive", "failed"), unit
            if start:
                box.run(*start, check=False, timeout=300)  # degraded: exits 1
                assert greeting(box, 2587).startswith("220 ")
    finally:
        box.run("cp", "/root/qmail-subm.env.good", SUBM_ENV)
    status, out, _ = eqmaild(box, "start")
    assert status == 0 and "FAILED" not in out and "DEGRADED" not in out
    assert greeting(box, 2587).startswith("220 ") and greeting(box, 25).startswith("220 ")
