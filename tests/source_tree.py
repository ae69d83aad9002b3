"""The tracked files of the checkout, copied as a release tarball (git archive) has them:
what the package builds start from."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from .conftest import ROOT

VERSION = "0.1.0"


def tracked_files() -> list[str]:
    listing = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True, check=True
    ).stdout
    return [name for name in listing.decode().split("\0") if name]


def clean_tree(target: Path) -> Path:
    """Copy the tracked files (working-tree contents, symlinks kept) to
    target/qboot-systemd-VERSION and return that directory."""
    tree = target / f"qboot-systemd-{VERSION}"
    for name in tracked_files():
        source, destination = ROOT / name, tree / name
        destination.parent.mkdir(parents=True, exist_ok=True)
        if source.is_symlink():
            destination.symlink_to(os.readlink(source))
        elif source.exists():
            shutil.copy2(source, destination)
            # The modes git records (755 or 644), not the checkout's umask (002 on Ubuntu).
            destination.chmod(0o755 if source.stat().st_mode & 0o100 else 0o644)
    return tree
