"""The last good drop-ins: what systemd loaded for a service the last time its files were
good, remembered under /run/qboot/last-good (the generator emits them again when the
files break, see stamps), kept across reboots in /var/lib/qboot/last-good/SVC.json, and
the refused marks of settings whose USER=/GROUP= do not exist here.

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
from pathlib import Path

from .. import __version__, bootctrl, journal
from ..files import replace_file, sync_directory
from . import SEND, observe, stamps
from .plan import Observed

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
    replace_file(target, data, durable=True, mode=0o600)
    return True


def remove(base: Path, name: str) -> bool:
    """Forget one service (disabled); True when there was an entry. Raises OSError."""
    target = _path(base, name)
    if not target.exists():
        return False
    target.unlink()
    sync_directory(target.parent)
    return True


def forget_all(base: Path) -> bool:
    """qbootctl uninstall: True when there was something to remove. Raises OSError."""
    if not base.is_dir():
        return False
    shutil.rmtree(base)
    return True


def remember(
    output: Path, state: Path, observed: list[Observed], persist: Path | None = None
) -> None:
    """Copy what systemd loaded: the generator re-emits it if the files break later.
    With persist, keep a copy there too, for after a reboot."""
    base = state / stamps.LAST_GOOD
    base.mkdir(mode=0o700, parents=True, exist_ok=True)
    for item in observed:
        if item.is_send:
            marker = base / f"{SEND}.applied"
            if item.generated:
                marker.touch()
            else:
                marker.unlink(missing_ok=True)
            continue
        directory = base / item.name
        if not item.generated:
            shutil.rmtree(directory, ignore_errors=True)
            continue
        for relative in stamps.service_files(item.name):
            try:
                data = (output / relative).read_bytes()  # a copy: no decoding, any locale
            except OSError:
                continue
            target = directory / relative
            target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            replace_file(target, data)
    if persist is not None:
        keep_across_reboots(output, observed, persist)


def keep_across_reboots(output: Path, observed: list[Observed], persist: Path) -> None:
    """Mirror the last good drop-ins to disk. Never fails the reconcile: without /var
    (read-only, full) a broken service just does not start after a reboot, as before."""
    for item in observed:
        if item.is_send:
            continue
        try:
            if not item.generated:
                remove(persist, item.name)
                continue
            files = {
                relative: (output / relative).read_bytes()
                for relative in stamps.service_files(item.name)
            }
            save(persist, item.name, files)
        except OSError as error:
            message = (
                f"cannot keep the last good settings of {item.name} in {persist}: "
                f"{error.strerror}; after a reboot, broken files stop it"
            )
            journal.send(message, stamps.RECONCILE_UNIT, journal.PRIORITY_WARNING)


def restore_after_reboot(
    model: bootctrl.Bootctrl, output: Path, state: Path, persist: Path
) -> list[str]:
    """Enabled services that cannot run their files (broken, or an unknown account) and
    have no last good drop-ins in /run (emptied at reboot): the copy kept on disk goes back
    into /run, for the generator. Returns their names; the caller reloads systemd."""
    restored = []
    for broken in observe.broken_services(model, output):
        directory = state / stamps.LAST_GOOD / broken.name
        if directory.exists():
            continue
        files = load(persist, broken.name, stamps.service_files(broken.name))
        if files is None:
            continue
        for relative, data in files.items():
            (directory / relative).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            replace_file(directory / relative, data)
        restored.append(broken.name)
    return restored


def refuse_unknown_accounts(model: bootctrl.Bootctrl, state: Path) -> bool:
    """Mark the settings of services whose accounts do not exist as refused (the generator
    then emits their last good drop-ins), and clear the marks that no longer hold.
    True when a mark changed: the caller reloads systemd before it applies anything."""
    wanted = {
        name: stamps.config_hash(service, model.directory)
        for name in observe.unknown_accounts(model)
        if (service := model.service(name)) is not None
    }
    if wanted == stamps.read_refused(state):
        return False
    base = state / stamps.REFUSED
    base.mkdir(mode=0o700, parents=True, exist_ok=True)
    for path in base.iterdir():
        if path.name not in wanted:
            path.unlink(missing_ok=True)
    for name, stamp in wanted.items():
        replace_file(base / name, f"{stamp}\n".encode())
    return True
