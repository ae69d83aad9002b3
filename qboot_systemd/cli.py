"""qbootctl: everyday administration of a qboot-systemd host."""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, ParamSpec, TypeVar

import click

from . import admin, install, migrate, mktcprules, rules
from . import bootctrl as bootctrl_model
from . import units as units_module
from .addresses import unmap_ipv4
from .apply import health, stamps
from .cdb import CdbFormatError, CdbReader
from .errors import UserError, from_os_error
from .systemd import JobFailed

if TYPE_CHECKING:
    from .systemd import Systemd

P = ParamSpec("P")
R = TypeVar("R")


def user_errors(function: Callable[P, R]) -> Callable[P, R]:
    """Turn UserError, and OSError (an unreadable or read-only path), into one line plus a
    hint and a non-zero exit."""

    @functools.wraps(function)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return function(*args, **kwargs)
        except UserError as error:
            sys.exit(error.report("qbootctl"))
        except OSError as error:
            sys.exit(from_os_error(error).report("qbootctl"))
        except JobFailed as error:  # a unit that did not start: its state and journal
            click.echo(f"qbootctl: error: {error}", err=True)
            for journal_line in error.journal.splitlines():
                click.echo(f"  {journal_line}", err=True)
            sys.exit(1)

    return wrapper


bootctrl_option = click.option(
    "--bootctrl",
    "bootctrl_dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="bootctrl directory (default: $QBOOT_BOOTCTRL or /var/qmail/etc/bootctrl)",
)
qmail_home_option = click.option(
    "--qmail-home",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="qmail home (default: $QBOOT_QMAIL_HOME or /var/qmail)",
)


def bootctrl_directory(directory: Path | None) -> Path:
    """--bootctrl, else $QBOOT_BOOTCTRL or the default; it must exist."""
    path = directory or bootctrl_model.default_bootctrl()
    if not path.is_dir():
        raise UserError(
            f"bootctrl directory {path} not found", "pass --bootctrl DIR or set QBOOT_BOOTCTRL"
        )
    return path


def load_bootctrl(
    directory: Path | None, qmail_home: Path | None = None
) -> bootctrl_model.Bootctrl:
    return stamps.load(bootctrl_directory(directory), qmail_home, check_accounts=True)


def _completion_dir(ctx: click.Context) -> Path:
    return ctx.params.get("bootctrl_dir") or bootctrl_model.default_bootctrl()


def complete_enabled(ctx: click.Context, _param: click.Parameter, incomplete: str) -> list[str]:
    """Service names for shell completion: send, all and the enabled services."""
    names = ["send", "all", *stamps.enabled_names(_completion_dir(ctx))]
    return [name for name in names if name.startswith(incomplete)]


def complete_available(ctx: click.Context, _param: click.Parameter, incomplete: str) -> list[str]:
    """Services `enable` can take: an env file, not enabled yet."""
    directory = _completion_dir(ctx)
    enabled = set(stamps.enabled_names(directory))
    names = sorted(
        path.name.removeprefix("qmail-").removesuffix(".env")
        for path in directory.glob("qmail-*.env")
    )
    return [n for n in names if n not in enabled and n.startswith(incomplete)]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="qboot-systemd")
def qbootctl() -> None:
    """Administer qmail services run by systemd from a qboot bootctrl directory."""


def _render_table(model: bootctrl_model.Bootctrl) -> str:
    lines = [f"bootctrl {model.directory}"]
    if model.send is None:
        lines.append("send     disabled (no qmail-init.rc)")
    else:
        delivery = model.send.default_delivery.replace("\n", "\\n")
        lines.append(f"send     enabled  delivery {delivery!s}  ({model.send.delivery_source})")
    if not model.services:
        lines.append("(no tcp service enabled: ln -s qmail-tcpd qmail-SVC.rc)")
    for service in model.services:
        listen = " ".join(item.systemd() for item in service.listen)
        limits = f"maxconn {service.maxconn}"
        if service.maxperip:
            limits += f"  maxperip {service.maxperip}"
        lines.append(
            f"{service.name:<8} listen {listen}  rules {Path(service.rules).name}  {limits}"
        )
        if service.user or service.group:
            lines.append(f"{'':<8} user {service.user or '-'}  group {service.group or '-'}")
        lines.append(f"{'':<8} command {' '.join(service.command)}")
        for name, value in service.environment:
            lines.append(f"{'':<8} setenv {name}={value}")
    if model.problems:
        lines.append("problems:")
        lines.extend(f"  {problem}" for problem in model.problems)
    return "\n".join(lines)


