"""Edits converge: after `systemctl daemon-reload` (and nothing else) what runs is what
bootctrl says, a broken edit keeps the last good settings, and the admin is told.

All against one booted sandbox, in order (each test leaves the state the next one starts
from). The same without systemd: test_apply_plan.py and test_edits.py.
"""

from __future__ import annotations

import functools
import json
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from qboot_systemd.apply import stamps

from . import sandbox
from .conftest import ROOT
from .e2e_stage import BOOTCTRL, booted_sandbox
from .sandbox import Sandbox, show

QBOOTCTL = str(ROOT / ".venv" / "bin" / "qbootctl")
EQMAILD = str(ROOT / ".venv" / "bin" / "eqmaild")
PYTHON = sys.executable


# --- against systemd ------------------------------------------------------------------------
# Polled every 50 ms: these tests time how fast edits converge.
wait_until = functools.partial(sandbox.wait_until, interval=0.05)


@pytest.fixture(scope="module")
def box() -> Iterator[Sandbox]:
    with booted_sandbox() as sandbox:
        yield sandbox


def listening_on(box: Sandbox, port: int) -> bool:
    return bool(box.run("ss", "-Htln", f"sport = :{port}", check=False).stdout.strip())


def in_session(box: Sandbox, port: int) -> bool:
    """A client's connection to port is established (being served, or queued)."""
    found = box.run("ss", "-Htn", "state", "established", f"sport = :{port}", check=False)
    return bool(found.stdout.strip())


def settled(box: Sandbox) -> bool:
    """The reconcile that the last reload triggered has run."""
    trigger = box.run("test", "-e", f"/run/systemd/generator/{stamps.TRIGGER}", check=False)
    active = show(box, stamps.RECONCILE_UNIT, "ActiveState")
    return trigger.returncode != 0 and active in ("inactive", "failed")


def reload_and_settle(box: Sandbox) -> None:
    box.run("systemctl", "daemon-reload")
    assert wait_until(lambda: settled(box)), box.run(
        "journalctl", "-u", stamps.RECONCILE_UNIT, "--no-pager", check=False
    ).stdout


def banner(box: Sandbox, port: int, quit_after: float = 0) -> str:
    """Connect from inside, read the greeting, say QUIT: '220 ...' or the error."""
    script = (
        "import socket,sys,time\n"
        "try:\n"
        f"    s=socket.create_connection(('127.0.0.1',{port}),timeout=60)\n"
        "    f=s.makefile('rb')\n"
        "    line=f.readline().decode().strip()\n"
        f"    time.sleep({quit_after})\n"
        "    s.sendall(b'QUIT\\r\\n'); print(line, '|', f.readline().decode().strip())\n"
        "except OSError as e: print('error', e)\n"
    )
    return box.run(PYTHON, "-c", script, timeout=120).stdout.strip()


def running_stamp(box: Sandbox, pid: str) -> str:
    """QBOOT_CONFIG of a running process: the settings it was started with."""
    environ = box.run("cat", f"/proc/{pid}/environ").stdout.split("\0")
    return next(item for item in environ if item.startswith(stamps.STAMP_VARIABLE + "="))


def edit(box: Sandbox, name: str, text: str) -> None:
    box.run("sh", "-c", f"cat > {BOOTCTRL}/qmail-{name}.env", input=text.encode())


def test_boot_runs_reconcile_once_and_remembers(box: Sandbox) -> None:
    assert wait_until(lambda: settled(box))
    assert show(box, stamps.PATH_UNIT, "ActiveState") == "active"
    assert box.run("ls", "/run/qboot/last-good").stdout.split() == ["send.applied", "smtp"]
    assert banner(box, 25).startswith("220 ")
    status = box.run(QBOOTCTL, "status", check=False)
    assert status.returncode == 0, status.stdout + status.stderr
    path = "PATH=/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin"
    assert box.run("env", path, "qbootctl", "--help", check=False).returncode == 0  # on PATH
    nobody = ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups")
    unprivileged = box.run(*nobody, QBOOTCTL, "status", check=False)
    assert unprivileged.returncode == 0, unprivileged.stdout  # cannot see what runs: no guess


