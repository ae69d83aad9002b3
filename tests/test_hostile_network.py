"""What a remote peer sends (ident answers, reverse DNS names, slow drips) must not reach
further than its own value, nor hold up anyone else; the rules file must not stop the loop.

Every identd and DNS server here is ours, on a loopback address of its own; Debian's
tcpserver is the reference for what the child's environment gets.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qboot_systemd import rules
from qboot_systemd.tcpsrv import dns, spawn
from qboot_systemd.tcpsrv.environ import Endpoints
from qboot_systemd.tcpsrv.lookups import (
    IDENT_VALUE_CAP,
    ConnectionLookups,
    Names,
    as_c_string,
    ident_value,
)
from qboot_systemd.tcpsrv.reactor import Reactor

from .conftest import ROOT, require_extension, require_tool, venv_script
from .tcpsrv_harness import (
    FakeDns,
    Identd,
    Running,
    dns_labels,
    env_of,
    loopback_address,
    masked_log,
    theirs,
)

INJECTION = "x\0RELAYCLIENT=\0QMAILQUEUE=/bin/sh\0é"
BASE = {"PATH": "/usr/bin:/bin", "KEEP": "ü"}

# Ident answers an attacker's identd may send, and what tcpserver's child gets.
HOSTILE_IDENT = [
    (b"0,0:USERID:UNIX:x\0RELAYCLIENT=\0QMAILQUEUE=/bin/sh\0\xc3\xa9\r\n", b"x"),
    (b"0,0:USERID:UNIX:a=b\r\n", b"a=b"),
    (b"0,0:USERID:UNIX:us er\rX=1\n", b"userX=1"),
    (b"0,0:USERID:UNIX:\xc3\xa9\xff\n", b"\xc3\xa9\xff"),
    (b"0,0:USERID:UNIX:" + b"A" * 2_000_000, b"A" * IDENT_VALUE_CAP),
    (b"0 , 0 : ERROR : NO-USER\r\n", None),  # two colons then the newline: set, empty
    (b"0,0:USERID:UNIX:never ends", None),  # closed before a newline: unset
]


# --- the packing -------------------------------------------------------------------------
def test_packing_cuts_a_value_at_nul_and_adds_nothing() -> None:
    env = {"TCPREMOTEINFO": INJECTION, "A": "1=2", "B": "é"}
    assert spawn.env_entries(env) == [b"TCPREMOTEINFO=x", b"A=1=2", b"B=\xc3\xa9"]
    for bad in ({"A=B": "1"}, {"A\0B": "1"}):
        with pytest.raises(ValueError):
            spawn.env_entries(bad)


# What the server holds: text decoded from bytes with surrogateescape (\udc80-\udcff only).
NO_SURROGATES = st.characters(blacklist_categories=("Cs",)) | st.sampled_from("\udc80\udcff")


@settings(max_examples=150, deadline=None)
@given(
    st.dictionaries(
        st.text(NO_SURROGATES.filter(lambda ch: ch not in "=\0"), min_size=1, max_size=20),
        st.text(NO_SURROGATES, max_size=300) | st.text(alphabet="\0=é\udcff\n", max_size=30_000),
        max_size=30,
    )
)
def test_packing_keeps_one_entry_per_variable(env: dict[str, str]) -> None:
    strings = spawn.env_entries(env)
    assert len(strings) == len(env)
    for (name, value), string in zip(env.items(), strings, strict=True):
        expected = f"{name}={value}".encode("utf-8", "surrogateescape").partition(b"\0")[0]
        assert string == expected


@pytest.mark.parametrize("kind", [spawn.ExtensionSpawner, spawn.PythonSpawner])
def test_spawner_gives_the_child_only_the_cut_value(
    kind: type[spawn.ExtensionSpawner | spawn.PythonSpawner],
) -> None:
    if kind is spawn.ExtensionSpawner:
        require_extension()
    spawner = kind([b"/usr/bin/env", b"-0"], BASE)
    ours, child_end = socket.socketpair()
    with ours, child_end:
        pid = spawner.spawn({"TCPREMOTEINFO": INJECTION}, child_end.fileno())
        child_end.close()
        output = b"".join(iter(lambda: ours.recv(65536), b""))
        assert os.waitpid(pid, 0)[1] == 0
    assert sorted(output.split(b"\0")[:-1]) == [
        b"KEEP=\xc3\xbc",
        b"PATH=/usr/bin:/bin",
        b"TCPREMOTEINFO=x",
    ]


# --- what is read from the network -------------------------------------------------------
@pytest.mark.parametrize(("answer", "expected"), HOSTILE_IDENT)
def test_ident_answers_are_read_as_remoteinfo_c_reads_them(
    answer: bytes, expected: bytes | None
) -> None:
    value = ident_value(answer[:1024])
    if expected is None:
        assert value in (None, b"")
    else:
        assert value is not None and as_c_string(value) == as_c_string(expected)


def remoteinfo_c(answer: bytes) -> bytes | None:
    """ucspi-tcp's remoteinfo.c loop, byte by byte: the model for ident_value."""
    colons = 0
    value = bytearray()
    for byte in answer:
        if byte in b" \t\r":
            continue
        if byte == 10:
            return bytes(value)
        if colons < 3:
            colons += byte == 58
        else:
            value.append(byte)
            if len(value) > 256:
                return bytes(value)
    return None