def _render_settings(service: bootctrl_model.Service) -> str:
    items = bootctrl_model.settings_of(service)
    values = [bootctrl_model.printable(item["value"]) or "''" for item in items]
    width = min(max(map(len, values)), 40)
    lines = [f"{service.name}: settings from {service.env_file or '(no env file)'}"]
    for item, value in zip(items, values, strict=True):
        lines.append(f"  {item['name']:<12} {value:<{width}}  {item['source']}")
    return "\n".join(lines)


@qbootctl.command()
@bootctrl_option
@qmail_home_option
@click.option("--json", "as_json", is_flag=True, help="print the model as JSON")
@click.argument("service", required=False, shell_complete=complete_enabled)
@user_errors
def show(
    bootctrl_dir: Path | None, qmail_home: Path | None, as_json: bool, service: str | None
) -> None:
    """Show what the bootctrl directory enables, and every problem in it; with SERVICE,
    each of its settings with its value and the file:line it came from."""
    model = load_bootctrl(bootctrl_dir, qmail_home)
    if service is not None:
        found = model.service(service)
        if found is None:
            raise UserError(
                f"service {service} is not enabled or has problems", "see qbootctl show"
            )
        if as_json:
            shown = bootctrl_model.settings_of(found)
            click.echo(json.dumps({"service": service, "settings": shown}, indent=2))
        else:
            click.echo(_render_settings(found))
        sys.exit(0)
    if as_json:
        click.echo(json.dumps(model.as_json(), indent=2))
    else:
        click.echo(_render_table(model))
    sys.exit(1 if model.problems else 0)


@qbootctl.group(name="rules")
def rules_group() -> None:
    """Compile and check tcprules files."""


@rules_group.command(name="compile")
@bootctrl_option
@click.option("--force", is_flag=True, help="recompile even when the cdb is up to date")
@click.argument("service", required=False)
@user_errors
def rules_compile(bootctrl_dir: Path | None, force: bool, service: str | None) -> None:
    """Compile tcprules-*.txt to .cdb (all, or one SERVICE), like mktcprules."""
    directory = bootctrl_directory(bootctrl_dir)
    if service is None:
        results = mktcprules.compile_directory(directory, force)
    else:
        source = directory / f"tcprules-{service}.txt"
        if not source.is_file():
            raise UserError(
                f"{source} not found",
                f"service {service} uses the rules its env file or tcprules-{service}.cdb names",
            )
        results = [mktcprules.compile_one(source, source.with_suffix(".cdb"), force)]
    for result in results:
        click.echo(result.line(), err=result.outcome is mktcprules.Outcome.FAILED)
    if any(result.outcome is mktcprules.Outcome.FAILED for result in results):
        sys.exit(1)


@rules_group.command(name="check")
@bootctrl_option
@click.option("--service", help="check the rules of this service (default: tcprules-default)")
@click.option("--host", default=None, help="the client's reverse DNS name (TCPREMOTEHOST)")
@click.option("--info", default=None, help="the client's ident answer (TCPREMOTEINFO)")
@click.argument("ip")
@user_errors
def rules_check(
    bootctrl_dir: Path | None, service: str | None, host: str | None, info: str | None, ip: str
) -> None:
    """Show which rule applies to a client at IP, like tcprulescheck."""
    directory = bootctrl_directory(bootctrl_dir)
    if service is None:
        path = directory / "tcprules-default.cdb"
    else:
        model = load_bootctrl(directory)
        found = model.service(service)
        if found is None:
            raise UserError(
                f"service {service} is not enabled or has problems", "see qbootctl show"
            )
        path = Path(found.rules)
    if not rules.is_ip(ip):
        raise UserError(f"{ip!r} is not an IP address")
    source = path.with_suffix(".txt")
    if source.is_file() and path.is_file() and not mktcprules.is_up_to_date(source, path):
        click.echo(f"warning: {path.name} is older than {source.name}: run mktcprules", err=True)
    try:
        reader = CdbReader.open(path)
        report = rules.check_report(
            reader,
            unmap_ipv4(ip).encode(),
            host.encode() if host is not None else None,
            info.encode() if info is not None else None,
        )
    except (OSError, CdbFormatError) as error:
        raise UserError(f"unable to read {path}: {error}", "run mktcprules") from None
    sys.stdout.buffer.write(report)


