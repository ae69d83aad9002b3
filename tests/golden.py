"""Golden files: compare, or rewrite them with QBOOT_UPDATE_GOLDEN=1."""

from __future__ import annotations

import os
from pathlib import Path

UPDATE = bool(os.environ.get("QBOOT_UPDATE_GOLDEN"))


def check_golden(path: Path, actual: str) -> None:
    if UPDATE:
        path.write_text(actual)
    assert path.exists(), f"{path} missing: run with QBOOT_UPDATE_GOLDEN=1 and review it"
    assert actual == path.read_text()
