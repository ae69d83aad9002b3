"""The README stays an admin's page: short, and every file and man page it sends the
reader to exists."""

from __future__ import annotations

import re

from .conftest import ROOT

README = (ROOT / "README.md").read_text()


def test_readme_is_short() -> None:
    assert len(README.splitlines()) < 250


def test_every_file_the_readme_names_exists() -> None:
    named = set(re.findall(r"`((?:docs|bench|packaging)/[\w./-]+\.md)`", README))
    assert "docs/permissions.md" in named  # the pattern finds them
    assert [path for path in sorted(named) if not (ROOT / path).is_file()] == []
    assert (ROOT / "NEWS").is_file()


def test_every_man_page_the_readme_names_is_shipped() -> None:
    named = set(re.findall(r"\b(q[\w-]+|eqmaild|mktcprules)\((\d)\)", README))
    assert ("qboot-env", "5") in named
    shipped = {path.name for path in (ROOT / "qboot_systemd" / "man").iterdir()}
    assert (
        sorted(f"{name}.{section}" for name, section in named if f"{name}.{section}" not in shipped)
        == []
    )


MAN = ROOT / "qboot_systemd" / "man"


def test_man_pages_render_without_warnings() -> None:
    import subprocess

    from .conftest import require_tool

    groff = require_tool("groff")
    for page in sorted(MAN.iterdir()):
        done = subprocess.run(
            [groff, "-man", "-ww", "-z", str(page)], capture_output=True, text=True, check=False
        )
        assert (done.returncode, done.stderr) == (0, ""), page.name


def test_every_qboot_tcpsrv_option_is_in_its_man_page() -> None:
    from qboot_systemd.tcpsrv.options import ARGUMENTS, FLAGS

    page = (MAN / "qboot-tcpsrv.8").read_text()
    synopsis = page.split(".SH DESCRIPTION")[0]
    flags = re.search(r"\\-([0-9A-Za-z]+) \]", synopsis)
    assert flags is not None
    assert sorted(set(FLAGS) - set(flags.group(1))) == []
    assert [letter for letter in ARGUMENTS if f"\\-{letter}" not in synopsis] == []


def test_every_qbootctl_command_is_in_its_man_page() -> None:
    from qboot_systemd.cli import qbootctl

    page = (MAN / "qbootctl.8").read_text().replace("\\-", "-")
    missing = [name for name in qbootctl.commands if not re.search(rf"\b{name}\b", page)]
    assert missing == []
