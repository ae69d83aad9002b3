"""Convergence, the pure half: what the generator adds so that edits reach what runs,
and the plan that `qbootctl reconcile` carries out. No D-Bus, no click: the generator
imports this module.

systemd runs nothing after a daemon-reload. So the generator also writes
  - a stamp drop-in per service: Environment=QBOOT_CONFIG=<hash of the service's model>.
    The running process keeps the hash it was started with (/proc/PID/environ), the
    loaded unit has the new one: they differ exactly when a restart is due;
  - a trigger file that qboot-reconcile.path waits for (PathExists=): the path unit
    checks it again after every reload and starts qboot-reconcile.service, which
    deletes it, compares what is loaded with what runs and restarts only what differs.
A service whose files became broken gets its last good drop-ins again (reconcile keeps
a copy under /run/qboot/last-good), so a typo never stops what runs. So does one whose
USER=/GROUP= the reconcile found unknown (/run/qboot/refused/SVC holds the hash of the
refused settings): the generator never looks accounts up itself.
"""

from __future__ import annotations

import enum
import ipaddress
import json
import os
import zlib
from pathlib import Path

from . import bootctrl, units
from .records import NamedTuple

STATE_DIR = Path("/run/qboot")
LAST_GOOD = "last-good"
REFUSED = "refused"
LOCK_NAME = "lock"
STAMP_NAME = "qboot-config.conf"
STAMP_VARIABLE = "QBOOT_CONFIG"
TRIGGER = "qboot-reconcile.trigger"
PATH_UNIT = "qboot-reconcile.path"
RECONCILE_UNIT = "qboot-reconcile.service"
SEND = "send"


def state_dir() -> Path:
    return Path(os.environ.get("QBOOT_STATE_DIR", str(STATE_DIR)))


# --- what the generator adds ---------------------------------------------------------------
def config_hash(model: bootctrl.Service | bootctrl.Send, directory: str) -> str:
    """Everything bootctrl says about one service, hashed: equal hashes, nothing to do.
    Paths are taken relative to the bootctrl directory, so a copy hashes the same."""
    text = json.dumps(model.as_json(), sort_keys=True, separators=(",", ":"))
    text = text.replace(json.dumps(directory.rstrip("/") + "/")[1:-1], "@BOOTCTRL@/")
    # A change detector for files only root may write, not a defence against forgery:
    # two CRC-32s (forwards and backwards) give 64 bits without hashlib, whose OpenSSL
    # load was a sixth of the generator's start-up.
    data = text.encode()
    return f"{zlib.crc32(data):08x}{zlib.crc32(data[::-1]):08x}"


def stamp_dropin(value: str) -> str:
    return f"{units.HEADER}[Service]\nEnvironment={STAMP_VARIABLE}={value}\n"


def stamp_path(unit: str) -> str:
    return f"{unit}.d/{STAMP_NAME}"


def service_files(name: str) -> tuple[str, ...]:
    """The generated files of one tcp service, relative to the generator's output."""
    socket, service = units.tcpd_socket(name), units.tcpd_service(name)
    return (
        f"{socket}.d/{units.DROPIN_NAME}",
        f"{service}.d/{units.DROPIN_NAME}",
        stamp_path(service),
    )


def wants_link(name: str) -> str:
    return f"sockets.target.wants/{units.tcpd_socket(name)}"


def enabled_names(directory: Path) -> tuple[str, ...]:
    """Services whose rc link points at qmail-tcpd, broken or not: the admin's switch. A
    regular file in its place (a copy of the script, as SysV rc directories allowed) is a
    switch too: the service stays, broken ("not a symlink"), on its last good settings."""
    try:
        entries = sorted(os.listdir(directory))
    except OSError:
        return ()
    found = []
    for entry in entries:
        if not (entry.startswith("qmail-") and entry.endswith(".rc")) or entry == bootctrl.SEND_RC:
            continue
        name = entry[len("qmail-") : -len(".rc")]
        path = directory / entry
        if not bootctrl.SERVICE_NAME_RE.match(name):
            continue
        if path.is_symlink():
            if os.path.basename(os.readlink(path)) == bootctrl.RC_TARGET:
                found.append(name)
        elif path.is_file():
            found.append(name)
    return tuple(found)


def read_last_good(state: Path, name: str) -> dict[str, str] | None:
    """The drop-ins a service last ran with, or None."""
    base = state / LAST_GOOD / name
    files = {}
    for relative in service_files(name):
        try:
            files[relative] = (base / relative).read_text()
        except (OSError, UnicodeDecodeError):
            return None
    return files


