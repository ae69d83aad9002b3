"""End to end under a real systemd (PID 1 in a throwaway container).

qmail itself is not packaged in Debian, so the qmail home holds stand-ins: qmail-start
sleeps (qmail-send.service only has to run), and qmail-smtpd records its environment and
then execs Debian's mailfront, a real UCSPI SMTP server writing into a queue directory.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import pytest

from .conftest import ROOT
from .e2e_stage import BOOTCTRL, SPOOL, booted_sandbox
from .sandbox import Sandbox

PYTHON = sys.executable  # visible inside: the container's root is an overlay of ours
CLIENT = str(ROOT / "tests" / "e2e_client.py")


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with booted_sandbox() as box:
        yield box


def send(box: Sandbox, port: int, count: int, tag: str) -> dict[str, object]:
    done = box.run(PYTHON, CLIENT, "127.0.0.1", str(port), str(count), tag, timeout=300)
    summary: dict[str, object] = json.loads(done.stdout)
    print(
        f"{tag}: sent {summary['sent']} refused {summary['refused']} rejected {summary['rejected']}"
    )
    return summary


def queued(box: Sandbox, tag: str) -> int:
    done = box.run(
        "sh", "-c", f"grep -l 'Subject: {tag}-' {SPOOL}/queue/new/* | wc -l", check=False
    )
    return int(done.stdout.strip() or 0)


def listening(box: Sandbox, port: int) -> bool:
    done = box.run("ss", "-Htln", f"sport = :{port}", check=False)
    return bool(done.stdout.strip())


def wait_until(condition: object, timeout: float = 20) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.1)
    return False


def show(box: Sandbox, unit: str, prop: str) -> str:
    return box.run("systemctl", "show", "-P", prop, unit).stdout.strip()


def test_boot_brings_up_the_shipped_bootctrl(sandbox: Sandbox) -> None:
    assert show(sandbox, "qmail-send.service", "ActiveState") == "active"
    assert show(sandbox, "qmail-tcpd@smtp.socket", "ActiveState") == "active"
    assert listening(sandbox, 25)
    summary = send(sandbox, 25, 3, "boot")
    assert summary["sent"] == 3 and summary["refused"] == 0
    assert queued(sandbox, "boot") == 3
    env = sandbox.run("sh", "-c", f"cat $(ls -t {SPOOL}/env/* | head -1)").stdout
    assert "RELAYCLIENT=\n" in env  # 127.:allow,RELAYCLIENT="" from tcprules-default
    for line in ("PROTO=TCP", "TCPREMOTEIP=127.0.0.1", "TCPLOCALPORT=25"):
        assert line in env
    assert "LISTEN_FDS" not in env and "NOTIFY_SOCKET" not in env
    status = show(sandbox, "qmail-tcpd@smtp.service", "StatusText")
    assert "served" in status
    print(f"systemctl status shows: {status}")


def test_enable_subm_by_the_seed_steps(sandbox: Sandbox) -> None:
    sandbox.run("ln", "-s", "qmail-tcpd", f"{BOOTCTRL}/qmail-subm.rc")
    sandbox.run("ln", "-s", "tcprules-default.cdb", f"{BOOTCTRL}/tcprules-subm.cdb")
    sandbox.run("sh", "-c", f"echo 'setenv SUBMISSION yes' >> {BOOTCTRL}/qmail-subm.env")
    sandbox.run("systemctl", "daemon-reload")
    sandbox.run("systemctl", "start", "qmail-tcpd@subm.socket")
    assert listening(sandbox, 587)
    assert send(sandbox, 587, 1, "subm")["sent"] == 1
    env = sandbox.run("sh", "-c", f"cat $(ls -t {SPOOL}/env/* | head -1)").stdout
    assert "SUBMISSION=yes" in env and "TCPLOCALPORT=587" in env


def test_env_edit_warns_then_moves_the_port(sandbox: Sandbox) -> None:
    sandbox.run("sed", "-i", "s/^PORT=587/PORT=2587/", f"{BOOTCTRL}/qmail-subm.env")
    assert show(sandbox, "qmail-tcpd@subm.socket", "NeedDaemonReload") == "yes"
    status = sandbox.run("systemctl", "status", "qmail-tcpd@subm.socket", check=False)
    assert "changed on disk" in status.stdout + status.stderr
    sandbox.run("systemctl", "daemon-reload")
    sandbox.run("systemctl", "restart", "qmail-tcpd@subm.socket")
    assert wait_until(lambda: listening(sandbox, 2587))
    assert not listening(sandbox, 587)
    assert send(sandbox, 2587, 1, "moved")["sent"] == 1


def test_rules_deny_rbl_and_recompile_without_restart(sandbox: Sandbox) -> None:
    rules = f"{BOOTCTRL}/tcprules-smtp.txt"
    sandbox.run("sh", "-c", f"printf '127.0.0.1:deny\\n:allow\\n' > {rules}")
    sandbox.run(str(ROOT / ".venv/bin/mktcprules"), BOOTCTRL)
    pid = show(sandbox, "qmail-tcpd@smtp.service", "MainPID")
    denied = sandbox.run(
        PYTHON,
        "-c",
        "import socket; s=socket.create_connection(('127.0.0.1', 25)); print(repr(s.recv(100)))",
    )
    assert denied.stdout.strip() == "b''"  # no session at all
    # An RBLSMTPD value from the rules makes Debian's rblsmtpd reject with that text.
    sandbox.run("sh", "-c", f"echo 'PRESMTPD=/usr/bin/rblsmtpd' >> {BOOTCTRL}/qmail-smtp.env")
    sandbox.run("sh", "-c", f"printf '127.0.0.1:allow,RBLSMTPD=\"-go away\"\\n:allow\\n' > {rules}")
    sandbox.run(str(ROOT / ".venv/bin/mktcprules"), BOOTCTRL)
    sandbox.run("systemctl", "daemon-reload")
    sandbox.run("systemctl", "restart", "qmail-tcpd@smtp.service")
    summary = send(sandbox, 25, 1, "rbl")
    assert summary["sent"] == 0 and "go away" in str(summary["errors"])
    sandbox.run("sh", "-c", f'printf \'127.:allow,RELAYCLIENT="",RBLSMTPD=""\\n\' > {rules}')
    sandbox.run(str(ROOT / ".venv/bin/mktcprules"), BOOTCTRL)
    assert send(sandbox, 25, 1, "rbl-off")["sent"] == 1
    pid = show(sandbox, "qmail-tcpd@smtp.service", "MainPID")
    sandbox.run("sh", "-c", f"printf '127.:deny\\n' > {rules}")
    sandbox.run(str(ROOT / ".venv/bin/mktcprules"), BOOTCTRL)
    assert send(sandbox, 25, 1, "after-recompile")["sent"] == 0
    assert show(sandbox, "qmail-tcpd@smtp.service", "MainPID") == pid  # no restart needed
    sandbox.run("sh", "-c", f'printf \'127.:allow,RELAYCLIENT="",RBLSMTPD=""\\n\' > {rules}')
    sandbox.run(str(ROOT / ".venv/bin/mktcprules"), BOOTCTRL)


def load_while(
    sandbox: Sandbox, count: int, tag: str, action: Callable[[], object], times: int
) -> dict[str, object]:
    client = subprocess.Popen(
        [
            "nsenter",
            "-t",
            str(sandbox.pid1),
            "-a",
            PYTHON,
            CLIENT,
            "127.0.0.1",
            "25",
            str(count),
            tag,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    for _ in range(times):
        time.sleep(0.4)
        action()
    out, _ = client.communicate(timeout=300)
    summary: dict[str, object] = json.loads(out)
    print(
        f"{tag}: sent {summary['sent']} refused {summary['refused']} retried "
        f"{summary['retried']} queued {queued(sandbox, tag)} of {count}"
    )
    return summary


def test_restart_under_load_refuses_and_loses_nothing(sandbox: Sandbox) -> None:
    def restart() -> None:
        sandbox.run("systemctl", "restart", "qmail-tcpd@smtp.service")

    summary = load_while(sandbox, 300, "restart", restart, 4)
    assert summary["refused"] == 0 and summary["sent"] == 300, summary
    assert queued(sandbox, "restart") == 300


def test_crash_is_restarted_with_the_socket_kept(sandbox: Sandbox) -> None:
    def crash() -> None:
        assert wait_until(lambda: show(sandbox, "qmail-tcpd@smtp.service", "MainPID") != "0")
        sandbox.run("systemctl", "kill", "-s", "KILL", "--kill-who=main", "qmail-tcpd@smtp.service")

    summary = load_while(sandbox, 200, "crash", crash, 2)
    assert summary["refused"] == 0 and summary["sent"] == 200, summary
    assert queued(sandbox, "crash") == 200
    assert wait_until(lambda: show(sandbox, "qmail-tcpd@smtp.service", "ActiveState") == "active")
    assert int(show(sandbox, "qmail-tcpd@smtp.service", "NRestarts")) >= 2


def test_broken_env_file_skips_only_that_service(sandbox: Sandbox) -> None:
    for name, env in (("qmtp", "PORT=209\n"), ("smtps", "PORT=465\nPRESMTPD=$(evil)\n")):
        sandbox.run("ln", "-sf", "qmail-tcpd", f"{BOOTCTRL}/qmail-{name}.rc")
        sandbox.run("ln", "-sf", "tcprules-default.cdb", f"{BOOTCTRL}/tcprules-{name}.cdb")
        sandbox.run("sh", "-c", f"printf '{env}' > {BOOTCTRL}/qmail-{name}.env")
    sandbox.run("systemctl", "daemon-reload")
    sandbox.run("systemctl", "start", "sockets.target")
    assert wait_until(lambda: listening(sandbox, 209))
    assert not listening(sandbox, 465)
    assert listening(sandbox, 25)
    verify = sandbox.run(
        str(ROOT / ".venv/bin/qbootctl"), "show", "--bootctrl", BOOTCTRL, check=False
    )
    assert verify.returncode == 1
    assert f"{BOOTCTRL}/qmail-smtps.env:2: command substitution" in verify.stdout


def test_late_var_oneshot_starts_services(sandbox: Sandbox) -> None:
    # Simulate a bootctrl on a file system mounted after the generators ran.
    launcher = "/usr/lib/systemd/system-generators/qboot-systemd-generator"
    sandbox.run("sh", "-c", f"sed -i 's|qmail_home=.*|qmail_home=\"/srv/late\"))|' {launcher}")
    sandbox.run("systemctl", "daemon-reload")
    wants = sandbox.run("ls", "/run/systemd/generator/multi-user.target.wants").stdout
    assert "qboot-boot.service" in wants
    sandbox.run("mkdir", "-p", "/srv/late/etc")
    sandbox.run("cp", "-a", BOOTCTRL, "/srv/late/etc/bootctrl")
    sandbox.run("sh", "-c", "sed -i 's/^PORT=.*/PORT=2599/' /srv/late/etc/bootctrl/qmail-subm.env")
    sandbox.run("systemctl", "stop", "qmail-tcpd@subm.socket", "qmail-tcpd@subm.service")
    sandbox.run(
        "sh",
        "-c",
        "sed -i 's|/var/qmail/etc/bootctrl|/srv/late/etc/bootctrl|' "
        "/usr/lib/systemd/system/qboot-boot.service",
    )
    sandbox.run("systemctl", "daemon-reload")
    done = sandbox.run("systemctl", "start", "qboot-boot.service", check=False)
    assert done.returncode == 0, sandbox.run(
        "journalctl", "-u", "qboot-boot", "--no-pager", check=False
    ).stdout
    assert wait_until(lambda: listening(sandbox, 2599))


def test_hardening_exposure(sandbox: Sandbox) -> None:
    figures = {}
    for unit in ("qmail-tcpd@smtp.service", "qmail-send.service"):
        out = sandbox.run("systemd-analyze", "security", "--no-pager", unit, check=False).stdout
        line = next(line for line in out.splitlines() if "Overall exposure" in line)
        figures[unit] = float(line.split(":")[1].split()[0])
    print(f"systemd-analyze security: {figures}")
    assert figures["qmail-tcpd@smtp.service"] <= 5.0
    assert figures["qmail-send.service"] <= 5.0
