"""Paths as text, written as pathlib writes them, for the generator: importing pathlib
(with fnmatch, ntpath and urllib.parse) cost it 2 ms at every start, installed.

Messages and units name files as str(Path(...)) did, so these must give the same text:
tests/test_purepath.py holds them against pathlib.
"""

from __future__ import annotations

import os


def pure(path: str | os.PathLike[str]) -> str:
    """str(PurePosixPath(path)): empty and `.` components and repeated slashes dropped,
    `..` kept; exactly two leading slashes stay two (POSIX leaves their meaning open)."""
    text = os.fspath(path)
    rest = text.lstrip("/")
    slashes = len(text) - len(rest)
    root = "//" if slashes == 2 else "/" if slashes else ""
    parts = [part for part in rest.split("/") if part and part != "."]
    if not root and not parts:
        return "."
    return root + "/".join(parts)


def absolute(path: str | os.PathLike[str]) -> str:
    """str(Path(path).absolute()): relative paths from the working directory, `..` kept."""
    text = pure(path)
    return text if text.startswith("/") else pure(os.getcwd() + "/" + text)


def join(base: str, *names: str) -> str:
    """str(Path(base).joinpath(*names)) for a base already in pure() form; an absolute
    name starts over, as with pathlib."""
    return pure(os.path.join(base, *names))
