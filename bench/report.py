"""Run every benchmark and write bench/README.md: what each measures (its docstring), and
what it printed in this run, with the machine's load. `make bench` runs this; the file is
not edited by hand.
Run: .venv/bin/python bench/report.py
"""

from __future__ import annotations

import ast
import datetime
import os
import platform
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# In the order they run; arguments as given.
BENCHES = [
    ("rules_bench.py",),
    ("generator_bench.py",),
    ("generator_bench.py", "--installed"),
    ("tcpsrv_bench.py",),
    ("rbl_bench.py",),
    ("names_bench.py",),
    ("names_bench.py", "--rbl"),
    ("tls_bench.py",),
    ("soak.py",),
]


def load() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def main() -> int:
    started = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        "# Benchmark figures",
        "",
        f"Written by `make bench` (bench/report.py) on {started}: {platform.machine()}, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}. Each benchmark prints "
        "ratios against a reference measured in the same run, as the machines are shared; "
        "the load average is given before each.",
    ]
    status = 0
    for script, *args in BENCHES:
        path = HERE / script
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        before = load()
        done = subprocess.run(
            [sys.executable, str(path), *args], capture_output=True, text=True, check=False
        )
        sys.stdout.write(done.stdout)
        sys.stderr.write(done.stderr)
        status = status or done.returncode
        title = " ".join((script, *args))
        parts += ["", f"## {title}", "", doc, "", f"Load average before: {before}.", "", "```"]
        parts += [done.stdout.rstrip() or f"(failed: exit {done.returncode})", "```"]
    (HERE / "README.md").write_text("\n".join(parts) + "\n")
    return status


if __name__ == "__main__":
    sys.exit(main())
