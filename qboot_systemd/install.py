"""qbootctl install/uninstall: units, the generator launcher, the default bootctrl.

Also used by packagers through --root. Renders the jinja2 templates (jinja2 is imported
here only, never by the generator).
"""

from __future__ import annotations

import compileall
import os
import shutil
import stat
import sys
from dataclasses import dataclass
from pathlib import Path

from . import strictmodes, units

GENERATOR_DIR = "usr/lib/systemd/system-generators"
GENERATOR_NAME = "qboot-systemd-generator"
TEMPLATES = Path(__file__).resolve().parent / "templates"
MAN_PAGES = Path(__file__).resolve().parent / "man"
MAN_DIR = "usr/share/man"
UNIT_NAMES = (
    "qmail-send.service",
    "qmail-tcpd@.socket",
    "qmail-tcpd@.service",
    units.BOOT_UNIT,
    "qboot-reconcile.path",
    "qboot-reconcile.service",
)


@dataclass(frozen=True)
class Layout:
    root: Path
    bindir: Path  # where qbootctl and qboot-tcpsrv are, as seen on the target
    unit_dir: Path  # absolute, on the target
    qmail_home: Path

    @property
    def bootctrl(self) -> Path:
        return self.qmail_home / "etc" / "bootctrl"

    def on_target(self, path: Path) -> Path:
        """Where an absolute target path lands under --root."""
        return self.root / path.relative_to("/")

    def paths(self) -> units.Paths:
        return units.Paths(tcpsrv=str(self.bindir / "qboot-tcpsrv"), unit_dir=str(self.unit_dir))


def shipped_bootctrl() -> Path:
    """etc/bootctrl of the source tree, or the copy a package put under share/."""
    for candidate in (
        Path(__file__).resolve().parent.parent / "etc" / "bootctrl",
        Path(sys.prefix) / "share" / "qboot-systemd" / "bootctrl",
    ):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("the default bootctrl directory is not installed")


def man_pages() -> list[Path]:
    return sorted(MAN_PAGES.glob("*.[1-8]"))


def render_units(layout: Layout) -> dict[str, str]:
    import jinja2

    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )
    values = {
        "qmail_home": units.path_setting(str(layout.qmail_home)),
        "bootctrl": units.path_setting(str(layout.bootctrl)),
        "bindir": units.path_setting(str(layout.bindir)),
        "tcpsrv": units.path_setting(str(layout.bindir / "qboot-tcpsrv")),
    }
    header = "# Installed by qbootctl install from qboot-systemd's templates\n"
    return {
        name: header + environment.get_template(f"{name}.j2").render(values) for name in UNIT_NAMES
    }


def launcher_text(layout: Layout, python: str) -> str:
    return (
        f"#!{python} -I\n"
        "# qboot-systemd-generator, installed by qbootctl install: runs the installed\n"
        "# package with the interpreter it was installed for.\n"
        "import gc\n"
        "\n"
        "gc.disable()  # before the imports: a short run (see exit_program)\n"
        "from qboot_systemd.generator import exit_program, main\n"
        "\n"
        f"exit_program(main(tcpsrv={str(layout.bindir / 'qboot-tcpsrv')!r}, "
        f"unit_dir={str(layout.unit_dir)!r}, qmail_home={str(layout.qmail_home)!r}))\n"
    )


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    temporary.chmod(mode)
    os.replace(temporary, path)


def copy_missing(source: Path, target: Path) -> list[Path]:
    """Copy the default bootctrl, never overwriting an admin's file or link."""
    created: list[Path] = []
    _make_directories(target)
    for entry in sorted(source.iterdir()):
        destination = target / entry.name
        if destination.exists() or destination.is_symlink():
            continue
        if entry.is_symlink():
            destination.symlink_to(os.readlink(entry))
        else:
            shutil.copy2(entry, destination)
            # StrictModes: a checkout made with umask 002 must not give g+w files.
            destination.chmod(0o755 if entry.stat().st_mode & 0o100 else 0o644)
        created.append(destination)
    return created


def _make_directories(target: Path) -> None:
    """mkdir -p with mode 755 whatever the umask (the generator refuses g+w and o+w)."""
    missing: list[Path] = []
    current = target
    while not current.exists():
        missing.append(current)
        current = current.parent
    for directory in reversed(missing):
        directory.mkdir()
        directory.chmod(0o755)


# Files that run: modules, byte code, .pth files (executed at start-up), extensions.
_CODE_SUFFIXES = (".py", ".pyc", ".pth", ".so")
ROOT_ONLY = frozenset({0})


