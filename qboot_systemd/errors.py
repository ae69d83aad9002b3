"""User errors: one line with a hint, never a traceback."""

from __future__ import annotations

import errno
import sys


class UserError(Exception):
    def __init__(self, message: str, hint: str | None = None, status: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.status = status

    def report(self, program: str) -> int:
        print(f"{program}: error: {self.message}", file=sys.stderr)
        if self.hint:
            print(f"{program}: hint: {self.hint}", file=sys.stderr)
        return self.status


_OS_HINTS = {
    errno.EACCES: "run it as root, or check the permissions of that path",
    errno.EPERM: "run it as root, or check the permissions of that path",
    errno.EROFS: "that file system is read-only: choose another path",
    errno.ENOSPC: "that file system is full",
    errno.ENOENT: "check the path",
    errno.ENOTDIR: "check the path: a part of it is not a directory",
    errno.ELOOP: "check the path: too many symlinks",
}


def from_os_error(error: OSError, status: int = 1) -> UserError:
    """An OSError as one line with a hint: `cannot write /x: Permission denied`."""
    where = f"{error.filename}: " if error.filename is not None else ""
    if error.filename2 is not None:
        where = f"{error.filename} -> {error.filename2}: "
    text = error.strerror or str(error)
    return UserError(f"{where}{text}", _OS_HINTS.get(error.errno or 0), status)