@qbootctl.command()
@bootctrl_option
@click.option(
    "--output",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="write into this directory (default: a temporary one)",
)
@click.option("--tcpsrv", default=None, help="path of qboot-tcpsrv in ExecStart=")
@qmail_home_option
@user_errors
def generate(
    bootctrl_dir: Path | None, output: Path | None, tcpsrv: str | None, qmail_home: Path | None
) -> None:
    """Run the generator offline and print what systemd would get."""
    import tempfile

    from . import generator, units

    model = load_bootctrl(bootctrl_dir, qmail_home)
    paths = units.Paths(tcpsrv=tcpsrv or _installed_tcpsrv())
    files, links, problems = generator.plan(model, paths)
    with tempfile.TemporaryDirectory(prefix="qboot-generate.") as scratch:
        target = output or Path(scratch)
        generator.write(target, files, links)
        for relative in sorted({*files, *links}):
            if relative in links:
                click.echo(f"{relative} -> {links[relative]}")
            else:
                click.echo(f"--- {relative}")
                click.echo(files[relative], nl=False)
    for problem in problems:
        click.echo(f"problem: {problem}", err=True)
    sys.exit(1 if problems else 0)


def _installed_tcpsrv() -> str:
    """qboot-tcpsrv beside this qbootctl (the venv or /usr/bin)."""
    return str(Path(sys.argv[0]).resolve().parent / "qboot-tcpsrv")


@qbootctl.command(name="install")
@click.option(
    "--root",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("/"),
    help="install below this directory (packaging, tests)",
)
@click.option(
    "--prefix",
    type=click.Path(path_type=Path),
    default=None,
    help="where bin/qboot-tcpsrv and bin/qbootctl are (default: this installation)",
)
@click.option(
    "--unit-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="systemd unit directory (default: /usr/lib/systemd/system)",
)
@qmail_home_option
@click.option(
    "--python", default=None, help="interpreter for the generator launcher (default: this one)"
)
@click.option(
    "--no-bootctrl",
    is_flag=True,
    help="do not copy the default bootctrl (packages do it in postinst)",
)
@click.option("--no-byte-compile", is_flag=True, help="leave byte-compiling to the package manager")
@click.option(
    "--force",
    is_flag=True,
    help="install even when code that will run as root can be changed by another user",
)
@user_errors
def install_command(
    root: Path,
    prefix: Path | None,
    unit_dir: Path | None,
    qmail_home: Path | None,
    python: str | None,
    no_bootctrl: bool,
    no_byte_compile: bool,
    force: bool,
) -> None:
    """Install the units, the generator and the default bootctrl (never overwriting)."""
    layout = _layout(root, prefix, unit_dir, qmail_home)
    if root == Path("/"):
        _refuse_untrusted_code(python or sys.executable, layout.bindir, force)
    try:
        for line in install.install(
            layout, python, bootctrl=not no_bootctrl, byte_compile=not no_byte_compile
        ):
            click.echo(line)
        # The old boot scripts must not start next to the new units (processes only on
        # this machine, not in a staging tree).
        for line in migrate.migrate(root, Path("/proc") if root == Path("/") else None):
            click.echo(line)
    except OSError as error:
        raise UserError(
            f"cannot install: {error}", "run as root, or use --root for a staging tree"
        ) from None
    if root == Path("/") and Path("/run/systemd/system").is_dir():
        click.echo("now: systemctl daemon-reload")


@qbootctl.command(name="migrate")
@click.option("--root", type=click.Path(path_type=Path, file_okay=False), default=Path("/"))
@user_errors
def migrate_command(root: Path) -> None:
    """Mask the old qboot/qmail init script and name what else runs qmail the old way
    (also done by install; for packages' postinst)."""
    try:
        lines = migrate.migrate(root, Path("/proc") if root == Path("/") else None)
    except OSError as error:
        raise UserError(f"cannot migrate: {error}", "run as root") from None
    for line in lines:
        click.echo(line)
    if not lines:
        click.echo("migrate: no old boot scripts, service directories or processes found")


