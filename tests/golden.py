"""Golden files and directories: compare, or rewrite them with QBOOT_UPDATE_GOLDEN=1 (then
review the diff). The one place that writes expected output."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

UPDATE = bool(os.environ.get("QBOOT_UPDATE_GOLDEN"))
HINT = "run with QBOOT_UPDATE_GOLDEN=1 and review it"


def check_golden(path: Path, actual: str) -> None:
    if UPDATE:
        path.write_text(actual)
    assert path.exists(), f"{path} missing: {HINT}"
    assert actual == path.read_text()


def read_tree(directory: Path, masked: Path | None = None) -> dict[str, str]:
    """Relative path -> content ('-> target' for symlinks); the text of masked, where it
    appears in a file, becomes @BOOTCTRL@."""
    result: dict[str, str] = {}
    for path in sorted(directory.rglob("*")):
        relative = str(path.relative_to(directory))
        if path.is_symlink():
            result[relative] = "-> " + os.readlink(path)
        elif path.is_file():
            text = path.read_text()
            result[relative] = text.replace(str(masked), "@BOOTCTRL@") if masked else text
    return result


def _write_tree(directory: Path, content: dict[str, str]) -> None:
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir()
    for relative, text in content.items():
        target = directory / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if text.startswith("-> "):
            target.symlink_to(text[3:])
        else:
            target.write_text(text)


def check_golden_tree(directory: Path, actual: dict[str, str]) -> None:
    """A directory of expected files and symlinks, as read_tree() gives them."""
    if UPDATE:
        _write_tree(directory, actual)
    assert directory.is_dir(), f"{directory} missing: {HINT}"
    assert read_tree(directory) == actual
