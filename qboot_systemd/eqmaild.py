"""eqmaild: the seed's boot script interface (start|stop|restart|status), on systemd.

    $ eqmaild start
    Starting qmail-send ...           OK
    Starting qmail-smtp ...           OK

NORESULT=1 leaves out OK/FAILED: in eqmaild's environment for every line, or as
`setenv NORESULT 1` in qmail-SVC.env for that service's lines (as the seed's rc scripts
read their env file). start and restart reload systemd first, so `ln -s ...` then
`eqmaild restart` works as in the seed.
"""

from __future__ import annotations

import os
import sys

from . import admin, convergence, reconcile
from . import bootctrl as bootctrl_model
from .errors import UserError, from_os_error
from .systemd import SETTLE_SECONDS, JobFailed, Systemd

USAGE = "usage: eqmaild start|stop|restart|status"


def line(verb: str, name: str, ok: bool, noresult: bool = False) -> str:
    """`Starting qmail-send ...           OK`: the result centred after column 30."""
    text = f"{verb} qmail-{name} ..."
    if noresult or os.environ.get("NORESULT") == "1":
        return text
    return (f"{text:<30}" + f"{'OK' if ok else 'FAILED':^10}").rstrip()


def _noresult(model: bootctrl_model.Bootctrl, name: str) -> bool:
    service = model.service(name)
    return service is not None and dict(service.environment).get("NORESULT") == "1"


def _reload(manager: Systemd) -> None:
    """The generator sees new rc links and env edits; then the reconcile that reload
    triggers runs first (a service's start waits for it anyway)."""
    manager.reload()
    try:
        manager.act("start", convergence.RECONCILE_UNIT, timeout=300, oneshot=True)
    except (JobFailed, UserError) as error:
        print(f"eqmaild: {error}", file=sys.stderr)


def _step(manager: Systemd, verb: str, item: admin.Target, was_running: bool) -> JobFailed | bool:
    """True when done; False when stopping what did not run (the seed shows FAILED); the
    JobFailed of a unit that did not start or did not stay up."""
    try:
        if verb == "stop":
            for _, unit in admin.plan("stop", item):
                manager.act("stop", unit)
            return was_running
        for unit_verb, unit in admin.plan("start", item):
            manager.act(unit_verb, unit, settle=SETTLE_SECONDS)
        return True
    except JobFailed as error:
        return error


def _status_broken(model: bootctrl_model.Bootctrl) -> int:
    """Enabled services whose files have problems: FAILED and why, even while they
    run their last good settings. Returns how many."""
    found = reconcile.broken_services(model)
    for broken in found:
        print(line("Checking", broken.name, False, _noresult(model, broken.name)))
        what = "runs its last good settings" if broken.kept else "not running"
        for problem in broken.problems:
            print(f"  {problem} ({what})")
        if not broken.problems:
            print(f"  {what}: see qbootctl show")
    return len(found)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0] not in ("start", "stop", "restart", "status"):
        print(USAGE, file=sys.stderr)
        return 100
    verb = args[0]
    try:
        directory = bootctrl_model.default_bootctrl()
        if not directory.is_dir():
            raise UserError(
                f"bootctrl directory {directory} not found",
                "set QBOOT_BOOTCTRL or run qbootctl install",
            )
        model = convergence.load(directory)
        targets = admin.resolve(model, ())
        failures = 0
        with Systemd() as manager:
            # Stopping what did not run fails, as the seed shows: as it was before the
            # reload (a newly enabled service is started by the reconcile it triggers).
            running = {
                item.name: manager.state(item.units[0]).active == "active" for item in targets
            }
            if verb in ("start", "restart"):
                _reload(manager)
            broken = {item.name for item in reconcile.broken_services(model)}
            for item in targets:
                quiet = _noresult(model, item.name)
                if verb == "status":
                    if item.name in broken:
                        continue  # _status_broken says FAILED and why
                    states = [manager.state(unit) for unit in item.units]
                    ok = states[0].active == "active" and not states[-1].crash_looping
                    print(line("Checking", item.name, ok, quiet))
                    failures += not ok
                    continue
                for step in ("stop", "start") if verb == "restart" else (verb,):
                    outcome = _step(manager, step, item, running[item.name])
                    ok = outcome is True
                    print(line("Starting" if step == "start" else "Stopping", item.name, ok, quiet))
                    if isinstance(outcome, JobFailed):
                        print(f"eqmaild: {outcome}", file=sys.stderr)
                        for journal_line in outcome.journal.splitlines():
                            print(f"  {journal_line}", file=sys.stderr)
                    failures += not ok and step == "start"
            if verb == "status":
                failures += _status_broken(model)
    except UserError as error:
        return error.report("eqmaild")
    except OSError as error:
        return from_os_error(error).report("eqmaild")
    if verb == "status":
        return 3 if failures else 0
    return 1 if failures else 0