@qbootctl.command(name="check-send")
@user_errors
def check_send() -> None:
    """Refuse to start qmail-send next to another one on the same queue (ExecStartPre=)."""
    other = migrate.foreign_queue_runner()
    if other is not None:
        raise UserError(
            f"qmail-send already runs as pid {other.pid} outside qmail-send.service "
            f"({other.cgroup}); two on one queue would corrupt it",
            "stop the old boot scripts first (/etc/init.d/qmaild stop, or svc -d), "
            "then: qbootctl install finds and masks them",
        )


def _refuse_untrusted_code(python: str, bindir: Path, force: bool) -> None:
    """The generator and the units run this code as root at every boot: whoever can
    change it (a checkout owned by a normal user) would become root."""
    found = install.untrusted_code(install.code_paths(python, bindir))
    if not found:
        return
    shown = found[:5] + ([f"... and {len(found) - 5} more"] if len(found) > 5 else [])
    if not force:
        for line in shown:
            click.echo(f"qbootctl: untrusted: {line}", err=True)
        raise UserError(
            "the code to install can be changed by a user other than root, "
            "and it would run as root at every boot",
            "install from a root-owned copy (chown -R root, chmod -R go-w), "
            "or pass --force to do it anyway",
        )
    click.echo("qbootctl: WARNING: installing code that non-root users can change;", err=True)
    click.echo("qbootctl: WARNING: they can become root at the next boot:", err=True)
    for line in shown:
        click.echo(f"qbootctl: WARNING:   {line}", err=True)


@qbootctl.command()
@click.option("--root", type=click.Path(path_type=Path, file_okay=False), default=Path("/"))
@click.option("--unit-dir", type=click.Path(path_type=Path), default=None)
@user_errors
def uninstall(root: Path, unit_dir: Path | None) -> None:
    """Stop and remove the units and the generator; the bootctrl directory stays."""
    layout = _layout(root, None, unit_dir, None)
    live = root == Path("/") and Path("/run/systemd/system").is_dir() and os.geteuid() == 0
    if live:  # what runs from the units about to go must not be left running
        from .apply import observe, plan
        from .apply.reconcile import locked
        from .systemd import Systemd

        with locked(stamps.state_dir()), Systemd() as manager:
            for unit in plan.uninstall_order(observe.ours_running(manager)):
                manager.act("stop", unit)
                click.echo(f"stopped {unit}")
    for line in install.uninstall(layout):
        click.echo(f"removed {line}")
    if live:
        from .apply import lastgood

        if lastgood.forget_all(lastgood.persist_dir()):
            click.echo(f"removed {lastgood.persist_dir()} (last good settings kept for reboots)")
        from .systemd import Systemd

        with Systemd() as manager:
            manager.reload()


def _layout(
    root: Path, prefix: Path | None, unit_dir: Path | None, qmail_home: Path | None
) -> install.Layout:
    bindir = (prefix / "bin") if prefix else Path(_installed_tcpsrv()).parent
    return install.Layout(
        root=root,
        bindir=bindir,
        unit_dir=unit_dir or Path("/usr/lib/systemd/system"),
        qmail_home=qmail_home or bootctrl_model.default_qmail_home(),
    )


@qbootctl.command()
@bootctrl_option
@qmail_home_option
@click.option(
    "--unit-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="installed templates (default: render them afresh)",
)
@user_errors
def verify(bootctrl_dir: Path | None, qmail_home: Path | None, unit_dir: Path | None) -> None:
    """Generate, then run systemd-analyze verify on every concrete unit."""
    from . import verify as verify_module

    model = load_bootctrl(bootctrl_dir, qmail_home)
    report = verify_module.verify(model, _installed_tcpsrv(), unit_dir)
    for line in report.lines:
        click.echo(line)
    sys.exit(0 if report.ok else 1)


