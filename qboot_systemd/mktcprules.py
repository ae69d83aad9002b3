"""mktcprules: compile every tcprules-*.txt of a bootctrl directory to its .cdb."""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass
from pathlib import Path

from . import rules


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
    return [
        (source, source.with_suffix(".cdb")) for source in sorted(directory.glob("tcprules-*.txt"))
    ]


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
        data = source.read_bytes()
        count = rules.compile_file(data, target, target.with_name(target.name + ".tmp"))
    except rules.RulesSyntaxError as error:
        text = error.text.decode("utf-8", "replace")
        return Result(
            source,
            target,
            Outcome.FAILED,
            f"{source}:{error.line}: unable to parse: {text} (old cdb kept)",
        )
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


def compile_directory(directory: Path, force: bool = False) -> list[Result]:
    return [compile_one(source, target, force) for source, target in targets(directory)]


def main(argv: list[str] | None = None) -> int:
    import sys

    from .bootctrl import default_bootctrl

    args = sys.argv[1:] if argv is None else argv
    force = "-f" in args or "--force" in args
    operands = [arg for arg in args if arg not in ("-f", "--force")]
    if len(operands) > 1 or any(arg.startswith("-") for arg in operands):
        sys.stderr.write("usage: mktcprules [-f|--force] [BOOTCTRL]\n")
        return 100
    directory = Path(operands[0]) if operands else default_bootctrl()
    if not directory.is_dir():
        sys.stderr.write(
            f"mktcprules: error: bootctrl directory {directory} not found\n"
            "mktcprules: hint: pass the directory or set QBOOT_BOOTCTRL\n"
        )
        return 111
    results = compile_directory(directory, force)
    if not results:
        print(f"mktcprules: no tcprules-*.txt in {directory}")
    for result in results:
        stream = sys.stderr if result.outcome is Outcome.FAILED else sys.stdout
        print(result.line(), file=stream)
    return 1 if any(r.outcome is Outcome.FAILED for r in results) else 0
