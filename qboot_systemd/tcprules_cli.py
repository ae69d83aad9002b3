"""qboot-tcprules and qboot-tcprulescheck: drop-ins for ucspi-tcp's tools.

Plain argv handling (no click): these run in scripts and must start fast.
"""

from __future__ import annotations

import errno
import os
import sys
from pathlib import Path

from . import rules
from .cdb import CdbFormatError, CdbReader

EXIT_USAGE = 100
EXIT_PARSE = 100
EXIT_IO = 111


def _fatal(program: str, message: str, status: int) -> int:
    sys.stderr.write(f"{program}: fatal: {message}\n")
    return status


def tcprules_main(argv: list[str] | None = None) -> int:
    program = "qboot-tcprules"
    args = sys.argv[1:] if argv is None else argv
    if len(args) < 2:
        sys.stderr.write(f"{program}: usage: {program} rules.cdb rules.tmp\n")
        return EXIT_USAGE
    cdb_path, tmp_path = Path(args[0]), Path(args[1])
    try:
        source = sys.stdin.buffer.read()
    except OSError as error:
        return _fatal(program, f"unable to read input: {error.strerror}", EXIT_IO)
    try:
        rules.compile_file(source, cdb_path, tmp_path)
    except rules.RulesSyntaxError as error:
        return _fatal(program, str(error), EXIT_PARSE)
    except OSError as error:
        name = error.filename or tmp_path
        return _fatal(program, f"unable to write {name}: {error.strerror}", EXIT_IO)
    return 0


def _env_bytes(name: str) -> bytes | None:
    return os.environb.get(name.encode())


# djb's error_str() wording for the errors a rules file usually meets.
_DJB_ERRORS = {
    errno.ENOENT: "file does not exist",
    errno.EACCES: "access denied",
    errno.EISDIR: "is a directory",
    errno.ENOTDIR: "not a directory",
    errno.EINVAL: "invalid argument",
}


def djb_error(error: OSError) -> str:
    return _DJB_ERRORS.get(error.errno or 0, (error.strerror or "error").lower())


def tcprulescheck_main(argv: list[str] | None = None) -> int:
    program = "qboot-tcprulescheck"
    args = sys.argv[1:] if argv is None else argv
    if not args:
        sys.stderr.write(f"{program}: usage: {program} rules.cdb\n")
        return EXIT_USAGE
    path = args[0]
    ip = _env_bytes("TCPREMOTEIP")
    try:
        reader = CdbReader.open(path)
        report = rules.check_report(
            reader,
            b"0.0.0.0" if ip is None else ip,
            _env_bytes("TCPREMOTEHOST"),
            _env_bytes("TCPREMOTEINFO"),
        )
    except OSError as error:
        return _fatal(program, f"unable to read {path}: {djb_error(error)}", EXIT_IO)
    except CdbFormatError as error:
        return _fatal(program, f"unable to read {path}: {error}", EXIT_IO)
    sys.stdout.buffer.write(report)
    sys.stdout.buffer.flush()
    return 0
