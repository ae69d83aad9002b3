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

from . import admin, units
from . import bootctrl as bootctrl_model
from .apply import health, observe, stamps
from .errors import UserError, from_os_error
from .systemd import SETTLE_SECONDS, JobFailed, Systemd

USAGE = "usage: eqmaild start|stop|restart|status"


# The seed printed OK or FAILED; a service that serves clients, but not as bootctrl says
# (its last good settings, rules older than their text), is neither.
RESULT_WORDS = {
    health.State.RUNNING: "OK",
    health.State.DEGRADED: "DEGRADED",
    health.State.STOPPED: "FAILED",
    health.State.DOWN: "FAILED",
}


def line(verb: str, name: str, ok: bool | str, noresult: bool = False) -> str:
    """`Starting qmail-send ...           OK`: the result centred after column 30."""
    text = f"{verb} qmail-{name} ..."
    if noresult or os.environ.get("NORESULT") == "1":
        return text
    word = ok if isinstance(ok, str) else ("OK" if ok else "FAILED")
    return (f"{text:<30}" + f"{word:^10}").rstrip()


def _noresult(model: bootctrl_model.Bootctrl, name: str) -> bool:
    service = model.service(name)
    return service is not None and dict(service.environment).get("NORESULT") == "1"


def _reload(manager: Systemd) -> None:
    """The generator sees new rc links and env edits; then the reconcile that reload
    triggers runs first (a service's start waits for it anyway)."""
    manager.reload()
    try:
        manager.act("start", stamps.RECONCILE_UNIT, timeout=300, oneshot=True)
    except (JobFailed, UserError) as error:
        print(f"eqmaild: {error}", file=sys.stderr)


def _step(manager: Systemd, verb: str, item: admin.Target, was_running: bool) -> JobFailed | bool:
    """True when done; False when stopping what did not run (the seed shows FAILED); the
    JobFailed of a unit that did not start or did not stay up."""
    try:
        if verb == "stop":
            for _, unit in admin.unit_jobs("stop", item):
                manager.act("stop", unit)
            return was_running
        for unit_verb, unit in admin.unit_jobs("start", item):
            manager.act(unit_verb, unit, settle=SETTLE_SECONDS)
        return True
    except JobFailed as error:
        return error


def _judge(manager: Systemd, model: bootctrl_model.Bootctrl, item: admin.Target) -> health.Health:
    found = admin.status(manager, model, [item])[0].health
    assert found is not None
    return found


def _explain(judged: health.Health) -> None:
    """Why it is not OK, under its line: file:line and a hint."""
    for text in judged.lines():
        print(f"  {text}")


def _targets(manager: Systemd, model: bootctrl_model.Bootctrl, verb: str) -> list[admin.Target]:
    """stop: everything of ours that systemd runs, degraded or not, and what bootctrl
    enables; start and status: what bootctrl enables, broken services included."""
    running = admin.running_names(manager.active_units("qmail-tcpd@*", failed=verb == "stop"))
    send_running = manager.state(units.SEND_UNIT).active != "inactive"
    found = admin.everything(model, running if verb in ("stop", "status") else [], send_running)
    if verb == "stop" or verb == "status":
        return found
    enabled = set(stamps.enabled_names(model.directory))
    return [t for t in found if (t.is_send and model.send is not None) or t.name in enabled]


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
        model = stamps.load(directory)
        failures = 0
        judged: list[health.Health] = []
        with Systemd() as manager:
            targets = _targets(manager, model, verb)
            # Stopping what did not run fails, as the seed shows: as it was before the
            # reload (a newly enabled service is started by the reconcile it triggers).
            running = {
                item.name: manager.state(item.units[0]).active == "active" for item in targets
            }
            if verb in ("start", "restart"):
                _reload(manager)
                model = stamps.load(directory)
            broken = {item.name: item for item in observe.broken_services(model)}
            for item in targets:
                quiet = _noresult(model, item.name)
                if verb == "status":
                    checked = _judge(manager, model, item)
                    judged.append(checked)
                    print(line("Checking", item.name, RESULT_WORDS[checked.state], quiet))
                    _explain(checked)
                    continue
                cannot_start = item.name in broken and not broken[item.name].kept
                if verb == "restart" and cannot_start and running[item.name]:
                    # Its files cannot start it again: stopping it would take down what
                    # serves now (`qbootctl restart` refuses too).
                    why = _judge(manager, model, item)
                    print(line("Restarting", item.name, RESULT_WORDS[why.state], quiet))
                    _explain(why)
                    print("  not restarted: it keeps running until its files are fixed")
                    failures += 1
                    continue
                for step in ("stop", "start") if verb == "restart" else (verb,):
                    if step == "start" and item.name in broken and not broken[item.name].kept:
                        # Nothing it could run: say why instead of starting a unit.
                        why = _judge(manager, model, item)
                        print(line("Starting", item.name, RESULT_WORDS[why.state], quiet))
                        _explain(why)
                        failures += 1
                        continue
                    outcome = _step(manager, step, item, running[item.name])
                    word: bool | str = outcome is True
                    found: health.Health | None = None
                    if step == "start" and outcome is True:
                        found = _judge(manager, model, item)
                        word = RESULT_WORDS[found.state]
                        failures += found.state is not health.State.RUNNING
                    verb_word = "Starting" if step == "start" else "Stopping"
                    print(line(verb_word, item.name, word, quiet))
                    if found is not None:
                        _explain(found)
                    if isinstance(outcome, JobFailed):
                        print(f"eqmaild: {outcome}", file=sys.stderr)
                        for journal_line in outcome.journal.splitlines():
                            print(f"  {journal_line}", file=sys.stderr)
                        failures += step == "start"
    except UserError as error:
        return error.report("eqmaild")
    except OSError as error:
        return from_os_error(error).report("eqmaild")
    if verb == "status":
        return health.lsb_status(judged)
    return 1 if failures else 0
