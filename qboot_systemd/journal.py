"""Write a message into one unit's journal, so `journalctl -u UNIT` shows it.

journalctl -u matches OBJECT_SYSTEMD_UNIT= on entries from uid 0 (checked on systemd
252: UNIT= counts only from PID 1, SYSLOG_IDENTIFIER not at all). The native protocol
is one datagram of FIELD=value lines; values here are single lines.
"""

from __future__ import annotations

import socket
import sys

JOURNAL_SOCKET = "/run/systemd/journal/socket"
PRIORITY_ERR = 3
PRIORITY_WARNING = 4
PRIORITY_INFO = 6


def _one_line(text: str) -> str:
    return text.replace("\n", " ").replace("\0", " ")


def send(
    message: str, unit: str | tuple[str, ...], priority: int, identifier: str = "qbootctl"
) -> bool:
    """True when journald took it; False (and stderr) when there is no journal. One entry
    for several units (a field may repeat): `journalctl -u` of each shows it, and the
    whole journal shows it once."""
    names = (unit,) if isinstance(unit, str) else unit
    fields = [
        ("MESSAGE", _one_line(message)),
        ("PRIORITY", str(priority)),
        ("SYSLOG_IDENTIFIER", identifier),
        *(("OBJECT_SYSTEMD_UNIT", name) for name in dict.fromkeys(names)),
    ]
    datagram = "".join(f"{key}={value}\n" for key, value in fields).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
            sender.sendto(datagram, JOURNAL_SOCKET)
        return True
    except OSError:
        sys.stderr.write(f"{identifier}: {' '.join(names)}: {_one_line(message)}\n")
        return False


def is_stdout() -> bool:
    """Is stdout the journal (a service's output, as systemd.exec(5) says to tell)?"""
    import os

    try:
        status = os.fstat(1)
    except OSError:
        return False
    return os.environ.get("JOURNAL_STREAM") == f"{status.st_dev}:{status.st_ino}"
