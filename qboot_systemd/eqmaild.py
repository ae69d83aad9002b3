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
from contextlib import nullcontext

from . import admin, convergence, reconcile
from . import bootctrl as bootctrl_model
from .errors import UserError
from .systemd import JobFailed, Systemd

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


def _step(manager: Systemd, verb: str, item: admin.Target) -> bool:
    units = item.units
    try:
        if verb == "stop":
            was_running = manager.state(units[0]).active == "active"
            for unit in reversed(units):
                manager.act("stop", unit)
            return was_running  # stopping what did not run fails, as the seed shows
        manager.act("start", units[0])
        return True
    except JobFailed:
        return False


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
        # status only reads (and may run unprivileged); the others wait for a reconcile.
        lock = reconcile.locked(convergence.state_dir()) if verb != "status" else nullcontext()
        with lock, Systemd() as manager:
            if verb in ("start", "restart"):
                manager.reload()  # the generator sees new rc links and env edits
            for item in targets:
                quiet = _noresult(model, item.name)
                if verb == "status":
                    ok = manager.state(item.units[0]).active == "active"
                    print(line("Checking", item.name, ok, quiet))
                    failures += not ok
                    continue
                for step in ("stop", "start") if verb == "restart" else (verb,):
                    ok = _step(manager, step, item)
                    print(line("Starting" if step == "start" else "Stopping", item.name, ok, quiet))
                    failures += not ok and step == "start"
    except UserError as error:
        return error.report("eqmaild")
    if verb == "status":
        return 3 if failures else 0
    return 1 if failures else 0
