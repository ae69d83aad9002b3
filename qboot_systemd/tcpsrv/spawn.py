"""Spawning the chain without holding up the accept loop.

CPython's os.posix_spawnp keeps the GIL while the kernel creates the child, and with
posix_spawn's vfork semantics that lasts until the child has exec'd: 70-130 µs per
connection in which nothing else runs. The _core extension's Spawner (a vfork-style
clone() and execve over the PATH entries found once) runs without the GIL, so spawner
threads wait for the kernel while the loop goes on accepting; its command line, server
environment and signals to reset are laid out once. PythonSpawner (os.posix_spawnp) is
the fallback, and what QBOOT_NO_EXTENSION=1 uses.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Mapping, Sequence

from . import syscalls

# Signals a child gets at their defaults even when our parent ignored them: those
# tcpserver's child resets (SIGTERM, SIGPIPE, SIGCHLD), and SIGXFSZ, which CPython ignores
# as it starts (what our parent did with it cannot be known). SIGHUP and SIGINT that our
# parent ignored stay ignored, by the server too (see Server.serve), as under tcpserver.
DEFAULT_SIGNALS = (
    signal.SIGPIPE,
    signal.SIGTERM,
    signal.SIGCHLD,
    signal.SIGXFSZ,
)


def signals_to_default() -> list[int]:
    """Every signal the child should find at its default. All of them, not just the ones
    Python changes: the extension's child resets each listed one before it unblocks
    signals, so none of the server's handlers can run in it before its exec (and
    posix_spawnp's child, on the Python path, needs no query per signal). Signals our
    own parent ignored stay ignored, as under tcpserver."""
    numbers = []
    for number in range(1, signal.NSIG):
        try:
            ignored = signal.getsignal(number) == signal.SIG_IGN
        except ValueError:  # not a signal number here
            continue
        if number in DEFAULT_SIGNALS or not ignored:
            numbers.append(number)
    return numbers


def check_names(env: Mapping[str, str]) -> None:
    """A name with '=' or NUL would set another variable: refuse the whole environment
    (names come from us and the rules; a value may hold anything)."""
    names = "".join(env)  # one scan for all of them: this runs per connection
    if "=" in names or "\0" in names:
        bad = next(name for name in env if "=" in name or "\0" in name)
        raise ValueError(f"bad environment variable name {bad!r}")


def env_entries(env: Mapping[str, str]) -> list[bytes]:
    """`NAME=value` entries as execve wants them. A value with a NUL reaches the program
    cut there, as from tcpserver (a C string), and never starts another entry."""
    check_names(env)
    entries = [f"{name}={value}".encode("utf-8", "surrogateescape") for name, value in env.items()]
    if any(b"\0" in entry for entry in entries):
        return [entry.partition(b"\0")[0] for entry in entries]
    return entries


class ExtensionSpawner:
    """The _core extension's clone() and execve (GIL released during the call)."""

    def __init__(self, argv: Sequence[bytes], base_env: Mapping[str, str]) -> None:
        extension = syscalls.EXTENSION
        if extension is None:
            raise ImportError("the _core extension is not available")
        self._base_env = dict(base_env)
        self._spawner = extension.Spawner(list(argv), env_entries(base_env), signals_to_default())

    @property
    def c_spawner(self) -> object:
        return self._spawner

    def entries(self, extra_env: Mapping[str, str]) -> tuple[list[bytes], list[bytes] | None]:
        """extra_env's entries, and the server's own without the ones extra_env overrides
        (None: all of them, the Spawner's prepared ones)."""
        extra = env_entries(extra_env)
        if self._base_env.keys().isdisjoint(extra_env):
            return extra, None
        return extra, env_entries({k: v for k, v in self._base_env.items() if k not in extra_env})

    def spawn(self, extra_env: Mapping[str, str], fd: int, ucspi_fd: int = -1) -> int:
        """Run the program with the server's environment plus extra_env (which wins), fd
        as stdin and stdout, and ucspi_fd (unless -1) as 3, 4 and 5 (UCSPI-TLS's control,
        read and write descriptors); returns the pid or raises OSError."""
        extra, base = self.entries(extra_env)
        pid: int = self._spawner.spawn(extra, fd, base, ucspi_fd)
        return pid


class PythonSpawner:
    """os.posix_spawnp: correct everywhere, but holds the GIL."""

    def __init__(self, argv: Sequence[bytes], base_env: Mapping[str, str]) -> None:
        self._argv = list(argv)
        self._base_env = {os.fsencode(name): os.fsencode(value) for name, value in base_env.items()}

    def spawn(self, extra_env: Mapping[str, str], fd: int, ucspi_fd: int = -1) -> int:
        check_names(extra_env)
        env = dict(self._base_env)
        env.update((os.fsencode(k), os.fsencode(c_string(v))) for k, v in extra_env.items())
        actions = [(os.POSIX_SPAWN_DUP2, fd, 0), (os.POSIX_SPAWN_DUP2, fd, 1)]
        if ucspi_fd != -1:  # after 0 and 1: fd may be one of 3 to 5
            actions += [(os.POSIX_SPAWN_DUP2, ucspi_fd, target) for target in (3, 4, 5)]
        return os.posix_spawnp(
            self._argv[0],
            self._argv,
            env,
            file_actions=actions,
            setsigdef=DEFAULT_SIGNALS,
            setsigmask=(),
        )


