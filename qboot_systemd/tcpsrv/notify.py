"""sd_notify through pystemd.daemon, only when systemd asked for it."""

from __future__ import annotations

import os
import time


class Notifier:
    """READY/RELOADING/STOPPING and a STATUS= line sent at most every `interval` seconds."""

    def __init__(self, interval: float = 0.5) -> None:
        self.enabled = bool(os.environ.get("NOTIFY_SOCKET"))
        self.interval = interval
        self._last_status = ""
        self._last_sent = 0.0
        self._pending: str | None = None
        if self.enabled:
            from pystemd import daemon

            self._daemon = daemon

    def send(self, *states: str) -> None:
        if self.enabled:
            self._daemon.notify(False, *states)

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