@settings(max_examples=300, deadline=None)
@given(
    st.binary(max_size=1024)
    | st.lists(
        st.sampled_from([b":", b"\n", b" ", b"\r", b"\0", b"x", b"=", b"\xe9"]), max_size=400
    ).map(b"".join)
)
def test_ident_value_is_what_remoteinfo_c_reads(answer: bytes) -> None:
    value = ident_value(answer)
    assert value == remoteinfo_c(answer)
    if value is not None:
        assert len(value) <= IDENT_VALUE_CAP and b"\n" not in value and b"\r" not in value
        assert "\0" not in as_c_string(value)


def test_ident_value_of_megabytes_is_quick() -> None:
    started = time.monotonic()
    assert ident_value(b"0,0:USERID:UNIX:" + b"y" * 5_000_000) == b"y" * IDENT_VALUE_CAP
    assert ident_value(b" " * 5_000_000) is None
    assert time.monotonic() - started < 1.0


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=4096), st.integers(0, 0xFFFF), st.integers(0, 0xFFFF))
def test_dns_parser_never_crashes_on_any_packet(records: bytes, count: int, flags: int) -> None:
    """A packet with our id and question (what a spoofer who guessed them sends) and any
    answer section: an Answer or None, never an exception, and names stay short."""
    name = dns.reverse_name("192.0.2.1")
    question = dns.build_query(7, name, dns.TYPE_PTR)[12:]
    header = b"\x00\x07" + (flags | 0x8000).to_bytes(2, "big") + b"\x00\x01"
    packet = header + count.to_bytes(2, "big") + bytes(4) + question + records
    for candidate in (packet, records):
        response = dns.parse_response(candidate, 7, name, dns.TYPE_PTR)
        assert response is None or isinstance(response, dns.Answer)
        for target in response.names() if response else []:
            assert len(target) <= dns.MAX_NAME
            dns.to_dotted(target)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=63), max_size=4))
def test_dns_names_become_safe_text(labels: list[bytes]) -> None:
    text = dns.to_dotted(dns_labels(*labels))
    assert all(ch in "abcdefghijklmnopqrstuvwxyz0123456789-_.\\" for ch in text)


def test_dns_servers_names_and_records() -> None:
    conf = "# x\nnameserver 192.0.2.53\nnameserver fe80::1%eth0\nnameserver bogus\nsearch a\n"
    assert dns.parse_servers({}, conf) == ("192.0.2.53", "fe80::1")
    assert dns.parse_servers({"DNSCACHEIP": "127.0.0.2, ::1"}, conf) == ("127.0.0.2", "::1")
    assert dns.parse_servers({}, "") == ("127.0.0.1",)  # djb's default
    assert dns.reverse_name("::ffff:192.0.2.1") == dns.reverse_name("192.0.2.1")
    assert dns.reverse_name("::1").endswith(b"\x03ip6\x04arpa\x00")
    for bad in ("a..b", "x" * 64 + ".test", ".".join(["abcdefgh"] * 40)):
        with pytest.raises(ValueError):
            dns.encode_name(bad)
    txt = dns.Record(b"\0", dns.TYPE_TXT, 60, b"\x03abc\x02de\x09cut")
    a = dns.Record(b"\0", dns.TYPE_A, 60, b"\xc0\x00\x02\x01")
    answer = dns.Answer(0, False, (txt, a))
    assert answer.texts() == [b"abcdecut"] and answer.addresses() == ["192.0.2.1"]


