"""Everyday administration: the model of bootctrl joined with what systemd says."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from . import bootctrl, envfile, units
from .apply import SEND, stamps
from .apply.plan import Address, parse_listen
from .errors import UserError
from .systemd import Systemd, UnitState

if TYPE_CHECKING:
    from .apply.health import Health

GENERATOR_OUTPUT = Path("/run/systemd/generator")


@dataclass(frozen=True)
class Target:
    """`send` or one tcp service, with its units (socket first)."""

    name: str
    units: tuple[str, ...]

    @property
    def is_send(self) -> bool:
        return self.name == SEND


def target(name: str) -> Target:
    if name == SEND:
        return Target(SEND, (units.SEND_UNIT,))
    if not bootctrl.valid_service_name(name):
        raise UserError(f"invalid service name {name!r}", "use letters, digits, - _ .")
    return Target(name, (units.tcpd_socket(name), units.tcpd_service(name)))


def unit_jobs(verb: str, item: Target) -> list[tuple[str, str]]:
    """Unit jobs for one verb. A tcp service's socket stays up across restarts, so the
    kernel queues what arrives meanwhile; start starts the service too, so that a service
    that cannot run shows now, not at the first connection."""
    if item.is_send:
        return [(verb, item.units[0])]
    socket, service = item.units
    return {
        "start": [("start", socket), ("start", service)],
        "stop": [("stop", service), ("stop", socket)],
        "restart": [("start", socket), ("restart", service)],
        "reload": [("reload", service)],
    }[verb]


def resolve(model: bootctrl.Bootctrl, names: tuple[str, ...]) -> list[Target]:
    """Named targets; `all` or nothing means qmail-send plus every enabled service."""
    if not names or "all" in names:
        found = [target(SEND)] if model.send is not None else []
        return found + [target(service.name) for service in model.services]
    return [target(name) for name in names]


def acted_on(
    verb: str, named: tuple[str, ...], targets: list[Target], enabled: set[str], send: bool
) -> list[Target]:
    """The targets a verb acts on. Named ones, whatever they are; for all (or none named),
    start, restart and reload take only what bootctrl enables (`send`: qmail-init.rc):
    what runs without it is only stopped (or reconciled)."""
    if verb == "stop" or (named and "all" not in named):
        return targets
    return [item for item in targets if (item.is_send and send) or item.name in enabled]


def running_names(unit_names: list[str]) -> list[str]:
    """Service names of qmail-tcpd@ units systemd has (`qmail-tcpd@subm.socket` -> subm),
    whatever bootctrl says now, unit files gone (not-found) included."""
    found = {
        name.removeprefix("qmail-tcpd@").rsplit(".", 1)[0]
        for name in unit_names
        if name.startswith("qmail-tcpd@")
    }
    return sorted(name for name in found if bootctrl.valid_service_name(name))


def everything(model: bootctrl.Bootctrl, running: list[str], send_running: bool) -> list[Target]:
    """qmail-send and every tcp service that bootctrl enables (broken ones too) or that
    systemd runs: what status shows and stop-all stops."""
    names = set(stamps.enabled_names(model.directory)) | set(running)
    names |= {service.name for service in model.services}
    found = [target(SEND)] if model.send is not None or send_running else []
    return found + [target(name) for name in sorted(names)]


@dataclass(frozen=True)
class Status:
    target: Target
    enabled: bool
    states: tuple[UnitState, ...]
    service: bootctrl.Service | None
    health: Health | None = None

    @property
    def running(self) -> bool:
        # A tcp service runs when its socket listens; the service starts with the first
        # connection (Accept=no), and must not be crash-looping then (Restart=always
        # keeps it "activating" for ever, never "failed").
        return self.states[0].active == "active" and not self.states[-1].crash_looping

    def listening(self) -> tuple[str, ...]:
        """Where the socket listens as systemd loaded it, in bootctrl's words ("587")."""
        if self.target.is_send:
            return ()
        return tuple(
            shown_address(address)
            for entry in self.states[0].listen
            if (address := parse_listen(entry)) is not None
        )

    def as_json(self) -> dict[str, object]:
        result: dict[str, object] = {
            "name": self.target.name,
            "enabled": self.enabled,
            "running": self.running,
            "units": {state.name: state.as_json() for state in self.states},
        }
        if self.health is not None:
            result["health"] = self.health.as_json()
        if not self.target.is_send and self.states[0].active == "active":
            result["listening"] = list(self.listening())
        if self.service is not None:
            result |= {
                "listen": [item.systemd() for item in self.service.listen],
                "rules": self.service.rules,
                "plugins": {
                    "presmtpd": list(self.service.presmtpd),
                    "postsmtpd": list(self.service.postsmtpd),
                },
            }
        return result


