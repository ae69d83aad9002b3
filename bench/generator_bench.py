"""The generator as a whole process (what systemd runs at boot and every daemon-reload)
for 1, 10 and 50 services, next to a bare `python3 -c pass` in the same run.
Target: at most 1.5 x bare Python start-up for 10 services. The output goes to a tmpfs,
as systemd's /run/systemd/generator does (on a disk, mkdir and rename dominate).
Run: .venv/bin/python bench/generator_bench.py [--installed]

By default both run in this checkout's .venv, `python -I -m qboot_systemd.generator`.
Its bare start-up includes the editable install's finder, which imports pathlib, re,
enum and ipaddress before either starts. --installed measures as a package is installed:
a venv on the tmpfs without that finder, the package linked into its site-packages, and
the launcher `qbootctl install` writes.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = str(ROOT / ".venv" / "bin" / "python")


def make_bootctrl(directory: Path, services: int) -> None:
    directory.mkdir(mode=0o755)
    shipped = ROOT / "etc" / "bootctrl"
    # Modes set here, not copied: a checkout made with umask 002 has group-writable
    # files, which the generator (StrictModes) refuses.
    for name, mode in (("qmail-tcpd", 0o755), ("tcprules-default.cdb", 0o644)):
        shutil.copyfile(shipped / name, directory / name)
        (directory / name).chmod(mode)
    (directory / "qmail-init.rc").write_text("")
    for index in range(services):
        name = f"svc{index}"
        (directory / f"qmail-{name}.rc").symlink_to("qmail-tcpd")
        (directory / f"tcprules-{name}.cdb").symlink_to("tcprules-default.cdb")
        (directory / f"qmail-{name}.env").write_text(
            f'PORT={2500 + index}\nIP="127.0.0.1 ::1"\nMAXCONN=20\n'
            'PRESMTPD="/usr/bin/rblsmtpd -r zen.example"\n'
            'POSTSMTPD="/bin/checkpassword /bin/true"\nsetenv GREETING "hello world"\n'
        )


def medians(commands: list[tuple[list[str], dict[str, str]]], rounds: int = 15) -> list[float]:
    """Median wall time of each command, run in turn round after round: a neighbour's
    burst slows bare Python and the generator alike instead of one of them."""
    times: list[list[float]] = [[] for _ in commands]
    for _ in range(rounds):
        for (argv, env), found in zip(commands, times, strict=True):
            begin = time.perf_counter()
            subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL)
            found.append(time.perf_counter() - begin)
    return [statistics.median(found) for found in times]


def installed(scratch: Path) -> tuple[str, list[str]]:
    """A venv without the editable finder, the package in it, and the launcher."""
    sys.path.insert(0, str(ROOT))
    from qboot_systemd.install import Layout, launcher_text

    venv = scratch / "venv"
    subprocess.run([PYTHON, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    site = subprocess.run(
        [python, "-I", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    (Path(site) / "qboot_systemd").symlink_to(ROOT / "qboot_systemd")
    layout = Layout(Path("/"), Path("/usr/bin"), Path("/usr/lib/systemd/system"), Path("/q"))
    launcher = scratch / "qboot-systemd-generator"
    launcher.write_text(launcher_text(layout, python))
    launcher.chmod(0o755)
    return python, [str(launcher)]


def main() -> None:
    # Installed generators run from byte-compiled files; make sure they exist.
    subprocess.run([PYTHON, "-m", "compileall", "-q", str(ROOT / "qboot_systemd")], check=True)
    env = {"PATH": os.environ.get("PATH", "")}
    tmpfs = "/dev/shm" if os.path.isdir("/dev/shm") else None
    with tempfile.TemporaryDirectory(dir=tmpfs) as scratch:
        python, generator = PYTHON, [PYTHON, "-I", "-m", "qboot_systemd.generator"]
        if "--installed" in sys.argv[1:]:
            python, generator = installed(Path(scratch))
            print("as installed: a venv without the editable finder, the launcher")
        counts = (1, 10, 50)
        commands = [([python, "-I", "-c", "pass"], env)]
        for count in counts:
            bootctrl = Path(scratch) / f"bootctrl{count}"
            make_bootctrl(bootctrl, count)
            output = Path(scratch) / f"out{count}"
            commands.append(([*generator, str(output)], {**env, "QBOOT_BOOTCTRL": str(bootctrl)}))
        bare, *elapsed = medians(commands)
        print(f"bare python3 -I -c pass: {bare * 1e3:.1f} ms (median of 15, interleaved)")
        print(f"{'services':>8} {'ms':>7} {'x bare':>7}")
        for count, median in zip(counts, elapsed, strict=True):
            print(f"{count:>8} {median * 1e3:>7.1f} {median / bare:>7.2f}")


if __name__ == "__main__":
    sys.exit(main())
