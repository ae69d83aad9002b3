"""End to end under a real systemd (PID 1 in a throwaway container) with real qmail.

notqmail is built once per run and installed into the sandbox only (tests/qmail_oracle.py):
mail goes in through qmail-tcpd@smtp and @subm (qboot-tcpsrv running qmail-smtpd as
qmaild:nofiles, setuid qmail-queue), and qmail-send.service delivers it with qmail-local into
the test user's ~/Maildir/new, or with qmail-remote through control/smtproutes to an SMTP
sink on the sandbox's loopback. One sandbox serves the whole module; the tests run in order.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import pytest

from .conftest import ROOT
from .e2e_stage import (
    BOOTCTRL,
    LOCAL_RCPT,
    MAILDIR,
    REMOTE_DOMAIN,
    SPOOL,
    booted_sandbox,
)
from .qmail_oracle import ME, TEST_HOME, TEST_USER
from .sandbox import Sandbox, show, wait_until

PYTHON = sys.executable  # visible inside: the container's root is an overlay of ours
CLIENT = str(ROOT / "tests" / "e2e_client.py")
SEND_UNIT = "qmail-send.service"


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with booted_sandbox() as box:
        yield box


def send(
    box: Sandbox, port: int, count: int, tag: str, rcpt: str = LOCAL_RCPT
) -> dict[str, object]:
    done = box.run(PYTHON, CLIENT, "127.0.0.1", str(port), str(count), tag, rcpt, timeout=300)
    summary: dict[str, object] = json.loads(done.stdout)
    return summary


def _count(box: Sandbox, pattern: str, tag: str) -> int:
    """Distinct messages: a session cut off after qmail-queue took the message but before
    the client read 250 is sent again by the client (as an MTA does), so a message may
    arrive twice; what counts is that none is lost."""
    done = box.run(
        "sh",
        "-c",
        f"grep -hoa 'Subject: {tag}-[0-9]*' {pattern} 2>/dev/null | sort -u | wc -l",
        check=False,
    )
    return int(done.stdout.strip() or 0)


def delivered(box: Sandbox, tag: str) -> int:
    """Messages qmail-local delivered into the test user's Maildir."""
    return _count(box, f"{MAILDIR}/new/*", tag)


def queued(box: Sandbox, tag: str) -> int:
    """Messages in qmail's queue (accepted, not yet delivered)."""
    return _count(box, "/var/qmail/queue/mess/*/*", tag)


def relayed(box: Sandbox, tag: str) -> int:
    """Messages qmail-remote handed to the sink (the 'remote' server)."""
    return _count(box, f"{SPOOL}/queue/new/*", tag)


def listening(box: Sandbox, port: int) -> bool:
    done = box.run("ss", "-Htln", f"sport = :{port}", check=False)
    return bool(done.stdout.strip())


def journal(box: Sandbox, unit: str, lines: int = 200) -> str:
    return box.run("journalctl", "-u", unit, "-n", str(lines), "--no-pager", check=False).stdout


def uid_of(box: Sandbox, user: str) -> str:
    return box.run("id", "-u", user).stdout.strip()


def test_boot_delivers_through_real_qmail(sandbox: Sandbox) -> None:
    assert show(sandbox, SEND_UNIT, "ActiveState") == "active"
    assert show(sandbox, "qmail-tcpd@smtp.socket", "ActiveState") == "active"
    assert listening(sandbox, 25)
    summary = send(sandbox, 25, 3, "boot")
    assert summary["sent"] == 3 and summary["refused"] == 0
    assert wait_until(lambda: delivered(sandbox, "boot") == 3)
    message = sandbox.run("sh", "-c", f"cat $(ls -t {MAILDIR}/new/* | head -1)").stdout
    # qmail-smtpd's Received: line names TCPLOCALHOST, which -l took from control/me
    assert f"by {ME} with SMTP" in message and f"Delivered-To: {LOCAL_RCPT}" in message
    log = journal(sandbox, "qmail-tcpd@smtp.service")
    # -v by default: every connection in tcpserver's format, the local name from control/me
    assert "qboot-tcpsrv: ok " in log and f" {ME}:" in log and "qboot-tcpsrv: end " in log
    send_log = journal(sandbox, SEND_UNIT)
    # qmail-smtpd ran as qmaild (-u/-g), and setuid qmail-queue still worked
    assert f"uid {uid_of(sandbox, 'qmaild')}" in send_log
    assert "qmail-send[" in send_log and "qmail-start[" not in send_log
    assert "delivery 1: success" in send_log
    status = show(sandbox, "qmail-tcpd@smtp.service", "StatusText")
    assert "served" in status


