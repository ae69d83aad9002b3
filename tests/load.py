"""The load run shared by the bounded test and bench/soak.py: qboot-tcpsrv with -c 20,
-b 512 and 1000 rules, hammered from loopback, with its fds, RSS and children measured
when idle before and after."""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass
from pathlib import Path

from qboot_systemd import rules

from .tcpsrv_harness import ours


def proc_figures(pid: int) -> tuple[int, int, int]:
    """Open fds, RSS in KiB and child processes of pid."""
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    rss = next(
        int(line.split()[1])
        for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        if line.startswith("VmRSS:")
    )
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return fds, rss, len(children)


async def hammer(port: int, total: int, concurrency: int) -> dict[str, int]:
    counts = {"served": 0, "refused": 0, "reset": 0, "empty": 0}
    numbers = iter(range(total))

    async def worker() -> None:
        for _ in numbers:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                data = await reader.read()
                writer.close()
                counts["served" if data else "empty"] += 1
            except ConnectionRefusedError:
                counts["refused"] += 1
            except ConnectionResetError:
                counts["reset"] += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return counts


@dataclass(frozen=True)
class LoadRun:
    counts: dict[str, int]  # over all rounds
    elapsed: float
    idle: tuple[int, int, int]
    rounds: tuple[tuple[int, int, int], ...]  # the figures when idle after each round

    @property
    def after(self) -> tuple[int, int, int]:
        return self.rounds[-1]


def settled(pid: int, fds: int | None = None) -> tuple[int, int, int]:
    """The figures once every session is over: no child left and, when given, the fds
    back to that count (at most 10 s)."""
    deadline = time.monotonic() + 10
    figures = proc_figures(pid)
    while (figures[2], figures[0]) != (0, figures[0] if fds is None else fds):
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
        figures = proc_figures(pid)
    return figures


def run_load(directory: Path, total: int, concurrency: int = 200, rounds: int = 1) -> LoadRun:
    """total connections per round, rounds times against the same server."""
    cdb = directory / "rules.cdb"
    text = "".join(f"10.{i // 256}.{i % 256}.1:deny\n" for i in range(999)) + ":allow\n"
    rules.compile_file(text.encode(), cdb, directory / "rules.tmp")
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
        "220 ok",
    )
    try:
        asyncio.run(hammer(server.port, 50, 5))  # warm up: threads, lazily loaded libraries
        idle = settled(server.process.pid)
        counts = {"served": 0, "refused": 0, "reset": 0, "empty": 0}
        after = []
        begin = time.monotonic()
        for _ in range(rounds):
            found = asyncio.run(asyncio.wait_for(hammer(server.port, total, concurrency), 900))
            counts = {key: counts[key] + found[key] for key in counts}
            after.append(settled(server.process.pid, idle[0]))
        return LoadRun(counts, time.monotonic() - begin, idle, tuple(after))
    finally:
        server.stop()
