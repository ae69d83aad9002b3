"""The one place that talks to systemd over D-Bus (pystemd). Not for the generator."""

from __future__ import annotations

import os
from typing import Any

from .errors import UserError

PRIVATE_SOCKET = "/run/systemd/private"


def _bus() -> Any:
    from pystemd.dbuslib import DBus, DBusAddress

    if os.geteuid() == 0 and os.path.exists(PRIVATE_SOCKET):
        # As root, systemd's own socket works without dbus-daemon (early boot, containers).
        return DBusAddress(f"unix:path={PRIVATE_SOCKET}".encode(), peer_to_peer=True)
    return DBus()


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

    def reload(self) -> None:
        self._manager.Manager.Reload()

    def start(self, unit: str) -> bytes:
        job: bytes = self._manager.Manager.StartUnit(unit.encode(), b"replace")
        return job

    def close(self) -> None:
        self._bus.close()
