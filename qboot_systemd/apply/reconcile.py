"""qbootctl reconcile: make what runs equal to what systemd loaded from bootctrl.

The I/O half of stamps.py: refuse settings whose accounts do not exist, bring back
last good drop-ins kept across a reboot, observe (D-Bus, /proc, the generator's output),
plan (pure), act (systemd jobs), then remember what was applied (the last good drop-ins,
in /run and on disk) and write the problems of broken services into their own journals.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .. import admin, bootctrl, generator, journal, listening, units
from ..errors import UserError
from ..problems import Problem
from ..systemd import JobFailed, Systemd, UnitState
from . import lastgood, plan, stamps
from .plan import Observed, Step, Verb

GENERATOR_OUTPUT = admin.GENERATOR_OUTPUT
_STAMP_RE = re.compile(rf"^Environment={stamps.STAMP_VARIABLE}=(\S+)$", re.M)


@contextmanager
def locked(state: Path) -> Iterator[None]:
    """One reconcile (qboot-reconcile, reload-config, uninstall) at a time."""
    try:
        state.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(state / stamps.LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as error:
        raise UserError(f"cannot lock {state}: {error.strerror}", "run it as root") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


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
            name=stamps.SEND,
            generated=(output / f"{units.SEND_UNIT}.d" / units.DROPIN_NAME).exists(),
            applied_before=(state / stamps.LAST_GOOD / f"{stamps.SEND}.applied").exists(),
            socket_active=True,
            service_active=send.active == "active",
            loaded_hash=loaded_hash(output, units.SEND_UNIT),
            running_hash=(
                listening.environment_value(send_main, stamps.STAMP_VARIABLE) if send_main else None
            ),
        )
    )
    return found


def remember(
    output: Path, state: Path, observed: list[Observed], persist: Path | None = None
) -> None:
    """Copy what systemd loaded: the generator re-emits it if the files break later.
    With persist, keep a copy there too, for after a reboot."""
    base = state / stamps.LAST_GOOD
    base.mkdir(mode=0o700, parents=True, exist_ok=True)
    for item in observed:
        if item.is_send:
            marker = base / f"{stamps.SEND}.applied"
            if item.generated:
                marker.touch()
            else:
                marker.unlink(missing_ok=True)
            continue
        directory = base / item.name
        if not item.generated:
            shutil.rmtree(directory, ignore_errors=True)
            continue
        for relative in stamps.service_files(item.name):
            try:
                data = (output / relative).read_bytes()  # a copy: no decoding, any locale
            except OSError:
                continue
            target = directory / relative
            target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            generator.replace_file(target, data)
    if persist is not None:
        keep_across_reboots(output, observed, persist)


def keep_across_reboots(output: Path, observed: list[Observed], persist: Path) -> None:
    """Mirror the last good drop-ins to disk. Never fails the reconcile: without /var
    (read-only, full) a broken service just does not start after a reboot, as before."""
    for item in observed:
        if item.is_send:
            continue
        try:
            if not item.generated:
                lastgood.remove(persist, item.name)
                continue
            files = {
                relative: (output / relative).read_bytes()
                for relative in stamps.service_files(item.name)
            }
            lastgood.save(persist, item.name, files)
        except OSError as error:
            message = (
                f"cannot keep the last good settings of {item.name} in {persist}: "
                f"{error.strerror}; after a reboot, broken files stop it"
            )
            journal.send(message, stamps.RECONCILE_UNIT, journal.PRIORITY_WARNING)


def restore_after_reboot(
    model: bootctrl.Bootctrl, output: Path, state: Path, persist: Path
) -> list[str]:
    """Enabled services that cannot run their files (broken, or an unknown account) and
    have no last good drop-ins in /run (emptied at reboot): the copy kept on disk goes back
    into /run, for the generator. Returns their names; the caller reloads systemd."""
    restored = []
    for broken in broken_services(model, output):
        directory = state / stamps.LAST_GOOD / broken.name
        if directory.exists():
            continue
        files = lastgood.load(persist, broken.name, stamps.service_files(broken.name))
        if files is None:
            continue
        for relative, data in files.items():
            (directory / relative).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            generator.replace_file(directory / relative, data)
        restored.append(broken.name)
    return restored


def service_problems(model: bootctrl.Bootctrl, name: str) -> list[Problem]:
    """The problems that keep one enabled service from its current files."""
    own = (f"qmail-{name}.env", f"qmail-{name}.rc", f"tcprules-{name}.")
    mention = re.compile(rf"\bservice {re.escape(name)}(?:[ ;]|$)")
    skipped = f"; service {name} skipped"
    return [
        Problem(problem.file, problem.line, problem.message.removesuffix(skipped))
        for problem in model.problems
        if os.path.basename(problem.file).startswith(own) or mention.search(problem.message)
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
        problems = bootctrl.unknown_accounts(service)
        if problems:
            found[service.name] = tuple(problems)
    return found


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


def refuse_unknown_accounts(model: bootctrl.Bootctrl, state: Path) -> bool:
    """Mark the settings of services whose accounts do not exist as refused (the generator
    then emits their last good drop-ins), and clear the marks that no longer hold.
    True when a mark changed: the caller reloads systemd before it applies anything."""
    wanted = {
        name: stamps.config_hash(service, model.directory)
        for name in unknown_accounts(model)
        if (service := model.service(name)) is not None
    }
    if wanted == stamps.read_refused(state):
        return False
    base = state / stamps.REFUSED
    base.mkdir(mode=0o700, parents=True, exist_ok=True)
    for path in base.iterdir():
        if path.name not in wanted:
            path.unlink(missing_ok=True)
    for name, stamp in wanted.items():
        generator.replace_file(base / name, f"{stamp}\n".encode())
    return True


ROUNDS = 3


def _apply(manager: Systemd, change: plan.Change) -> str | None:
    """Carry out one change; the reason it failed, or None."""
    touched = dict.fromkeys(step.unit for step in change.steps)
    for step in change.steps:
        try:
            if step.waits:
                manager.act(step.verb.value, step.unit)
            elif step.verb is plan.Verb.START:
                manager.start(step.unit)
            else:
                manager.queue_restart(step.unit)
        except (JobFailed, UserError) as error:
            reason = str(error)
            journal.send(
                f"{change.message} failed: {reason}",
                (step.unit, stamps.RECONCILE_UNIT),
                journal.PRIORITY_ERR,
            )
            return reason
    # Once, for the units it touched and the reconcile's own journal.
    journal.send(change.message, (*touched, stamps.RECONCILE_UNIT), journal.PRIORITY_INFO)
    return None


@dataclass(frozen=True)
class Outcome:
    lines: tuple[str, ...]
    failed: bool
    touched: tuple[str, ...] = ()  # the services it started, stopped or restarted


def _why_stopped(change: plan.Change, refused: set[str]) -> plan.Change:
    """A refused service with no last good settings is not generated: it is stopped for
    its unknown account, not because its rc link went away."""
    if change.name in refused and change.message.endswith("(no longer enabled)"):
        message = f"stopped {change.name} (unknown account: see qbootctl status)"
        return plan.Change(change.name, change.steps, message)
    return change


def take_trigger(output: Path = GENERATOR_OUTPUT) -> None:
    """First thing, whatever fails later: qboot-reconcile.path must not loop on it."""
    (output / stamps.TRIGGER).unlink(missing_ok=True)


def reconcile(
    manager: Systemd,
    model: bootctrl.Bootctrl,
    output: Path = GENERATOR_OUTPUT,
    state: Path | None = None,
    persist: Path | None = None,
) -> Outcome:
    """Apply the plan; the caller holds the lock."""
    state = state or stamps.state_dir()
    persist = persist or lastgood.persist_dir()
    take_trigger(output)
    refusals_changed = refuse_unknown_accounts(model, state)
    restored = restore_after_reboot(model, output, state, persist)
    if refusals_changed or restored:
        # Before anything is applied: systemd loads the last good drop-ins for a refused
        # or restored service (the generator reads /run/qboot), so a refused restart
        # never comes.
        manager.reload()
        take_trigger(output)  # this reconcile applies what that reload loaded
    refused = set(stamps.read_refused(state))
    lines: list[str] = []
    touched: dict[str, None] = {}
    failed = restore_failed = False
    for name in restored:
        socket = units.tcpd_socket(name)
        if manager.state(socket).active == "active":
            continue
        # Restored means remembered: the plan would take it for one the admin stopped.
        change = plan.Change(
            name, (Step(Verb.START, socket),), f"started {socket} (last good settings kept on disk)"
        )
        error = _apply(manager, change)
        touched[name] = None
        lines.append(change.message if error is None else f"{change.message} failed: {error}")
        restore_failed = restore_failed or error is not None
    # An admin's own `systemctl restart` may run between our jobs: look again until
    # nothing differs (a change that keeps failing is tried ROUNDS times, then reported).
    # A restart queued behind this reconcile shows only once it has ended: it is not
    # planned, queued and logged again meanwhile.
    queued: set[plan.Change] = set()
    for _ in range(ROUNDS):
        observed = observe(manager, output, state)
        changes = [_why_stopped(change, refused) for change in plan.plan(observed)]
        changes = [change for change in changes if change not in queued]
        if not changes:
            break
        failed = False
        for change in changes:
            error = _apply(manager, change)
            touched[change.name] = None
            lines.append(change.message if error is None else f"{change.message} failed: {error}")
            failed = failed or error is not None
            if error is None and not any(step.waits for step in change.steps):
                queued.add(change)
    remember(output, state, observed, persist)
    for broken in broken_services(model, output):
        unit = units.tcpd_service(broken.name)
        what = "keeps running its last good settings" if broken.kept else "is not running"
        if broken.kept:
            cannot = _last_good_cannot_serve(manager, broken)
            if cannot is not None:
                what = f"is down: its last good settings cannot serve: {cannot}"
        for problem in broken.problems:
            journal.send(f"{problem} ({broken.name} {what})", unit, journal.PRIORITY_ERR)
    return Outcome(tuple(lines), failed or restore_failed, tuple(touched))


def _last_good_cannot_serve(manager: Systemd, broken: Broken) -> str | None:
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
    if name == stamps.SEND:
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


def uninstall_order(manager: Systemd) -> list[str]:
    """Everything qboot-systemd runs, in the order to stop it: no reconcile first, then
    each service before its socket."""
    found = manager.active_units("qmail-tcpd@*")
    services = [unit for unit in found if unit.endswith(".service")]
    sockets = [unit for unit in found if unit.endswith(".socket")]
    running = [
        unit
        for unit in (stamps.PATH_UNIT, units.BOOT_UNIT, units.SEND_UNIT)
        if manager.state(unit).active != "inactive"
    ]
    first = [unit for unit in running if unit != units.SEND_UNIT]
    return first + services + sockets + [unit for unit in running if unit == units.SEND_UNIT]
