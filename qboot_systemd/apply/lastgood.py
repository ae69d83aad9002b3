"""The last good drop-ins kept across reboots: /var/lib/qboot/last-good/SVC.json.

/run/qboot/last-good is emptied at reboot, so a service whose files were broken before
it would not start again. The reconcile (an ordinary service: /var is mounted by then)
mirrors that directory here, and copies a service's entry back into /run when its files
are broken at boot. The generator never reads this: /var may not be mounted when it runs,
and a stalled mount must never hold up PID 1 while it waits for generators.

One file per service, written whole (temporary, fsync, rename, fsync of the directory),
so a crash never leaves a socket drop-in from one edit beside a service drop-in from
another. Only an entry written by this very version is used: an older one may name
paths or flags the installed qboot-tcpsrv does not take.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
from pathlib import Path

from .. import __version__

PERSIST_DIR = Path("/var/lib/qboot")
LAST_GOOD = "last-good"
MAX_BYTES = 1 << 20  # three drop-ins; anything larger was not written by us


def persist_dir() -> Path:
    return Path(os.environ.get("QBOOT_PERSIST_DIR", str(PERSIST_DIR)))


def _path(base: Path, name: str) -> Path:
    return base / LAST_GOOD / f"{name}.json"


def encode(files: dict[str, bytes]) -> bytes:
    # surrogateescape: bytes that are not UTF-8 come back as they were.
    texts = {key: value.decode("utf-8", "surrogateescape") for key, value in files.items()}
    document = {"qboot-systemd": __version__, "files": texts}
    return json.dumps(document, sort_keys=True, indent=1).encode("ascii")


def decode(data: bytes, wanted: tuple[str, ...]) -> dict[str, bytes] | None:
    """The files of an entry, or None when it is not one this version wrote for them."""
    try:
        document = json.loads(data.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(document, dict) or document.get("qboot-systemd") != __version__:
        return None
    texts = document.get("files")
    if not isinstance(texts, dict) or sorted(texts) != sorted(wanted):
        return None
    if not all(isinstance(text, str) for text in texts.values()):
        return None
    try:
        return {key: text.encode("utf-8", "surrogateescape") for key, text in texts.items()}
    except UnicodeEncodeError:
        return None


def _trusted(directory: Path) -> bool:
    """Ours alone: what it holds becomes unit files that run as root."""
    try:
        info = os.stat(directory, follow_symlinks=False)
    except OSError:
        return False
    return (
        stat.S_ISDIR(info.st_mode)
        and info.st_uid == os.geteuid()
        and not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    )


def load(base: Path, name: str, wanted: tuple[str, ...]) -> dict[str, bytes] | None:
    if not (_trusted(base) and _trusted(base / LAST_GOOD)):
        return None
    try:
        descriptor = os.open(_path(base, name), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    with os.fdopen(descriptor, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            return None
        data = handle.read(MAX_BYTES + 1)
    return decode(data, wanted) if len(data) <= MAX_BYTES else None


def save(base: Path, name: str, files: dict[str, bytes]) -> bool:
    """Keep one service's drop-ins; True when the entry changed. Raises OSError."""
    directory = base / LAST_GOOD
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    target = _path(base, name)
    data = encode(files)
    try:
        if target.read_bytes() == data:
            return False  # a reconcile after every reload: no write when nothing changed
    except OSError:
        pass
    descriptor, temporary = tempfile.mkstemp(prefix=f".{target.name}.", dir=directory)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    _fsync_directory(directory)
    return True


def remove(base: Path, name: str) -> bool:
    """Forget one service (disabled); True when there was an entry. Raises OSError."""
    target = _path(base, name)
    if not target.exists():
        return False
    target.unlink()
    _fsync_directory(target.parent)
    return True


def forget_all(base: Path) -> bool:
    """qbootctl uninstall: True when there was something to remove. Raises OSError."""
    if not base.is_dir():
        return False
    shutil.rmtree(base)
    return True


def _fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