@qbootctl.command()
@bootctrl_option
@user_errors
def boot(bootctrl_dir: Path | None) -> None:
    """Reload systemd and start what bootctrl enables (the late-/var oneshot)."""
    from .systemd import Systemd

    _require_root("qbootctl boot")
    with Systemd() as manager:
        manager.reload()
        model = load_bootctrl(bootctrl_dir)
        names = [units_module.tcpd_socket(s.name) for s in model.services]
        if model.send is not None:
            names.append(units_module.SEND_UNIT)
        names.append(stamps.PATH_UNIT)  # linked by this reload: start it too
        for name in names:
            manager.queue_start(name)
            click.echo(f"started {name}")
        for problem in model.problems:
            click.echo(f"problem: {problem}", err=True)


def _require_root(action: str) -> None:
    if os.geteuid() != 0:
        raise UserError(f"{action} needs root", "run it with sudo")


def _styled(text: str, good: bool) -> str:
    """Colour only on a terminal."""
    if not sys.stdout.isatty():
        return text
    return click.style(text, fg="green" if good else "red")


def _status_line(entry: admin.Status) -> str:
    judged = entry.health
    states = "  ".join(f"{state.name.rsplit('.', 1)[1]} {state.active}" for state in entry.states)
    word = judged.state.value if judged is not None else ""
    parts = [f"{entry.target.name:<8}", f"{word:<8}", "enabled " if entry.enabled else "disabled"]
    parts.append(states)
    listening = entry.listening() if entry.states[0].active == "active" else ()
    if entry.service is not None:
        wanted = tuple(item.systemd() for item in entry.service.listen)
        if listening and set(listening) != set(wanted):
            # The socket still listens where the last reload said: show both.
            parts.append(f"listen {' '.join(listening)} (pending: {' '.join(wanted)})")
        else:
            parts.append("listen " + " ".join(wanted))
        parts.append(f"rules {Path(entry.service.rules).name}")
        plugins = entry.service.presmtpd + entry.service.postsmtpd
        if plugins:
            parts.append("plugins " + " ".join(plugins))
    elif listening:
        parts.append("listen " + " ".join(listening))
    restarts = sum(state.restarts for state in entry.states)
    if restarts:
        parts.append(f"restarted {restarts}x by systemd")
    figures = next((s.status_text for s in entry.states if s.status_text), "")
    if figures:
        parts.append(f"[{figures}]")
    return _styled("  ".join(parts), judged is not None and judged.state is health.State.RUNNING)


def _targets_of(
    manager: Systemd,
    model: bootctrl_model.Bootctrl,
    services: tuple[str, ...],
    verb: str = "status",
) -> list[admin.Target]:
    """Named targets; for none or `all`, qmail-send and every tcp service that bootctrl
    enables (broken or not) or that systemd runs."""
    if services and "all" not in services:
        return admin.resolve(model, services)
    # A failed unit of a service bootctrl no longer enables serves nobody: status leaves
    # it out; stop takes it along all the same.
    running = admin.running_names(manager.active_units("qmail-tcpd@*", failed=verb == "stop"))
    send_running = manager.state(units_module.SEND_UNIT).active != "inactive"
    return admin.everything(model, running, send_running)


@qbootctl.command()
@bootctrl_option
@click.option("--json", "as_json", is_flag=True)
@click.argument("services", nargs=-1, shell_complete=complete_enabled)
@user_errors
def status(bootctrl_dir: Path | None, as_json: bool, services: tuple[str, ...]) -> None:
    """One line per service: its health, enabled, socket and service state, listen, rules,
    figures; then why it is not running as bootctrl says, with file:line and a hint.

    Exit status as an LSB init script's: 0 when every service serves as bootctrl says,
    3 when one is not running or serves no client (down), 150 when all serve but one
    not as bootctrl says (degraded: last good settings, old rules, a pending change)."""
    from .systemd import Systemd

    model = load_bootctrl(bootctrl_dir)
    with Systemd() as manager:
        entries = admin.status(manager, model, _targets_of(manager, model, services))
    judged = [entry.health for entry in entries if entry.health is not None]
    if as_json:
        documents = [
            entry.as_json() | {"notes": entry.health.lines() if entry.health else []}
            for entry in entries
        ]
        click.echo(json.dumps(documents, indent=2))
    else:
        for entry in entries:
            click.echo(_status_line(entry))
            for line in entry.health.lines() if entry.health else []:
                click.echo(_styled(f"{'':<8} {line}", False))
    sys.exit(health.lsb_status(judged))


