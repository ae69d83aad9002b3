"""sd_notify(3), only when systemd asked for it (NOTIFY_SOCKET).

The protocol is one datagram on a Unix socket; sending it ourselves spares qboot-tcpsrv
pystemd's import, which would be half of its memory.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time


def notify_address(value: str) -> str | bytes | None:
    """NOTIFY_SOCKET as a socket address: a path, or `@name` in the abstract namespace."""
    if value.startswith("@"):
        return b"\0" + os.fsencode(value[1:])
    if value.startswith("/"):
        return value
    return None  # vsock and the like: not for a local service


def sd_notify(*states: str) -> None:
    """Send NAME=value lines to systemd; errors are ignored, as sd_notify's caller would."""
    address = notify_address(os.environ.get("NOTIFY_SOCKET", ""))
    if address is None:
        return
    with (
        contextlib.suppress(OSError),
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock,
    ):
        sock.sendto("\n".join(states).encode("utf-8", "surrogateescape"), address)


class Notifier:
    """READY/RELOADING/STOPPING and a STATUS= line sent at most every `interval` seconds."""

    def __init__(self, interval: float = 0.5) -> None:
        self.enabled = bool(os.environ.get("NOTIFY_SOCKET"))
        self.interval = interval
        self._last_status = ""
        self._last_sent = 0.0
        self._pending: str | None = None

    def send(self, *states: str) -> None:
        if self.enabled:
            sd_notify(*states)

    def status(self, text: str, now: float | None = None) -> None:
        """Queue a STATUS= update; flush() sends it when the interval allows."""
        # Back to what systemd already shows: nothing to send (not even a queued text).
        self._pending = None if text == self._last_status else text
        self.flush(now)

    def flush(self, now: float | None = None) -> None:
        if self._pending is None:
            return
        now = time.monotonic() if now is None else now
        if now - self._last_sent >= self.interval:
            self.send(f"STATUS={self._pending}")
            self._last_status, self._pending, self._last_sent = self._pending, None, now

    def next_flush(self) -> float | None:
        return None if self._pending is None else self._last_sent + self.interval