def test_dns_compression_loops_are_refused() -> None:
    name = dns.reverse_name("192.0.2.1")
    question = dns.build_query(7, name, dns.TYPE_PTR)
    header = b"\x00\x07\x81\x80\x00\x01\x00\x01\x00\x00\x00\x00"
    looping = header + question[12:] + b"\xc0\x0c\x00\x0c\x00\x01\x00\x00\x00\x3c\x00\x02"
    looping += b"\xc0" + bytes([len(looping)])  # the PTR target points at itself
    # Our id and question, broken past them: that server failed (ask the next at once),
    # not silence that would cost the client the whole -t.
    failed = dns.parse_response(looping, 7, name, dns.TYPE_PTR)
    assert failed is not None and failed.rcode == dns.RCODE_SERVFAIL
    assert not failed.final and failed.records == ()
    assert dns.parse_response(looping, 8, name, dns.TYPE_PTR) is None  # another id
    past_end = header + question[12:] + b"\xc0\x0c\x00\x0c\x00\x01\x00\x00\x00\x3c\x7f\xff"
    assert dns.parse_response(past_end, 7, name, dns.TYPE_PTR) == failed


class FirstFailsAtOnce:
    """A resolver whose first question fails within its own start(); the others never
    get an answer. Records which were closed."""

    def __init__(self) -> None:
        self.asked = 0
        self.closed = 0

    def query(self, name: bytes, qtype: int, deadline: float, done: object) -> object:
        resolver = self
        first = self.asked == 0
        self.asked += 1

        class Query:
            def start(self) -> None:
                if first:
                    done(None)  # type: ignore[operator]

            def close(self) -> None:
                resolver.closed += 1

        return Query()


def test_lookups_that_fail_at_once_do_not_end_the_others() -> None:
    reactor = Reactor()
    reactor.start()
    ended: list[Names] = []
    resolver = FirstFailsAtOnce()
    # 192.0.2.1 is not ours: binding the ident socket to it fails at once too.
    ends = Endpoints("192.0.2.1", 25, "127.0.0.1", 4000)
    deadline = time.monotonic() + 5
    lookups = ConnectionLookups(
        reactor, resolver, ends, deadline, (True, True, True), False, ended.append
    )
    lookups.start()
    assert ended == [] and resolver.asked == 2  # the remote name is still on its way
    reactor.run_timers(deadline + 1)
    assert ended == [Names(None, None, None)]
    assert resolver.closed == 1  # the unanswered question was stopped at the deadline
    assert reactor.idle
    reactor.close()


# --- qboot-tcpsrv with a hostile identd, both spawners ----------------------------------
# The pure-Python path (QBOOT_NO_EXTENSION=1), without the variable reaching the child.
PYTHON_SPAWNER = (
    "import os, sys\n"
    "os.environ['QBOOT_NO_EXTENSION'] = '1'\n"
    "from qboot_systemd.tcpsrv import syscalls\n"
    "assert syscalls.EXTENSION is None\n"
    "del os.environ['QBOOT_NO_EXTENSION']\n"
    "from qboot_systemd.tcpsrv.main import main\n"
    "sys.exit(main())\n"
)


def start_ours(spawner: str, *args: str, env: dict[str, str] | None = None) -> Running:
    if spawner == "extension":
        command = [venv_script("qboot-tcpsrv")]
    else:
        command = [str(ROOT / ".venv" / "bin" / "python"), "-c", PYTHON_SPAWNER]
    return Running([*command, "-1", *args], env=env)


