"""The staged installations the end-to-end tests boot.

`build_stage`: qboot-systemd installed with `qbootctl install` and real qmail (notqmail,
built once per run by qmail_oracle) installed into the stage, so that /var/qmail, qmail's
users and a test user with ~/Maildir exist only inside the sandbox. Mail for other domains
goes through control/smtproutes to an SMTP sink on the sandbox's loopback (mailfront).

`add_real_qmail`: the same real qmail and sink for a stage whose qboot-systemd comes from
elsewhere (the Debian package test). No stand-in for qmail is left: a test that needs a
fault real qmail cannot make builds it itself (a drop-in that takes qmail's PATH away).
"""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from . import qmail_oracle
from .conftest import ROOT, STRICT, require_tool, venv_script
from .sandbox import Sandbox, missing_requirements

SPOOL = "/var/spool/qboot-test"
BOOTCTRL = "/var/qmail/etc/bootctrl"
MAILDIR = f"{qmail_oracle.TEST_HOME}/Maildir"
LOCAL_RCPT = f"{qmail_oracle.TEST_USER}@{qmail_oracle.ME}"
SINK_PORT = 2525  # the remote SMTP server qmail-remote reaches through smtproutes
REMOTE_DOMAIN = "example.net"

# A PRESMTPD plugin (the way rblsmtpd sits in the chain): records the session's
# environment, then execs the rest of the chain.
RECORD_ENV = f"""#!/bin/sh
env > {SPOOL}/env/$$
exec "$@"
"""
SINK_UNIT = f"""[Unit]
Description=SMTP sink standing in for remote mail servers (tests)

[Service]
Environment=QUEUEDIR={SPOOL}/queue PLUGINS=accept
ExecStart=/usr/bin/tcpserver -q -R -H -l sink 127.0.0.1 {SINK_PORT} \\
    /usr/sbin/mailfront smtp queuedir

[Install]
WantedBy=multi-user.target
"""


def write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def install_qboot(stage: Path) -> None:
    done = subprocess.run(
        [
            venv_script("qbootctl"),
            "install",
            "--root",
            str(stage),
            "--prefix",
            str(ROOT / ".venv"),
            "--qmail-home",
            "/var/qmail",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    if ROOT.is_relative_to("/tmp"):
        # PrivateTmp= would hide a checkout under /tmp (and its venv) from the service;
        # a real installation lives in /usr or /opt. Test-only: the hardening stays.
        write(
            stage / "etc/systemd/system/qmail-tcpd@.service.d/checkout-under-tmp.conf",
            f"[Service]\nBindReadOnlyPaths={ROOT}\n",
        )


def _spool(stage: Path) -> None:
    for sub in ("queue/tmp", "queue/new", "env"):
        directory = stage / SPOOL.lstrip("/") / sub
        directory.mkdir(parents=True, exist_ok=True)
        # written by sessions running as qmaild, by root plugins and by the sink
        directory.chmod(0o1777)


def build_stage(stage: Path) -> None:
    """qboot-systemd plus real qmail, and the remote sink."""
    install_qboot(stage)
    add_real_qmail(stage)


def add_real_qmail(stage: Path) -> None:
    """notqmail as a host has it (users, /var/qmail, a test user's Maildir), and the sink
    that stands in for remote mail servers; for a stage whose qboot-systemd comes from
    elsewhere (the package test)."""
    try:
        qmail_oracle.install_into_stage(stage)
    except qmail_oracle.OracleUnavailable as error:
        if STRICT:
            pytest.fail(f"real qmail unavailable: {error}")
        pytest.skip(f"real qmail unavailable: {error}")
    control = stage / "var/qmail/control"
    write(control / "smtproutes", f"{REMOTE_DOMAIN}:127.0.0.1:{SINK_PORT}\n")
    write(stage / "usr/local/bin/qboot-record-env", RECORD_ENV, 0o755)
    write(stage / "etc/systemd/system/qboot-test-sink.service", SINK_UNIT)
    wants = stage / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    (wants / "qboot-test-sink.service").symlink_to("../qboot-test-sink.service")
    _spool(stage)


@contextmanager
def booted_sandbox(prepare: Callable[[Path], None] = build_stage) -> Iterator[Sandbox]:
    """A real systemd booted over a stage that `prepare` fills; gone afterwards."""
    reason = missing_requirements()
    if reason:
        if STRICT:
            pytest.fail(f"sandbox unavailable: {reason}")
        pytest.skip(f"sandbox unavailable: {reason}")
    require_tool("mailfront")
    require_tool("tcpserver")
    stage = Path(tempfile.mkdtemp(prefix="qboot-stage."))
    try:
        prepare(stage)
        box = Sandbox(stage, ROOT)
        try:
            box.start()
            yield box
        finally:
            left = box.stop()
            assert left == [], f"left behind on the host: {left}"
            assert not box.work.exists()
    finally:
        subprocess.run(["rm", "-rf", str(stage)], check=False)
