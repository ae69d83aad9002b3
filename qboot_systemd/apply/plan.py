"""The decisions of apply, pure functions over what observe found, golden-tested without
systemd: the changes `qbootctl reconcile` carries out, what `qbootctl status` says is
pending, what fails `reload-config`, how a verb treats a broken service, the order
`qbootctl uninstall` stops things in.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence

from .. import units
from .._startup import NamedTuple
from ..iptext import canonical
from ..problems import Problem
from . import SEND, stamps

# --- what reconcile sees --------------------------------------------------------------------
Address = tuple[str, int]  # (normalised IP, port)


def parse_listen(value: str) -> Address | None:
    """A socket unit's Listen entry ("[::]:25", "127.0.0.1:2525", "25") as (ip, port)."""
    host, _, port = value.rpartition(":")
    if not port.isdigit():
        return None
    if not host:
        return ("::", int(port))
    address = canonical(host.strip("[]"))
    return None if address is None else (address, int(port))


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


def change_for(item: Observed, refused: frozenset[str] = frozenset()) -> Change | None:
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
                # Refused (an unknown account) with no last good settings: not generated
                # either, but its rc link is still there.
                f"stopped {item.name} (unknown account: see qbootctl status)"
                if item.name in refused
                else f"stopped {item.name} (no longer enabled)",
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


def changes(observed: list[Observed], refused: frozenset[str] = frozenset()) -> list[Change]:
    """Only what differs; removals first so a freed port can be taken by another.
    `refused`: services whose settings the reconcile refused."""
    changes = [change for item in observed if (change := change_for(item, refused)) is not None]
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


# --- qbootctl uninstall -----------------------------------------------------------------
def uninstall_order(running: list[str]) -> list[str]:
    """Everything qboot-systemd runs, in the order to stop it: no reconcile and no boot
    oneshot first, then each service before its socket, qmail-send last."""
    tcpd = sorted(unit for unit in running if unit.startswith("qmail-tcpd@"))
    services = [unit for unit in tcpd if unit.endswith(".service")]
    sockets = [unit for unit in tcpd if unit.endswith(".socket")]
    first = [unit for unit in (stamps.PATH_UNIT, units.BOOT_UNIT) if unit in running]
    last = [units.SEND_UNIT] if units.SEND_UNIT in running else []
    return first + services + sockets + last


# --- what qbootctl reconcile and reload-config report ------------------------------------
class Verdict(NamedTuple):
    problems: tuple[Problem, ...]  # to show, each once
    failed: bool
    wait_for: tuple[str, ...]  # services whose queued restarts must be seen to stay up


def reconcile_verdict(
    changes_failed: bool,
    touched: Sequence[str],
    broken: Sequence[str],
    enabled: Sequence[str],
    problems_of: Mapping[str, Sequence[Problem]],
    admin_waits: bool,
) -> Verdict:
    """The known problems of the broken, touched and enabled services (an unknown GROUP=
    is known to the reconcile, not to the generator). When the admin waits (reload-config),
    a problem of a service it touched or that is broken fails it, and the restarts it
    queued must stay up; qboot-reconcile.service itself fails only when a change did."""
    restarted = [name for name in touched if name != SEND and name not in broken]
    shown: list[Problem] = []
    failed = changes_failed
    for name in dict.fromkeys([*broken, *restarted, *enabled]):
        found = problems_of.get(name, ())
        shown.extend(found)
        if found and admin_waits and (name in broken or name in restarted):
            failed = True
    return Verdict(tuple(shown), failed, tuple(restarted) if admin_waits else ())


# --- qbootctl start/stop/restart/reload of a broken service ------------------------------
class Treatment(enum.Enum):
    AS_IS = "as is"  # not broken, or stopped: its files do not matter
    LAST_GOOD = "with its last good settings"  # done, and reported as failed
    NOT_DONE = "not done, fix the file first"  # nothing it could run


def treat_broken(verb: str, broken: bool, kept: bool) -> Treatment:
    """A service whose files have problems can only run its last good settings, and only
    when it has run before; stopping it needs no settings."""
    if not broken or verb == "stop":
        return Treatment.AS_IS
    return Treatment.LAST_GOOD if kept else Treatment.NOT_DONE