def c_string(value: str) -> str:
    """value as a C program gets it: up to its first NUL."""
    return value.partition("\0")[0] if "\0" in value else value


def best_spawner(
    argv: Sequence[bytes], base_env: Mapping[str, str]
) -> ExtensionSpawner | PythonSpawner:
    if syscalls.EXTENSION is None:
        return PythonSpawner(argv, base_env)
    return ExtensionSpawner(argv, base_env)


# (job id, pid, error): error None when the chain runs as pid, else why it could not.
Finished = tuple[int, int, str | None]


class ExtensionPool:
    """Spawner threads of the _core extension's own: they never take the GIL, so giving
    them a connection and hearing back costs the loop no GIL hand-over, only an eventfd
    it watches. Each closes its connection's fd once the child has it."""

    def __init__(self, spawner: ExtensionSpawner, threads: int) -> None:
        extension = syscalls.EXTENSION
        assert extension is not None, "ExtensionSpawner without the extension"
        self._spawner = spawner
        self._pool = extension.SpawnPool(spawner.c_spawner, threads)

    @property
    def c_pool(self) -> object:
        """The extension's SpawnPool, for the ConnectionLoop to queue its own jobs."""
        return self._pool

    def submit(self, ident: int, extra_env: Mapping[str, str], fd: int, ucspi_fd: int = -1) -> None:
        """Queue a spawn; raises ValueError (and leaves the fds open) for a bad name."""
        extra, base = self._spawner.entries(extra_env)
        self._pool.submit(ident, extra, fd, base, ucspi_fd)

    def fileno(self) -> int:
        fd: int = self._pool.fileno()
        return fd

    def finished(self) -> list[Finished]:
        done: list[tuple[int, int, int]] = self._pool.finished()
        return [(ident, pid, os.strerror(error) if error else None) for ident, pid, error in done]

    def close(self) -> None:
        self._pool.close()


class PythonPool:
    """Python threads around a spawner (the fallback): the same interface as ExtensionPool,
    a socket pair for its wake-ups."""

    def __init__(self, spawner: ExtensionSpawner | PythonSpawner, threads: int) -> None:
        import queue
        import socket
        import threading

        self._spawner = spawner
        self._jobs: queue.SimpleQueue[tuple[int, Mapping[str, str], int, int] | None] = (
            queue.SimpleQueue()
        )
        self._done: queue.SimpleQueue[Finished] = queue.SimpleQueue()
        self._wake_read, self._wake_write = socket.socketpair()
        self._wake_read.setblocking(False)
        self._wake_write.setblocking(False)
        self._threads = [
            threading.Thread(target=self._work, name=f"spawn-{number}", daemon=True)
            for number in range(threads)
        ]
        for thread in self._threads:
            thread.start()

    def _work(self) -> None:
        while (work := self._jobs.get()) is not None:
            ident, env, fd, ucspi_fd = work
            pid, error = 0, None
            try:
                pid = self._spawner.spawn(env, fd, ucspi_fd)
            except OSError as failure:
                error = failure.strerror or str(failure)
            except Exception as failure:  # one job is refused, the thread goes on
                error = f"{type(failure).__name__}: {failure}"
            syscalls.close(fd)
            if ucspi_fd != -1:
                syscalls.close(ucspi_fd)
            self._done.put((ident, pid, error))
            # full (the loop is behind and will look anyway) or closed: fine
            with contextlib.suppress(OSError):
                self._wake_write.send(b"s")

    def submit(self, ident: int, extra_env: Mapping[str, str], fd: int, ucspi_fd: int = -1) -> None:
        check_names(extra_env)
        self._jobs.put((ident, extra_env, fd, ucspi_fd))

    def fileno(self) -> int:
        return self._wake_read.fileno()

    def finished(self) -> list[Finished]:
        with contextlib.suppress(BlockingIOError, InterruptedError):
            self._wake_read.recv(4096)  # one read: what is left wakes the loop again
        done = []
        while not self._done.empty():
            done.append(self._done.get_nowait())
        return done

    def close(self) -> None:
        for _ in self._threads:
            self._jobs.put(None)
        for thread in self._threads:
            thread.join()
        self._wake_read.close()
        self._wake_write.close()


def spawn_pool(
    spawner: ExtensionSpawner | PythonSpawner, threads: int
) -> ExtensionPool | PythonPool:
    if isinstance(spawner, ExtensionSpawner):
        return ExtensionPool(spawner, threads)
    return PythonPool(spawner, threads)
