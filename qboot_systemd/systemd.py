"""The one place that talks to systemd over D-Bus (pystemd). Not for the generator."""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from typing import Any

from .errors import UserError
from .run import run

PRIVATE_SOCKET = "/run/systemd/private"
# How long a started service must stay up to count as started: a crash loop shows within
# it (qboot-tcpsrv restarts after 1 s, qmail-send exits at once when it cannot start).
SETTLE_SECONDS = 1.5


def _bus() -> Any:
    from pystemd.dbuslib import DBus, DBusAddress

    if os.geteuid() == 0 and os.path.exists(PRIVATE_SOCKET):
        # As root, systemd's own socket works without dbus-daemon (early boot, containers).
        return DBusAddress(f"unix:path={PRIVATE_SOCKET}".encode(), peer_to_peer=True)
    return DBus()


def _text(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _refusal(error: Exception) -> str:
    """systemd's own words from a pystemd D-Bus error, whose text is
    `b'org.freedesktop.systemd1.Name'[err -8]: b'message'` and a paragraph of pystemd's."""
    text = str(error)
    quoted = re.findall(r"b'([^']*)'", text.split("\n", 1)[0])
    return quoted[-1] if quoted else text.split("\n", 1)[0] or type(error).__name__


def _first_argv(commands: Any) -> tuple[str, ...]:
    """ExecStart's D-Bus value is a list of (path, argv, ignore-errors, timestamps...)."""
    if not commands:
        return ()
    return tuple(_text(word) for word in commands[0][1])


@dataclass(frozen=True)
class UnitState:
    name: str
    load: str
    active: str
    sub: str
    result: str = ""
    main_pid: int = 0
    status_text: str = ""
    listen: tuple[str, ...] = ()
    need_reload: bool = False
    restarts: int = 0  # NRestarts: automatic restarts so far
    reload_result: str = ""  # ReloadResult of the last reload (success, exit-code, ...)
    exec_start: tuple[str, ...] = ()  # the argv of a service's (first) ExecStart=, as loaded

    def as_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "load": self.load,
            "active": self.active,
            "sub": self.sub,
            "result": self.result,
            "main_pid": self.main_pid,
            "status": self.status_text,
            "listen": list(self.listen),
            "need_daemon_reload": self.need_reload,
            "restarts": self.restarts,
            "reload_result": self.reload_result,
        }

    @property
    def crash_looping(self) -> bool:
        """Failed, or between automatic restarts (Restart=always never lets it fail)."""
        if self.active == "failed" or self.sub == "auto-restart":
            return True
        return self.active == "activating" and self.result not in ("", "success")


class JobFailed(Exception):
    def __init__(self, unit: str, state: UnitState, journal: str, why: str = "") -> None:
        # The result says why (exit-code, start-limit-hit) unless it is still "success",
        # as between automatic restarts, where the sub-state does (auto-restart).
        why_state = state.result if state.result not in ("", "success") else state.sub
        text = f"{unit}: {state.active} ({why_state})"
        super().__init__(f"{text}, {why}" if why else text)
        self.unit = unit
        self.state = state
        self.journal = journal