def _act(verb: str, bootctrl_dir: Path | None, services: tuple[str, ...]) -> None:
    from .apply import observe, plan
    from .systemd import SETTLE_SECONDS, Systemd

    _require_root(f"qbootctl {verb}")
    try:
        model = load_bootctrl(bootctrl_dir)
    except UserError:
        if verb != "stop" or (services and "all" not in services):
            raise
        # Stopping everything needs no bootctrl (a package's removal): systemd says
        # what runs.
        model = bootctrl_model.Bootctrl(str(bootctrl_dir or ""), "", None, ())
    broken = {item.name: item for item in observe.broken_services(model)}
    enabled = set(stamps.enabled_names(model.directory)) if model.directory else set()
    failed = False
    with Systemd() as manager:
        targets = admin.acted_on(
            verb, services, _targets_of(manager, model, services, verb), enabled, bool(model.send)
        )
        for item in targets:
            found = broken.get(item.name)
            treatment = plan.treat_broken(verb, found is not None, found is not None and found.kept)
            if found is not None and treatment is not plan.Treatment.AS_IS:
                # Its files have problems: name them, whatever systemd says.
                failed = True
                for problem in found.problems:
                    click.echo(f"qbootctl: {verb} {item.name}: {problem}", err=True)
                if treatment is plan.Treatment.NOT_DONE:
                    click.echo(
                        f"qbootctl: {verb} {item.name}: {treatment.value} (see qbootctl show)",
                        err=True,
                    )
                    continue
                click.echo(f"qbootctl: {verb} {item.name}: {treatment.value}", err=True)
            elif not item.is_send:
                for problem in observe.service_problems(model, item.name):
                    click.echo(f"problem: {problem}", err=True)  # USER=/GROUP= unknown here
            try:
                if verb == "reload" and manager.state(item.units[-1]).active != "active":
                    # Nothing runs yet (a tcp service starts at its first connection):
                    # it reads its rules and control files when it starts.
                    click.echo(f"reload {item.name}: not running, nothing to reload")
                    continue
                for unit_verb, unit in admin.unit_jobs(verb, item):
                    manager.act(unit_verb, unit, settle=SETTLE_SECONDS)
            except JobFailed as error:
                failed = True
                click.echo(f"qbootctl: {verb} {item.name} failed: {error}", err=True)
                for journal_line in error.journal.splitlines():
                    click.echo(f"  {journal_line}", err=True)
                continue
            except UserError as error:  # systemd refused the job: the others go on
                failed = True
                click.echo(f"qbootctl: {verb} {item.name} failed: {error.message}", err=True)
                continue
            judged = None
            if verb != "stop" and item.name not in broken:
                judged = admin.status(manager, model, [item])[0].health
            if judged is None or judged.state is health.State.RUNNING:
                click.echo(f"{verb} {item.name}: done")
                continue
            # Started, but clients do not get what bootctrl says: never "done".
            failed = True
            click.echo(f"qbootctl: {verb} {item.name}: {judged.state.value}", err=True)
            for line in judged.lines():
                click.echo(f"qbootctl: {verb} {item.name}: {line}", err=True)
    if failed:
        sys.exit(1)


def _verb(verb: str, help_text: str) -> None:
    @qbootctl.command(name=verb, help=help_text)
    @bootctrl_option
    @click.argument("services", nargs=-1, shell_complete=complete_enabled)
    @user_errors
    def command(bootctrl_dir: Path | None, services: tuple[str, ...]) -> None:
        _act(verb, bootctrl_dir, services)


_verb(
    "start",
    "Start services (SVC..., send, all; default all); FAILED unless they stay up 1.5 s.",
)
_verb("stop", "Stop services: the service, then its socket.")
_verb("restart", "Restart services; their sockets keep listening, nothing is refused.")
_verb(
    "reload",
    "SIGHUP: qboot-tcpsrv re-reads its rules; qmail-send re-reads locals and virtualdomains.",
)


