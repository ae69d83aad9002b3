"""The system calls made per connection: from the _core extension, or plain Python.

Every CPython wrapper around a system call releases the GIL and takes it back after; with
spawner threads waiting for it, each release is a thread switch. The extension's calls
cannot block (a non-blocking listener, close, setsockopt, a MSG_DONTWAIT send) and keep
the GIL; its accept also gives the fd without a socket object. QBOOT_NO_EXTENSION=1 (or
no extension built) uses the Python equivalents, which behave the same, only slower.
"""

from __future__ import annotations

import contextlib
import os
import socket
from types import ModuleType


def load_extension() -> ModuleType | None:
    """The _core extension, or None without it (not built, or QBOOT_NO_EXTENSION=1 when
    this module was first imported)."""
    if os.environ.get("QBOOT_NO_EXTENSION") == "1":
        return None
    try:
        from . import _core
    except ImportError:
        return None
    return _core


_core = load_extension()
EXTENSION = _core


def _python_accept(listener: socket.socket) -> tuple[int, tuple[str, int]]:
    connection, address = listener.accept()
    return connection.detach(), (str(address[0]), int(address[1]))


def _python_local_address(fd: int) -> tuple[str, int]:
    probe = socket.socket(fileno=fd)
    try:
        address = probe.getsockname()
    finally:
        probe.detach()
    return str(address[0]), int(address[1])


def _python_set_option(fd: int, level: int, name: int, value: int | None) -> None:
    with contextlib.suppress(OSError), socket.socket(fileno=os.dup(fd)) as sock:
        sock.setsockopt(level, name, b"" if value is None else value)


def _python_send_now(fd: int, data: bytes) -> None:
    with contextlib.suppress(OSError), socket.socket(fileno=os.dup(fd)) as sock:
        sock.send(data, socket.MSG_DONTWAIT)


def accept(listener: socket.socket) -> tuple[int, tuple[str, int]]:
    """accept() on a non-blocking listener: a blocking, close-on-exec fd and (ip, port)."""
    if _core is None:
        return _python_accept(listener)
    accepted: tuple[int, tuple[str, int]] = _core.accept(listener.fileno())
    return accepted


def local_address(fd: int) -> tuple[str, int]:
    """getsockname() as (ip, port), for connections on a wildcard listener."""
    if _core is None:
        return _python_local_address(fd)
    address: tuple[str, int] = _core.local_address(fd)
    return address


def close(fd: int) -> None:
    if _core is None:
        os.close(fd)
    else:
        _core.close(fd)


def set_option(fd: int, level: int, name: int, value: int | None) -> None:
    """setsockopt with an int value, or with an empty one (None); errors are ignored,
    as tcpserver ignores them."""
    if _core is None:
        _python_set_option(fd, level, name, value)
    else:
        _core.set_option(fd, level, name, value)


def send_now(fd: int, data: bytes) -> None:
    """Send what fits without waiting (the banner); errors are ignored."""
    if _core is None:
        _python_send_now(fd, data)
    else:
        _core.send_now(fd, data)


def trim_heap() -> bool:
    """Return the C heap's free pages to the system (glibc's malloc_trim); without the
    extension nothing is done. True when memory was released."""
    if _core is None:
        return False
    released: bool = _core.trim_heap()
    return released
