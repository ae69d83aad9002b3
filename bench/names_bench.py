"""The shipped smtp service's flags, reverse DNS on: qboot-tcpsrv against Debian's tcpserver.

Both run `-v -R -l mx.bench -c 40 -b 256 127.0.0.1 0 greet` (greet: bench/greet.c, a
libc-free child that says whether it got TCPREMOTEHOST), with -h as shipped, and ask the
same DNS server through DNSCACHEIP: a process of this bench on a loopback address of its
own that answers every PTR question at once (client.bench.test, TTL 300). Loopback
clients at concurrency 1, 10 and 40, the servers interleaved round by round; per server
the median round's connections per second, greeting latency p50/p99, CPU per connection
(the server and its reaped children: /proc/PID/stat's utime+stime+cutime+cstime, so
tcpserver's forked children, which do its DNS lookups, count; ours' own threads count),
the server process alone (schedstat), and how many connections over the whole run came
without TCPREMOTEHOST. Ratios are ours/tcpserver.
With --rbl, the chain is `rblsmtpd -r bl.test greet` (PRESMTPD=rblsmtpd; the DNS server
lists nobody: NXDOMAIN with an SOA, TTL 300): ours runs it in-core (-L), tcpserver runs
Debian's rblsmtpd, which execs greet.
Run: .venv/bin/python bench/names_bench.py [connections-per-round] [--rbl] [--write]
(--write puts the table into bench/README.md, between its markers.)
"""

from __future__ import annotations

import asyncio
import compileall
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

OURS = str(ROOT / ".venv" / "bin" / "qboot-tcpsrv")
ROUNDS = 5
DNS_ADDRESS = "127.53.0.53"
CONCURRENCY = tuple(int(c) for c in os.environ.get("BENCH_CONCURRENCY", "1,10,40").split(","))
README = ROOT / "bench" / "README.md"
RBL = "--rbl" in sys.argv
MARK = "names_bench --rbl" if RBL else "names_bench"
BEGIN, END = f"<!-- {MARK}: begin -->", f"<!-- {MARK}: end -->"
TICK = os.sysconf("SC_CLK_TCK")

DNS_SERVER = f"""
import socket, struct, sys, threading
sys.path.insert(0, {str(ROOT)!r})
from tests.dns_wire import read_question, response
NAME = b"\\x06client\\x05bench\\x04test\\x00"
SOA_RDATA = b"\\x02ns\\x04test\\x00\\x0ahostmaster\\x04test\\x00"
SOA_RDATA += struct.pack("!IIIII", 1, 60, 60, 600, 300)
SOA = b"\\x04test\\x00" + struct.pack("!HHIH", 6, 1, 300, len(SOA_RDATA)) + SOA_RDATA
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind((sys.argv[1], 53))
print("ready", flush=True)
while True:
    packet, peer = sock.recvfrom(4096)
    name, qtype, question = read_question(packet)
    found = [(12, NAME)] if qtype == 12 else []  # bl.test lists nobody: NXDOMAIN, an SOA
    authority = b"" if found else SOA
    sock.sendto(response(packet[:2], 0 if found else 3, question, found, 300, authority), peer)
"""


@dataclass(frozen=True)
class Figures:
    rate: float  # connections per second
    p50: float  # ms
    p99: float  # ms
    cpu: float  # us per connection, the server and its children
    parent: float  # us per connection, the server process alone
    nameless: int  # connections without TCPREMOTEHOST
    total: int


def build_child(directory: Path) -> str:
    child = directory / "greet"
    source = ROOT / "bench" / "greet.c"
    subprocess.run(
        ["gcc", "-nostdlib", "-static", "-O2", "-o", str(child), str(source)], check=True
    )
    return str(child)


def ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(value) for value in fields[11:15])  # utime stime cutime cstime


def schedstat(pid: int) -> float:
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(FileNotFoundError):
            total += int(Path(f"/proc/{pid}/task/{task}/schedstat").read_text().split()[0])
    return total / 1e9


async def load(port: int, total: int, concurrency: int) -> tuple[float, list[float], int]:
    latencies: list[float] = []
    nameless = 0
    queue = iter(range(total))

    async def worker() -> None:
        nonlocal nameless
        for _ in queue:
            begin = time.perf_counter()
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            first = await reader.readexactly(1)
            latencies.append(time.perf_counter() - begin)
            rest = await reader.read()
            writer.close()
            nameless += not (first + rest).startswith(b"220 named")

    begin = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return total / (time.perf_counter() - begin), latencies, nameless