class Systemd:
    """A connection to the system manager."""

    def __init__(self) -> None:
        if not os.path.isdir("/run/systemd/system"):
            raise UserError(
                "systemd is not running on this machine",
                "qbootctl show and qbootctl generate work without it",
            )
        from pystemd.systemd1 import Manager

        self._bus = _bus()
        try:
            self._bus.open()
            self._manager = Manager(_autoload=False, bus=self._bus)
            self._manager.load()
        except Exception as error:
            hint = "run as root" if os.geteuid() != 0 else "is dbus or systemd up?"
            raise UserError(f"cannot connect to systemd: {error}", hint) from None

    def close(self) -> None:
        self._bus.close()

    def __enter__(self) -> Systemd:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # --- manager -----------------------------------------------------------------------
    def reload(self) -> None:
        self._manager.Manager.Reload()

    def queue_start(self, unit: str) -> bytes:
        """Queue a start job without waiting for it (boot: systemd orders the rest); act()
        waits for its job."""
        return self._job("StartUnit", unit)

    def queue_restart(self, unit: str) -> bytes:
        """Queue a restart job without waiting (it may be ordered after the caller)."""
        return self._job("RestartUnit", unit)

    def _job(self, method: str, unit: str) -> bytes:
        try:
            job: bytes = getattr(self._manager.Manager, method)(unit.encode(), b"replace")
        except Exception as error:
            raise UserError(
                f"{unit}: systemd refused: {_refusal(error)}",
                "is the unit name right? see qbootctl status",
            ) from None
        return job

    def _wait(self, job: bytes, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            jobs = {entry[4] for entry in self._manager.Manager.ListJobs()}
            if job not in jobs:
                return
            time.sleep(0.05)
        raise UserError(f"job {_text(job)} did not finish within {timeout:.0f} s")

    def act(
        self, verb: str, unit: str, timeout: float = 90, settle: float = 0, oneshot: bool = False
    ) -> UnitState:
        """start/stop/restart/reload a unit, wait for the job, check the outcome; a started
        service must then stay up for `settle` seconds (no exit, no automatic restart).
        `oneshot`: a started Type=oneshot unit is inactive once it ran successfully."""
        if verb == "stop":
            before = self.state(unit)
            if before.active == "inactive":
                # Nothing to stop; systemd refuses StopUnit for a unit it has not loaded
                # (an enabled service that never ran).
                return before
        method = {
            "start": "StartUnit",
            "stop": "StopUnit",
            "restart": "RestartUnit",
            "reload": "ReloadUnit",
        }[verb]
        self._wait(self._job(method, unit), timeout)
        state = self.state(unit)
        wanted: tuple[str, ...] = ("inactive", "failed") if verb == "stop" else ("active",)
        if oneshot and verb == "start" and state.active == "inactive":
            wanted = ("inactive",) if state.result == "success" else ()  # it ran
        if state.active not in wanted:
            raise JobFailed(unit, state, self.journal(unit))
        if verb == "reload" and state.reload_result not in ("", "success"):
            # The unit stays active when its ExecReload= fails: only this says so.
            raise JobFailed(unit, state, self.journal(unit), f"reload {state.reload_result}")
        if settle and verb in ("start", "restart") and unit.endswith(".service"):
            self._stays_up(unit, state, settle)
        return state

    def settled(self, unit: str, seconds: float, timeout: float = 90) -> UnitState:
        """Wait for the unit's queued jobs (a restart the reconcile did not wait for),
        then, if it is meant to run, that it stays up for `seconds`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(
            _text(entry[1]) == unit for entry in self._manager.Manager.ListJobs()
        ):
            time.sleep(0.05)
        state = self.state(unit)
        if state.active == "inactive" and not state.crash_looping:
            return state  # stopped, or waiting for its first connection
        if state.active != "active":
            raise JobFailed(unit, state, self.journal(unit))
        self._stays_up(unit, state, seconds)
        return state

    def _stays_up(self, unit: str, started: UnitState, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            time.sleep(0.1)
            now = self.state(unit)
            if now.active != "active":
                why = "did not stay up"
            elif now.restarts != started.restarts or now.main_pid != started.main_pid:
                why = "restarted by itself"
            else:
                continue
            raise JobFailed(unit, now, self.journal(unit), why)

    def active_units(self, pattern: str, failed: bool = True) -> list[str]:
        """Loaded units matching a glob that are not inactive (active, failing, ...; with
        failed=False, not failed either). Units whose files are gone (not-found) too."""
        skipped = ("inactive",) if failed else ("inactive", "failed")
        entries = self._manager.Manager.ListUnitsByPatterns([], [pattern.encode()])
        return sorted(_text(entry[0]) for entry in entries if _text(entry[3]) not in skipped)

    # --- units -------------------------------------------------------------------------
    def state(self, unit: str) -> UnitState:
        from pystemd.systemd1 import Unit

        handle = Unit(unit.encode(), bus=self._bus, _autoload=True)
        common = handle.Unit
        kwargs: dict[str, Any] = {}
        if unit.endswith(".service"):
            service = handle.Service
            kwargs = {
                "result": _text(service.Result),
                "main_pid": int(service.MainPID),
                "status_text": _text(service.StatusText),
                "restarts": int(service.NRestarts),
                "reload_result": _text(service.ReloadResult),
                "exec_start": _first_argv(service.ExecStart),
            }
        elif unit.endswith(".socket"):
            socket = handle.Socket
            kwargs = {
                "result": _text(socket.Result),
                "listen": tuple(_text(address) for _, address in socket.Listen),
            }
        return UnitState(
            unit,
            _text(common.LoadState),
            _text(common.ActiveState),
            _text(common.SubState),
            need_reload=bool(common.NeedDaemonReload),
            **kwargs,
        )

    @staticmethod
    def journal(unit: str, lines: int = 5) -> str:
        done = run(
            ["journalctl", "-u", unit, "-n", str(lines), "--no-pager", "-q", "-o", "cat"],
            timeout=20,
        )
        return done.stdout.strip()
