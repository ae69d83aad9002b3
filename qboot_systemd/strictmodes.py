"""StrictModes for bootctrl, as sshd and qmail understand it.

What the generator reads becomes the command line of units that run as root, so a file
counts only when nobody but root could have written it: the file and every directory
above it are owned by root (or by whoever runs the command, as sshd accepts the user's
own files) and not writable by group or others. A parent directory may be writable by
others when it is sticky (/tmp): nobody else can then rename or remove what is in it.
Paths are followed link by link as open() follows them (resolve), so a symlink in a
directory another user controls cannot be re-pointed after the check.

Files are opened without following symlinks and without blocking, checked to be regular
files with fstat, and read up to a size cap: a FIFO, /dev/zero or a symlink to a key file
is refused before a byte of it is read, and its content is never quoted.
"""

from __future__ import annotations

import errno
import os
import stat

from ._startup import absolute_path, join_path
from .problems import quote

MAX_FILE = 64 * 1024  # an env file or qmail control file; the real ones are < 2 KiB
MAX_LINK_HOPS = 8
MAX_PATH_LINKS = 40  # the kernel's limit before ELOOP


class Untrusted(Exception):
    """A file or directory that must not be used; the message says why and how to fix it."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


def trusted_uids() -> frozenset[int]:
    """root, and whoever runs this (for the generator: root alone)."""
    return frozenset({0, os.geteuid()})


def mode_problem(
    path: str, status: os.stat_result, trusted: frozenset[int], sticky_ok: bool = False
) -> str | None:
    """`owned by uid N, writable by group; run chown root P and chmod go-w P`, or None."""
    faults: list[str] = []
    fixes: list[str] = []
    if status.st_uid not in trusted:
        faults.append(f"owned by uid {status.st_uid}")
        fixes.append(f"chown root {path}")
    writers = [
        who
        for who, bit in (("group", stat.S_IWGRP), ("others", stat.S_IWOTH))
        if status.st_mode & bit
    ]
    if writers and not (sticky_ok and status.st_mode & stat.S_ISVTX):
        faults.append("writable by " + " and ".join(writers))
        fixes.append(f"chmod go-w {path}")
    if not faults:
        return None
    return f"{', '.join(faults)}; run {' and '.join(fixes)}"


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISLNK, "a symlink"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def check_regular(path: str, status: os.stat_result, trusted: frozenset[int]) -> None:
    if not stat.S_ISREG(status.st_mode):
        raise Untrusted(path, f"{_kind(status.st_mode)}, not a regular file; refused")
    problem = mode_problem(path, status, trusted)
    if problem:
        raise Untrusted(path, problem)


def check_directory_chain(directory: str, trusted: frozenset[int], strict_first: bool) -> None:
    """`directory` (absolute, without symlinks) and every directory above it.

    strict_first: the first directory may not be sticky-writable either (bootctrl itself:
    a new name in it would be a new service)."""
    current = directory
    first = True
    while True:
        status = os.lstat(current)
        if not stat.S_ISDIR(status.st_mode):
            raise Untrusted(current, f"{_kind(status.st_mode)}, not a directory")
        problem = mode_problem(current, status, trusted, sticky_ok=not (first and strict_first))
        if problem:
            raise Untrusted(current, problem)
        parent = os.path.dirname(current)
        if parent == current:
            return
        current, first = parent, False


def _read_descriptor(descriptor: int, path: str, expected: os.stat_result, limit: int) -> bytes:
    opened = os.fstat(descriptor)
    if (opened.st_dev, opened.st_ino) != (expected.st_dev, expected.st_ino):
        raise Untrusted(path, "replaced while being read; try again")
    if not stat.S_ISREG(opened.st_mode):
        raise Untrusted(path, f"{_kind(opened.st_mode)}, not a regular file; refused")
    chunks: list[bytes] = []
    size = 0
    while size <= limit:
        chunk = os.read(descriptor, limit + 1 - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    if size > limit:
        raise Untrusted(path, f"larger than {limit // 1024} KiB; refused")
    return b"".join(chunks)


_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


def _check_link(
    link: str, status: os.stat_result, holder: os.stat_result, trusted: frozenset[int]
) -> None:
    """A symlink on the way: its directory was checked; where others may write to that
    directory (sticky, like /tmp), its owner could still replace the link."""
    shared = holder.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    if shared and status.st_uid not in trusted:
        raise Untrusted(
            link,
            f"symlink owned by uid {status.st_uid} in a directory others can write; "
            f"run chown -h root {link}",
        )


def resolve(path: str, trusted: frozenset[int]) -> str:
    """Follow an absolute path component by component, as open() will follow it every time
    (qboot-tcpsrv opens the cdb at each connection), and return where it leads.

    Every directory passed through, including the directory of every symlink on the way
    and then each link's target, must pass mode_problem (sticky-writable allowed): then only
    a trusted user can change where the path leads, so the unit may keep the path as given
    (`tcprules-smtp.cdb -> tcprules-default.cdb` keeps following mktcprules' renames).
    Checking only realpath()'s directories would miss `/tmp/evil/link.cdb`, a link in a
    directory another user owns, that the user could point elsewhere after the check.
    The final component is returned unchecked: the caller knows what it must be.
    Raises Untrusted, FileNotFoundError, NotADirectoryError or OSError(ELOOP)."""
    if not os.path.isabs(path):
        raise Untrusted(path, "not an absolute path")
    pending = [part for part in reversed(path.split("/")) if part not in ("", ".")]
    current = "/"
    holder = os.lstat(current)
    problem = mode_problem(current, holder, trusted, sticky_ok=True)
    if problem:
        raise Untrusted(current, problem)
    follows = 0
    while pending:
        part = pending.pop()
        if part == "..":
            current = os.path.dirname(current)
            holder = os.lstat(current)
            continue
        candidate = os.path.join(current, part)
        status = os.lstat(candidate)
        if stat.S_ISLNK(status.st_mode):
            follows += 1
            if follows > MAX_PATH_LINKS:
                raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), path)
            _check_link(candidate, status, holder, trusted)
            target = os.readlink(candidate)
            if target.startswith("/"):
                current = "/"
                holder = os.lstat(current)
            pending.extend(step for step in reversed(target.split("/")) if step not in ("", "."))
            continue
        if pending:
            if not stat.S_ISDIR(status.st_mode):
                raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), candidate)
            problem = mode_problem(candidate, status, trusted, sticky_ok=True)
            if problem:
                raise Untrusted(candidate, problem)
        current, holder = candidate, status
    return current


def check_file(path: str, trusted: frozenset[int] | None = None) -> tuple[str, os.stat_result]:
    """An absolute file outside bootctrl (CDB=/..., a control file, an rc link's script):
    follow it with resolve(), then check the file it leads to. Returns that file's path
    and status; the path as given stays safe to use (see resolve)."""
    trusted = trusted_uids() if trusted is None else trusted
    given = os.path.normpath(path) if os.path.isabs(path) else path
    try:
        real = resolve(path, trusted)
    except Untrusted as error:
        if error.path == given:
            raise
        raise Untrusted(path, f"leads through {error.path}: {error.message}") from None
    status = os.lstat(real)
    try:
        check_regular(real, status, trusted)
    except Untrusted as error:
        if real == given:
            raise
        raise Untrusted(path, f"symlink to {real}: {error.message}") from None
    return real, status


def read_file(path: str, limit: int = MAX_FILE, trusted: frozenset[int] | None = None) -> bytes:
    real, status = check_file(path, trusted)
    descriptor = os.open(real, _OPEN_FLAGS)
    try:
        return _read_descriptor(descriptor, path, status, limit)
    finally:
        os.close(descriptor)


class TrustedDirectory:
    """The bootctrl directory, checked and held open: names are looked up relative to
    its descriptor, so renaming a parent cannot swap it between the check and the reads."""

    def __init__(self, path: str | os.PathLike[str], trusted: frozenset[int] | None = None) -> None:
        self.path = absolute_path(path)  # as str(Path(path).absolute()) writes it
        self._prefix = self.path if self.path.endswith("/") else self.path + "/"
        self.trusted = trusted_uids() if trusted is None else trusted
        self._descriptor: int | None = None

    def open(self) -> TrustedDirectory:
        """Raises Untrusted, or OSError when the directory cannot be read."""
        # Units name files by this path, not the resolved one: resolve() makes sure only
        # a trusted user can change where it leads.
        real = resolve(self.path, self.trusted)
        checked = os.lstat(real)
        if not stat.S_ISDIR(checked.st_mode):
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), self.path)
        # Not even sticky-writable: a new name in bootctrl would be a new service.
        problem = mode_problem(real, checked, self.trusted)
        if problem:
            raise Untrusted(real, problem)
        descriptor = os.open(real, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        opened = os.fstat(descriptor)
        if (opened.st_dev, opened.st_ino) != (checked.st_dev, checked.st_ino):
            os.close(descriptor)
            raise Untrusted(self.path, "replaced while being checked; try again")
        self._descriptor = descriptor
        return self

    def close(self) -> None:
        if self._descriptor is not None:
            os.close(self._descriptor)
            self._descriptor = None

    @property
    def descriptor(self) -> int:
        assert self._descriptor is not None, "open() first"
        return self._descriptor

    def names(self) -> list[str]:
        return sorted(os.listdir(self.descriptor))

    def lstat(self, name: str) -> os.stat_result | None:
        """None when the name does not exist."""
        try:
            return os.stat(name, dir_fd=self.descriptor, follow_symlinks=False)
        except FileNotFoundError:
            return None

    def readlink(self, name: str) -> str:
        return os.readlink(name, dir_fd=self.descriptor)

    def where(self, name: str) -> str:
        if "/" in name or name in ("", "."):
            return join_path(self.path, name)
        return self._prefix + name  # a plain name (most): os.path.join's text, faster

    def lookup(self, name: str) -> tuple[str, os.stat_result] | str:
        """Follow symlinks to plain names in this directory. Returns the final name and
        its status, or the target of a symlink that leaves the directory.
        Raises FileNotFoundError for a missing name or dangling link."""
        current = name
        for _ in range(MAX_LINK_HOPS):
            status = os.stat(current, dir_fd=self.descriptor, follow_symlinks=False)
            if not stat.S_ISLNK(status.st_mode):
                return current, status
            target = self.readlink(current)
            if "/" in target:
                return target
            current = target
        raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), self.where(name))

    def check(self, name: str) -> str:
        """A file this directory names (an rc link's script, a rules cdb): a regular,
        trusted file, here or where its symlinks lead (an absolute path that passes the
        same checks, its directories included). Returns the path to use."""
        found = self.lookup(name)
        if isinstance(found, str):
            check_file(os.path.join(self.path, found), self.trusted)
        else:
            self._check_final(name, *found)
        return self.where(name)

    def read(self, name: str, limit: int = MAX_FILE) -> bytes:
        """A file that must stay in this directory (an env file), read whole, capped."""
        found = self.lookup(name)
        if isinstance(found, str):
            raise Untrusted(
                self.where(name),
                f"symlink to {quote(found)} leaves {self.path}; refused, not read "
                "(link to a name in the same directory, or copy the file)",
            )
        final, status = found
        self._check_final(name, final, status)
        if status.st_size > limit:
            raise Untrusted(self.where(name), f"larger than {limit // 1024} KiB; refused")
        descriptor = os.open(final, _OPEN_FLAGS, dir_fd=self.descriptor)
        try:
            return _read_descriptor(descriptor, self.where(name), status, limit)
        finally:
            os.close(descriptor)

    def _check_final(self, name: str, final: str, status: os.stat_result) -> None:
        try:
            check_regular(self.where(final), status, self.trusted)
        except Untrusted as error:
            if final == name:
                raise
            raise Untrusted(self.where(name), f"symlink to {final}: {error.message}") from None
