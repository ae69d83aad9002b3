"""TLS with real qmail under a real systemd (the sandbox of test_e2e_systemd): smtps and
subm set up as an admin does (TLS=, CERTFILE=, KEYFILE= in their env files, an rc link,
`eqmaild restart`), so qboot-tcpsrv -S runs from the shipped units in front of notqmail's
qmail-smtpd, which has no TLS of its own. Judged by what swaks, openssl s_client and
Python's smtplib get, and by what qmail-send delivers."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from .admin_sandbox import EQMAILD, QBOOTCTL
from .conftest import ROOT, require_tool
from .e2e_stage import (
    BOOTCTRL,
    LOCAL_RCPT,
    MAILDIR,
    REMOTE_DOMAIN,
    SPOOL,
    booted_sandbox,
    build_stage,
)
from .qmail_oracle import ME
from .sandbox import Sandbox, wait_until
from .tls_harness import make_pair

PYTHON = sys.executable
CLIENT = str(ROOT / "tests" / "tls_e2e_client.py")
TLS_DIR = "/etc/qboot-test-tls"
SMTPS, SUBM = "qmail-tcpd@smtps.service", "qmail-tcpd@subm.service"
BIG = 20 * 1024 * 1024


def prepare(stage: Path) -> None:
    build_stage(stage)
    directory = stage / TLS_DIR.lstrip("/")
    directory.mkdir(parents=True)
    make_pair(directory, "server")
    make_pair(directory, "renewed", kind="rsa")
    make_pair(directory, "third")
    tcprules = require_tool("tcprules")
    for name, rule in (("relay", '127.:allow,RELAYCLIENT=""\n'), ("norelay", "127.:allow\n")):
        subprocess.run(
            [tcprules, str(directory / f"{name}.cdb"), str(directory / f"{name}.tmp")],
            input=rule.encode(),
            check=True,
        )
    # a 20 MB message body: lines of base64 (no line starts with a dot)
    body = directory / "big.txt"
    line = b"QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9wcXJzdHV2d3h5ejAx\n"
    body.write_bytes(line * (BIG // len(line)))
    configure(stage, "smtps", "implicit", "relay")
    configure(stage, "subm", "starttls-required", "norelay")


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with booted_sandbox(prepare) as box:
        # The seed's habit: settings in the env files, an rc link each, eqmaild restart.
        box.run("sh", "-c", f"cd {BOOTCTRL} && ln -s qmail-tcpd qmail-smtps.rc")
        box.run("sh", "-c", f"cd {BOOTCTRL} && ln -s qmail-tcpd qmail-subm.rc")
        done = box.run(EQMAILD, "restart", check=False, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        for unit, port in ((SMTPS, 465), (SUBM, 587)):
            assert wait_until(
                lambda port=port: box.run(
                    "ss", "-Htln", f"sport = :{port}", check=False
                ).stdout.strip()
            ), box.run("journalctl", "-u", unit, "--no-pager", check=False).stdout
        yield box


def configure(stage: Path, service: str, mode: str, rules: str) -> None:
    """TLS settings appended to the shipped env file, as an admin edits it."""
    env = stage / BOOTCTRL.lstrip("/") / f"qmail-{service}.env"
    env.write_text(
        env.read_text()
        + f"TLS={mode}\nCERTFILE={TLS_DIR}/server.crt\nKEYFILE={TLS_DIR}/server.key\n"
        + f"CDB={TLS_DIR}/{rules}.cdb\n"
    )


def swaks(box: Sandbox, *args: str, timeout: float = 120) -> str:
    done = box.run(
        "swaks", "-s", "127.0.0.1", "-f", LOCAL_RCPT, *args, check=False, timeout=timeout
    )
    return done.stdout + done.stderr


def count(box: Sandbox, pattern: str, tag: str) -> int:
    done = box.run(
        "sh", "-c", f"grep -hoa 'Subject: {tag}' {pattern} 2>/dev/null | wc -l", check=False
    )
    return int(done.stdout.strip() or 0)


def test_s_client_gets_qmail_smtpd_greeting(sandbox: Sandbox) -> None:
    done = sandbox.run(
        "sh", "-c", "printf 'QUIT\\r\\n' | openssl s_client -quiet -connect 127.0.0.1:465"
    )
    assert f"220 {ME} ESMTP" in done.stdout, done.stdout + done.stderr


def test_swaks_tls_on_connect_delivers_and_rules_decide_relaying(sandbox: Sandbox) -> None:
    out = swaks(sandbox, "-p", "465", "--tls-on-connect", "-t", LOCAL_RCPT, "--h-Subject", "tls465")
    assert "250 ok" in out and "TLS started" in out, out
    assert wait_until(lambda: count(sandbox, f"{MAILDIR}/new/*", "tls465") == 1)
    remote = f"someone@{REMOTE_DOMAIN}"
    out = swaks(sandbox, "-p", "465", "--tls-on-connect", "-t", remote, "--h-Subject", "tlsrelay")
    assert "250 ok" in out, out  # RELAYCLIENT from the rules
    assert wait_until(lambda: count(sandbox, f"{SPOOL}/queue/new/*", "tlsrelay") == 1)
    log = sandbox.run("journalctl", "-u", SMTPS, "--no-pager").stdout
    assert "qboot-tcpsrv: ok " in log and "qboot-tcpsrv: end " in log


def test_swaks_starttls_delivers_and_mail_in_the_clear_is_refused(sandbox: Sandbox) -> None:
    out = swaks(sandbox, "-p", "587", "--tls", "-t", LOCAL_RCPT, "--h-Subject", "tls587")
    assert "250 STARTTLS" in out and "220 2.0.0 Ready to start TLS" in out, out
    assert "250 ok" in out and "TLS started" in out, out
    assert wait_until(lambda: count(sandbox, f"{MAILDIR}/new/*", "tls587") == 1)
    clear = swaks(sandbox, "-p", "587", "-t", LOCAL_RCPT, "--h-Subject", "clear587")
    assert "530 5.7.0 Must issue a STARTTLS command first" in clear, clear
    # no RELAYCLIENT in this service's rules: relaying is still refused after TLS
    remote = f"someone@{REMOTE_DOMAIN}"
    out = swaks(sandbox, "-p", "587", "--tls", "-t", remote, "--h-Subject", "norelay")
    assert "553 sorry, that domain isn't in my list of allowed rcpthosts" in out, out


@pytest.mark.parametrize(("port", "flag"), [(465, "--tls-on-connect"), (587, "--tls")])
def test_20mb_message_arrives_intact(sandbox: Sandbox, port: int, flag: str) -> None:
    tag = f"big{port}"
    out = swaks(
        sandbox,
        "-p",
        str(port),
        flag,
        "-t",
        LOCAL_RCPT,
        "--h-Subject",
        tag,
        "--body",
        f"@{TLS_DIR}/big.txt",
        "--suppress-data",
        timeout=300,
    )
    assert "250 ok" in out, out[-2000:]
    assert wait_until(lambda: count(sandbox, f"{MAILDIR}/new/*", tag) == 1, timeout=60)
    body = (Path(sandbox.stage) / TLS_DIR.lstrip("/") / "big.txt").read_bytes()
    expected = hashlib.sha256(body.rstrip(b"\n")).hexdigest()
    got = sandbox.run(
        PYTHON,
        "-c",
        "import glob, hashlib\n"
        f"for name in glob.glob('{MAILDIR}/new/*'):\n"
        "    data = open(name, 'rb').read()\n"
        f"    if b'Subject: {tag}' in data:\n"
        "        text = data.split(b'\\n\\n', 1)[1].rstrip(b'\\n')\n"
        "        print(hashlib.sha256(text).hexdigest(), len(text))\n",
    ).stdout.split()
    assert got[1] == str(len(body.rstrip(b"\n")))
    got = got[0]
    assert got == expected


def test_plain_client_on_465_gets_no_greeting(sandbox: Sandbox) -> None:
    done = sandbox.run(PYTHON, CLIENT, "plain", "465", timeout=30)
    got = json.loads(done.stdout)["got"]
    assert "220" not in got and "ESMTP" not in got, got


def test_certificate_replaced_and_reloaded_during_a_session(sandbox: Sandbox) -> None:
    done = sandbox.run(
        PYTHON,
        CLIENT,
        "reload",
        "465",
        SMTPS,
        f"{TLS_DIR}/renewed.crt",
        f"{TLS_DIR}/server.crt",
        f"{TLS_DIR}/renewed.key",
        f"{TLS_DIR}/server.key",
        LOCAL_RCPT,
        LOCAL_RCPT,
        "acrossreload",
        timeout=120,
    )
    summary = json.loads(done.stdout)
    assert summary["first_data"] == 250  # the session open across the reload completed
    assert summary["before"] != summary["after"]  # the next one has the new certificate
    assert wait_until(lambda: count(sandbox, f"{MAILDIR}/new/*", "acrossreload") == 1)
    log = sandbox.run("journalctl", "-u", SMTPS, "--no-pager").stdout
    assert "TLS certificate kept" not in log


def test_a_renewed_certificate_not_yet_reloaded_is_named_by_status(sandbox: Sandbox) -> None:
    """certbot replaced the files and nobody reloaded: clients still get the old
    certificate, so status says so (degraded, with the command); the reload clears it."""
    assert sandbox.run(QBOOTCTL, "status", "smtps", check=False).returncode == 0
    for suffix in ("crt", "key"):  # cp keeps the key's mode 0600
        sandbox.run("cp", f"{TLS_DIR}/third.{suffix}", f"{TLS_DIR}/server.{suffix}")
    status = sandbox.run(QBOOTCTL, "status", "smtps", check=False)
    assert status.returncode == 150, status.stdout + status.stderr
    assert "was replaced after the server loaded it" in status.stdout, status.stdout
    assert f"systemctl reload {SMTPS}" in status.stdout, status.stdout
    sandbox.run("systemctl", "reload", SMTPS)
    assert wait_until(
        lambda: sandbox.run(QBOOTCTL, "status", "smtps", check=False).returncode == 0
    ), sandbox.run(QBOOTCTL, "status", "smtps", check=False).stdout


def greeting_on_465(box: Sandbox) -> str:
    done = box.run(
        "sh",
        "-c",
        "printf 'QUIT\\r\\n' | openssl s_client -quiet -connect 127.0.0.1:465",
        check=False,
    )
    return done.stdout


def test_a_bad_key_after_start_keeps_465_serving_through_reload_and_eqmaild_restart(
    sandbox: Sandbox,
) -> None:
    """A renewal that leaves the key world-readable: the reload keeps the old certificate,
    status says degraded (not down: clients are served), and `eqmaild restart` does not
    stop what could not start again."""
    key = f"{TLS_DIR}/server.key"
    sandbox.run("chmod", "644", key)
    try:
        sandbox.run("systemctl", "reload", SMTPS)
        assert f"220 {ME} ESMTP" in greeting_on_465(sandbox)
        status = sandbox.run(QBOOTCTL, "status", "smtps", check=False)
        assert status.returncode == 150, status.stdout + status.stderr
        assert "serves as started, but would not start again" in status.stdout, status.stdout
        assert "readable by everyone" in status.stdout, status.stdout
        restart = sandbox.run(EQMAILD, "restart", check=False, timeout=300)
        assert restart.returncode == 1, restart.stdout + restart.stderr
        assert "not restarted: it keeps running" in restart.stdout, restart.stdout
        assert f"220 {ME} ESMTP" in greeting_on_465(sandbox)  # still served
    finally:
        sandbox.run("chmod", "600", key)
    assert sandbox.run(QBOOTCTL, "status", "smtps", check=False).returncode == 0