def read_refused(state: Path) -> dict[str, str]:
    """Settings the reconcile refused (an unknown USER=/GROUP=): service -> config hash."""
    base = state / REFUSED
    try:
        names = sorted(os.listdir(base))
    except OSError:
        return {}
    found = {}
    for name in names:
        try:
            found[name] = (base / name).read_text().strip()
        except (OSError, UnicodeDecodeError):
            continue
    return found


def holders(state: Path) -> dict[str, frozenset[str]]:
    """ListenStream= values of the drop-ins each service last ran with."""
    found = {}
    base = state / LAST_GOOD
    try:
        names = sorted(os.listdir(base))
    except OSError:
        return {}
    for name in names:
        try:
            text = (base / name / service_files(name)[0]).read_text()
        except (OSError, UnicodeDecodeError):
            continue
        found[name] = frozenset(
            line.removeprefix("ListenStream=")
            for line in text.splitlines()
            if line.startswith("ListenStream=")
        )
    return found


def load(
    directory: Path, qmail_home: Path | str | None = None, *, check_accounts: bool = False
) -> bootctrl.Bootctrl:
    """The model as the generator sees it: running services keep their addresses."""
    return bootctrl.load(
        directory, qmail_home, check_accounts=check_accounts, holders=holders(state_dir())
    )


def add_convergence(
    model: bootctrl.Bootctrl,
    files: dict[str, str],
    links: dict[str, str],
    paths: units.Paths,
    state: Path,
) -> list[str]:
    """Stamps, the reconcile trigger, and last good drop-ins for broken services (and for
    settings the reconcile refused). Returns the names of the services kept on their last
    good settings (degraded)."""
    refused = read_refused(state)
    for service in model.services:
        unit = units.tcpd_service(service.name)
        if f"{unit}.d/{units.DROPIN_NAME}" in files:
            stamp = config_hash(service, model.directory)
            if refused.get(service.name) == stamp:
                for relative in service_files(service.name):
                    files.pop(relative, None)
                links.pop(wants_link(service.name), None)
                continue
            files[stamp_path(unit)] = stamp_dropin(stamp)
    if model.send is not None and f"{units.SEND_UNIT}.d/{units.DROPIN_NAME}" in files:
        files[stamp_path(units.SEND_UNIT)] = stamp_dropin(config_hash(model.send, model.directory))
    # bootctrl unreadable (or refused as a whole): everything that ran keeps running as it
    # was, and no reconcile is triggered: it would stop every service.
    unusable = any(p.file == model.directory and p.line == 0 for p in model.problems)
    names = sorted(holders(state)) if unusable else enabled_names(Path(model.directory))
    degraded = []
    for name in names:
        if f"{units.tcpd_service(name)}.d/{units.DROPIN_NAME}" in files:
            continue
        kept = read_last_good(state, name)
        if kept is None:
            continue
        files.update(kept)
        links[wants_link(name)] = f"{paths.unit_dir}/qmail-tcpd@.socket"
        degraded.append(name)
    if unusable:
        return degraded
    files[TRIGGER] = "# qboot-reconcile.path starts qbootctl reconcile while this exists\n"
    links[f"paths.target.wants/{PATH_UNIT}"] = f"{paths.unit_dir}/{PATH_UNIT}"
    return degraded


# --- what reconcile sees --------------------------------------------------------------------
Address = tuple[str, int]  # (normalised IP, port)


def parse_listen(value: str) -> Address | None:
    """A socket unit's Listen entry ("[::]:25", "127.0.0.1:2525", "25") as (ip, port)."""
    host, _, port = value.rpartition(":")
    if not port.isdigit():
        return None
    if not host:
        return ("::", int(port))
    try:
        return (str(ipaddress.ip_address(host.strip("[]"))), int(port))
    except ValueError:
        return None


class Observed(NamedTuple):
    """One tcp service (or send), as loaded and as running."""

    name: str
    generated: bool  # systemd loaded a drop-in for it (enabled, maybe degraded)
    applied_before: bool  # reconcile has run it before (its last good copy exists)
    socket_active: bool  # always True for send (no socket)
    service_active: bool
    loaded_hash: str  # QBOOT_CONFIG in the loaded drop-in ("" when none)
    running_hash: str | None  # QBOOT_CONFIG of the main process (None: not running)
    wanted: frozenset[Address] = frozenset()  # the socket's Listen=, as loaded
    bound: frozenset[Address] = frozenset()  # listening sockets systemd holds now
    held: frozenset[Address] = frozenset()  # listening sockets the main process holds
    socket_failed: bool = False  # e.g. its new port was still taken: try again

    @property
    def is_send(self) -> bool:
        return self.name == SEND