def test_enable_subm_by_the_seed_steps(sandbox: Sandbox) -> None:
    sandbox.run("ln", "-s", "qmail-tcpd", f"{BOOTCTRL}/qmail-subm.rc")
    sandbox.run("ln", "-s", "tcprules-default.cdb", f"{BOOTCTRL}/tcprules-subm.cdb")
    sandbox.run(
        "sh",
        "-c",
        f"printf 'setenv SUBMISSION yes\nPRESMTPD=/usr/local/bin/qboot-record-env\n'"
        f" >> {BOOTCTRL}/qmail-subm.env",
    )
    sandbox.run("systemctl", "daemon-reload")
    sandbox.run("systemctl", "start", "qmail-tcpd@subm.socket")
    assert listening(sandbox, 587)
    assert send(sandbox, 587, 1, "subm")["sent"] == 1
    assert wait_until(lambda: delivered(sandbox, "subm") == 1)
    env = sandbox.run("sh", "-c", f"cat $(ls -t {SPOOL}/env/* | head -1)").stdout
    assert "SUBMISSION=yes" in env and "TCPLOCALPORT=587" in env
    assert "RELAYCLIENT=\n" in env  # 127.:allow,RELAYCLIENT="" from tcprules-default
    for line in ("PROTO=TCP", "TCPREMOTEIP=127.0.0.1", f"TCPLOCALHOST={ME}"):
        assert line in env
    assert "TCPREMOTEINFO" not in env  # -R: no ident query
    assert "LISTEN_FDS" not in env and "NOTIFY_SOCKET" not in env


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
    assert wait_until(lambda: delivered(sandbox, "moved") == 1)


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


def smtp_dialogue(box: Sandbox, rcpt: str, tag: str) -> str:
    """One session with swaks; its transcript."""
    done = box.run(
        "swaks",
        "-s",
        "127.0.0.1",
        "-p",
        "25",
        "-f",
        LOCAL_RCPT,
        "-t",
        rcpt,
        "--h-Subject",
        f"{tag}-0",
        check=False,
    )
    return done.stdout + done.stderr


def test_rules_relayclient_decides_relaying(sandbox: Sandbox) -> None:
    rules = f"{BOOTCTRL}/tcprules-smtp.txt"
    remote = f"someone@{REMOTE_DOMAIN}"
    # 127.:allow,RELAYCLIENT="": relayed by qmail-remote through smtproutes to the sink
    assert "250 ok" in smtp_dialogue(sandbox, remote, "relay-on")
    assert wait_until(lambda: relayed(sandbox, "relay-on") == 1)
    sandbox.run("sh", "-c", f"printf '127.:allow,RBLSMTPD=\"\"\\n' > {rules}")
    sandbox.run(str(ROOT / ".venv/bin/mktcprules"), BOOTCTRL)
    refused = smtp_dialogue(sandbox, remote, "relay-off")
    assert "553 sorry, that domain isn't in my list of allowed rcpthosts" in refused
    assert "250 ok" in smtp_dialogue(sandbox, LOCAL_RCPT, "local-without-relay")
    assert wait_until(lambda: delivered(sandbox, "local-without-relay") == 1)
    sandbox.run("sh", "-c", f'printf \'127.:allow,RELAYCLIENT="",RBLSMTPD=""\\n\' > {rules}')
    sandbox.run(str(ROOT / ".venv/bin/mktcprules"), BOOTCTRL)


def test_bounce_and_program_delivery(sandbox: Sandbox) -> None:
    # A bounce is queued by qmail-send itself through setuid qmail-queue.
    assert "250 ok" in smtp_dialogue(sandbox, f"nosuchuser@{ME}", "bounced")
    assert wait_until(lambda: delivered(sandbox, "bounced") == 1)
    bounce = sandbox.run("sh", "-c", f"cat $(grep -l 'Subject: bounced-0' {MAILDIR}/new/*)").stdout
    assert "Subject: failure notice" in bounce and "no mailbox here by that name" in bounce
    # |program in a .qmail file runs as the user.
    write_dot_qmail(sandbox, "prog", f"|id -un > {TEST_HOME}/prog-ran\n./Maildir/\n")
    assert "250 ok" in smtp_dialogue(sandbox, f"{TEST_USER}-prog@{ME}", "prog")
    assert wait_until(lambda: delivered(sandbox, "prog") == 1)
    assert sandbox.run("cat", f"{TEST_HOME}/prog-ran").stdout.strip() == TEST_USER


def write_dot_qmail(box: Sandbox, extension: str, text: str) -> None:
    path = f"{TEST_HOME}/.qmail-{extension}"
    box.run("sh", "-c", f"printf '{text}' > {path} && chown {TEST_USER}: {path}")


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
            LOCAL_RCPT,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    for _ in range(times):
        time.sleep(0.4)
        action()
    out, _ = client.communicate(timeout=300)
    summary: dict[str, object] = json.loads(out)
    return summary


