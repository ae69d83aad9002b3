from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from qboot_systemd import cli

from .bootctrl_trees import copy_shipped
from .conftest import require_tool, venv_script


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
        "ExecStart=/usr/bin/qboot-tcpsrv -v -R -l 0 -c 40 -u qmaild -g nofiles -x"
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
    # In-process: qmaild and nofiles exist for it as on a qmail host (conftest).
    done = CliRunner().invoke(
        cli.qbootctl, ["verify", "--bootctrl", str(bootctrl), "--qmail-home", str(home)]
    )
    assert done.exit_code == 0, done.output
    assert "verified 6 units" in done.output  # with qboot-reconcile.path


def test_verify_reports_bootctrl_and_systemd_problems(tmp_path: Path) -> None:
    require_tool("systemd-analyze")
    bootctrl = copy_shipped(tmp_path)
    (bootctrl / "qmail-bad.rc").symlink_to("qmail-tcpd")
    (bootctrl / "qmail-bad.env").write_text("PORT=25x\n")
    done = qbootctl("verify", "--bootctrl", str(bootctrl), "--qmail-home", str(tmp_path / "no"))
    assert done.returncode == 1
    assert f"problem: {bootctrl}/qmail-bad.env:1: PORT='25x'" in done.stdout
    assert "qmail-start is not executable" in done.stdout


def test_code_owned_or_writable_by_another_user_is_found(tmp_path: Path) -> None:
    from qboot_systemd import install

    top = tmp_path / "checkout"
    package = top / "pkg"
    package.mkdir(parents=True)
    for path in (tmp_path, top, package):
        path.chmod(0o755)
    (package / "mod.py").write_text("")
    (package / "data.txt").write_text("")
    assert install.untrusted_code([package]) == []
    os.chown(top, 65534, 65534)
    assert install.untrusted_code([package]) == [f"{top}: owned by uid 65534; run chown root {top}"]
    os.chown(top, 0, 0)
    (package / "mod.py").chmod(0o664)
    (package / "data.txt").chmod(0o666)  # not code: not reported
    assert install.untrusted_code([package]) == [
        f"{package}/mod.py: writable by group; run chmod go-w {package}/mod.py"
    ]
    assert install.untrusted_code([package], frozenset({0})) != []


def test_install_refuses_untrusted_code_unless_forced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from qboot_systemd import cli, install

    user_checkout = tmp_path / "home" / "user" / "qboot"
    user_checkout.mkdir(parents=True)
    (user_checkout / "generator.py").write_text("")
    os.chown(user_checkout, 1000, 1000)
    installed: list[str] = []
    monkeypatch.setattr(install, "code_paths", lambda python, bindir: [user_checkout])
    monkeypatch.setattr(
        install, "install", lambda *args, **kwargs: installed.append("x") or ["did it"]
    )
    done = CliRunner().invoke(cli.qbootctl, ["install"])
    assert done.exit_code == 1 and installed == []
    assert f"untrusted: {user_checkout}: owned by uid 1000" in done.output
    assert "would run as root at every boot" in done.output
    done = CliRunner().invoke(cli.qbootctl, ["install", "--force"])
    assert done.exit_code == 0 and installed == ["x"]
    assert "WARNING: they can become root at the next boot" in done.output


def test_bootctrl_is_copied_with_explicit_modes(tmp_path: Path) -> None:
    from qboot_systemd import install

    source = tmp_path / "src"
    source.mkdir()
    (source / "qmail-tcpd").write_text("#!/bin/sh\n")
    (source / "qmail-tcpd").chmod(0o775)
    (source / "qmail-smtp.env").write_text("PORT=25\n")
    (source / "qmail-smtp.env").chmod(0o664)
    previous = os.umask(0o002)
    try:
        install.copy_missing(source, tmp_path / "var" / "qmail" / "etc" / "bootctrl")
    finally:
        os.umask(previous)
    for path, mode in (
        (tmp_path / "var", 0o755),
        (tmp_path / "var" / "qmail" / "etc" / "bootctrl", 0o755),
        (tmp_path / "var" / "qmail" / "etc" / "bootctrl" / "qmail-tcpd", 0o755),
        (tmp_path / "var" / "qmail" / "etc" / "bootctrl" / "qmail-smtp.env", 0o644),
    ):
        assert path.stat().st_mode & 0o777 == mode, path


def test_uninstall_on_a_path_it_cannot_remove_is_one_line(tmp_path: Path) -> None:
    units = tmp_path / "usr/lib/systemd/system"
    (units / "qmail-send.service").mkdir(parents=True)  # a directory: unlink fails
    done = qbootctl("uninstall", "--root", str(tmp_path))
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith(f"qbootctl: error: {units / 'qmail-send.service'}: ")