def test_newly_enabled_service_starts_after_a_plain_reload(box: Sandbox) -> None:
    box.run("ln", "-s", "qmail-tcpd", f"{BOOTCTRL}/qmail-subm.rc")
    box.run("ln", "-s", "tcprules-default.cdb", f"{BOOTCTRL}/tcprules-subm.cdb")
    reload_and_settle(box)
    assert listening_on(box, 587)
    assert banner(box, 587).startswith("220 ")  # its service runs from now on
    journal = box.run("journalctl", "-u", "qmail-tcpd@subm.socket", "-o", "cat", "--no-pager")
    assert "started qmail-tcpd@subm.socket (newly enabled)" in journal.stdout


def test_port_edit_and_reload_moves_the_port(box: Sandbox) -> None:
    smtp_pid = show(box, "qmail-tcpd@smtp.service", "MainPID")
    assert banner(box, 587).startswith("220 ")
    subm_pid = show(box, "qmail-tcpd@subm.service", "MainPID")
    assert subm_pid != "0"
    box.run("sed", "-i", "s/^PORT=587/PORT=2587/", f"{BOOTCTRL}/qmail-subm.env")
    box.run("systemctl", "daemon-reload")
    assert wait_until(lambda: listening_on(box, 2587) and not listening_on(box, 587), 15)
    assert banner(box, 2587).startswith("220 ")
    assert show(box, "qmail-tcpd@smtp.service", "MainPID") == smtp_pid  # unrelated: untouched
    assert wait_until(lambda: settled(box))
    journal = box.run("journalctl", "-u", "qmail-tcpd@subm.socket", "-o", "cat", "--no-pager")
    assert "(listen settings changed): [::]:587 -> [::]:2587" in journal.stdout
    assert box.run(QBOOTCTL, "status", check=False).returncode == 0


def test_setenv_edit_restarts_the_service_and_keeps_the_socket(box: Sandbox) -> None:
    socket_since = show(box, "qmail-tcpd@subm.socket", "ActiveEnterTimestampMonotonic")
    smtp_pid = show(box, "qmail-tcpd@smtp.service", "MainPID")
    old_pid = show(box, "qmail-tcpd@subm.service", "MainPID")
    results: dict[str, str] = {}

    def session(key: str, delay: float, quit_after: float) -> None:
        time.sleep(delay)
        results[key] = banner(box, 2587, quit_after)

    # A session in progress across the change, and connections arriving during it.
    threads = [threading.Thread(target=session, args=("long", 0, 3))]
    threads += [
        threading.Thread(target=session, args=(f"during-{i}", 0.5 + 0.3 * i, 0)) for i in range(6)
    ]
    for thread in threads:
        thread.start()
    assert wait_until(lambda: in_session(box, 2587))  # the long one, before the edit
    box.run("sh", "-c", f"echo 'setenv DATABYTES 1000' >> {BOOTCTRL}/qmail-subm.env")
    box.run("systemctl", "daemon-reload")
    for thread in threads:
        thread.join(90)
    assert results["long"].startswith("220 ") and "| 221" in results["long"], results
    for key, line in results.items():
        assert line.startswith("220 "), (key, line)  # none refused
    assert wait_until(lambda: settled(box))
    new_pid = show(box, "qmail-tcpd@subm.service", "MainPID")
    assert new_pid not in ("0", old_pid)
    environ = box.run("cat", f"/proc/{new_pid}/environ").stdout
    assert "DATABYTES=1000" in environ.split("\0")
    assert show(box, "qmail-tcpd@subm.socket", "ActiveEnterTimestampMonotonic") == socket_since
    assert show(box, "qmail-tcpd@smtp.service", "MainPID") == smtp_pid


def test_systemctl_restart_right_after_the_reload_applies_everything(box: Sandbox) -> None:
    env = f"{BOOTCTRL}/qmail-subm.env"
    box.run("sed", "-i", "s/^PORT=2587/PORT=2588/", env)
    box.run("sh", "-c", f"echo 'setenv RESTARTED yes' >> {env}")
    done = box.run(
        "sh",
        "-c",
        "systemctl daemon-reload && systemctl restart qmail-tcpd@subm.service",
        check=False,
    )
    assert done.returncode == 0, done.stderr  # the start waits for the reconcile
    assert wait_until(
        lambda: settled(box) and listening_on(box, 2588) and not listening_on(box, 2587)
    )
    assert banner(box, 2588).startswith("220 ")
    pid = show(box, "qmail-tcpd@subm.service", "MainPID")
    assert "RESTARTED=yes" in box.run("cat", f"/proc/{pid}/environ").stdout.split("\0")
    assert box.run(QBOOTCTL, "status", check=False).returncode == 0
    box.run("sed", "-i", "s/^PORT=2588/PORT=2587/", env)
    reload_and_settle(box)
    assert listening_on(box, 2587)


