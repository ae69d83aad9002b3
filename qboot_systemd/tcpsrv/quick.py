"""Socket calls that never block, made without letting go of the GIL.

Every CPython wrapper around a system call releases the GIL and takes it back after; with
spawner threads waiting for it, each release is a thread switch. For the calls on a
connection that cannot block (close, setsockopt, a send with MSG_DONTWAIT) we call libc
through ctypes.PyDLL, which keeps the GIL. Without glibc the plain wrappers are used.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import socket
import struct


def load_libc(keep_gil: bool) -> ctypes.CDLL:
    kind = ctypes.PyDLL if keep_gil else ctypes.CDLL
    try:
        return kind("libc.so.6", use_errno=True)  # glibc: no ldconfig run
    except OSError:
        return kind(ctypes.util.find_library("c"), use_errno=True)


_SOCKADDR_SIZE = 128  # sizeof(struct sockaddr_storage)

try:
    _libc: ctypes.CDLL | None = load_libc(keep_gil=True)
except (OSError, TypeError):
    _libc = None


def accept(listener: socket.socket) -> tuple[int, tuple[str, int]]:
    """accept() giving the fd, not a socket object: CPython checks every fd it wraps with
    a getsockname(), another GIL release per connection. The address is (ip, port, ...)."""
    return listener._accept()  # type: ignore[attr-defined,no-any-return]


def local_address(fd: int) -> tuple[str, int]:
    """getsockname() as (ip, port), for connections on a wildcard listener."""
    if _libc is None:
        probe = socket.socket(fileno=fd)
        try:
            address = probe.getsockname()
        finally:
            probe.detach()
        return str(address[0]).split("%")[0], int(address[1])
    buffer = ctypes.create_string_buffer(_SOCKADDR_SIZE)
    size = ctypes.c_uint32(_SOCKADDR_SIZE)
    if _libc.getsockname(fd, buffer, ctypes.byref(size)) != 0:
        number = ctypes.get_errno()
        raise OSError(number, os.strerror(number))
    raw = buffer.raw
    (family,) = struct.unpack_from("=H", raw, 0)
    (port,) = struct.unpack_from("!H", raw, 2)
    if family == socket.AF_INET:
        return socket.inet_ntop(socket.AF_INET, raw[4:8]), port
    if family == socket.AF_INET6:
        return socket.inet_ntop(socket.AF_INET6, raw[8:24]), port
    raise OSError(errno.EAFNOSUPPORT, os.strerror(errno.EAFNOSUPPORT))


def close(fd: int) -> None:
    if _libc is None:
        os.close(fd)
    else:
        _libc.close(fd)


def set_option(fd: int, level: int, name: int, value: int | None) -> None:
    """setsockopt with an int value, or with an empty one (None); errors are ignored,
    as tcpserver ignores them."""
    if _libc is None:
        with contextlib.suppress(OSError), socket.socket(fileno=os.dup(fd)) as sock:
            sock.setsockopt(level, name, b"" if value is None else value)
        return
    if value is None:
        _libc.setsockopt(fd, level, name, None, 0)
    else:
        number = ctypes.c_int(value)
        _libc.setsockopt(fd, level, name, ctypes.byref(number), ctypes.sizeof(number))


def send_now(fd: int, data: bytes) -> None:
    """Send what fits without waiting (the banner); errors are ignored."""
    if _libc is None:
        with contextlib.suppress(OSError), socket.socket(fileno=os.dup(fd)) as sock:
            sock.send(data, socket.MSG_DONTWAIT)
        return
    _libc.send(fd, data, len(data), socket.MSG_DONTWAIT)
