"""The in-core rblsmtpd (qboot-tcpsrv -L) against tcpserver + Debian's rblsmtpd.

Both run `rblsmtpd -r bl.test /bin/echo 220 clean` with -HR -l x -c 100 -b 256 on
loopback, and ask the same blocklist DNS server (tests/dnsbl_server.py, its own process
on a loopback address: DNSCACHEIP, never the machine's resolver), where the LISTED
addresses 127.1.0.1-200 are listed and the CLEAN 127.2.0.1-200 are not. Clients bind
those source addresses. Per round, for each server in turn (interleaved):
- listed: connections per second of bots that read the greeting, send QUIT and read to the
  end (concurrency 50);
- clean: connections per second of clients that read the chain's line to the end
  (concurrency 10);
- p99 of a clean client's connection (one at a time) during a flood of listed ones.
Each address is asked once per server run by ours (then cached by its TTL, 300 s); the
process rblsmtpd asks every time. Best round of ROUNDS per server; ratios ours/theirs.
Run: .venv/bin/python bench/rbl_bench.py [listed-connections-per-round]
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import random
import select
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OURS = str(ROOT / ".venv" / "bin" / "qboot-tcpsrv")
ROUNDS = 5
HOSTS = 200
LISTED = [f"127.1.0.{n}" for n in range(1, HOSTS + 1)]
CLEAN = [f"127.2.0.{n}" for n in range(1, HOSTS + 1)]
CHAIN = ["rblsmtpd", "-r", "bl.test", "/bin/echo", "220 clean"]
FLAGS = ["-1", "-HR", "-l", "x", "-c", "100", "-b", "256", "127.0.0.1", "0", *CHAIN]
ROUND_SECONDS = 60  # a round that takes longer is cut short (the figures then say so)
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)  # linux/in.h


def start(argv: list[str], env: dict[str, str]) -> tuple[subprocess.Popen[bytes], int]:
    process = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env={**os.environ, **env}
    )
    assert process.stdout is not None
    return process, int(process.stdout.readline())


class Load:
    """Many loopback SMTP clients at once from one thread, on plain epoll (asyncio costs
    three times as much per connection, and the client must not be what is measured).
    A listed client reads the greeting, sends QUIT and reads to the end; a clean one
    reads to the end. Each connection binds the next source address."""

    def __init__(self, port: int, sources: list[str], listed: bool) -> None:
        self.port = port
        self.sources = itertools.cycle(sources)
        self.listed = listed
        self.poller = select.epoll()
        self.open: dict[int, tuple[socket.socket, bytearray, float]] = {}
        self.done = 0
        self.failed = 0
        self.latencies: list[float] = []

    def _start(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        # The port is picked at connect(), against the whole 4-tuple: bind() alone could
        # pick one whose earlier connection the server still holds in TIME_WAIT, and that
        # SYN would wait a second for its retry.
        sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        sock.bind((next(self.sources), 0))
        sock.connect_ex(("127.0.0.1", self.port))
        self.open[sock.fileno()] = (sock, bytearray(), time.perf_counter())
        self.poller.register(sock.fileno(), select.EPOLLIN)

    def _end(self, fd: int, good: bool) -> None:
        sock, _, began = self.open.pop(fd)
        self.poller.unregister(fd)
        sock.close()
        if good:
            self.done += 1
            self.latencies.append(time.perf_counter() - began)
        else:
            self.failed += 1

    def _readable(self, fd: int) -> bool:
        sock, got, _ = self.open[fd]
        try:
            data = sock.recv(4096)
        except BlockingIOError:
            return False
        except OSError:
            self._end(fd, False)
            return True
        if data:
            if self.listed and not got and b"\n" in data:
                sock.send(b"QUIT\r\n")
            got += data
            return False
        expected = b"220 rblsmtpd.local\r\n221 " if self.listed else b"220 clean\n"
        self._end(fd, got.startswith(expected))
        return True

    def run(self, total: int, concurrency: int, stop: Callable[[], bool] | None = None) -> float:
        """Connections per second for total connections (or until stop())."""
        begin = time.perf_counter()
        started = 0
        deadline = time.monotonic() + ROUND_SECONDS
        while (started < total or self.open) and time.monotonic() < deadline:
            while len(self.open) < concurrency and started < total:
                self._start()
                started += 1
            for fd, _ in self.poller.poll(1.0):
                if self._readable(fd) and stop is not None and stop():
                    total = started  # finish what is open
        for fd in list(self.open):
            self._end(fd, False)
        return self.done / (time.perf_counter() - begin)


def flood(port: int, stop: Any) -> None:
    """In a process of its own: listed clients at concurrency 50 until stop is set."""
    Load(port, LISTED, listed=True).run(10**9, 50, stop.is_set)


def clean_during_flood(port: int, clean_total: int) -> list[float]:
    stop = multiprocessing.Event()
    flooder = multiprocessing.Process(target=flood, args=(port, stop))
    flooder.start()
    time.sleep(0.3)  # the flood under way
    load = Load(port, CLEAN, listed=False)
    load.run(clean_total, 1)
    stop.set()
    flooder.join(30)
    return load.latencies


def cpu_seconds(pid: int) -> float:
    """The server's CPU time, with its children's once reaped (rblsmtpd, the chain)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(field) for field in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def main() -> None:
    total = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    tcpserver = shutil.which("tcpserver")
    if tcpserver is None or shutil.which("rblsmtpd") is None:
        sys.exit("tcpserver/rblsmtpd not installed: apt-get install ucspi-tcp-ipv6")
    address = f"127.{random.randint(64, 250)}.{random.randint(0, 255)}.53"
    dns = subprocess.Popen(
        [sys.executable, "-m", "tests.dnsbl_server", address, "127.1.0.", str(HOSTS)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
    )
    assert dns.stdout is not None
    assert dns.stdout.readline().strip() == b"ready"
    env = {"DNSCACHEIP": address}
    servers = {"ours": [OURS, "-L", *FLAGS], "theirs": [tcpserver, *FLAGS]}
    best: dict[str, list[float]] = {}
    rounds: dict[str, list[tuple[float, float, float]]] = {}
    try:
        print(f"{total} listed, {total // 2} clean connections per round; {ROUNDS} rounds")
        for round_ in range(ROUNDS):
            for name, argv in servers.items():
                process, port = start(argv, env)
                try:
                    listed_load = Load(port, LISTED, listed=True)
                    before = cpu_seconds(process.pid)
                    listed = listed_load.run(total, 50)
                    time.sleep(0.2)  # the last children reaped
                    cpu = (cpu_seconds(process.pid) - before) / total * 1e6
                    clean_load = Load(port, CLEAN, listed=False)
                    clean = clean_load.run(total // 2, 10)
                    failed = listed_load.failed + clean_load.failed
                    latencies = clean_during_flood(port, 200)
                finally:
                    process.terminate()
                    process.wait()
                p99 = percentile(latencies, 0.99) * 1e3
                print(
                    f"round {round_ + 1} {name:>6}: listed {listed:6.0f}/s ({cpu:5.0f} us cpu)"
                    f"  clean {clean:6.0f}/s"
                    f"  clean p99 in a flood {p99:7.1f} ms ({len(latencies)} clean)"
                    + (f" {failed} FAILED" if failed else "")
                )
                figures = best.setdefault(name, [0.0, 0.0, float("inf"), float("inf")])
                figures[0] = max(figures[0], listed)
                figures[1] = max(figures[1], clean)
                figures[2] = min(figures[2], p99)
                figures[3] = min(figures[3], cpu)
                rounds.setdefault(name, []).append((listed, clean, p99))
    finally:
        dns.terminate()
        dns.wait()
    ours, theirs = best["ours"], best["theirs"]
    for name, (listed, clean, p99, cpu) in best.items():
        print(
            f"best {name:>6}: listed {listed:.0f}/s ({cpu:.0f} us cpu per connection)"
            f"  clean {clean:.0f}/s  clean p99 in a flood {p99:.1f} ms"
        )
    print(
        f"ratios ours/theirs, best rounds: listed {ours[0] / theirs[0]:.2f}x"
        f" (cpu per connection {theirs[3] / ours[3]:.1f}x less)  clean {ours[1] / theirs[1]:.2f}x"
        f"  clean p99 during a flood {ours[2] / theirs[2]:.2f} (lower is better)"
    )
    ratios = [
        [mine[k] / them[k] for mine, them in zip(rounds["ours"], rounds["theirs"], strict=True)]
        for k in range(3)
    ]
    print(
        "ratios ours/theirs, median of the rounds (each against the other server's same round):"
        f" listed {statistics.median(ratios[0]):.2f}x  clean {statistics.median(ratios[1]):.2f}x"
        f"  p99 {statistics.median(ratios[2]):.2f}"
    )


if __name__ == "__main__":
    main()