def test_status_shows_a_pending_change(box: Sandbox) -> None:
    assert banner(box, 2587).startswith("220 ")
    pid = show(box, "qmail-tcpd@subm.service", "MainPID")
    box.run("sh", "-c", f"echo 'setenv PENDING 1' >> {BOOTCTRL}/qmail-subm.env")
    done = box.run(QBOOTCTL, "status", check=False)
    assert done.returncode == 150  # degraded: serves, not as bootctrl says
    assert "pending: bootctrl changed since the last reload" in done.stdout
    box.run("systemctl", "daemon-reload")
    assert wait_until(lambda: show(box, "qmail-tcpd@subm.service", "MainPID") not in ("0", pid))
    assert wait_until(lambda: settled(box))
    done = box.run(QBOOTCTL, "status", check=False)
    assert done.returncode == 0, done.stdout


@pytest.mark.parametrize(
    ("typo", "line", "message"),
    [
        ('PORT=2587\nBANNER="unterminated\n', 2, "unterminated"),
        ("PORT=99999\n", 1, "PORT='99999'"),
    ],
)
def test_typo_keeps_the_last_good_settings(
    box: Sandbox, typo: str, line: int, message: str
) -> None:
    good = box.run("cat", f"{BOOTCTRL}/qmail-subm.env").stdout
    pid = show(box, "qmail-tcpd@subm.service", "MainPID")
    edit(box, "subm", typo)
    reload_and_settle(box)
    assert listening_on(box, 2587) and banner(box, 2587).startswith("220 ")
    assert show(box, "qmail-tcpd@subm.service", "MainPID") == pid
    done = box.run(QBOOTCTL, "status", check=False)
    where = f"{BOOTCTRL}/qmail-subm.env:{line}:"
    assert done.returncode != 0
    assert "degraded, runs its last good settings" in done.stdout and where in done.stdout
    assert message in done.stdout
    journal = box.run("journalctl", "-u", "qmail-tcpd@subm.service", "-o", "cat", "--no-pager")
    assert where in journal.stdout and "keeps running its last good settings" in journal.stdout
    edit(box, "subm", good)
    reload_and_settle(box)
    assert show(box, "qmail-tcpd@subm.service", "MainPID") == pid  # same settings as before
    assert box.run(QBOOTCTL, "status", check=False).returncode == 0


def test_byte_order_mark_never_stops_the_service(box: Sandbox) -> None:
    good = box.run("cat", f"{BOOTCTRL}/qmail-subm.env").stdout
    pid = show(box, "qmail-tcpd@subm.service", "MainPID")
    edit(box, "subm", "\ufeff" + good)
    reload_and_settle(box)
    assert listening_on(box, 2587) and banner(box, 2587).startswith("220 ")
    assert show(box, "qmail-tcpd@subm.service", "MainPID") == pid
    done = box.run(QBOOTCTL, "status", check=False)
    assert done.returncode == 150 and "qmail-subm.env:1: starts with a UTF-8 byte order mark" in (
        done.stdout
    )
    edit(box, "subm", good)
    reload_and_settle(box)


def test_a_copied_rc_script_never_stops_the_service(box: Sandbox) -> None:
    """`cp qmail-tcpd qmail-subm.rc` instead of the link: still the admin's switch, so subm
    keeps serving on its last good settings and status names the problem."""
    rc = f"{BOOTCTRL}/qmail-subm.rc"
    pid = show(box, "qmail-tcpd@subm.service", "MainPID")
    box.run("sh", "-c", f"rm {rc} && cp {BOOTCTRL}/qmail-tcpd {rc}")
    reload_and_settle(box)
    assert listening_on(box, 2587) and banner(box, 2587).startswith("220 ")
    assert show(box, "qmail-tcpd@subm.service", "MainPID") == pid
    done = box.run(QBOOTCTL, "status", check=False)
    assert done.returncode != 0 and f"{rc}: not a symlink to qmail-tcpd" in done.stdout
    box.run("sh", "-c", f"rm {rc} && ln -s qmail-tcpd {rc}")
    reload_and_settle(box)
    assert show(box, "qmail-tcpd@subm.service", "MainPID") == pid


