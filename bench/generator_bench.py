"""The generator as a whole process (what systemd runs at boot and every daemon-reload)
for 1, 10 and 50 services, next to a bare `python3 -c pass` in the same run.
Target: at most 1.5 x bare Python start-up for 10 services. The output goes to a tmpfs,
as systemd's /run/systemd/generator does (on a disk, mkdir and rename dominate).
Run: .venv/bin/python bench/generator_bench.py
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
    directory.mkdir()
    shipped = ROOT / "etc" / "bootctrl"
    shutil.copy(shipped / "qmail-tcpd", directory)
    shutil.copy(shipped / "tcprules-default.cdb", directory)
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


def best_of(argv: list[str], env: dict[str, str], runs: int = 15) -> float:
    times = []
    for _ in range(runs):
        begin = time.perf_counter()
        subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - begin)
    return statistics.median(times)


def main() -> None:
    # Installed generators run from byte-compiled files; make sure they exist.
    subprocess.run([PYTHON, "-m", "compileall", "-q", str(ROOT / "qboot_systemd")], check=True)
    env = {"PATH": os.environ.get("PATH", "")}
    bare = best_of([PYTHON, "-I", "-c", "pass"], env)
    print(f"bare python3 -I -c pass: {bare * 1e3:.1f} ms (median of 15)")
    print(f"{'services':>8} {'ms':>7} {'x bare':>7}")
    tmpfs = "/dev/shm" if os.path.isdir("/dev/shm") else None
    with tempfile.TemporaryDirectory(dir=tmpfs) as scratch:
        for count in (1, 10, 50):
            bootctrl = Path(scratch) / f"bootctrl{count}"
            make_bootctrl(bootctrl, count)
            output = Path(scratch) / f"out{count}"
            run_env = {**env, "QBOOT_BOOTCTRL": str(bootctrl)}
            argv = [PYTHON, "-I", "-m", "qboot_systemd.generator", str(output)]
            elapsed = best_of(argv, run_env)
            print(f"{count:>8} {elapsed * 1e3:>7.1f} {elapsed / bare:>7.2f}")


if __name__ == "__main__":
    sys.exit(main())
