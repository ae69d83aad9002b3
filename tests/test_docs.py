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
