"""Spawning the chain without holding up the accept loop.

CPython's os.posix_spawn keeps the GIL while the kernel creates the child, and with
posix_spawn's vfork semantics that lasts until the child has exec'd: on the build
machine 70-130 µs per connection in which nothing else runs. Calling libc's posix_spawnp
through ctypes releases the GIL, so spawner threads wait for the kernel while the loop goes
on accepting. os.posix_spawnp is the fallback.

The command line and the server's own environment are the same for every child, so they
are laid out in C memory once; per connection only the TCP and rules variables are added.
"""

from __future__ import annotations

import array
import ctypes
import os
import signal
from collections.abc import Iterable, Mapping, Sequence

from .quick import load_libc

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
_POINTER = "Q" if ctypes.sizeof(ctypes.c_void_p) == 8 else "L"


def _signals_to_default() -> list[int]:
    """Every signal the child should find at its default. Listing all of them, not just
    the ones Python changes, spares glibc's child a query per signal (64 sigaction calls
    instead of 116 while the spawner waits). Signals our own parent ignored stay ignored,
    as under tcpserver."""
    numbers = []
    for number in range(1, signal.NSIG):
        try:
            ignored = signal.getsignal(number) == signal.SIG_IGN
        except ValueError:  # not a signal number here
            continue
        if number in DEFAULT_SIGNALS or not ignored:
            numbers.append(number)
    return numbers


def _pack(data: bytes, lengths: Iterable[int]) -> tuple[object, array.array[int]]:
    """data (strings each followed by a NUL) copied to C memory, and the strings'
    addresses. The boundaries come from lengths, never from a search for NULs: a NUL
    inside a string only ends that string early in C, it cannot start another one."""
    if not data:
        return None, array.array(_POINTER)
    buffer = (ctypes.c_char * len(data)).from_buffer_copy(data)
    at = ctypes.addressof(buffer)
    pointers = array.array(_POINTER)
    for length in lengths:
        pointers.append(at)
        at += length + 1
    return buffer, pointers


def check_names(env: Mapping[str, str]) -> None:
    """A name with '=' or NUL would set another variable: refuse the whole environment
    (names come from us and the rules; a value may hold anything)."""
    names = "".join(env)  # one scan for all of them: this runs per connection
    if "=" in names or "\0" in names:
        bad = next(name for name in env if "=" in name or "\0" in name)
        raise ValueError(f"bad environment variable name {bad!r}")


def _pack_env(env: Mapping[str, str]) -> tuple[object, array.array[int]]:
    """`NAME=value` entries as execve wants them, packed as _pack does. A value with a
    NUL reaches the program cut there, as from tcpserver (a C string)."""
    check_names(env)
    text = "".join([f"{name}={value}\0" for name, value in env.items()])
    data = text.encode("utf-8", "surrogateescape")
    if len(data) == len(text):  # one byte per character: the text's lengths hold
        return _pack(data, [len(name) + len(value) + 1 for name, value in env.items()])
    entries = [f"{name}={value}".encode("utf-8", "surrogateescape") for name, value in env.items()]
    return _pack(b"".join(entry + b"\0" for entry in entries), map(len, entries))


class LibcSpawner:
    """posix_spawnp through ctypes (GIL released during the call)."""

    def __init__(self, argv: Sequence[bytes], base_env: Mapping[str, str]) -> None:
        libc = load_libc(keep_gil=False)
        # Only posix_spawnp waits for the kernel, so only it lets go of the GIL (quick.py).
        quick = load_libc(keep_gil=True)
        self._spawnp = libc.posix_spawnp
        self._spawnp.restype = ctypes.c_int
        self._spawnp.argtypes = (
            ctypes.c_void_p,
            ctypes.c_char_p,
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_void_p,
        )
        self._actions_init = quick.posix_spawn_file_actions_init
        self._actions_dup2 = quick.posix_spawn_file_actions_adddup2
        self._actions_destroy = quick.posix_spawn_file_actions_destroy
        self._actions_type = ctypes.c_char * _FILE_ACTIONS_SIZE
        self._attr = ctypes.create_string_buffer(_ATTR_SIZE)
        default = ctypes.create_string_buffer(_SIGSET_SIZE)
        empty = ctypes.create_string_buffer(_SIGSET_SIZE)
        libc.sigemptyset(default)
        libc.sigemptyset(empty)
        for number in _signals_to_default():
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
        self._file = argv[0]
        self._argv, self._argv_pointers = _pack(
            b"".join(word + b"\0" for word in argv), [len(word) for word in argv]
        )
        self._argv_pointers.append(0)
        self._base_env = dict(base_env)
        self._base, self._base_pointers = _pack_env(base_env)
        self._end = array.array(_POINTER, [0])

    def spawn(self, extra_env: Mapping[str, str], fd: int) -> int:
        """Run the program with the server's environment plus extra_env (which wins) and
        fd as stdin and stdout; returns the pid or raises OSError."""
        if self._base_env.keys().isdisjoint(extra_env):
            base_strings, base = self._base, self._base_pointers
        else:  # rules override one of the server's own variables: lay out a fresh copy
            kept = {k: v for k, v in self._base_env.items() if k not in extra_env}
            base_strings, base = _pack_env(kept)
        strings, extra = _pack_env(extra_env)
        envp = base + extra + self._end
        actions = self._actions_type()
        self._actions_init(actions)
        try:
            self._actions_dup2(actions, fd, 0)
            self._actions_dup2(actions, fd, 1)
            pid = ctypes.c_int()
            error = self._spawnp(
                ctypes.byref(pid),
                self._file,
                actions,
                self._attr,
                self._argv_pointers.buffer_info()[0],
                envp.buffer_info()[0],
            )
        finally:
            self._actions_destroy(actions)
        del strings, base_strings  # the C strings envp points to: alive until here on purpose
        if error:
            raise OSError(error, os.strerror(error), os.fsdecode(self._file))
        return pid.value


class PythonSpawner:
    """os.posix_spawnp: correct everywhere, but holds the GIL."""

    def __init__(self, argv: Sequence[bytes], base_env: Mapping[str, str]) -> None:
        self._argv = list(argv)
        self._base_env = {os.fsencode(name): os.fsencode(value) for name, value in base_env.items()}

    def spawn(self, extra_env: Mapping[str, str], fd: int) -> int:
        check_names(extra_env)
        env = dict(self._base_env)
        env.update((os.fsencode(k), os.fsencode(c_string(v))) for k, v in extra_env.items())
        return os.posix_spawnp(
            self._argv[0],
            self._argv,
            env,
            file_actions=[(os.POSIX_SPAWN_DUP2, fd, 0), (os.POSIX_SPAWN_DUP2, fd, 1)],
            setsigdef=DEFAULT_SIGNALS,
            setsigmask=(),
        )


def c_string(value: str) -> str:
    """value as a C program gets it: up to its first NUL."""
    return value.partition("\0")[0] if "\0" in value else value


def best_spawner(argv: Sequence[bytes], base_env: Mapping[str, str]) -> LibcSpawner | PythonSpawner:
    try:
        return LibcSpawner(argv, base_env)
    except (OSError, AttributeError):
        return PythonSpawner(argv, base_env)
