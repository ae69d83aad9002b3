"""Connections waiting for their names: one question per name shared by every connection
that needs it, never a connection run without the name tcpserver would have given it, and
never a -c slot held while waiting, whoever controls the reverse zones.

All DNS here is ours: loopback servers, or a network namespace of the test's own.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from qboot_systemd.tcpsrv import dns
from qboot_systemd.tcpsrv.dnscache import CachingResolver
from qboot_systemd.tcpsrv.holding import Hold, HoldTable

from .conftest import ROOT, require_tool
from .dnsbl_server import BlocklistDns
from .held_flood import Flood, run
from .tcpsrv_harness import (
    FakeDns,
    Running,
    dns_labels,
    env_of,
    loopback_address,
    ours,
    read_all,
    theirs,
    write_script,
)


# --- the bookkeeping ---------------------------------------------------------------------
def test_hold_table_drops_the_flooders_oldest_never_the_newcomer() -> None:
    table = HoldTable(per_client=3, total=5)
    assert table.hold(1, "a") == (Hold.HELD, None)
    assert table.hold(2, "a") == (Hold.HELD, None)
    assert table.hold(3, "a") == (Hold.HELD, None)
    assert table.hold(4, "a") == (Hold.CLIENT_FULL, None)  # its own bound
    assert table.hold(5, "b") == (Hold.HELD, None)
    assert table.hold(6, "b") == (Hold.HELD, None)
    # full: the newcomer is held, the oldest of the client holding most goes
    assert table.hold(7, "honest") == (Hold.HELD, 1)
    assert table.hold(8, "other") == (Hold.HELD, 2)  # a and b hold 2 each: a's is older
    assert table.hold(9, "third") == (Hold.HELD, 5)
    assert len(table) == 5 and table.count("honest") == 1
    table.release(7)
    table.release(7)  # twice: nothing
    assert table.count("honest") == 0 and len(table) == 4


class Asked:
    def __init__(self, done: Callable[[dns.Answer | None], None]) -> None:
        self.done = done
        self.closed = False

    def start(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


class FakeResolver:
    def __init__(self) -> None:
        self.asked: list[Asked] = []

    def query(
        self, name: bytes, qtype: int, deadline: float, done: Callable[[dns.Answer | None], None]
    ) -> Asked:
        asked = Asked(done)
        self.asked.append(asked)
        return asked


def test_shared_question_is_dropped_with_its_last_asker_and_failures_kept_briefly() -> None:
    now = [10.0]
    resolver = FakeResolver()
    cache = CachingResolver(
        resolver,  # type: ignore[arg-type]
        clock=lambda: now[0],
        failure_seconds=5,
    )
    got: list[dns.Answer | None] = []
    first = cache.ask(b"\x01x\0", dns.TYPE_PTR, 0, got.append)
    second = cache.ask(b"\x01x\0", dns.TYPE_PTR, 0, got.append)
    assert len(resolver.asked) == 1
    first.close()
    assert not resolver.asked[0].closed and cache.in_flight == 1
    second.close()
    assert resolver.asked[0].closed and cache.in_flight == 0 and got == []
    cache.ask(b"\x01x\0", dns.TYPE_PTR, 0, got.append)
    resolver.asked[1].done(None)
    cache.ask(b"\x01x\0", dns.TYPE_PTR, 0, got.append)
    assert got == [None, None] and len(resolver.asked) == 2  # the failure remembered
    now[0] += 5
    cache.ask(b"\x01x\0", dns.TYPE_PTR, 0, got.append)
    assert len(resolver.asked) == 3  # and asked again after it


# --- what the client gets ---------------------------------------------------------------
def sessions_at_once(server: Running, source: str, count: int) -> list[bytes]:
    """count connections from source, all open before any is read."""
    clients = [server.connect(source=source, timeout=20) for _ in range(count)]
    outputs: list[bytes] = [b""] * count

    def read(index: int) -> None:
        outputs[index] = read_all(clients[index])
        clients[index].close()

    threads = [threading.Thread(target=read, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return outputs


def test_ten_sessions_from_one_address_all_get_the_name_tcpserver_gives() -> None:
    """A big sender's 10 sessions at once, its PTR answered after 0.3 s: each carries
    TCPREMOTEHOST, as under tcpserver with the same DNS server; ours asked once."""
    tcpserver = require_tool("tcpserver")
    resolver = FakeDns(loopback_address(), delay=0.3)
    client = loopback_address()
    resolver.ptr(client, dns_labels(b"mx", b"big", b"test"))
    hosts = {}
    args = ("-R", "-l", "x", "127.0.0.1", "0", "/usr/bin/env", "-0")
    env = {"DNSCACHEIP": resolver.address}
    try:
        for name in ("ours", "theirs"):
            server = ours(*args, env=env) if name == "ours" else theirs(tcpserver, *args, env=env)
            try:
                asked_before = len(resolver.queries)
                outputs = sessions_at_once(server, client, 10)
                hosts[name] = [env_of(out).get(b"TCPREMOTEHOST") for out in outputs]
                if name == "ours":
                    assert len(resolver.queries) - asked_before == 1  # one shared question
            finally:
                server.stop()
    finally:
        resolver.close()
    assert hosts["theirs"] == [b"mx.big.test"] * 10
    assert hosts["ours"] == hosts["theirs"]


def test_silent_reverse_zones_of_twenty_addresses_stall_nobody() -> None:
    """60 connections from 20 addresses whose PTR questions are never answered, -c 40:
    an honest client is greeted within 0.5 s, with its name (tcpserver: after ~57 s)."""
    attackers = tuple(loopback_address() for _ in range(20))
    outcome = run(Flood("127.0.0.1", loopback_address(), loopback_address(), attackers, 3))
    assert outcome.honest_host == "honest.test"
    assert outcome.greeted_after < 0.5, outcome
    assert outcome.refused_attackers == 0  # under every bound: held, none dropped
    assert outcome.rss_after_kib - outcome.rss_before_kib < 16 * 1024, outcome


@pytest.fixture
def namespace() -> Iterator[str]:
    """A network namespace of our own, its lo up with 2001:db8:ffff::1 for the server,
    an honest source in another /48 and two sources in each of 1,000 /64s."""
    require_tool("ip")
    name = f"qboot-held-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        lines = ["link set lo up", "addr add 2001:db8:ffff::1/128 dev lo nodad"]
        lines.append("addr add 2001:db8:1:1::1/128 dev lo nodad")
        for prefix in range(1000):
            for host in (1, 2):
                lines.append(f"addr add 2001:db8:0:{prefix:x}::{host}/128 dev lo nodad")
        subprocess.run(
            ["ip", "netns", "exec", name, "ip", "-batch", "-"],
            input="\n".join(lines) + "\n",
            text=True,
            check=True,
        )
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def test_silent_reverse_zones_of_a_thousand_ipv6_prefixes_stall_nobody(namespace: str) -> None:
    """2,000 connections from 1,000 IPv6 /64s on silent DNS, more than the server holds:
    the flooders' oldest are dropped, the honest client is greeted within 0.5 s with its
    name, and the server's memory stays bounded."""
    attackers = tuple(f"2001:db8:0:{p:x}::{h}" for p in range(1000) for h in (1, 2))
    spec = {
        "listen": "2001:db8:ffff::1",
        "dns": "127.0.0.53",
        "honest": "2001:db8:1:1::1",
        "attackers": attackers,
        "per_attacker": 1,
    }
    # its own session: on a timeout the whole group goes, the server in it too
    flood = subprocess.Popen(
        ["ip", "netns", "exec", namespace, sys.executable, "-m", "tests.held_flood",
         json.dumps(spec)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)}, start_new_session=True,
    )  # fmt: skip
    try:
        stdout, stderr = flood.communicate(timeout=120)
    finally:
        if flood.poll() is None:
            os.killpg(flood.pid, signal.SIGKILL)
            flood.wait()
    assert flood.returncode == 0, stderr[-3000:]
    outcome = json.loads(stdout.strip().splitlines()[-1])
    assert outcome["honest_host"] == "honest.test"
    assert outcome["greeted_after"] < 0.5, outcome
    assert outcome["refused_attackers"] >= 2000 - 1024, outcome  # past the total bound
    assert outcome["rss_after_kib"] - outcome["rss_before_kib"] < 32 * 1024, outcome


