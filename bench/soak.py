"""Soak: qboot-tcpsrv with -c 20 and 1000 rules takes 20,000 connections at concurrency
200 from loopback. Prints how many were served, refused or reset, the open fds, RSS and
children before and after (they must return to idle), and the connections per second.
Bounded in count and time. Run: .venv/bin/python bench/soak.py [connections]
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from qboot_systemd import rules
from tests.tcpsrv_harness import ours
from tests.test_reliability import hammer, proc_figures


def main() -> None:
    total = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    with tempfile.TemporaryDirectory() as scratch:
        cdb = Path(scratch) / "rules.cdb"
        text = "".join(f"10.{i // 256}.{i % 256}.1:deny\n" for i in range(999)) + ":allow\n"
        rules.compile_file(text.encode(), cdb, cdb.with_suffix(".tmp"))
        server = ours(
            "-HR",
            "-l",
            "x",
            "-c",
            "20",
            "-b",
            "512",
            "-x",
            str(cdb),
            "127.0.0.1",
            "0",
            "/bin/echo",
            "220 soak",
        )
        try:
            asyncio.run(hammer(server.port, 50, 5))
            time.sleep(0.5)
            idle = proc_figures(server.process.pid)
            begin = time.monotonic()
            counts = asyncio.run(asyncio.wait_for(hammer(server.port, total, 200), 900))
            elapsed = time.monotonic() - begin
            deadline = time.monotonic() + 10
            while proc_figures(server.process.pid)[2] and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.5)
            after = proc_figures(server.process.pid)
        finally:
            server.stop()
    print(f"{total} connections at concurrency 200 against -c 20 -b 512, 1000 rules: {counts}")
    print(f"{elapsed:.1f} s, {total / elapsed:.0f} connections/s")
    print(f"idle before: {idle[0]} fds, {idle[1] / 1024:.1f} MiB RSS, {idle[2]} children")
    print(f"idle after:  {after[0]} fds, {after[1] / 1024:.1f} MiB RSS, {after[2]} children")


if __name__ == "__main__":
    main()