def process_user(box: Sandbox, pid: str) -> str:
    uid = box.run("awk", "/^Uid:/ {print $2}", f"/proc/{pid}/status").stdout.strip()
    return box.run("getent", "passwd", uid).stdout.split(":")[0]


def test_an_unknown_user_keeps_the_running_service(box: Sandbox) -> None:
    """USER= names no account, plain daemon-reload: the generator does not look it up, the
    reconcile does before it applies anything, and smtp keeps serving as qmaild."""
    env = f"{BOOTCTRL}/qmail-smtp.env"
    good = box.run("cat", env).stdout
    assert "\nUSER=qmaild\n" in good
    assert banner(box, 25).startswith("220 ")
    pid = show(box, "qmail-tcpd@smtp.service", "MainPID")
    stamp = running_stamp(box, pid)
    assert process_user(box, pid) == "qmaild"
    restarts = show(box, "qmail-tcpd@smtp.service", "NRestarts")
    box.run("sed", "-i", "s/^USER=qmaild$/USER=nosuchuser/", env)
    reload_and_settle(box)  # its reconcile: refuse, reload once more, nothing to restart
    # What systemd loaded is the last good command line: a restart or a crash would run
    # that again, never the refused one, so there is no crash loop to wait for.
    assert "nosuchuser" not in show(box, "qmail-tcpd@smtp.service", "ExecStart")
    assert banner(box, 25).startswith("220 ")
    assert show(box, "qmail-tcpd@smtp.service", "MainPID") == pid
    assert show(box, "qmail-tcpd@smtp.service", "NRestarts") == restarts
    assert running_stamp(box, pid) == stamp and process_user(box, pid) == "qmaild"
    where = f'{env}:19: unknown user "nosuchuser"'
    done = box.run(QBOOTCTL, "status", check=False)
    print(done.stdout)
    assert done.returncode == 150
    assert f"degraded, runs its last good settings: {where}" in done.stdout
    journal = box.run("journalctl", "-u", "qmail-tcpd@smtp.service", "-o", "cat", "--no-pager")
    assert where in journal.stdout and "keeps running its last good settings" in journal.stdout
    assert "fatal: unknown user" not in journal.stdout
    seeds = box.run(EQMAILD, "status", check=False)
    checked = [line for line in seeds.stdout.splitlines() if line.startswith("Checking qmail-smtp")]
    # It serves mail: DEGRADED, neither OK nor FAILED ("not running" to monitoring).
    assert seeds.returncode == 150 and len(checked) == 1 and "DEGRADED" in checked[0]
    assert f"{where} (USER=): no such user" in seeds.stdout
    # A crash of the degraded service: systemd starts it again with its last good settings.
    box.run("kill", "-9", pid)
    assert wait_until(lambda: show(box, "qmail-tcpd@smtp.service", "MainPID") not in ("0", pid))
    assert banner(box, 25).startswith("220 ")
    pid = show(box, "qmail-tcpd@smtp.service", "MainPID")
    assert process_user(box, pid) == "qmaild"
    edit(box, "smtp", good)
    reload_and_settle(box)
    assert show(box, "qmail-tcpd@smtp.service", "MainPID") == pid  # the same settings again
    assert box.run("ls", "/run/qboot/refused").stdout == ""
    assert box.run(QBOOTCTL, "status", check=False).returncode == 0


