"""qbootctl reconcile: make what runs equal to what systemd loaded from bootctrl.

Refuse settings whose accounts do not exist and bring back last good drop-ins kept across
a reboot (lastgood), observe (observe), plan (plan, pure), carry the plan out as systemd
jobs, then remember what was applied (lastgood) and write the problems of broken services
into their own journals.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .. import bootctrl, journal, units
from ..errors import UserError
from ..systemd import JobFailed, Systemd
from . import lastgood, observe, plan, stamps
from .observe import GENERATOR_OUTPUT
from .plan import Step, Verb


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


ROUNDS = 3


def _apply(manager: Systemd, change: plan.Change) -> str | None:
    """Carry out one change; the reason it failed, or None."""
    touched = dict.fromkeys(step.unit for step in change.steps)
    for step in change.steps:
        try:
            if step.waits:
                manager.act(step.verb.value, step.unit)
            elif step.verb is plan.Verb.START:
                manager.queue_start(step.unit)
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
    refusals_changed = lastgood.refuse_unknown_accounts(model, state)
    restored = lastgood.restore_after_reboot(model, output, state, persist)
    if refusals_changed or restored:
        # Before anything is applied: systemd loads the last good drop-ins for a refused
        # or restored service (the generator reads /run/qboot), so a refused restart
        # never comes.
        manager.reload()
        take_trigger(output)  # this reconcile applies what that reload loaded
    refused = frozenset(stamps.read_refused(state))
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
        observed = observe.observe(manager, output, state)
        changes = plan.changes(observed, refused)
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
    lastgood.remember(output, state, observed, persist)
    for broken in observe.broken_services(model, output):
        unit = units.tcpd_service(broken.name)
        what = "keeps running its last good settings" if broken.kept else "is not running"
        if broken.kept:
            cannot = observe.last_good_cannot_serve(manager, broken)
            if cannot is not None:
                what = f"is down: its last good settings cannot serve: {cannot}"
        for problem in broken.problems:
            journal.send(f"{problem} ({broken.name} {what})", unit, journal.PRIORITY_ERR)
    return Outcome(tuple(lines), failed or restore_failed, tuple(touched))