def measure(argv: list[str], total: int, concurrency: int) -> Figures:
    process = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "DNSCACHEIP": DNS_ADDRESS},
    )
    try:
        assert process.stdout is not None
        port = int(process.stdout.readline())
        # one connection first: the program paged in, ours' name cached, as a running
        # server has them
        asyncio.run(load(port, 1, 1))
        time.sleep(0.05)
        before, parent_before = ticks(process.pid), schedstat(process.pid)
        rate, latencies, nameless = asyncio.run(load(port, total, concurrency))
        time.sleep(0.2)  # the last children reaped
        cpu = (ticks(process.pid) - before) / TICK / total * 1e6
        parent = (schedstat(process.pid) - parent_before) / total * 1e6
    finally:
        process.terminate()
        process.wait()
    ordered = sorted(latencies)
    return Figures(
        rate,
        ordered[len(ordered) // 2] * 1e3,
        ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1e3,
        cpu,
        parent,
        nameless,
        total,
    )


def median(rounds: list[Figures]) -> Figures:
    def mid(values: list[float]) -> float:
        return float(statistics.median(values))

    return Figures(
        mid([r.rate for r in rounds]),
        mid([r.p50 for r in rounds]),
        mid([r.p99 for r in rounds]),
        mid([r.cpu for r in rounds]),
        mid([r.parent for r in rounds]),
        sum(r.nameless for r in rounds),
        sum(r.total for r in rounds),
    )


def table(results: dict[int, dict[str, Figures]], total: int) -> str:
    chain = "rblsmtpd -r bl.test greet (ours: -L)" if RBL else "greet"
    lines = [
        f"`-v -R -l mx.bench -c 40 -b 256`, chain {chain}. "
        f"{total} connections per round, {ROUNDS} interleaved rounds, median round; "
        "nameless: connections without TCPREMOTEHOST over all rounds.",
        "",
        "| conc | server | conn/s | p50 ms | p99 ms | CPU us/conn (with children) "
        "| server process us/conn | nameless |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for concurrency, by_server in results.items():
        ours, theirs = by_server["ours"], by_server["tcpserver"]
        for name, row in (("ours", ours), ("tcpserver", theirs)):
            lines.append(
                f"| {concurrency} | {name} | {row.rate:.0f} | {row.p50:.2f} | {row.p99:.2f} "
                f"| {row.cpu:.0f} | {row.parent:.0f} | {row.nameless}/{row.total} |"
            )
        lines.append(
            f"| {concurrency} | ratio | {ours.rate / theirs.rate:.2f} "
            f"| {ours.p50 / theirs.p50:.2f} | {ours.p99 / theirs.p99:.2f} "
            f"| {ours.cpu / max(theirs.cpu, 1e-9):.2f} "
            f"| {ours.parent / max(theirs.parent, 1e-9):.2f} | |"
        )
    return "\n".join(lines) + "\n"


def write_readme(text: str) -> None:
    section = f"{BEGIN}\n{text}{END}"
    current = README.read_text() if README.exists() else ""
    if BEGIN in current and END in current:
        head, rest = current.split(BEGIN, 1)
        updated = head + section + rest.split(END, 1)[1]
    else:
        updated = current + ("\n" if current else "") + section + "\n"
    README.write_text(updated)


def main() -> None:
    args = [arg for arg in sys.argv[1:] if arg not in ("--write", "--rbl")]
    total = int(args[0]) if args else 2000
    compileall.compile_dir(str(ROOT / "qboot_systemd"), quiet=1)
    tcpserver = shutil.which("tcpserver")
    if tcpserver is None:
        sys.exit("tcpserver not installed: apt-get install ucspi-tcp-ipv6")
    dns = subprocess.Popen(
        [sys.executable, "-c", DNS_SERVER, DNS_ADDRESS], stdout=subprocess.PIPE, text=True
    )
    try:
        assert dns.stdout is not None and dns.stdout.readline().strip() == "ready"
        with tempfile.TemporaryDirectory() as scratch:
            child = build_child(Path(scratch))
            flags = ["-1", "-v", "-R", "-l", "mx.bench", "-c", "40", "-b", "256"]
            flags += ["127.0.0.1", "0"]
            chain = ["rblsmtpd", "-r", "bl.test", child] if RBL else [child]
            servers = {
                "ours": [OURS, *(["-L"] if RBL else []), *flags, *chain],
                "tcpserver": [tcpserver, *flags, *chain],
            }
            results: dict[int, dict[str, Figures]] = {}
            for concurrency in CONCURRENCY:
                rounds: dict[str, list[Figures]] = {name: [] for name in servers}
                for _ in range(ROUNDS):
                    for name, argv in servers.items():
                        rounds[name].append(measure(argv, total, concurrency))
                results[concurrency] = {name: median(r) for name, r in rounds.items()}
                print(f"concurrency {concurrency} done", file=sys.stderr)
    finally:
        dns.terminate()
        dns.wait()
    text = table(results, total)
    print(text)
    if "--write" in sys.argv:
        write_readme(text)


if __name__ == "__main__":
    main()