def test_connections_waiting_for_a_silent_blocklist_hold_no_session_slot(tmp_path: Path) -> None:
    """In-core rblsmtpd, -c 2: six connections from three addresses whose blocklist
    questions are never answered wait without a slot; a clean client is greeted at once."""
    attackers = [loopback_address() for _ in range(3)]
    silent = frozenset(".".join(reversed(ip.split("."))) + ".bl.test" for ip in attackers)
    blocklist = BlocklistDns(loopback_address(), {}, silent=silent).start()
    program = write_script(tmp_path, "smtpd", "#!/bin/sh\necho 220 ready\n")
    server = ours(
        "-L", "-HR", "-l", "x", "-c", "2", "127.0.0.1", "0", "rblsmtpd", "-r", "bl.test", program,
        env={"DNSCACHEIP": blocklist.address},
    )  # fmt: skip
    held = []
    try:
        for source in attackers:
            for _ in range(2):
                held.append(server.connect(source=source))
        deadline = time.monotonic() + 5
        while len({name for name, _ in blocklist.queries} & silent) < 3:
            assert time.monotonic() < deadline, blocklist.queries
            time.sleep(0.02)
        client = server.connect(source=loopback_address(), timeout=5)
        started = time.monotonic()
        assert client.recv(100) == b"220 ready\n"
        assert time.monotonic() - started < 0.5
        client.close()
    finally:
        for sock in held:
            sock.close()
        server.stop()
        blocklist.close()
