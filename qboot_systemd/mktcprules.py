"""mktcprules: compile every tcprules-*.txt of a bootctrl directory to its .cdb."""

from __future__ import annotations

import enum
import fnmatch
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from . import rules, strictmodes
from .problems import quote

# A rules text is read whole; 100,000 rules are about 3 MB.
MAX_SOURCE = 64 * 1024 * 1024


class Outcome(enum.StrEnum):
    COMPILED = "compiled"
    UP_TO_DATE = "up to date"
    FAILED = "FAILED"


@dataclass(frozen=True)
class Result:
    source: Path
    target: Path
    outcome: Outcome
    detail: str

    def line(self) -> str:
        return f"{self.target.name}: {self.outcome}: {self.detail}"


def targets(directory: Path) -> list[tuple[Path, Path]]:
    # listdir, not glob: an unreadable directory is an error, not "no rules files".
    names = sorted(n for n in os.listdir(directory) if fnmatch.fnmatchcase(n, "tcprules-*.txt"))
    return [(directory / name, (directory / name).with_suffix(".cdb")) for name in names]


def is_up_to_date(source: Path, target: Path) -> bool:
    # A symlinked cdb (tcprules-subm.cdb -> tcprules-default.cdb) beside its own .txt
    # is replaced by the seed's rule: the service gets rules of its own.
    if target.is_symlink() or not target.is_file():
        return False
    return target.stat().st_mtime_ns >= source.stat().st_mtime_ns


def compile_one(source: Path, target: Path, force: bool = False) -> Result:
    try:
        if not force and is_up_to_date(source, target):
            return Result(source, target, Outcome.UP_TO_DATE, f"newer than {source.name}")
        replaced = os.readlink(target) if target.is_symlink() else None
        data = read_source(source)
        count = write_cdb_atomically(rules.records(rules.parse(data)), target)
    except rules.RulesSyntaxError as error:
        # Only a trusted file gets here; still, a short escaped snippet, not the line.
        text = quote(error.text.decode("utf-8", "replace"), 40)
        return Result(
            source,
            target,
            Outcome.FAILED,
            f"{source}:{error.line}: unable to parse: {text} (old cdb kept)",
        )
    except strictmodes.Untrusted as error:
        return Result(source, target, Outcome.FAILED, f"{error} (old cdb kept)")
    except OSError as error:
        return Result(
            source,
            target,
            Outcome.FAILED,
            f"{error.filename or target}: {error.strerror} (old cdb kept)",
        )
    detail = f"{count} keys from {source.name}"
    if replaced is not None:
        detail += f" (replaced the symlink to {replaced})"
    return Result(source, target, Outcome.COMPILED, detail)


def read_source(source: Path) -> bytes:
    """A tcprules-*.txt read like an env file: a regular, trusted file in a trusted
    bootctrl, or a symlink to another name there; a link out of it (to /etc/shadow) is
    refused before a byte is read, so no parse error can quote what it points to."""
    directory = strictmodes.TrustedDirectory(source.parent)
    try:
        return directory.open().read(source.name, MAX_SOURCE)
    finally:
        directory.close()


def write_cdb_atomically(items: list[tuple[bytes, bytes]], target: Path) -> int:
    """What tcprules guarantees: the new cdb appears whole or not at all. The temporary
    file is new (O_EXCL, never a planted symlink) and unique (two runs do not share it)."""
    try:
        descriptor, temporary = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    except OSError as error:
        raise OSError(error.errno, error.strerror, str(target.parent)) from None
    # 644 whatever the umask: qboot-tcpsrv may read it after -u.
    rules.write_and_rename(items, descriptor, Path(temporary), target, 0o644)
    return len(items)


def compile_directory(directory: Path, force: bool = False) -> list[Result]:
    return [compile_one(source, target, force) for source, target in targets(directory)]


def main(argv: list[str] | None = None) -> int:
    import sys

    from .bootctrl import default_bootctrl
    from .errors import UserError, from_os_error

    args = sys.argv[1:] if argv is None else argv
    force = "-f" in args or "--force" in args
    operands = [arg for arg in args if arg not in ("-f", "--force")]
    if len(operands) > 1 or any(arg.startswith("-") for arg in operands):
        sys.stderr.write("usage: mktcprules [-f|--force] [BOOTCTRL]\n")
        return 100
    directory = Path(operands[0]) if operands else default_bootctrl()
    try:
        if not directory.is_dir():
            raise UserError(
                f"bootctrl directory {directory} not found",
                "pass the directory or set QBOOT_BOOTCTRL",
                111,
            )
        results = compile_directory(directory, force)
    except UserError as error:
        return error.report("mktcprules")
    except OSError as error:
        return from_os_error(error, 111).report("mktcprules")
    if not results:
        print(f"mktcprules: no tcprules-*.txt in {directory}")
    for result in results:
        stream = sys.stderr if result.outcome is Outcome.FAILED else sys.stdout
        print(result.line(), file=stream)
    return 1 if any(r.outcome is Outcome.FAILED for r in results) else 0
