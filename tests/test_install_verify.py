from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from .conftest import require_tool, venv_script
from .test_bootctrl import copy_shipped


def qbootctl(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [venv_script("qbootctl"), *args],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, **(env or {})},
        timeout=120,
    )


def stand_in_qmail(tmp_path: Path) -> Path:
    """qmail is not packaged in Debian: executables that stand in for its programs."""
    home = tmp_path / "qmail"
    (home / "bin").mkdir(parents=True)
    for name in ("qmail-start", "qmail-smtpd", "qmail-qmtpd"):
        program = home / "bin" / name
        program.write_text("#!/bin/sh\nexit 0\n")
        program.chmod(0o755)
    return home


def test_install_into_a_root_and_uninstall(tmp_path: Path) -> None:
    root = tmp_path / "root"
    done = qbootctl(
        "install", "--root", str(root), "--prefix", "/usr", "--qmail-home", "/var/qmail"
    )
    assert done.returncode == 0, done.stderr
    units = root / "usr/lib/systemd/system"
    assert sorted(p.name for p in units.iterdir()) == [
        "qboot-boot.service",
        "qboot-reconcile.path",
        "qboot-reconcile.service",
        "qmail-send.service",
        "qmail-tcpd@.service",
        "qmail-tcpd@.socket",
    ]
    service = (units / "qmail-tcpd@.service").read_text()
    assert (
        "ExecStart=/usr/bin/qboot-tcpsrv -c 40 -x /var/qmail/etc/bootctrl/tcprules-%i.cdb"
        in service
    )
    assert "{{" not in service and "NoNewPrivileges" not in service.split("# qmail-queue")[0]
    launcher = root / "usr/lib/systemd/system-generators/qboot-systemd-generator"
    assert os.access(launcher, os.X_OK)
    assert launcher.read_text().startswith(f"#!{sys.executable} -I\n")
    bootctrl = root / "var/qmail/etc/bootctrl"
    assert os.readlink(bootctrl / "qmail-smtp.rc") == "qmail-tcpd"
    man = root / "usr/share/man"
    assert sorted(p.name for p in man.rglob("*.[158]")) == [
        "eqmaild.8",
        "mktcprules.8",
        "qboot-env.5",
        "qboot-systemd-generator.8",
        "qboot-tcprules.1",
        "qboot-tcprulescheck.1",
        "qboot-tcpsrv.8",
        "qbootctl.8",
    ]
    # the launcher runs the installed package and writes the units for the installed bootctrl
    output = tmp_path / "generated"
    run = subprocess.run(
        [str(launcher), str(output)],
        env={"QBOOT_BOOTCTRL": str(bootctrl)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert (
        os.readlink(output / "sockets.target.wants/qmail-tcpd@smtp.socket")
        == "/usr/lib/systemd/system/qmail-tcpd@.socket"
    )
    assert (
        "ExecStart=/usr/bin/qboot-tcpsrv -c 40 -x"
        in (output / "qmail-tcpd@smtp.service.d/qboot.conf").read_text()
    )
    # an admin's edit survives a second install
    (bootctrl / "qmail-smtp.env").write_text("PORT=2525\n")
    assert qbootctl("install", "--root", str(root), "--prefix", "/usr").returncode == 0
    assert (bootctrl / "qmail-smtp.env").read_text() == "PORT=2525\n"
    done = qbootctl("uninstall", "--root", str(root))
    assert done.returncode == 0
    assert not any(units.iterdir()) and not launcher.exists()
    assert not list(man.rglob("*.[158]"))
    assert (bootctrl / "qmail-smtp.env").exists()


def test_verify_passes_on_the_shipped_bootctrl(tmp_path: Path) -> None:
    require_tool("systemd-analyze")
    home = stand_in_qmail(tmp_path)
    bootctrl = copy_shipped(tmp_path)
    (bootctrl / "qmail-subm.rc").symlink_to("qmail-tcpd")
    (bootctrl / "tcprules-subm.cdb").symlink_to("tcprules-default.cdb")
    (bootctrl / "qmail-subm.env").write_text(
        'PORT=587\nIP="127.0.0.1 ::1"\nsetenv GREETING "100% \\"sure\\""\n'
        f'PRESMTPD="/usr/bin/rblsmtpd -r zen.example"\nSMTPD={home}/bin/qmail-smtpd\n'
        'POSTSMTPD="/bin/checkpassword /bin/true"\nUSER=qmaild\nGROUP=nofiles\n'
    )
    done = qbootctl("verify", "--bootctrl", str(bootctrl), "--qmail-home", str(home))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "verified 6 units" in done.stdout  # with qboot-reconcile.path


def test_verify_reports_bootctrl_and_systemd_problems(tmp_path: Path) -> None:
    require_tool("systemd-analyze")
    bootctrl = copy_shipped(tmp_path)
    (bootctrl / "qmail-bad.rc").symlink_to("qmail-tcpd")
    (bootctrl / "qmail-bad.env").write_text("PORT=25x\n")
    done = qbootctl("verify", "--bootctrl", str(bootctrl), "--qmail-home", str(tmp_path / "no"))
    assert done.returncode == 1
    assert f"problem: {bootctrl}/qmail-bad.env:1: PORT='25x'" in done.stdout
    assert "qmail-start is not executable" in done.stdout
