"""qboot-systemd-generator: turn the bootctrl directory into systemd units.

Runs at boot and at every daemon-reload, before units load: no D-Bus, no click, no
jinja2, no other process. It instantiates the shipped templates with drop-ins and
symlinks. Bad input is logged and skipped; only an unwritable output dir fails.
"""

from __future__ import annotations

import errno
import gc
import os
import stat
import sys

from . import bootctrl, units
from ._startup import TYPE_CHECKING, join_path, pure_path
from .apply import stamps
from .files import replace_file
from .problems import Problem

if TYPE_CHECKING:
    from typing import NoReturn

# Paths are text here (os.path and _startup's, written as pathlib writes them): the
# generator starts without pathlib.

PROGRAM = "qboot-systemd-generator"


def plan(
    model: bootctrl.Bootctrl, paths: units.Paths
) -> tuple[dict[str, str], dict[str, str], list[Problem]]:
    """Files (relative path -> text) and symlinks (relative path -> target) to write."""
    files: dict[str, str] = {}
    links: dict[str, str] = {}
    problems = list(model.problems)
    for service in model.services:
        socket, unit = units.tcpd_socket(service.name), units.tcpd_service(service.name)
        where = service.env_file or service.rc_file
        try:
            socket_text = units.socket_dropin(service)
            service_text = units.service_dropin(service, paths)
        except units.UnsafeValue as error:
            line = service.line_of(error.setting) if error.setting else 0
            message = f"{error}; service {service.name} skipped"
            problems.append(Problem(where, line, message, service.name))
            continue
        except Exception as error:  # one service never stops the others
            message = f"cannot write its units ({type(error).__name__})"
            message += f"; service {service.name} skipped"
            problems.append(Problem(where, 0, message, service.name))
            continue
        files[f"{socket}.d/{units.DROPIN_NAME}"] = socket_text
        files[f"{unit}.d/{units.DROPIN_NAME}"] = service_text
        links[f"sockets.target.wants/{socket}"] = f"{paths.unit_dir}/qmail-tcpd@.socket"
    if model.send is not None:
        try:
            files[f"{units.SEND_UNIT}.d/{units.DROPIN_NAME}"] = units.send_dropin(model.send)
            links[f"multi-user.target.wants/{units.SEND_UNIT}"] = (
                f"{paths.unit_dir}/{units.SEND_UNIT}"
            )
        except units.UnsafeValue as error:
            problems.append(Problem(model.send.rc_file, 0, f"{error}; qmail-send skipped"))
    for name in stamps.add_stamps_and_last_good(model, files, links, paths, stamps.state_path()):
        rc_file = f"{model.directory}/qmail-{name}.rc"
        message = f"service {name} keeps its last good settings"
        problems.append(Problem(rc_file, 0, message, name))
    return files, links, sorted(problems)


def plan_late(paths: units.Paths) -> dict[str, str]:
    """bootctrl is not there yet (its /var is mounted later): start things afterwards."""
    return {f"multi-user.target.wants/{units.BOOT_UNIT}": f"{paths.unit_dir}/{units.BOOT_UNIT}"}


def write(output: str | os.PathLike[str], files: dict[str, str], links: dict[str, str]) -> None:
    """Relative paths are plain names under output (unit names, `.d`, `.wants`): os.path
    joins them as pathlib would."""
    made: set[str] = set()

    def parent_of(relative: str) -> str:
        target = os.path.join(output, relative)
        parent = os.path.dirname(target)
        if parent not in made:
            # Path.mkdir(parents=True, exist_ok=True), in one call when output is there.
            try:
                os.mkdir(parent)
            except FileNotFoundError:
                os.makedirs(parent, exist_ok=True)
            except OSError:
                if not os.path.isdir(parent):
                    raise
            made.add(parent)
        return target

    for relative, text in sorted(files.items()):
        # UTF-8 whatever the locale: systemd reads unit files as UTF-8.
        replace_file(parent_of(relative), text.encode("utf-8", "surrogateescape"))
    for relative, destination in sorted(links.items()):
        link = parent_of(relative)
        if os.path.lexists(link):
            os.unlink(link)
        os.symlink(destination, link)


