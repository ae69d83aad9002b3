"""Files written whole (qboot_systemd.files), for the generator's units and apply's last
good settings."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from qboot_systemd import files


def test_a_failed_write_leaves_the_old_content_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "qboot.conf"
    files.replace_file(target, b"old\n")

    def full(_descriptor: int, _data: object) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(OSError):
        files.replace_file(target, b"new\n", durable=True)
    monkeypatch.undo()
    assert target.read_bytes() == b"old\n"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["qboot.conf"]


def test_durable_write_with_its_mode(tmp_path: Path) -> None:
    target = tmp_path / "smtp.json"
    files.replace_file(target, b"{}" * 70000, durable=True, mode=0o600)
    assert target.read_bytes() == b"{}" * 70000
    assert target.stat().st_mode & 0o777 == 0o600
    files.replace_file(target, b"", durable=True)
    assert target.read_bytes() == b""