class Verb(enum.StrEnum):
    START = "start"
    STOP = "stop"
    RESTART = "restart"


class Step(NamedTuple):
    verb: Verb
    unit: str

    @property
    def waits(self) -> bool:
        """A tcp service's start is ordered after qboot-reconcile.service (so that an
        admin's `systemctl restart` right after a reload runs on the new socket): the
        reconcile queues it and must not wait for it."""
        starts = self.verb in (Verb.START, Verb.RESTART)
        tcp_service = self.unit.startswith("qmail-tcpd@") and self.unit.endswith(".service")
        return not (starts and tcp_service)


class Change(NamedTuple):
    """What to do for one service, and the line that says why."""

    name: str
    steps: tuple[Step, ...]
    message: str


def _describe(addresses: frozenset[Address]) -> str:
    if not addresses:
        return "nothing"
    return " ".join(
        f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}" for ip, port in sorted(addresses)
    )


def listen_stale(item: Observed) -> bool:
    """The socket does not listen where its unit says, or the service holds old ports."""
    return bool(item.wanted - item.bound) or bool(item.held - item.wanted)


def plan_one(item: Observed) -> Change | None:
    if item.is_send:
        unit = units.SEND_UNIT
        if not item.generated:
            if item.service_active:
                return Change(SEND, (Step(Verb.STOP, unit),), f"stopped {unit} (no qmail-init.rc)")
            return None
        if not item.service_active:
            if item.applied_before:
                return None
            return Change(SEND, (Step(Verb.START, unit),), f"started {unit} (newly enabled)")
        if item.running_hash != item.loaded_hash:
            return Change(SEND, (Step(Verb.RESTART, unit),), f"restarted {unit} (command changed)")
        return None
    socket, service = units.tcpd_socket(item.name), units.tcpd_service(item.name)
    if not item.generated:
        if item.socket_active or item.service_active:
            return Change(
                item.name,
                (Step(Verb.STOP, service), Step(Verb.STOP, socket)),
                f"stopped {item.name} (no longer enabled)",
            )
        return None
    if not item.socket_active:
        if item.socket_failed:
            return Change(item.name, (Step(Verb.START, socket),), f"started {socket} (had failed)")
        if item.applied_before:
            return None  # stopped by the admin: a reload does not start it again
        return Change(item.name, (Step(Verb.START, socket),), f"started {socket} (newly enabled)")
    if listen_stale(item):
        # Stop only a service that runs: stopping one that waits to start would cancel
        # the admin's own restart job.
        steps = [Step(Verb.STOP, service)] if item.service_active else []
        steps.append(Step(Verb.RESTART, socket))
        if item.service_active:
            steps.append(Step(Verb.START, service))
        was = item.held or item.bound
        return Change(
            item.name,
            tuple(steps),
            f"restarted {socket} (listen settings changed): {_describe(was)} -> "
            f"{_describe(item.wanted)}",
        )
    if item.service_active and item.running_hash != item.loaded_hash:
        return Change(
            item.name,
            (Step(Verb.RESTART, service),),
            f"restarted {service} (command or environment changed)",
        )
    return None


def plan(observed: list[Observed]) -> list[Change]:
    """Only what differs; removals first so a freed port can be taken by another."""
    changes = [change for item in observed if (change := plan_one(item)) is not None]
    return sorted(changes, key=lambda change: (change.steps[0].verb is not Verb.STOP, change.name))


# --- what qbootctl status says --------------------------------------------------------------
def drift(
    now_hash: str | None,
    loaded_hash: str,
    running_hash: str | None,
    wanted: frozenset[Address] | None,
    bound: frozenset[Address] | None,
) -> str | None:
    """Why what runs is not what bootctrl says now, or None. `now_hash` None: bootctrl
    does not enable it; `running_hash` None: not running; `bound` None: no socket up."""
    if now_hash is None:
        return None
    if now_hash != loaded_hash:
        return "pending: bootctrl changed since the last reload (run: systemctl daemon-reload)"
    if wanted is not None and bound is not None and wanted - bound:
        return (
            f"pending: listens on {_describe(bound)}, bootctrl says {_describe(wanted)} "
            "(see journalctl -u qboot-reconcile)"
        )
    if running_hash is not None and running_hash != loaded_hash:
        return "pending: runs older settings (see journalctl -u qboot-reconcile)"
    return None
