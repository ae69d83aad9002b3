"""The commands as an admin types them: --help, on PATH after install, completion."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from qboot_systemd import install

from .bootctrl_trees import copy_shipped
from .conftest import ROOT

QBOOTCTL = str(ROOT / ".venv" / "bin" / "qbootctl")


def test_generator_help_is_usage_not_a_directory(tmp_path: Path) -> None:
    done = subprocess.run(
        [str(ROOT / ".venv/bin/qboot-systemd-generator"), "--help"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0 and "qbootctl generate" in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_install_puts_the_commands_on_path(tmp_path: Path) -> None:
    units_at, home = Path("/lib/systemd/system"), Path("/q")
    layout = install.Layout(tmp_path, Path("/opt/qboot/bin"), units_at, home)
    lines = install.install(layout, "/usr/bin/python3", bootctrl=False, byte_compile=False)
    link = tmp_path / "usr/local/sbin/qbootctl"
    assert os.readlink(link) == "/opt/qboot/bin/qbootctl"
    assert f"command {link} -> /opt/qboot/bin/qbootctl" in lines
    assert str(link) in install.uninstall(layout) and not link.is_symlink()
    packaged = install.Layout(tmp_path, Path("/usr/bin"), units_at, home)
    install.install(packaged, "/usr/bin/python3", bootctrl=False, byte_compile=False)
    assert not (tmp_path / "usr/local/sbin/qbootctl").exists()


def test_completion_offers_service_names(tmp_path: Path) -> None:
    bootctrl = copy_shipped(tmp_path)

    def complete(words: str) -> list[str]:
        env = {
            **os.environ,
            "QBOOT_BOOTCTRL": str(bootctrl),
            "_QBOOTCTL_COMPLETE": "bash_complete",
            "COMP_WORDS": words,
            "COMP_CWORD": str(len(words.split(" ")) - 1),
        }
        done = subprocess.run([QBOOTCTL], env=env, capture_output=True, text=True, check=False)
        return [line.split(",", 1)[1] for line in done.stdout.splitlines()]

    assert complete("qbootctl restart ") == ["send", "all", "smtp"]
    assert complete("qbootctl status s") == ["send", "smtp"]
    assert complete("qbootctl enable s") == ["smtps", "subm"]