@pytest.mark.parametrize("spawner", ["extension", "python"])
def test_hostile_ident_answers_change_only_their_own_value(spawner: str) -> None:
    client = loopback_address()
    answers = iter([answer for answer, _ in HOSTILE_IDENT] * 2)
    identd = Identd(client, lambda _query: next(answers))
    server = start_ours(
        spawner, "-Hr", "-l", "x", "-t", "5", "127.0.0.1", "0", "/usr/bin/env", "-0"
    )
    try:
        for _ in range(2):  # more clients than spawner threads
            for _, expected in HOSTILE_IDENT:
                env = env_of(server.request(source=client))
                assert b"RELAYCLIENT" not in env and b"QMAILQUEUE" not in env, env
                if expected is None:
                    assert env.get(b"TCPREMOTEINFO", b"") == b""
                else:
                    assert env[b"TCPREMOTEINFO"] == expected.partition(b"\0")[0]
                    assert env[b"TCP6REMOTEINFO"] == env[b"TCPREMOTEINFO"]
        assert b"PROTO" in env_of(server.request())  # still serving
    finally:
        server.stop()
        identd.close()


def test_ident_environment_and_log_match_tcpserver() -> None:
    tcpserver = require_tool("tcpserver")
    client = loopback_address()
    answers: list[bytes] = []
    identd = Identd(client, lambda _query: answers[0])
    results = {}
    for name, start in (
        ("ours", lambda *a: start_ours("extension", *a)),
        ("theirs", lambda *a: theirs(tcpserver, *a)),
    ):
        # host 0, as in test_tcpsrv_compat: with an IPv4 host, Debian's tcpserver logs
        # IPv4-mapped addresses and we log plain IPv4 (its environment has plain IPv4)
        server = start("-v", "-Hr", "-l", "x", "-t", "5", "0", "0", "/usr/bin/env", "-0")
        try:
            seen = []
            for count, (answer, _) in enumerate(HOSTILE_IDENT, start=1):
                answers[:] = [answer]
                env = env_of(server.request(source=client))
                seen.append((env.get(b"TCPREMOTEINFO"), env.get(b"RELAYCLIENT")))
                server.wait_count(r"end \d+ status \d+\n[^\n]*status: 0/40\n", count)
            program = "qboot-tcpsrv" if name == "ours" else "tcpserver"
            results[name] = (seen, masked_log(server.log(), program))
        finally:
            server.stop()
    identd.close()
    assert results["ours"] == results["theirs"]
    assert results["ours"][0][0] == (b"x", None)
    assert any(":x:" in line for line in results["ours"][1])  # the log cut at the NUL too


def random_ident_answers(count: int) -> list[bytes]:
    """Answers mixing what confuses parsers: colons, line ends, spaces, NUL, '=',
    non-ASCII, long runs; some without a newline at all."""
    rng = random.Random(13)
    pieces = [
        b":",
        b"\n",
        b"\r",
        b" ",
        b"\t",
        b"\0",
        b"=",
        b"\xc3\xa9",
        b"\xff",
        b"USERID",
        b"x" * 300,
    ]
    answers = []
    for _ in range(count):
        answer = b"".join(rng.choice(pieces) for _ in range(rng.randrange(1, 40)))
        answers.append(b"0,0:USERID:UNIX:" + answer if rng.random() < 0.5 else answer)
    return answers


def test_random_ident_answers_give_what_tcpserver_gives() -> None:
    tcpserver = require_tool("tcpserver")
    client = loopback_address()
    answers = random_ident_answers(60)
    current: list[bytes] = [b""]
    identd = Identd(client, lambda _query: current[0])
    results = {}
    for name, start in (
        ("ours", lambda *a: start_ours("extension", *a)),
        ("theirs", lambda *a: theirs(tcpserver, *a)),
    ):
        server = start("-Hr", "-l", "x", "-t", "3", "0", "0", "/usr/bin/env", "-0")
        try:
            seen = []
            for answer in answers:
                current[0] = answer
                env = env_of(server.request(source=client))
                seen.append(env.get(b"TCPREMOTEINFO"))
            results[name] = seen
        finally:
            server.stop()
    identd.close()
    for answer, ours_, theirs_ in zip(answers, results["ours"], results["theirs"], strict=True):
        assert ours_ == theirs_, answer


