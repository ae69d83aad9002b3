"""Files written whole, for the generator (the units systemd loads) and for apply (the
last good settings it keeps in /run and on disk): a reader finds the old content or the
new, never half of it. The generator imports this: os alone."""

from __future__ import annotations

import os

_CREATE = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC  # open(..., "wb")'s flags


def replace_file(
    target: str | os.PathLike[str], data: bytes, *, durable: bool = False, mode: int = 0o666
) -> None:
    """target holds data, old or new whole (a temporary beside it, renamed onto it).
    durable: on disk before this returns, the file and then its directory synced (for
    what must outlive a crash, not for /run). mode as open()'s, the umask applies."""
    temporary = os.fspath(target) + ".tmp"
    descriptor = os.open(temporary, _CREATE, mode)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(descriptor, view) :]
            if durable:
                os.fsync(descriptor)
        finally:
            os.close(descriptor)
        os.replace(temporary, target)
    except BaseException:
        try:  # noqa: SIM105 (contextlib is one more import at the generator's start)
            os.unlink(temporary)
        except OSError:
            pass
        raise
    if durable:
        sync_directory(os.path.dirname(os.path.abspath(temporary)))


def sync_directory(directory: str | os.PathLike[str]) -> None:
    """A rename or an unlink in directory is on disk once this returns."""
    descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
