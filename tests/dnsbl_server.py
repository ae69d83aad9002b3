"""A DNS blocklist server on a loopback address, for the rblsmtpd tests and bench/rbl_bench.py.

It answers A and TXT questions from a table (ttl as given), NXDOMAIN with an SOA (for the
negative cache) for other names under its zones. Names in `flaky` lose their first query
(the client waits and asks again); names in `servfail` get SERVFAIL: both together make,
to djb's resolver and ours, a lookup that times out once and then fails. Names in
`silent` are never answered.
`python -m tests.dnsbl_server ADDRESS NETWORK COUNT` serves the bench's table in the
foreground: COUNT addresses of NETWORK (`10.9.8.`) listed in bl.test.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import sys
import threading

from .dns_wire import read_question, receive, response

TXT = 16
A = 1
SOA = 6

Table = dict[tuple[str, int], list[bytes]]  # (name, type) -> rdata


def txt_rdata(text: bytes) -> bytes:
    return (
        b"".join(
            bytes([len(text[i : i + 255])]) + text[i : i + 255] for i in range(0, len(text), 255)
        )
        or b"\0"
    )


def wire(name: str) -> bytes:
    return b"".join(bytes([len(p)]) + p.encode() for p in name.split(".") if p) + b"\0"


class BlocklistDns:
    def __init__(
        self,
        address: str,
        table: Table,
        ttl: int = 300,
        flaky: frozenset[str] = frozenset(),
        servfail: frozenset[str] = frozenset(),
        silent: frozenset[str] = frozenset(),
    ) -> None:
        self.silent = silent
        self.table = table
        self.ttl = ttl
        self.flaky = set(flaky)
        self.servfail = servfail
        self.queries: list[tuple[str, int]] = []
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.socket.bind((address, 53))
        self.socket.settimeout(0.1)
        self.address = address
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.serve, daemon=True)

    def start(self) -> BlocklistDns:
        self.thread.start()
        return self

    def serve(self) -> None:
        receive(self.socket, self.stopped, self._reply)

    def _reply(self, packet: bytes, peer: tuple[str, int]) -> None:
        reply = self.answer(packet)
        if reply is not None:
            with contextlib.suppress(OSError):
                self.socket.sendto(reply, peer)

    def answer(self, packet: bytes) -> bytes | None:
        name, qtype, question = read_question(packet)
        self.queries.append((name, qtype))
        if name in self.silent:
            return None
        if name in self.flaky:
            self.flaky.discard(name)
            return None
        if name in self.servfail:
            return self._packet(packet[:2], 2, question, [], False)
        found = self.table.get((name, qtype), [])
        known = any(key[0] == name for key in self.table)
        rcode = 0 if found or known else 3
        return self._packet(packet[:2], rcode, question, [(qtype, d) for d in found], not found)

    def _packet(
        self,
        query_id: bytes,
        rcode: int,
        question: bytes,
        found: list[tuple[int, bytes]],
        soa: bool,
    ) -> bytes:
        authority = b""
        if soa:
            rdata = (
                wire("ns.test")
                + wire("hostmaster.test")
                + struct.pack("!IIIII", 1, 60, 60, 600, self.ttl)
            )
            authority = wire("test") + struct.pack("!HHIH", SOA, 1, self.ttl, len(rdata)) + rdata
        return response(query_id, rcode, question, found, self.ttl, authority)

    def close(self) -> None:
        self.stopped.set()
        if self.thread.is_alive():
            self.thread.join(5)


def listed(table: Table, ip: str, zone: str, text: bytes) -> None:
    name = ".".join(reversed(ip.split("."))) + "." + zone
    table[(name, TXT)] = [txt_rdata(text)]
    table[(name, A)] = [socket.inet_aton("127.0.0.2")]


def bench_table(network: str, count: int) -> Table:
    """count addresses of network (a.b.c.) listed in bl.test."""
    table: Table = {}
    for host in range(1, count + 1):
        listed(table, f"{network}{host}", "bl.test", b"listed in bl.test, see http://bl.test/")
    return table


if __name__ == "__main__":
    server = BlocklistDns(sys.argv[1], bench_table(sys.argv[2], int(sys.argv[3])))
    print("ready", flush=True)
    server.serve()
