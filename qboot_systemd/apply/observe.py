"""What systemd loaded and what runs, for the reconcile and for qbootctl status: D-Bus,
/proc, the generator's output, and the services whose files cannot run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .. import admin, bootctrl, listening, units
from ..problems import Problem
from ..systemd import Systemd, UnitState
from . import SEND, plan, stamps
from .plan import Observed

GENERATOR_OUTPUT = admin.GENERATOR_OUTPUT
_STAMP_RE = re.compile(rf"^Environment={stamps.STAMP_VARIABLE}=(\S+)$", re.M)


def loaded_hash(output: Path, unit: str) -> str:
    try:
        text = (output / stamps.stamp_path(unit)).read_text()
    except OSError:
        return ""
    match = _STAMP_RE.search(text)
    return match.group(1) if match else ""


def generated_names(output: Path) -> set[str]:
    return {
        path.parent.name.removeprefix("qmail-tcpd@").removesuffix(".service.d")
        for path in output.glob(f"qmail-tcpd@*.service.d/{units.DROPIN_NAME}")
    }


def last_good_names(state: Path) -> set[str]:
    base = state / stamps.LAST_GOOD
    return {path.name for path in base.iterdir() if path.is_dir()} if base.is_dir() else set()


def observe(manager: Systemd, output: Path, state: Path) -> list[Observed]:
    table = listening.listening_sockets()
    by_manager = listening.held_by(1, table)
    generated = generated_names(output)
    remembered = last_good_names(state)
    running = {
        name.removeprefix("qmail-tcpd@").rsplit(".", 1)[0]
        for name in manager.active_units("qmail-tcpd@*")
    }
    found = []
    for name in sorted(generated | remembered | running):
        if not bootctrl.valid_service_name(name):
            continue
        socket = manager.state(units.tcpd_socket(name))
        service = manager.state(units.tcpd_service(name))
        wanted = frozenset(
            address for entry in socket.listen if (address := plan.parse_listen(entry)) is not None
        )
        main = service.main_pid if service.active in ("active", "reloading") else 0
        found.append(
            Observed(
                name=name,
                generated=name in generated,
                applied_before=name in remembered,
                socket_active=socket.active == "active",
                service_active=service.active in ("active", "reloading"),
                loaded_hash=loaded_hash(output, units.tcpd_service(name)),
                running_hash=(
                    listening.environment_value(main, stamps.STAMP_VARIABLE) if main else None
                ),
                wanted=wanted,
                bound=by_manager & wanted,
                held=listening.held_by(main, table) if main else frozenset(),
                socket_failed=socket.active == "failed",
            )
        )
    send = manager.state(units.SEND_UNIT)
    send_main = send.main_pid if send.active == "active" else 0
    found.append(
        Observed(
            name=SEND,
            generated=(output / f"{units.SEND_UNIT}.d" / units.DROPIN_NAME).exists(),
            applied_before=(state / stamps.LAST_GOOD / f"{SEND}.applied").exists(),
            socket_active=True,
            service_active=send.active == "active",
            loaded_hash=loaded_hash(output, units.SEND_UNIT),
            running_hash=(
                listening.environment_value(send_main, stamps.STAMP_VARIABLE) if send_main else None
            ),
        )
    )
    return found


def service_problems(model: bootctrl.Bootctrl, name: str) -> list[Problem]:
    """The problems that keep one enabled service from its current files."""
    skipped = f"; service {name} skipped"  # said by the listing, not by each line here
    return [
        problem._replace(message=problem.message.removesuffix(skipped))
        for problem in model.problems
        if problem.service == name
    ]


@dataclass(frozen=True)
class Broken:
    """An enabled service whose files have problems."""

    name: str
    problems: tuple[Problem, ...]
    kept: bool  # still running (or ready) with its last good settings


def unknown_accounts(model: bootctrl.Bootctrl) -> dict[str, tuple[Problem, ...]]:
    """Services whose USER=/GROUP= names no account here: qboot-tcpsrv would refuse to
    start. Looked up here, never in the generator (NSS there would ask PID 1 while it
    waits for the generators)."""
    found = {}
    for service in model.services:
        problems = bootctrl.start_problems(service)
        if problems:
            found[service.name] = tuple(problems)
    return found


def can_run(model: bootctrl.Bootctrl, name: str) -> bool:
    """True when the service's files are good and its USER=/GROUP= exist here: `enable`
    keeps its links only then (the reconcile would refuse to run it)."""
    return model.service(name) is not None and name not in unknown_accounts(model)


def broken_services(model: bootctrl.Bootctrl, output: Path = GENERATOR_OUTPUT) -> list[Broken]:
    generated = generated_names(output)
    good = {service.name for service in model.services}
    found = [
        Broken(name, tuple(service_problems(model, name)), name in generated)
        for name in stamps.enabled_names(Path(model.directory))
        if name not in good
    ]
    for name, problems in unknown_accounts(model).items():
        service = model.service(name)
        assert service is not None
        # Kept when what systemd loaded is not these settings (the reconcile refused them
        # and the generator emitted the last good ones); else these very settings.
        loaded = loaded_hash(output, units.tcpd_service(name))
        current = stamps.config_hash(service, model.directory)
        found.append(Broken(name, problems, name in generated and loaded not in ("", current)))
    return sorted(found, key=lambda broken: broken.name)


def last_good_cannot_serve(manager: Systemd, broken: Broken) -> str | None:
    """Why the last good settings systemd loaded serve no client (their cdb is gone, their
    program too), or None: they are good only while they can serve."""
    from . import health

    loaded = manager.state(units.tcpd_service(broken.name)).exec_start
    program, rules = health.chain_facts(loaded)
    facts = health.Facts(broken.name, True, True, program=program, rules=rules)
    judged = health.assess(facts)
    return None if judged.state is not health.State.DOWN else judged.findings[0].text


def status_notes(
    model: bootctrl.Bootctrl,
    name: str,
    socket: UnitState | None,
    service: UnitState,
    output: Path = GENERATOR_OUTPUT,
) -> list[str]:
    """What `qbootctl status` adds for one target: degraded/broken and pending changes."""
    notes = []
    if name == SEND:
        current: bootctrl.Service | bootctrl.Send | None = model.send
    else:
        current = model.service(name)
        broken = next((b for b in broken_services(model, output) if b.name == name), None)
        if broken is not None:
            what = "degraded, runs its last good settings" if broken.kept else "broken"
            reasons = [str(problem) for problem in broken.problems] or ["see qbootctl show"]
            notes += [f"{what}: {reason}" for reason in reasons]
            current = None  # it does not run what bootctrl says: nothing to compare
    running = service.main_pid if service.active == "active" else 0
    if running and not listening.readable(running):
        running = 0  # not root: what runs cannot be compared
    wanted = bound = None
    if (
        socket is not None
        and socket.active == "active"
        and isinstance(current, bootctrl.Service)
        and listening.readable(1)
    ):
        wanted = frozenset(
            address
            for item in current.listen
            if (address := plan.parse_listen(item.systemd())) is not None
        )
        bound = listening.held_by(1, listening.listening_sockets()) & wanted
    note = plan.drift(
        stamps.config_hash(current, model.directory) if current is not None else None,
        loaded_hash(output, service.name),
        listening.environment_value(running, stamps.STAMP_VARIABLE) if running else None,
        wanted,
        bound,
    )
    if note is not None:
        notes.append(note)
    return notes


def ours_running(manager: Systemd) -> list[str]:
    """Every unit of qboot-systemd's that is not inactive (failed ones too)."""
    others = (stamps.PATH_UNIT, units.BOOT_UNIT, units.SEND_UNIT)
    return manager.active_units("qmail-tcpd@*") + [
        unit for unit in others if manager.state(unit).active != "inactive"
    ]