def test_a_new_service_with_an_unknown_user_says_why_it_does_not_run(box: Sandbox) -> None:
    edit(box, "nouser", "PORT=2601\nUSER=nosuchuser\n")
    where = f'{BOOTCTRL}/qmail-nouser.env:2: unknown user "nosuchuser"'
    done = box.run(QBOOTCTL, "enable", "nouser", check=False)
    assert done.returncode == 1 and where in done.stderr
    assert "removed qmail-nouser.rc again" in done.stdout
    # The seed's way, by hand: enabled, but never run into a crash loop.
    box.run("ln", "-s", "qmail-tcpd", f"{BOOTCTRL}/qmail-nouser.rc")
    box.run("ln", "-s", "tcprules-default.cdb", f"{BOOTCTRL}/tcprules-nouser.cdb")
    reload_and_settle(box)
    assert not listening_on(box, 2601)
    done = box.run(QBOOTCTL, "status", check=False)
    print(done.stdout)
    assert done.returncode == 3 and f"broken: {where}" in done.stdout
    journal = box.run("journalctl", "-u", "qmail-tcpd@nouser.service", "-o", "cat", "--no-pager")
    assert where in journal.stdout and "nouser is not running" in journal.stdout
    box.run("rm", f"{BOOTCTRL}/qmail-nouser.rc", f"{BOOTCTRL}/tcprules-nouser.cdb")
    box.run("rm", f"{BOOTCTRL}/qmail-nouser.env")
    reload_and_settle(box)
    assert box.run(QBOOTCTL, "status", check=False).returncode == 0


def test_enable_never_takes_a_port_in_use(box: Sandbox) -> None:
    smtp_pid = show(box, "qmail-tcpd@smtp.service", "MainPID")
    done = box.run(QBOOTCTL, "enable", "nosuch", check=False)
    assert done.returncode == 1
    assert "nosuch would listen on 25, which service smtp uses" in done.stderr
    assert "Traceback" not in done.stderr
    leftovers = box.run("sh", "-c", f"ls {BOOTCTRL} | grep nosuch", check=False).stdout
    assert leftovers == ""
    box.run("sh", "-c", f"echo 'PORT=2600' > {BOOTCTRL}/qmail-broken.env")
    box.run("sh", "-c", f"echo 'USER=\"' >> {BOOTCTRL}/qmail-broken.env")
    done = box.run(QBOOTCTL, "enable", "broken", check=False)
    assert done.returncode == 1 and "removed qmail-broken.rc again" in done.stdout
    leftovers = box.run("sh", "-c", f"ls {BOOTCTRL} | grep -v env | grep broken", check=False)
    assert leftovers.stdout == ""
    reload_and_settle(box)
    assert show(box, "qmail-tcpd@smtp.service", "MainPID") == smtp_pid
    assert banner(box, 25).startswith("220 ")


def test_two_services_swap_ports(box: Sandbox) -> None:
    subm, smtps = f"{BOOTCTRL}/qmail-subm.env", f"{BOOTCTRL}/qmail-smtps.env"
    box.run("sh", "-c", f"printf 'PORT=2590\\n' > {smtps}")
    box.run("ln", "-s", "qmail-tcpd", f"{BOOTCTRL}/qmail-smtps.rc")
    box.run("ln", "-s", "tcprules-default.cdb", f"{BOOTCTRL}/tcprules-smtps.cdb")
    reload_and_settle(box)
    assert banner(box, 2587).startswith("220 ") and banner(box, 2590).startswith("220 ")
    box.run("sed", "-i", "s/^PORT=2590/PORT=2587/", smtps)
    box.run("sed", "-i", "s/^PORT=2587/PORT=2590/", subm)
    reload_and_settle(box)
    assert banner(box, 2587).startswith("220 ") and banner(box, 2590).startswith("220 ")
    status = box.run(QBOOTCTL, "status", "--json", check=False)
    listen = {entry["name"]: entry.get("listen") for entry in json.loads(status.stdout)}
    assert listen["subm"] == ["2590"] and listen["smtps"] == ["2587"]
    assert status.returncode == 0, status.stdout
    box.run("sed", "-i", "s/^PORT=2590/PORT=2587/", subm)
    box.run("rm", f"{BOOTCTRL}/qmail-smtps.rc")
    reload_and_settle(box)
    assert banner(box, 2587).startswith("220 ")


def test_removed_rc_link_stops_the_service(box: Sandbox) -> None:
    box.run("rm", f"{BOOTCTRL}/qmail-subm.rc")
    reload_and_settle(box)
    assert not listening_on(box, 2587)
    assert show(box, "qmail-tcpd@subm.socket", "ActiveState") == "inactive"
    assert box.run("ls", "/run/qboot/last-good").stdout.split() == ["send.applied", "smtp"]