def shown_address(address: Address) -> str:
    """("::", 25) -> "25", as ListenStream= and qmail-SVC.env's PORT= say it."""
    ip, port = address
    return bootctrl.Listen(port, None if ip == "::" else ip).systemd()


def status(manager: Systemd, model: bootctrl.Bootctrl, targets: list[Target]) -> list[Status]:
    """Each target's unit states and health."""
    from .apply import health

    result = []
    enabled_names = set(stamps.enabled_names(model.directory))
    for item in targets:
        service = None if item.is_send else model.service(item.name)
        enabled = model.send is not None if item.is_send else item.name in enabled_names
        states = tuple(manager.state(unit) for unit in item.units)
        judged = health.assess(health.observe(model, item.name, states))
        result.append(Status(item, enabled, states, service, judged))
    return result


# --- enable / disable --------------------------------------------------------------------
def enable(directory: Path, name: str) -> list[str]:
    """The seed's manual steps: the rc link, and a rules link when SVC has none.
    Refused before any link when SVC would listen where another service does."""
    target(name)
    _refuse_clash(directory, name)
    done: list[str] = []
    rc = directory / f"qmail-{name}.rc"
    if rc.is_symlink() and os.path.basename(os.readlink(rc)) == bootctrl.RC_TARGET:
        done.append(f"{rc.name} already links to {bootctrl.RC_TARGET}")
    elif rc.exists() or rc.is_symlink():
        raise UserError(
            f"{rc} exists and is not a link to {bootctrl.RC_TARGET}", "move it away first"
        )
    else:
        if not (directory / bootctrl.RC_TARGET).exists():
            raise UserError(
                f"{directory / bootctrl.RC_TARGET} is missing",
                "qbootctl install puts the default bootctrl in place",
            )
        rc.symlink_to(bootctrl.RC_TARGET)
        done.append(f"created {rc.name} -> {bootctrl.RC_TARGET}")
    rules = directory / f"tcprules-{name}.cdb"
    if not (rules.exists() or rules.is_symlink()) and not _names_own_rules(directory, name):
        rules.symlink_to("tcprules-default.cdb")
        done.append(f"created {rules.name} -> tcprules-default.cdb")
    return done


def enable_links(directory: Path, name: str) -> tuple[Path, Path]:
    """The links `enable` may create: undo_enable removes those that were new."""
    return directory / f"qmail-{name}.rc", directory / f"tcprules-{name}.cdb"


def undo_enable(directory: Path, name: str, existed: set[Path]) -> list[str]:
    removed = []
    for link in enable_links(directory, name):
        if link not in existed and link.is_symlink():
            link.unlink()
            removed.append(f"removed {link.name} again")
    return removed


def _wanted_listen(directory: Path, name: str) -> tuple[bootctrl.Listen, ...]:
    """Where SVC would listen, from PORT= and IP= alone (other problems show later)."""
    env_path = directory / f"qmail-{name}.env"
    env = envfile.parse(env_path.read_bytes(), str(env_path)) if env_path.is_file() else None
    port_setting = env.last("PORT") if env else None
    ip_setting = env.last("IP") if env else None
    port_text = port_setting.value.strip() if port_setting else ""
    port = int(port_text) if port_text.isascii() and port_text.isdigit() else bootctrl.DEFAULT_PORT
    words = ip_setting.value.split() if ip_setting else []
    if not words or words == ["0"]:
        return (bootctrl.Listen(port),)
    return tuple(bootctrl.Listen(port, word.strip("[]")) for word in words)


def _refuse_clash(directory: Path, name: str) -> None:
    model = stamps.load(directory)
    for mine in _wanted_listen(directory, name):
        for other in model.services:
            if other.name != name and any(mine.conflicts_with(t) for t in other.listen):
                raise UserError(
                    f"{name} would listen on {mine.systemd()}, which service {other.name} uses",
                    f"set another PORT= (or IP=) in {directory}/qmail-{name}.env first",
                )


def _names_own_rules(directory: Path, name: str) -> bool:
    """True when SVC has a rules source or its env file sets CDB=."""
    if (directory / f"tcprules-{name}.txt").exists():
        return True
    env_path = directory / f"qmail-{name}.env"
    if not env_path.is_file():
        return False
    parsed = envfile.parse(env_path.read_bytes(), str(env_path))
    cdb = parsed.last("CDB")
    return cdb is not None and bool(cdb.value)


def disable(directory: Path, name: str) -> list[str]:
    target(name)
    rc = directory / f"qmail-{name}.rc"
    if not rc.is_symlink():
        return [f"{rc.name} does not exist: {name} was not enabled"]
    if os.path.basename(os.readlink(rc)) != bootctrl.RC_TARGET:
        raise UserError(f"{rc} is not a link to {bootctrl.RC_TARGET}", "remove it by hand")
    rc.unlink()
    return [f"removed {rc.name}"]