@qbootctl.command()
@bootctrl_option
@click.option(
    "--now/--no-start",
    "start_now",
    default=True,
    help="start the socket at once (default) or only enable",
)
@click.argument("service", shell_complete=complete_available)
@user_errors
def enable(bootctrl_dir: Path | None, start_now: bool, service: str) -> None:
    """Enable SERVICE: qmail-SVC.rc -> qmail-tcpd (and a rules link), reload, start."""
    from .apply import observe
    from .systemd import JobFailed, Systemd

    _require_root("qbootctl enable")
    directory = bootctrl_directory(bootctrl_dir)
    existed = {p for p in admin.enable_links(directory, service) if p.exists() or p.is_symlink()}
    for line in admin.enable(directory, service):
        click.echo(line)
    model = stamps.load(directory, check_accounts=True)
    for problem in model.problems:
        if problem.service == service:
            click.echo(f"problem: {problem}", err=True)
    if not observe.can_run(model, service):
        for line in admin.undo_enable(directory, service, existed):
            click.echo(line)
        raise UserError(
            f"{service} cannot run, so it was not enabled",
            f"fix the problem above, then: qbootctl enable {service}",
        )
    with Systemd() as manager:
        manager.reload()
        if start_now:
            try:
                manager.act("start", units_module.tcpd_socket(service))
            except JobFailed as error:
                raise UserError(f"{error}: {error.journal}") from None
            click.echo(f"started {units_module.tcpd_socket(service)}")


@qbootctl.command()
@bootctrl_option
@click.argument("service", shell_complete=complete_enabled)
@user_errors
def disable(bootctrl_dir: Path | None, service: str) -> None:
    """Disable SERVICE: stop it, remove qmail-SVC.rc, reload. Env and rules stay."""
    from .systemd import Systemd

    _require_root("qbootctl disable")
    directory = bootctrl_directory(bootctrl_dir)
    with Systemd() as manager:
        for unit in reversed(admin.target(service).units):
            manager.act("stop", unit)
        for line in admin.disable(directory, service):
            click.echo(line)
        manager.reload()


@qbootctl.command(name="reload-config")
@user_errors
def reload_config() -> None:
    """daemon-reload, then restart only what the bootctrl changes touched."""
    _require_root("qbootctl reload-config")
    _reconcile(None, None, reload=True)


@qbootctl.command()
@bootctrl_option
@qmail_home_option
@user_errors
def reconcile(bootctrl_dir: Path | None, qmail_home: Path | None) -> None:
    """Apply what systemd loaded to what runs: restart only what differs.

    qboot-reconcile.service runs it after every daemon-reload."""
    _require_root("qbootctl reconcile")
    _reconcile(bootctrl_dir, qmail_home, reload=False)


def _reconcile(bootctrl_dir: Path | None, qmail_home: Path | None, reload: bool) -> None:
    from .apply import observe, plan
    from .apply import reconcile as reconcile_module
    from .systemd import Systemd

    with reconcile_module.locked(stamps.state_dir()):
        if not reload:
            reconcile_module.take_trigger()
        with Systemd() as manager:
            if reload:
                manager.reload()
            model = load_bootctrl(bootctrl_dir, qmail_home)
            outcome = reconcile_module.reconcile(manager, model)
    from . import journal

    if not journal.is_stdout():  # else each line is in the journal already, once
        for line in outcome.lines:
            click.echo(line)
    if not outcome.lines:
        click.echo("nothing changed")
    broken = [item.name for item in observe.broken_services(model)]
    names = dict.fromkeys([*broken, *outcome.touched, *(s.name for s in model.services)])
    verdict = plan.reconcile_verdict(
        outcome.failed,
        outcome.touched,
        broken,
        [service.name for service in model.services],
        {name: observe.service_problems(model, name) for name in names},
        admin_waits=reload,
    )
    for problem in verdict.problems:
        click.echo(f"problem: {problem}", err=True)
    failed = verdict.failed
    if verdict.wait_for and not _all_stay_up(verdict.wait_for):
        failed = True
    if failed:
        sys.exit(1)


def _all_stay_up(names: tuple[str, ...]) -> bool:
    """Wait for the restarts the reconcile queued; True when every one stays up."""
    from .systemd import SETTLE_SECONDS, JobFailed, Systemd

    failed = False
    with Systemd() as manager:
        for name in names:
            unit = units_module.tcpd_service(name)
            try:
                manager.settled(unit, SETTLE_SECONDS)
            except JobFailed as error:
                failed = True
                click.echo(f"qbootctl: {error}", err=True)
                for journal_line in error.journal.splitlines():
                    click.echo(f"  {journal_line}", err=True)
    return not failed


if __name__ == "__main__":
    qbootctl()