# --- slow peers ----------------------------------------------------------------------------
def test_dripping_identds_delay_only_their_own_clients(tmp_path: Path) -> None:
    """80 lookups in flight (10 addresses, 8 each) whose identds drip a byte every 1.5 s,
    against -c 10: the held connections take no session slot, so another address is
    served at once; a 9th connection from a slow address waits for its own answer (as
    tcpserver's would), never goes on without it; SIGTERM does not wait for them."""
    answer = b"0,0:USERID:UNIX:" + b"x" * 100 + b"\r\n"
    identds = [Identd(loopback_address(), answer, drip=1.5) for _ in range(10)]
    server = start_ours(
        "extension", "-Hr", "-l", "x", "-c", "10", "127.0.0.1", "0", "/usr/bin/env", "-0"
    )
    held = []
    try:
        for identd in identds:
            for _ in range(8):
                held.append(server.connect(source=identd.listener.getsockname()[0]))
        deadline = time.monotonic() + 10
        while sum(identd.queries for identd in identds) < 80:
            assert time.monotonic() < deadline, [identd.queries for identd in identds]
            time.sleep(0.05)
        other = loopback_address()
        started = time.monotonic()
        env = env_of(server.request(source=other))
        waited = time.monotonic() - started
        assert b"PROTO" in env and b"TCPREMOTEINFO" not in env  # nobody at other:113
        assert waited < 1.0, f"served after {waited:.2f} s"
        ninth = server.connect(source=identds[0].listener.getsockname()[0], timeout=1.0)
        held.append(ninth)
        with pytest.raises(TimeoutError):
            ninth.recv(1)  # held for its ident, not run without it
        assert identds[0].queries == 9
        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(10) == 0
        assert time.monotonic() - started < 2.0
    finally:
        for sock in held:
            sock.close()
        server.stop()
        for identd in identds:
            identd.close()


def test_sigterm_under_systemd_cuts_lookups_short(tmp_path: Path) -> None:
    """Under systemd SIGTERM drains sessions, but a connection still in its lookups goes
    on at once with what it has, instead of holding the stop for -t."""
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    client = loopback_address()
    identd = Identd(client, b"0,0:USERID:UNIX:slow\r\n", drip=1.5)
    server = start_ours(
        "extension",
        "-Hr",
        "-l",
        "x",
        "127.0.0.1",
        "0",
        "/usr/bin/env",
        "-0",
        env={"NOTIFY_SOCKET": str(tmp_path / "notify")},
    )
    try:
        with server.connect(source=client) as session:
            deadline = time.monotonic() + 5
            while not identd.queries:
                assert time.monotonic() < deadline
                time.sleep(0.02)
            started = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            env = env_of(b"".join(iter(lambda: session.recv(65536), b"")))
            assert b"PROTO" in env and b"TCPREMOTEINFO" not in env
            assert server.process.wait(10) == 0
            assert time.monotonic() - started < 2.0
    finally:
        server.stop()
        identd.close()
        notify.close()


def test_one_deadline_for_the_whole_ident_exchange() -> None:
    client = loopback_address()
    identd = Identd(client, b"0,0:USERID:UNIX:" + b"x" * 200 + b"\r\n", drip=0.3)
    server = start_ours(
        "extension", "-Hr", "-l", "x", "-t", "2", "127.0.0.1", "0", "/usr/bin/env", "-0"
    )
    try:
        started = time.monotonic()
        env = env_of(server.request(source=client))
        waited = time.monotonic() - started
        assert b"TCPREMOTEINFO" not in env
        assert 1.8 < waited < 4.0, f"served after {waited:.2f} s"
    finally:
        server.stop()
        identd.close()


# --- hostile reverse DNS -----------------------------------------------------------------
HOSTILE_NAMES = [
    dns_labels(b"mail", b"Example", b"COM"),
    dns_labels(b"x\0RELAYCLIENT=", b"evil"),
    dns_labels(b"a.b", b"c d\r\nX=1"),
    dns_labels("é".encode(), b"\xff"),
    dns_labels(*[b"y" * 63] * 3, b"z" * 61),  # 255 bytes: the longest name there is
]


def test_hostile_reverse_names_match_tcpserver() -> None:
    """Both servers ask our DNS server (DNSCACHEIP) for the client's name: the child's
    TCPREMOTEHOST is the same, with the hostile bytes escaped as \\ooo."""
    tcpserver = require_tool("tcpserver")
    results = {}
    for name, start in (
        ("ours", lambda *a, env: start_ours("extension", *a, env=env)),
        ("theirs", lambda *a, env: theirs(tcpserver, *a, env=env)),
    ):
        seen = []
        for wire in HOSTILE_NAMES:
            resolver = FakeDns(loopback_address())
            client = loopback_address()
            resolver.ptr(client, wire)
            server = start(
                "-hR",
                "-l",
                "x",
                "127.0.0.1",
                "0",
                "/usr/bin/env",
                "-0",
                env={"DNSCACHEIP": resolver.address},
            )
            try:
                seen.append(env_of(server.request(source=client)).get(b"TCPREMOTEHOST"))
            finally:
                server.stop()
                resolver.close()
        results[name] = seen
    assert results["ours"] == results["theirs"]
    assert results["ours"][0] == b"mail.example.com"
    assert results["ours"][1] == b"x\\000relayclient\\075.evil"