def test_restart_under_load_refuses_and_loses_nothing(sandbox: Sandbox) -> None:
    def restart() -> None:
        sandbox.run("systemctl", "restart", "qmail-tcpd@smtp.service")

    summary = load_while(sandbox, 300, "restart", restart, 4)
    assert summary["refused"] == 0 and summary["sent"] == 300, summary
    assert wait_until(lambda: delivered(sandbox, "restart") == 300, 120)


def test_crash_is_restarted_with_the_socket_kept(sandbox: Sandbox) -> None:
    def crash() -> None:
        assert wait_until(lambda: show(sandbox, "qmail-tcpd@smtp.service", "MainPID") != "0")
        sandbox.run("systemctl", "kill", "-s", "KILL", "--kill-who=main", "qmail-tcpd@smtp.service")

    summary = load_while(sandbox, 200, "crash", crash, 2)
    assert summary["refused"] == 0 and summary["sent"] == 200, summary
    assert wait_until(lambda: delivered(sandbox, "crash") == 200, 120)
    assert wait_until(lambda: show(sandbox, "qmail-tcpd@smtp.service", "ActiveState") == "active")
    assert int(show(sandbox, "qmail-tcpd@smtp.service", "NRestarts")) >= 2


def pid_of(box: Sandbox, program: str) -> int:
    done = box.run("pgrep", "-x", program, check=False)
    pids = done.stdout.split()
    return int(pids[0]) if len(pids) == 1 else 0


@pytest.mark.parametrize("victim", ["qmail-send", "qmail-lspawn", "qmail-rspawn", "qmail-clean"])
def test_kill_9_of_qmail_send_or_a_helper_restarts_mail(sandbox: Sandbox, victim: str) -> None:
    restarts = int(show(sandbox, SEND_UNIT, "NRestarts"))
    old_main = show(sandbox, SEND_UNIT, "MainPID")
    pid = pid_of(sandbox, victim)
    assert pid, f"{victim} is not running"
    sandbox.run("kill", "-9", str(pid))
    # Mail that arrives now is queued (qmail-queue needs no qmail-send); qmail-send notices
    # a dead qmail-clean only when it next needs it, for this message.
    tag = f"kill-{victim}"
    assert send(sandbox, 25, 1, tag)["sent"] == 1
    assert "250 ok" in smtp_dialogue(sandbox, f"far@{REMOTE_DOMAIN}", tag)
    # qmail-send exits (0 when it loses a helper); Restart=always brings it back in 5 s
    assert wait_until(lambda: int(show(sandbox, SEND_UNIT, "NRestarts")) > restarts, 30)
    assert wait_until(lambda: show(sandbox, SEND_UNIT, "ActiveState") == "active", 30)
    assert show(sandbox, SEND_UNIT, "MainPID") != old_main
    assert wait_until(lambda: delivered(sandbox, tag) == 1)
    assert wait_until(lambda: relayed(sandbox, tag) == 1)


def test_reload_send_rereads_locals_with_the_same_pid(sandbox: Sandbox) -> None:
    other = "other.example.org"
    for name in ("locals", "rcpthosts"):
        sandbox.run("sh", "-c", f"echo {other} >> /var/qmail/control/{name}")
    pid = show(sandbox, SEND_UNIT, "MainPID")
    sandbox.run("systemctl", "reload", SEND_UNIT)
    assert show(sandbox, SEND_UNIT, "MainPID") == pid
    # delivered locally: only a qmail-send that re-read control/locals knows the domain
    assert "250 ok" in smtp_dialogue(sandbox, f"{TEST_USER}@{other}", "reloaded")
    assert wait_until(lambda: delivered(sandbox, "reloaded") == 1)


def test_stop_during_delivery_loses_nothing_and_the_queue_waits(sandbox: Sandbox) -> None:
    write_dot_qmail(sandbox, "slow", "|sleep 3\n./Maildir/\n")
    assert "250 ok" in smtp_dialogue(sandbox, f"{TEST_USER}-slow@{ME}", "slow")
    assert wait_until(lambda: pid_of(sandbox, "sleep") != 0)
    sandbox.run("systemctl", "stop", SEND_UNIT)  # returns once qmail-send has exited
    assert delivered(sandbox, "slow") == 1  # it finished the delivery in progress first
    assert pid_of(sandbox, "qmail-lspawn") == 0
    # qmail-smtpd still queues (setuid qmail-queue) while qmail-send is down
    assert "250 ok" in smtp_dialogue(sandbox, LOCAL_RCPT, "while-down")
    # qmail-send has exited (stop returned): the message waits in the queue, undelivered.
    assert queued(sandbox, "while-down") == 1
    assert delivered(sandbox, "while-down") == 0
    sandbox.run("systemctl", "start", SEND_UNIT)
    assert wait_until(lambda: delivered(sandbox, "while-down") == 1)


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
    assert figures["qmail-tcpd@smtp.service"] <= 5.0
    assert figures["qmail-send.service"] <= 5.0
