"""Soak: qboot-tcpsrv with -c 20 and 1000 rules takes 20,000 connections at concurrency
200 from loopback. Prints how many were served, refused or reset, the open fds, RSS and
children before and after (they must return to idle), and the connections per second.
Bounded in count and time. Run: .venv/bin/python bench/soak.py [connections]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.load import run_load


def main() -> None:
    total = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    with tempfile.TemporaryDirectory() as scratch:
        run = run_load(Path(scratch), total)
    print(f"{total} connections at concurrency 200 against -c 20 -b 512, 1000 rules: {run.counts}")
    print(f"{run.elapsed:.1f} s, {total / run.elapsed:.0f} connections/s")
    for label, (fds, rss, children) in (("before", run.idle), ("after", run.after)):
        print(f"idle {label}: {fds} fds, {rss / 1024:.1f} MiB RSS, {children} children")


if __name__ == "__main__":
    main()