def test_random_reverse_names_give_what_tcpserver_gives() -> None:
    tcpserver = require_tool("tcpserver")
    rng = random.Random(17)
    resolver = FakeDns(loopback_address())
    clients = {}
    for _ in range(30):
        labels = [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64))) for _ in range(3)]
        client = loopback_address()
        resolver.ptr(client, dns_labels(*labels))
        clients[client] = labels
    results = {}
    for name, start in (
        ("ours", lambda *a, env: start_ours("extension", *a, env=env)),
        ("theirs", lambda *a, env: theirs(tcpserver, *a, env=env)),
    ):
        server = start(
            "-hR", "-l", "x", "0", "0", "/usr/bin/env", "-0", env={"DNSCACHEIP": resolver.address}
        )
        try:
            results[name] = [
                env_of(server.request(source=client)).get(b"TCPREMOTEHOST") for client in clients
            ]
        finally:
            server.stop()
    resolver.close()
    assert None not in results["ours"]
    assert results["ours"] == results["theirs"]


def test_paranoid_keeps_only_names_that_map_back() -> None:
    resolver = FakeDns(loopback_address())
    good, bad = loopback_address(), loopback_address()
    resolver.ptr(good, dns_labels(b"good", b"test"))
    resolver.a("good.test", good)
    resolver.ptr(bad, dns_labels(b"liar", b"test"))
    resolver.a("liar.test", "192.0.2.1")
    server = start_ours(
        "extension",
        "-hpR",
        "-l",
        "x",
        "127.0.0.1",
        "0",
        "/usr/bin/env",
        "-0",
        env={"DNSCACHEIP": resolver.address},
    )
    try:
        assert env_of(server.request(source=good)).get(b"TCPREMOTEHOST") == b"good.test"
        assert b"TCPREMOTEHOST" not in env_of(server.request(source=bad))
    finally:
        server.stop()
        resolver.close()


def test_resolver_skips_failing_servers_and_ignores_forged_answers() -> None:
    """DNSCACHEIP names a dead server, one that says SERVFAIL, and one that answers after
    a forged answer (wrong id, then right id from another address): the real name wins."""
    client = loopback_address()
    failing = FakeDns(loopback_address(), rcode=2)
    honest = FakeDns(loopback_address(), forged=dns_labels(b"forged", b"test"))
    honest.ptr(client, dns_labels(b"real", b"test"))
    servers = f"{loopback_address()} {failing.address} {honest.address}"
    server = start_ours(
        "extension",
        "-hR",
        "-l",
        "x",
        "127.0.0.1",
        "0",
        "/usr/bin/env",
        "-0",
        env={"DNSCACHEIP": servers},
    )
    try:
        assert env_of(server.request(source=client)).get(b"TCPREMOTEHOST") == b"real.test"
        assert failing.queries and honest.queries
    finally:
        server.stop()
        failing.close()
        honest.close()


def test_ipv6_client_names_match_tcpserver() -> None:
    tcpserver = require_tool("tcpserver")
    resolver = FakeDns(loopback_address())
    resolver.ptr("::1", dns_labels(b"six", b"test"))
    resolver.a("six.test", "::1")
    seen = {}
    for name, start in (
        ("ours", lambda *a, env: start_ours("extension", *a, env=env)),
        ("theirs", lambda *a, env: theirs(tcpserver, *a, env=env)),
    ):
        server = start(
            "-hpR",
            "-l",
            "x",
            "::1",
            "0",
            "/usr/bin/env",
            "-0",
            env={"DNSCACHEIP": resolver.address},
        )
        try:
            env = env_of(server.request("::1"))
            seen[name] = (env.get(b"TCPREMOTEHOST"), env.get(b"TCP6REMOTEHOST"))
        finally:
            server.stop()
    resolver.close()
    assert seen["ours"] == seen["theirs"] == (b"six.test", b"six.test")