def code_paths(python: str, bindir: Path) -> list[Path]:
    """What runs as root once installed: this package, the environment it lives in, the
    interpreter the launcher names, and the programs the units' ExecStart= names."""
    paths = [Path(__file__).resolve().parent, Path(python), bindir / "qboot-tcpsrv"]
    if sys.prefix != sys.base_prefix:  # a venv: its site-packages run too
        paths.append(Path(sys.prefix))
    return paths


def untrusted_code(paths: list[Path], trusted: frozenset[int] = ROOT_ONLY) -> list[str]:
    """Where a user other than root could change code that will run as root at boot:
    a path, a directory above it, or (for directories) anything in it."""
    found: list[str] = []
    for path in paths:
        try:
            real = os.path.realpath(path, strict=True)
            strictmodes.check_directory_chain(os.path.dirname(real), trusted, strict_first=False)
            status = os.lstat(real)
        except strictmodes.Untrusted as error:
            found.append(str(error))
            continue
        except OSError:
            continue  # not there: nothing to run
        problem = strictmodes.mode_problem(real, status, trusted)
        if problem:
            found.append(f"{real}: {problem}")
        elif os.path.isdir(real):
            found.extend(_untrusted_below(real, trusted))
    return sorted(set(found))


def _untrusted_below(top: str, trusted: frozenset[int]) -> list[str]:
    found: list[str] = []
    for directory, subdirectories, files in os.walk(top):
        for name in subdirectories + files:
            path = os.path.join(directory, name)
            status = os.lstat(path)
            is_code = stat.S_ISDIR(status.st_mode) or (
                stat.S_ISREG(status.st_mode)
                and (name.endswith(_CODE_SUFFIXES) or status.st_mode & 0o111)
            )
            problem = strictmodes.mode_problem(path, status, trusted) if is_code else None
            if problem:
                found.append(f"{path}: {problem}")
    return found


# The admin's commands, and where they go when the installation's bin directory (a venv,
# a checkout) is not on PATH.
COMMANDS = ("qbootctl", "eqmaild", "mktcprules", "qboot-tcprules", "qboot-tcprulescheck")
COMMAND_LINK_DIR = Path("/usr/local/sbin")
ON_PATH = frozenset(map(Path, ("/usr/bin", "/usr/sbin", "/bin", "/sbin", "/usr/local/bin")))


def command_links(layout: Layout) -> dict[Path, Path]:
    """Link (under --root) -> command, when bindir is not a directory on PATH."""
    if layout.bindir in ON_PATH or layout.bindir == COMMAND_LINK_DIR:
        return {}
    directory = layout.on_target(COMMAND_LINK_DIR)
    return {directory / name: layout.bindir / name for name in COMMANDS}


def _link_commands(layout: Layout) -> list[str]:
    report = []
    for link, command in command_links(layout).items():
        if link.exists() and not link.is_symlink():
            report.append(f"command {link} exists and is not a link: left alone")
            continue
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink():
            link.unlink()
        link.symlink_to(command)
        report.append(f"command {link} -> {command}")
    return report


def install(
    layout: Layout, python: str | None = None, bootctrl: bool = True, byte_compile: bool = True
) -> list[str]:
    report: list[str] = []
    unit_dir = layout.on_target(layout.unit_dir)
    for name, text in render_units(layout).items():
        _write(unit_dir / name, text)
        report.append(f"unit {unit_dir / name}")
    generator = layout.root / GENERATOR_DIR / GENERATOR_NAME
    _write(generator, launcher_text(layout, python or sys.executable), 0o755)
    report.append(f"generator {generator}")
    report += _link_commands(layout)
    for page in man_pages():
        target = layout.root / MAN_DIR / f"man{page.suffix[1:]}" / page.name
        _write(target, page.read_text())
        report.append(f"man page {target}")
    if bootctrl:
        for path in copy_missing(shipped_bootctrl(), layout.on_target(layout.bootctrl)):
            report.append(f"bootctrl {path}")
    # The root file system may be read-only when generators run: compile now.
    package = Path(__file__).resolve().parent
    if byte_compile and os.access(package, os.W_OK):
        compileall.compile_dir(str(package), quiet=1)
        report.append(f"byte-compiled {package}")
    return report


def uninstall(layout: Layout) -> list[str]:
    """Remove units and the generator; the bootctrl directory is the admin's and stays."""
    removed: list[str] = []
    unit_dir = layout.on_target(layout.unit_dir)
    pages = [layout.root / MAN_DIR / f"man{p.suffix[1:]}" / p.name for p in man_pages()]
    for path in (
        [unit_dir / name for name in UNIT_NAMES]
        + pages
        + [layout.root / GENERATOR_DIR / GENERATOR_NAME]
    ):
        if path.exists() or path.is_symlink():
            path.unlink()
            removed.append(str(path))
    for link, command in command_links(layout).items():
        if link.is_symlink() and Path(os.readlink(link)) == command:
            link.unlink()
            removed.append(str(link))
    return removed