def log(problems: list[Problem], stream_path: str = "/dev/kmsg") -> None:
    """To the kernel log when there is one (generators may not use syslog), else stderr."""
    lines = [
        f"<3>{PROGRAM}[{os.getpid()}]: {problem}\n".encode("utf-8", "backslashreplace")
        for problem in problems
    ]
    if not lines:
        return
    try:
        with open(stream_path, "wb", buffering=0) as kmsg:
            for line in lines:
                kmsg.write(line)  # one record per write
    except OSError:
        for line in lines:
            sys.stderr.buffer.write(line[3:])
        sys.stderr.flush()


def is_directory(path: str) -> bool:
    """Path(path).is_dir(): False when it is missing or not a directory, OSError when it
    cannot be looked at."""
    try:
        return stat.S_ISDIR(os.stat(path).st_mode)
    except OSError as error:
        if error.errno in (errno.ENOENT, errno.ENOTDIR, errno.EBADF, errno.ELOOP):
            return False
        raise
    except ValueError:  # a NUL in the name
        return False


def run(
    output: str | os.PathLike[str],
    bootctrl_dir: str | os.PathLike[str],
    qmail_home: str | os.PathLike[str],
    paths: units.Paths,
    log_path: str = "/dev/kmsg",
) -> int:
    directory = pure_path(bootctrl_dir)
    try:
        present = is_directory(directory)
    except OSError as error:
        message = f"cannot read: {error.strerror}; no qmail unit generated"
        log([Problem(directory, 0, message)], log_path)
        return 0
    if not present:
        write(output, {}, plan_late(paths))
        log(
            [
                Problem(
                    directory,
                    0,
                    f"not there yet: {units.BOOT_UNIT} starts the services once it is mounted",
                )
            ],
            log_path,
        )
        return 0
    try:
        model = stamps.load(directory, qmail_home)
    except Exception as error:  # load() collects problems; this is the last line of defence
        message = f"cannot read ({type(error).__name__}); no qmail unit generated"
        log([Problem(directory, 0, message)], log_path)
        return 0
    files, links, problems = plan(model, paths)
    write(output, files, links)
    log(problems, log_path)
    return 0


def main(
    argv: list[str] | None = None,
    *,
    tcpsrv: str | None = None,
    unit_dir: str | None = None,
    qmail_home: str | None = None,
) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (1, 3) or any(arg.startswith("-") for arg in args):
        # systemd passes absolute directories; `--help` must not become ./--help.
        sys.stderr.write(f"usage: {PROGRAM} normal-dir [early-dir late-dir]\n")
        sys.stderr.write("systemd runs it at boot and at every daemon-reload; to see what it\n")
        sys.stderr.write("makes of bootctrl, run: qbootctl generate\n")
        return 0 if args and args[0] in ("-h", "--help") else 100
    defaults = units.Paths()
    paths = units.Paths(
        tcpsrv=os.environ.get("QBOOT_TCPSRV", tcpsrv or defaults.tcpsrv),
        unit_dir=os.environ.get("QBOOT_UNIT_DIR", unit_dir or defaults.unit_dir),
    )
    home = pure_path(os.environ.get("QBOOT_QMAIL_HOME", qmail_home or "/var/qmail"))
    directory = os.environ.get("QBOOT_BOOTCTRL", join_path(home, "etc", "bootctrl"))
    # A short run that leaves no garbage cycles to speak of: the cyclic collector's passes
    # over everything imported would only cost start-up time. Callers in the same process
    # (tests) get it back.
    collecting = gc.isenabled()
    gc.disable()
    try:
        return run(pure_path(args[0]), directory, home, paths)
    except OSError as error:
        sys.stderr.write(f"{PROGRAM}: cannot write {error.filename or args[0]}: {error.strerror}\n")
        return 1
    finally:
        if collecting:
            gc.enable()


def exit_program(code: int) -> NoReturn:
    """End the process that ran main(): the interpreter's exit would run a full collection
    over every object, which are all about to go anyway; freeze() puts them
    out of its reach."""
    gc.freeze()
    sys.exit(code)


if __name__ == "__main__":
    exit_program(main())
