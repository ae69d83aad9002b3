"""qboot-tcpsrv's entry point: options, sockets, privileges, then the loop."""

from __future__ import annotations

import os
import sys

from .._startup import TYPE_CHECKING
from ..accounts import UnknownAccount, group_id, user_id
from ..rules import RuleSet
from . import logline
from .listen import ListenError, bind, systemd_sockets
from .options import USAGE, Options, UsageError, parse
from .server import Server, import_what_options_need

if TYPE_CHECKING:
    from .rblcommand import RblConfig
    from .tls.service import TlsService

EXIT_USAGE = 100
EXIT_FATAL = 111


def _fatal(message: str) -> int:
    sys.stderr.write(f"{logline.PROGRAM}: fatal: {message}\n")
    return EXIT_FATAL


def _standard_fds() -> None:
    """fds 0-2 must be taken, or a connection could land on them and be closed at exec,
    and the chain must find them open: a closed one becomes /dev/null, inheritable (os.open
    makes close-on-exec fds), and Python's stdout/stderr are rebuilt on it."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            opened = os.open(os.devnull, os.O_RDWR)
            if opened != fd:  # cannot happen while 0..fd-1 are taken; be sure anyway
                os.dup2(opened, fd)
                os.close(opened)
            os.set_inheritable(fd, True)
    if sys.stdout is None:
        sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115 - lives as long as the process
    if sys.stderr is None:
        sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115 - lives as long as the process


def _drop_privileges(user: str | None, group: str | None) -> str | None:
    """-g then -u, as tcpserver does, once the sockets are held; supplementary groups are
    cleared (root's would otherwise stay). Names are resolved now, not when the unit was
    generated. Returns the fatal message, or None."""
    if user is None and group is None:
        return None
    try:
        gid = group_id(group) if group is not None else None
        uid = user_id(user) if user is not None else None
        if os.geteuid() == 0:
            os.setgroups([gid] if gid is not None else [])
        if gid is not None:
            os.setgid(gid)
        if uid is not None:
            os.setuid(uid)
    except UnknownAccount as error:
        return str(error)
    except OSError as error:
        return f"unable to set uid/gid: {error.strerror}"
    return None


def _in_core_rbl(options: Options) -> tuple[Options, RblConfig | None]:
    """-L: a leading rblsmtpd whose command line it would accept runs in the server; the
    program becomes what rblsmtpd would have run. Anything else stays a process."""
    if not options.rbl_incore:
        return options, None
    from .rblcommand import parse_command  # only for -L

    parsed = parse_command(options.program)
    if parsed is None:
        if options.program[0].rpartition("/")[2] == "rblsmtpd":
            sys.stderr.write(
                f"{logline.PROGRAM}: warning: -L: rblsmtpd's options are not all understood; "
                "it runs as a program\n"
            )
        return options, None
    config, program = parsed
    return options._replace(program=program), config


def _tls(options: Options) -> TlsService | str | None:
    """-S: the certificate read and checked now, before privileges drop (as root it is
    readable; the chain's user must not be able to read it); a reader that keeps root
    for reloads when they will drop. Returns the service, the fatal line, or None."""
    if options.tls is None or options.certfile is None:
        return None
    from .tls.certs import CertError, CertPaths, program_account
    from .tls.service import TlsConfig, TlsMode, TlsService

    program = program_account(options.user, options.group)
    keyfile = options.keyfile or options.certfile
    paths = CertPaths(options.certfile, keyfile, options.ccafile, program)
    config = TlsConfig(TlsMode(options.tls), paths, options.ciphers, float(options.timeout))
    service = TlsService(config)
    try:
        service.load()
    except CertError as error:
        return str(error)
    if (options.user is not None or options.group is not None) and os.geteuid() == 0:
        service.start_reader()
    return service


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    try:
        options = parse(args)
    except UsageError as error:
        sys.stderr.write(f"{logline.PROGRAM}: {error}\n{logline.PROGRAM}: {USAGE}\n")
        return EXIT_USAGE
    options, rbl = _in_core_rbl(options)
    _standard_fds()
    tls = _tls(options)  # before the port is printed: a bad certificate is no server
    if isinstance(tls, str):
        return _fatal(tls)
    try:
        passed = systemd_sockets()
        listeners = (
            passed
            if passed
            else [bind(options.host, options.port, options.backlog, options.ipv4_only)]
        )
    except ListenError as error:
        return _fatal(str(error))
    if options.print_port:
        sys.stdout.write(f"{listeners[0].getsockname()[1]}\n")
        sys.stdout.flush()
    import_what_options_need(options)  # while we can read the library: -u may not
    failure = _drop_privileges(options.user, options.group)
    if failure is not None:
        return _fatal(failure)
    rules = RuleSet(options.rules) if options.rules else None
    under_systemd = passed is not None or bool(os.environ.get("NOTIFY_SOCKET"))
    server = Server(
        options,
        listeners,
        rules,
        under_systemd=under_systemd,
        systemd_sockets=bool(passed),
        rbl=rbl,
        tls=tls,
    )
    server.start()
    try:
        return server.serve()
    finally:
        server.close()


if __name__ == "__main__":
    sys.exit(main())
