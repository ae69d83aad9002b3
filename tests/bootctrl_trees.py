"""bootctrl directories for tests, always with the modes of a root-owned install.

StrictModes refuses group-writable files, and a checkout's modes are not ours to choose
(umask 002, as on Ubuntu, or a `git archive` tarball unpacked as root): what a test loads
is a copy with modes set here, never the checkout itself.
"""

from __future__ import annotations

import os
from pathlib import Path

from qboot_systemd import bootctrl

from .conftest import SHIPPED_BOOTCTRL


def stage_copy(source: Path, target: Path) -> Path:
    """source (a fixture or the shipped bootctrl) copied to target as a root-owned
    install has it: the directory 755, files 644, or 755 when executable; symlinks kept."""
    target.mkdir(mode=0o755)
    target.chmod(0o755)
    for entry in sorted(source.iterdir()):
        destination = target / entry.name
        if entry.is_symlink():
            destination.symlink_to(os.readlink(entry))
        else:
            destination.write_bytes(entry.read_bytes())
            destination.chmod(0o755 if entry.stat().st_mode & 0o100 else 0o644)
    return target


def copy_shipped(tmp_path: Path) -> Path:
    """The shipped etc/bootctrl, staged at tmp_path/bootctrl."""
    return stage_copy(SHIPPED_BOOTCTRL, tmp_path / "bootctrl")


def make(tmp_path: Path, env: str, name: str = "x") -> bootctrl.Bootctrl:
    """A bootctrl with one service, name, whose env file is env; loaded with qmail at /q."""
    return bootctrl.load(make_directory(tmp_path, env, name), "/q")


def make_directory(tmp_path: Path, env: str, name: str = "x") -> Path:
    directory = tmp_path / "b"
    directory.mkdir(exist_ok=True)
    (directory / "qmail-tcpd").write_text("#!/bin/sh\n")
    (directory / f"qmail-{name}.rc").symlink_to("qmail-tcpd")
    (directory / f"tcprules-{name}.cdb").write_bytes(b"\0" * 2048)
    (directory / f"qmail-{name}.env").write_text(env)
    return directory
