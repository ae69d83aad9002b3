"""The staged installation the end-to-end tests boot: qboot-systemd installed with
`qbootctl install`, plus stand-ins for qmail (not packaged in Debian)."""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from .conftest import ROOT, STRICT, require_tool, venv_script
from .sandbox import Sandbox, missing_requirements

SPOOL = "/var/spool/qboot-test"
BOOTCTRL = "/var/qmail/etc/bootctrl"


QMAIL_SMTPD = f"""#!/bin/sh
# Stand-in for qmail-smtpd: record what qboot-tcpsrv gave this session, then serve SMTP.
env > {SPOOL}/env/$$
QUEUEDIR={SPOOL}/queue PLUGINS=add-received:relayclient:accept-sender \\
    exec /usr/sbin/mailfront smtp queuedir "$@"
"""
QMAIL_START = (
    "#!/bin/sh\n# Stand-in for qmail-start: qmail-send.service must run.\nexec sleep infinity\n"
)


def write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def build_stage(stage: Path) -> None:
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
    add_stand_ins(stage)
    if ROOT.is_relative_to("/tmp"):
        # PrivateTmp= would hide a checkout under /tmp (and its venv) from the service;
        # a real installation lives in /usr or /opt. Test-only: the hardening stays.
        write(
            stage / "etc/systemd/system/qmail-tcpd@.service.d/checkout-under-tmp.conf",
            f"[Service]\nBindReadOnlyPaths={ROOT}\n",
        )


def add_stand_ins(stage: Path) -> None:
    """qmail-start and qmail-smtpd stand-ins, and the queue directory mailfront fills."""
    write(stage / "var/qmail/bin/qmail-smtpd", QMAIL_SMTPD, 0o755)
    write(stage / "var/qmail/bin/qmail-start", QMAIL_START, 0o755)
    for sub in ("queue/tmp", "queue/new", "env"):
        (stage / SPOOL.lstrip("/") / sub).mkdir(parents=True, exist_ok=True)


@contextmanager
def booted_sandbox(prepare: Callable[[Path], None] = build_stage) -> Iterator[Sandbox]:
    """A real systemd booted over a stage that `prepare` fills; gone afterwards."""
    reason = missing_requirements()
    if reason:
        if STRICT:
            pytest.fail(f"sandbox unavailable: {reason}")
        pytest.skip(f"sandbox unavailable: {reason}")
    require_tool("mailfront")
    stage = Path(tempfile.mkdtemp(prefix="qboot-stage."))
    prepare(stage)
    box = Sandbox(stage, ROOT)
    try:
        box.start()
        yield box
    finally:
        left = box.stop()
        subprocess.run(["rm", "-rf", str(stage)], check=False)
        assert left == [], f"left behind on the host: {left}"
        assert not box.work.exists()
