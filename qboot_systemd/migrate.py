"""Migrating from qboot's boot scripts or daemontools: find the old way, turn it off.

Sites already run eQmail: /etc/init.d/qmaild -> eqmaild starts qmail-send and the
qmail-tcpsrv servers from rc links, or daemontools supervises /service/qmail-*. Left alone,
systemd's sysv-generator makes qmaild.service of the init script and starts it next to the
new units: two qmail-send on one queue, two servers for port 25. `qbootctl install` masks
the init script's unit (what `systemctl mask` does, so it also works under --root), and
says exactly what to run for what it must not do itself (stop running processes,
daemontools).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

OLD_PROGRAMS = frozenset({"qmail-send", "qmail-tcpsrv", "tcpserver"})
_BOOT_WORDS = (b"eqmaild", b"bootctrl", b"qmail-tcpsrv", b"qmail-start")
_SERVICE_WORDS = (b"qmail-send", b"qmail-start", b"qmail-smtpd", b"qmail-tcpsrv", b"tcpserver")
SERVICE_DIRS = ("service", "etc/service", "var/service")
_OUR_UNITS = ("qmail-send.service", "qmail-tcpd@")
EQMAILD = "/usr/bin/eqmaild"  # where the packages put it


@dataclass(frozen=True)
class InitScript:
    name: str  # qmaild: systemd's sysv-generator calls its unit qmaild.service
    path: Path
    rc_links: tuple[Path, ...]


@dataclass(frozen=True)
class OldProcess:
    pid: int
    program: str
    cgroup: str


def _mentions(path: Path, words: Iterable[bytes], limit: int = 65536) -> bool:
    try:
        with open(path, "rb") as handle:
            head = handle.read(limit)
    except OSError:
        return False
    return any(word in head for word in words)


def init_scripts(root: Path) -> list[InitScript]:
    """/etc/init.d scripts that are qboot's: a link to eqmaild, or a script that runs it."""
    directory = root / "etc/init.d"
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return []
    found = []
    for name in names:
        path = directory / name
        target = os.readlink(path) if path.is_symlink() else ""
        if os.path.basename(target) != "eqmaild" and not (
            path.is_file() and _mentions(path, _BOOT_WORDS)
        ):
            continue
        links = sorted(
            link
            for rc in root.glob("etc/rc?.d")
            for link in rc.iterdir()
            if link.is_symlink() and os.path.basename(os.readlink(link)) == name
        )
        found.append(InitScript(name, path, tuple(links)))
    return found


def service_directories(root: Path) -> list[Path]:
    """daemontools (or runit) service directories whose run script runs qmail."""
    found = []
    for base in SERVICE_DIRS:
        directory = root / base
        try:
            names = sorted(os.listdir(directory))
        except OSError:
            continue
        found += [
            directory / name
            for name in names
            if _mentions(directory / name / "run", _SERVICE_WORDS)
        ]
    return found


def old_processes(proc: Path = Path("/proc")) -> list[OldProcess]:
    """qmail-send, qmail-tcpsrv and tcpserver processes outside qboot-systemd's units."""
    found = []
    for entry in sorted(os.listdir(proc), key=lambda name: (len(name), name)):
        if not entry.isdigit():
            continue
        try:
            program = (proc / entry / "comm").read_text().strip()
            if program not in OLD_PROGRAMS:
                continue
            cgroup = (proc / entry / "cgroup").read_text()
        except OSError:
            continue
        if any(unit in cgroup for unit in _OUR_UNITS):
            continue
        where = cgroup.strip().splitlines()[-1].split(":", 2)[-1] if cgroup.strip() else "?"
        found.append(OldProcess(int(entry), program, where))
    return found


def mask(root: Path, unit: str) -> Path | None:
    """/etc/systemd/system/UNIT -> /dev/null, as `systemctl mask` does. None if it was."""
    link = root / "etc/systemd/system" / unit
    if link.is_symlink() and os.readlink(link) == "/dev/null":
        return None
    if link.exists() or link.is_symlink():
        raise FileExistsError(f"{link} exists: mask {unit} by hand")
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to("/dev/null")
    return link


def migrate(root: Path, proc: Path | None = Path("/proc")) -> list[str]:
    """Turn off the old boot scripts; report what the admin must do by hand."""
    lines = []
    for script in init_scripts(root):
        unit = f"{script.name}.service"
        masked = mask(root, unit)
        if masked is not None:
            lines.append(
                f"migrate: masked {unit} ({masked} -> /dev/null): {script.path} starts "
                "qmail the old way and would run it next to the new units"
            )
        if masked is not None:
            # The admin's hands still type it: say what replaces it, once.
            lines.append(
                f"migrate: {script.path} is replaced by eqmaild: eqmaild start|stop|restart|"
                f"status (the same verbs and OK/FAILED lines, on the new units); "
                f"{script.path} itself still runs the old boot script: do not run it, "
                f"or make it the new one: ln -sf {EQMAILD} {script.path}"
            )
        if script.rc_links:
            rc = " ".join(str(link) for link in script.rc_links)
            lines.append(f"migrate: old rc links, harmless now that {unit} is masked: {rc}")
    for directory in service_directories(root):
        lines.append(
            f"migrate: daemontools runs qmail from {directory}; before starting the new "
            f"units run: svc -dx {directory} {directory}/log; rm {directory}"
        )
    for process in old_processes(proc) if proc is not None else []:
        lines.append(
            f"migrate: {process.program} runs as pid {process.pid} outside qboot-systemd "
            f"({process.cgroup}): stop the old way first (/etc/init.d/qmaild stop, or svc -d)"
        )
    return lines


def foreign_queue_runner(proc: Path = Path("/proc")) -> OldProcess | None:
    """A qmail-send that is not ours: a second one on the queue would corrupt it."""
    return next((p for p in old_processes(proc) if p.program == "qmail-send"), None)