def test_slow_resolver_costs_only_its_deadline() -> None:
    resolver = FakeDns(loopback_address(), delay=30)
    client = loopback_address()
    resolver.ptr(client, dns_labels(b"late", b"test"))
    server = start_ours(
        "extension",
        "-hR",
        "-l",
        "x",
        "-t",
        "1",
        "127.0.0.1",
        "0",
        "/usr/bin/env",
        "-0",
        env={"DNSCACHEIP": resolver.address},
    )
    try:
        started = time.monotonic()
        assert b"TCPREMOTEHOST" not in env_of(server.request(source=client))
        assert time.monotonic() - started < 3.0
        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(10) == 0
        assert time.monotonic() - started < 2.0
    finally:
        server.stop()
        resolver.close()


# --- the rules file and the standard fds ------------------------------------------------
def test_cdb_rewritten_in_place_does_not_kill_the_reader(tmp_path: Path) -> None:
    """An mmap'd cdb that shrinks under the reader raises SIGBUS; a copy in memory does
    not care. Run in a child so a SIGBUS shows as its exit status."""
    cdb = tmp_path / "rules.cdb"
    rules.compile_file(
        b"".join(b"10.0.%d.%d:deny\n" % divmod(n, 256) for n in range(20000)), cdb, tmp_path / "t"
    )
    code = (
        "import os, sys\n"
        "from qboot_systemd.cdb import CdbReader\n"
        "reader = CdbReader.open(sys.argv[1])\n"
        "os.truncate(sys.argv[1], 0)  # cp over it, as an admin would\n"
        "for n in range(20000):\n"
        "    reader.get(b'10.0.%d.%d' % divmod(n, 256))\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(cdb)], cwd=ROOT, check=False)
    assert done.returncode == 0


def test_fifo_at_the_rules_path_does_not_stop_the_loop(tmp_path: Path) -> None:
    cdb = tmp_path / "rules.cdb"
    os.mkfifo(cdb)
    server = start_ours(
        "extension", "-v", "-HR", "-l", "x", "-x", str(cdb), "127.0.0.1", "0", "/usr/bin/env", "-0"
    )
    try:
        with server.connect(timeout=5) as client:
            assert client.recv(100) == b""  # dropped, fail closed, at once
        server.wait_log("dropping connection, unable to read .*rules.cdb: not a regular file")
        cdb.unlink()
        rules.compile_file(b':allow,X="y"\n', cdb, tmp_path / "rules.tmp")
        assert env_of(server.request())[b"X"] == b"y"
    finally:
        server.stop()


def test_closed_stderr_reaches_the_child_open(tmp_path: Path) -> None:
    """Started with fd 2 closed, the server still logs nowhere harmful and the chain
    finds fds 0, 1 and 2 open (2 on /dev/null)."""
    server = Running(
        [
            "/bin/sh",
            "-c",
            'exec "$@" 2>&-',
            "sh",
            venv_script("qboot-tcpsrv"),
            "-1",
            "-v",
            "-HR",
            "-l",
            "x",
            "127.0.0.1",
            "0",
            "/bin/sh",
            "-c",
            "readlink /proc/self/fd/2 || echo closed",
        ]
    )
    try:
        assert server.request().strip() == b"/dev/null"
        assert server.request().strip() == b"/dev/null"  # and the -v logging did not kill it
    finally:
        server.stop()


def test_log_reader_gone_does_not_stop_serving() -> None:
    """-v logs to a pipe whose reader has gone (EPIPE on every line): still serving."""
    process = subprocess.Popen(
        [
            venv_script("qboot-tcpsrv"),
            "-1",
            "-v",
            "-HR",
            "-l",
            "x",
            "127.0.0.1",
            "0",
            "/usr/bin/env",
            "-0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "DNSCACHEIP": "127.0.0.254"},
    )
    try:
        assert process.stdout is not None and process.stderr is not None
        port = int(process.stdout.readline())
        process.stderr.close()
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
                assert b"PROTO=TCP" in b"".join(iter(lambda: client.recv(65536), b""))
        assert process.poll() is None
    finally:
        process.terminate()
        process.wait(10)
        if process.stdout is not None:
            process.stdout.close()
