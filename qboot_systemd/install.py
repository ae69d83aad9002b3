"""qbootctl install/uninstall: units, the generator launcher, the default bootctrl.

Also used by packagers through --root. Renders the jinja2 templates (jinja2 is imported
here only, never by the generator).
"""

from __future__ import annotations

import compileall
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from . import units

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
        "import sys\n"
        "from qboot_systemd.generator import main\n"
        f"sys.exit(main(tcpsrv={str(layout.bindir / 'qboot-tcpsrv')!r}, "
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
    target.mkdir(parents=True, exist_ok=True)
    for entry in sorted(source.iterdir()):
        destination = target / entry.name
        if destination.exists() or destination.is_symlink():
            continue
        if entry.is_symlink():
            destination.symlink_to(os.readlink(entry))
        else:
            shutil.copy2(entry, destination)
        created.append(destination)
    return created


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
    return removed