def test_the_seeds_flow_verbatim(box: Sandbox) -> None:
    box.run("sh", "-c", f"printf 'setenv NORESULT 1\\n' >> {BOOTCTRL}/qmail-smtp.env")
    reload_and_settle(box)
    done = box.run(
        "sh",
        "-c",
        f"cd {BOOTCTRL} && ln -s qmail-tcpd qmail-qmtp.rc && "
        f"ln -s tcprules-default.cdb tcprules-qmtp.cdb && {EQMAILD} restart",
        check=False,
    )
    assert done.stdout.splitlines() == [
        "Stopping qmail-send ...           OK",
        "Starting qmail-send ...           OK",
        "Stopping qmail-qmtp ...         FAILED",
        "Starting qmail-qmtp ...           OK",
        "Stopping qmail-smtp ...",  # setenv NORESULT 1 in qmail-smtp.env, as the seed says
        "Starting qmail-smtp ...",
    ], done.stderr
    assert done.returncode == 0
    assert listening_on(box, 209) and listening_on(box, 25)
    assert wait_until(lambda: settled(box))
    assert box.run(QBOOTCTL, "status", check=False).returncode == 0


def test_a_port_in_use_is_never_taken_by_an_edit(box: Sandbox) -> None:
    smtp_pid = show(box, "qmail-tcpd@smtp.service", "MainPID")
    box.run("sed", "-i", "s/^PORT=209/PORT=25/", f"{BOOTCTRL}/qmail-qmtp.env")
    reload_and_settle(box)
    assert listening_on(box, 209)  # qmtp keeps its last good settings
    assert show(box, "qmail-tcpd@smtp.service", "MainPID") == smtp_pid
    assert banner(box, 25).startswith("220 ")
    done = box.run(QBOOTCTL, "status", check=False)
    assert done.returncode == 150
    assert "qmail-qmtp.env:7: 25 is already used by service smtp\n" in done.stdout
    box.run("sed", "-i", "s/^PORT=25/PORT=209/", f"{BOOTCTRL}/qmail-qmtp.env")
    reload_and_settle(box)
    assert box.run(QBOOTCTL, "status", check=False).returncode == 0


def test_a_second_qmail_send_never_runs_on_the_queue(box: Sandbox) -> None:
    # An old boot script's qmail-send, outside the unit (a copy of sleep named qmail-send).
    box.run("cp", "/bin/sleep", "/usr/local/bin/qmail-send")
    box.run("systemd-run", "--unit=old-qboot", "/usr/local/bin/qmail-send", "1000")
    done = box.run("systemctl", "restart", "qmail-send.service", check=False)
    assert done.returncode != 0
    journal = box.run("journalctl", "-u", "qmail-send.service", "-o", "cat", "--no-pager").stdout
    assert "qmail-send already runs as pid" in journal and "old-qboot.service" in journal
    box.run("systemctl", "stop", "old-qboot.service")
    box.run("systemctl", "reset-failed", "qmail-send.service")
    assert box.run("systemctl", "restart", "qmail-send.service", check=False).returncode == 0


def test_interface_flag_binds_the_socket_to_the_device(box: Sandbox) -> None:
    edit(box, "lan", 'PORT=2700\nTCPFLAGS="-I lo"\n')
    box.run("ln", "-s", "qmail-tcpd", f"{BOOTCTRL}/qmail-lan.rc")
    box.run("ln", "-s", "tcprules-default.cdb", f"{BOOTCTRL}/tcprules-lan.cdb")
    reload_and_settle(box)
    assert show(box, "qmail-tcpd@lan.socket", "BindToDevice") == "lo"
    assert banner(box, 2700).startswith("220 ")


def test_uninstall_stops_what_it_removes(box: Sandbox) -> None:
    done = box.run(QBOOTCTL, "uninstall", check=False)
    assert done.returncode == 0, done.stderr
    assert "stopped qboot-reconcile.path" in done.stdout
    assert "stopped qmail-tcpd@smtp.socket" in done.stdout
    assert "stopped qmail-send.service" in done.stdout
    for port in (25, 209, 2587, 2700):
        assert not listening_on(box, port)
    ours = ("qmail*", "qboot-reconcile*", "qboot-boot*")
    left = box.run("systemctl", "list-units", "--no-legend", "--state=active", *ours)
    assert left.stdout.strip() == ""
