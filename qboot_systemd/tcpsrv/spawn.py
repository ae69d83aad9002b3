"""Spawning the chain without holding up the accept loop.

CPython's os.posix_spawn keeps the GIL while the kernel creates the child, and with
posix_spawn's vfork semantics that lasts until the child has exec'd: on the build
machine about 400 µs per connection in which nothing else runs (bench/tcpsrv_bench.py).
Calling libc's posix_spawnp through ctypes releases the GIL, so spawner threads wait for
the kernel while the loop goes on accepting. os.posix_spawnp is the fallback.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
from collections.abc import Mapping, Sequence

# Signals Python changes that a child must get back at their defaults.
DEFAULT_SIGNALS = (
    signal.SIGPIPE,
    signal.SIGHUP,
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGCHLD,
    signal.SIGXFSZ,
)
POSIX_SPAWN_SETSIGDEF = 0x04
POSIX_SPAWN_SETSIGMASK = 0x08
# Opaque glibc types, allocated with room to spare (x86_64: 80, 336 and 128 bytes).
_FILE_ACTIONS_SIZE = 256
_ATTR_SIZE = 1024
_SIGSET_SIZE = 256


def encode_environment(env: Mapping[str, str]) -> list[bytes]:
    return [os.fsencode(f"{name}={value}") for name, value in env.items()]


class LibcSpawner:
    """posix_spawnp through ctypes (GIL released during the call)."""

    def __init__(self) -> None:
        try:
            libc = ctypes.CDLL("libc.so.6", use_errno=True)  # glibc: no ldconfig run
        except OSError:
            libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        self._spawnp = libc.posix_spawnp
        self._spawnp.restype = ctypes.c_int
        self._actions_init = libc.posix_spawn_file_actions_init
        self._actions_dup2 = libc.posix_spawn_file_actions_adddup2
        self._actions_destroy = libc.posix_spawn_file_actions_destroy
        self._attr = ctypes.create_string_buffer(_ATTR_SIZE)
        default = ctypes.create_string_buffer(_SIGSET_SIZE)
        empty = ctypes.create_string_buffer(_SIGSET_SIZE)
        libc.sigemptyset(default)
        libc.sigemptyset(empty)
        for number in DEFAULT_SIGNALS:
            libc.sigaddset(default, int(number))
        checks = (
            libc.posix_spawnattr_init(self._attr),
            libc.posix_spawnattr_setsigdefault(self._attr, default),
            libc.posix_spawnattr_setsigmask(self._attr, empty),
            libc.posix_spawnattr_setflags(
                self._attr, ctypes.c_short(POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK)
            ),
        )
        if any(checks):
            raise OSError("posix_spawnattr setup failed")

    def spawn(self, argv: Sequence[bytes], env: Sequence[bytes], fd: int) -> int:
        """Run argv with `NAME=value` env entries and fd as stdin and stdout; returns the
        pid or raises OSError."""
        arguments = (ctypes.c_char_p * (len(argv) + 1))(*argv, None)
        variables = (ctypes.c_char_p * (len(env) + 1))(*env, None)
        actions = ctypes.create_string_buffer(_FILE_ACTIONS_SIZE)
        self._actions_init(actions)
        try:
            self._actions_dup2(actions, fd, 0)
            self._actions_dup2(actions, fd, 1)
            pid = ctypes.c_int()
            error = self._spawnp(
                ctypes.byref(pid), arguments[0], actions, self._attr, arguments, variables
            )
        finally:
            self._actions_destroy(actions)
        if error:
            raise OSError(error, os.strerror(error), os.fsdecode(argv[0]))
        return pid.value


class PythonSpawner:
    """os.posix_spawnp: correct everywhere, but holds the GIL."""

    def spawn(self, argv: Sequence[bytes], env: Sequence[bytes], fd: int) -> int:
        variables = dict(entry.split(b"=", 1) for entry in env)
        return os.posix_spawnp(
            argv[0],
            list(argv),
            variables,
            file_actions=[(os.POSIX_SPAWN_DUP2, fd, 0), (os.POSIX_SPAWN_DUP2, fd, 1)],
            setsigdef=DEFAULT_SIGNALS,
            setsigmask=(),
        )


def best_spawner() -> LibcSpawner | PythonSpawner:
    try:
        return LibcSpawner()
    except (OSError, AttributeError):
        return PythonSpawner()
