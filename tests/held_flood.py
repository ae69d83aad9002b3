"""Connections whose reverse names never come, and one honest client: how long until the
honest one is greeted, and what the server's memory did meanwhile.

Run in a test's own process (IPv4: 127.0.0.0/8 gives sources for free), or as
`python -m tests.held_flood SPEC` inside a network namespace whose lo carries the IPv6
addresses (then the figures come back as one JSON line on stdout).
"""

from __future__ import annotations

import json
import socket
import sys
import time
from dataclasses import asdict, dataclass

from .tcpsrv_harness import FakeDns, Running, dns_labels, ours


@dataclass(frozen=True)
class Flood:
    listen: str  # the server's address
    dns: str  # the loopback DNS server's address
    honest: str  # a source whose PTR answers at once
    attackers: tuple[str, ...]  # sources whose PTR questions are never answered
    per_attacker: int  # connections from each
    limit: int = 40  # -c; and a backlog (-b) the flood does not fill, or each connect
    # past it waits for the SYN's retransmission (1 s) and the flood outlasts -t


@dataclass(frozen=True)
class Outcome:
    greeted_after: float  # seconds from the honest client's connect to its first byte
    honest_host: str | None  # its TCPREMOTEHOST
    rss_before_kib: int
    rss_after_kib: int
    questions: int  # PTR questions the DNS server saw for the attackers
    refused_attackers: int  # attackers' connections the server closed


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def connect(server: Running, host: str, source: str) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    client = socket.socket(family, socket.SOCK_STREAM)
    client.bind((source, 0))
    client.connect((host, server.port))
    return client


def run(flood: Flood) -> Outcome:
    resolver = FakeDns(flood.dns, silent=frozenset(flood.attackers))
    resolver.ptr(flood.honest, dns_labels(b"honest", b"test"))
    server = ours(
        "-R", "-l", "x", "-c", str(flood.limit), "-b", "1024",
        flood.listen, "0", "/usr/bin/env", "-0",
        env={"DNSCACHEIP": flood.dns},
    )  # fmt: skip
    held: list[socket.socket] = []
    try:
        pid = server.process.pid
        connect(server, flood.listen, flood.honest).close()  # the program paged in
        time.sleep(0.3)
        before = rss_kib(pid)
        for source in flood.attackers:
            for _ in range(flood.per_attacker):
                held.append(connect(server, flood.listen, source))
        # Every attacker's question asked (a server whose slots they hold asks the rest
        # only as slots free: then 3 s, and the honest client comes anyway).
        deadline = time.monotonic() + 3
        while len(set(resolver.queries)) < len(flood.attackers) and time.monotonic() < deadline:
            time.sleep(0.05)
        client = connect(server, flood.listen, flood.honest)
        client.settimeout(5)
        started = time.monotonic()
        try:
            first = client.recv(65536)
        except TimeoutError:
            first = b""
        greeted = time.monotonic() - started
        rest = b""
        while first and (chunk := client.recv(65536)):
            rest += chunk
        client.close()
        env = dict(entry.partition(b"=")[::2] for entry in (first + rest).split(b"\0")[:-1])
        host = env.get(b"TCPREMOTEHOST")
        after = rss_kib(pid)
        refused = 0
        for sock in held:
            sock.setblocking(False)
            try:
                refused += sock.recv(1) == b""
            except BlockingIOError:
                pass
            except OSError:
                refused += 1
        return Outcome(
            greeted,
            host.decode() if host is not None else None,
            before,
            after,
            len(set(resolver.queries)),
            refused,
        )
    finally:
        for sock in held:
            sock.close()
        server.stop()
        resolver.close()


if __name__ == "__main__":
    spec = json.loads(sys.argv[1])
    spec["attackers"] = tuple(spec["attackers"])
    print(json.dumps(asdict(run(Flood(**spec)))), flush=True)
