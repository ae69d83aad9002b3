"""The in-core rblsmtpd: its pure parts, and side by side with Debian's rblsmtpd.

Differential cases run `tcpserver ... rblsmtpd OPTS prog` and `qboot-tcpsrv -L ...
rblsmtpd OPTS prog` with the same rules and a blocklist DNS server on loopback (both
honour DNSCACHEIP), and compare every byte a scripted SMTP client gets back.
"""

from __future__ import annotations

import concurrent.futures
import random
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from qboot_systemd import rules, units
from qboot_systemd.tcpsrv import dns, rbl, rblcommand
from qboot_systemd.tcpsrv.dnscache import CachingResolver, cache_seconds
from qboot_systemd.tcpsrv.rbl import ACCEPT, PENDING, Verdict
from qboot_systemd.tcpsrv.rblcommand import Source

from .bootctrl_trees import make
from .conftest import require_tool, venv_script
from .dnsbl_server import TXT, BlocklistDns, Table, listed, wire
from .tcpsrv_harness import Running, loopback_address, ours, theirs, write_script


# --- the command line ------------------------------------------------------------------
def R(base: str, bounce: bool, fail_closed: bool) -> Source:
    return Source(base, False, bounce, fail_closed)


def A(base: str, bounce: bool, fail_closed: bool) -> Source:
    return Source(base, True, bounce, fail_closed)


def test_options_apply_to_the_sources_after_them() -> None:
    parsed = rblcommand.parse_command(
        ["rblsmtpd", "-r", "x", "-bc", "-ry", "-B", "-a", "z", "prog", "-r"]
    )
    assert parsed is not None
    config, program = parsed
    assert config.sources == (
        R("x", False, False),
        R("y", True, True),
        A("z", False, True),
    )
    assert program == ("prog", "-r")
    assert config.timeout == 60


@pytest.mark.parametrize(
    ("words", "timeout"),
    [(["-t", "5"], 5), (["-t5x"], 5), (["-t", "x"], 0), (["-t0"], 0)],
)
def test_timeout_is_read_as_scan_ulong_reads_it(words: list[str], timeout: int) -> None:
    parsed = rblcommand.parse_command(["/usr/bin/rblsmtpd", *words, "prog"])
    assert parsed is not None and parsed[0].timeout == timeout


@pytest.mark.parametrize(
    "words",
    [
        ["rblsmtpd", "-r", "x"],  # no program
        ["rblsmtpd", "-x", "prog"],  # unknown option: rblsmtpd's usage
        ["rblsmtpd", "-r"],
        ["rblsmtpd", "-t", "99999999999", "prog"],  # alarm() would not time out
        ["spamdyke", "-r", "x", "prog"],
        [],
    ],
)
def test_command_lines_the_core_leaves_to_a_process(words: list[str]) -> None:
    assert rblcommand.parse_command(words) is None


def test_double_dash_and_operands_end_the_options() -> None:
    assert rblcommand.parse_command(["rblsmtpd", "--", "-r", "x"]) == (
        rblcommand.RblConfig(()),
        ("-r", "x"),
    )
    assert rblcommand.parse_command(["rblsmtpd", "-", "x"]) == (
        rblcommand.RblConfig(()),
        ("-", "x"),
    )


def test_reversed_address_is_rblsmtpds() -> None:
    assert rbl.query_name("1.2.3.4", "bl.test") == "4.3.2.1.bl.test"
    assert rbl.query_name("2001:db8::1", "bl.test") == "2001:db8::1.bl.test"
    assert rbl.query_name("", "bl.test") == "bl.test"


# --- the decision ----------------------------------------------------------------------
def verdict(sources: list[Source], results: list[rbl.Result]) -> Verdict | rbl.Pending:
    return rbl.decide(sources, results.__getitem__)


def test_first_source_that_decides_wins() -> None:
    sources = [A("ok", False, False), R("bl", True, False)]
    assert verdict(sources, [True, PENDING]) == ACCEPT
    assert verdict(sources, [False, b"spam"]) == Verdict(b"553 spam")
    assert verdict(sources, [PENDING, b"spam"]) is PENDING
    assert verdict(sources, [False, b""]) == ACCEPT


def test_failures_fail_open_or_closed_and_forbid_553() -> None:
    open_ = [R("one", True, False), R("two", True, False)]
    assert verdict(open_, [None, b"spam"]) == Verdict(b"451 spam")  # -b, but a failure first
    assert verdict(open_, [None, b""]) == ACCEPT
    closed = [R("one", True, True), R("two", True, True)]
    assert verdict(closed, [None, PENDING]) == Verdict(b"451 temporary RBL lookup error")
    anti_open = [A("ok", False, False), R("bl", False, False)]
    assert verdict(anti_open, [None, b"spam"]) == ACCEPT
    anti_closed = [A("ok", True, True), R("bl", True, True)]
    assert verdict(anti_closed, [None, b"spam"]) == Verdict(b"451 spam")


def test_rblsmtpd_variable() -> None:
    assert rbl.from_environment(None) is None
    assert rbl.from_environment("") == ACCEPT
    assert rbl.from_environment("-go away") == Verdict(b"553 go away")
    assert rbl.from_environment("later\x01\udce9é") == Verdict(b"451 later????")
    assert rbl.from_environment("cut\0here") == Verdict(b"451 cut")
    assert rbl.from_environment("x" * 300) == Verdict(b"451 " + b"x" * 200)


# --- the dialogue ------------------------------------------------------------------------
def test_dialogue_replies_line_by_line() -> None:
    talk = rbl.Dialogue(b"451 no")
    got = talk.feed(b"HELO x\r\nehlo\nMail from:<a>\r\nRCPT TO:<b>\r\nDATA\r\n\r\nnoop\r\nrSeT")
    assert got == (b"250 rblsmtpd.local\r\n" * 3 + b"451 no\r\n" * 3 + b"250 rblsmtpd.local\r\n")
    assert talk.feed(b"\r\nquit now\r\nNOOP\r\n") == b"250 rblsmtpd.local\r\n221 rblsmtpd.local\r\n"
    assert talk.over


def test_dialogue_odd_lines() -> None:
    talk = rbl.Dialogue(b"451 no")
    assert talk.feed(b"QUIT\r\r\n") == b"451 no\r\n"  # one CR is dropped, not two
    assert talk.feed(b"HELO\0\r\n") == b"451 no\r\n"  # a NUL is part of the word
    assert talk.feed(b"HELO" + b"x" * 100_000) == b""
    assert talk.feed(b"\r\n") == b"451 no\r\n"
    assert talk.feed(b"NOOP" + b" " * 100_000 + b"\n") == b"250 rblsmtpd.local\r\n"
    assert talk.feed(b"\tQUIT\n") == b"451 no\r\n"
    assert not talk.over


def test_dialogue_matches_rblsmtpd_on_random_input() -> None:
    """Debian's rblsmtpd on a pipe (RBLSMTPD set: no DNS) against Dialogue, 150 inputs
    made of command words, spaces, CR, LF, NUL and junk."""
    rblsmtpd = require_tool("rblsmtpd")
    pieces = [b"HELO", b"ehlo", b"QUIT", b"quit", b"Mail", b"RCPT", b"data", b"rset", b"NOOP"]
    pieces += [b" ", b"\r", b"\n", b"\r\n", b"\0", b"\t", b"x" * 20, b"\xff", b"."]
    randomness = random.Random(16)
    for _ in range(150):
        data = b"".join(randomness.choice(pieces) for _ in range(randomness.randint(0, 30)))
        done = subprocess.run(
            [rblsmtpd, "true"],
            input=data,
            capture_output=True,
            env={"RBLSMTPD": "-no \x01 way", "PATH": "/usr/bin:/bin"},
            timeout=10,
            check=True,
        )
        talk = rbl.Dialogue(b"553 no ? way")
        assert (data, rbl.GREETING + talk.feed(data)) == (data, done.stdout)


# --- the cache ---------------------------------------------------------------------------
class FakeQuery:
    def __init__(self, done: Callable[[dns.Answer | None], None]) -> None:
        self.done = done
        self.started = False

    def start(self) -> None:
        self.started = True

    def close(self) -> None:
        pass


class FakeResolver:
    def __init__(self) -> None:
        self.asked: list[FakeQuery] = []

    def query(
        self, name: bytes, qtype: int, deadline: float, done: Callable[[dns.Answer | None], None]
    ) -> FakeQuery:
        query = FakeQuery(done)
        self.asked.append(query)
        return query


def txt_answer(ttl: int) -> dns.Answer:
    return dns.Answer(0, False, (dns.Record(b"x", dns.TYPE_TXT, ttl, b"\x04spam"),))


def test_cache_shares_a_question_and_keeps_the_answer_for_its_ttl() -> None:
    now = [100.0]
    resolver = FakeResolver()
    cache = CachingResolver(resolver, clock=lambda: now[0])  # type: ignore[arg-type]
    got: list[dns.Answer | None] = []
    cache.ask(b"\x01x\0", dns.TYPE_TXT, 0, got.append)
    cache.ask(b"\x01X\0", dns.TYPE_TXT, 0, got.append)
    assert len(resolver.asked) == 1 and cache.in_flight == 1
    resolver.asked[0].done(txt_answer(30))
    assert len(got) == 2 and cache.in_flight == 0
    now[0] += 29
    cache.ask(b"\x01x\0", dns.TYPE_TXT, 0, got.append)
    assert len(resolver.asked) == 1 and len(got) == 3
    now[0] += 2
    cache.ask(b"\x01x\0", dns.TYPE_TXT, 0, got.append)
    assert len(resolver.asked) == 2


def test_cache_is_bounded() -> None:
    resolver = FakeResolver()
    cache = CachingResolver(resolver, max_entries=3, max_in_flight=2)  # type: ignore[arg-type]
    failed: list[dns.Answer | None] = []
    for number in range(3):
        cache.ask(bytes([1, 48 + number, 0]), dns.TYPE_TXT, 0, failed.append)
    assert failed == [None]  # the third question: too many in flight, a failed lookup
    for number in range(10):
        cache.ask(bytes([2, 48, 48 + number, 0]), dns.TYPE_A, 0, lambda _: None)
        resolver.asked[-1].done(txt_answer(60) if number % 2 else None)
    assert len(cache) <= 3


def test_negative_answers_are_kept_for_the_soa_ttl() -> None:
    server = BlocklistDns("127.0.0.1", {}, ttl=77)
    packet = dns.build_query(7, wire("1.0.0.127.bl.test"), TXT)
    reply = server.answer(packet)
    server.socket.close()
    assert reply is not None
    answer = dns.parse_response(reply, 7, wire("1.0.0.127.bl.test"), TXT)
    assert answer is not None and answer.rcode == dns.RCODE_NXDOMAIN
    assert cache_seconds(answer, TXT) == 77


# --- side by side with Debian's rblsmtpd ---------------------------------------------------
LISTED = "127.0.0.2"
ALLOWED = "127.0.0.3"  # listed, and in the anti-RBL too
CLEAN = "127.0.0.4"
# The -r lookup times out once, then SERVFAIL: djb's resolver ignores a SERVFAIL in its
# second round (11 s), so rblsmtpd takes 14 s to call it failed, the core 1 s.
FLAKY = "127.0.0.5"
FLAKY_NAME = "5.0.0.127.bl.test"
FLAKY2 = "127.0.0.9"  # the same, for a second test run side by side with the first
FLAKY2_NAME = "9.0.0.127.bl.test"
LISTED_OK = "127.0.0.6"  # RBLSMTPD="" from the rules
BOUNCED = "127.0.0.7"  # RBLSMTPD="-go away"
DEFERRED = "127.0.0.8"  # RBLSMTPD="later please"
LISTED_TEXT = b"listed\x01 in bl.test: see http://bl.test/?q=127.0.0.2 " + b"x" * 250
RULES = (
    b'127.0.0.6:allow,RBLSMTPD=""\n'
    b'127.0.0.7:allow,RBLSMTPD="-go away"\n'
    b'127.0.0.8:allow,RBLSMTPD="later please"\n'
    b":allow\n"
)
PROGRAM = (
    "#!/bin/sh\n"
    'printf \'220 real smtpd for %s RBLSMTPD=%s\\r\\n\' "$TCPREMOTEIP" "${RBLSMTPD-unset}"\n'
)
SCRIPT = [
    b"EHLO client.test\r\n",
    b"MAIL FROM:<a@b>\r\n",
    b"RCPT TO:<c@d>\r\n",
    b"DATA\r\n",
    b"x" * 5000 + b"\r\n",
    b"hElO\0\r\n",
    b"\r\n",
    b"RSET\r\n",
    b"QUIT\r\n",
]


@pytest.fixture(scope="module")
def blocklist() -> Iterator[BlocklistDns]:
    table: Table = {}
    for ip in (LISTED, ALLOWED, LISTED_OK, BOUNCED):
        listed(table, ip, "bl.test", LISTED_TEXT if ip == LISTED else b"listed " + ip.encode())
    listed(table, ALLOWED, "ok.test", b"")
    listed(table, "::1", "bl.test", b"rblsmtpd 0.88 asks ::1.bl.test")
    server = BlocklistDns(loopback_address(), table, servfail=frozenset({FLAKY_NAME, FLAKY2_NAME}))
    server.start()
    yield server
    server.close()


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    where = tmp_path_factory.mktemp("rbl")
    cdb = where / "rules.cdb"
    rules.compile_file(RULES, cdb, where / "rules.tmp")
    return str(cdb), write_script(Path(where), "smtpd", PROGRAM)


def converse(server: Running, source: str, script: list[bytes], timeout: float = 10) -> bytes:
    """Send each line once the answer to the one before is in; everything received."""
    got = b""
    host = "::1" if ":" in source else "127.0.0.1"
    with server.connect(host, source=source, timeout=timeout) as client:
        client.settimeout(timeout if source not in (FLAKY, FLAKY2) else 30)
        for line in [b"", *script]:
            if line:
                try:
                    client.sendall(line)
                except OSError:
                    break
            seen = got.count(b"\n")
            while got.count(b"\n") == seen:
                try:
                    chunk = client.recv(65536)
                except TimeoutError:
                    return got + b"<open>"
                except ConnectionResetError:  # a close with input unread: RST, not FIN
                    return got + b"<closed>"
                if not chunk:
                    return got + b"<closed>"
                got += chunk
        try:  # after the script: what else comes before the end
            while chunk := client.recv(65536):
                got += chunk
        except TimeoutError:
            return got + b"<open>"
        except ConnectionResetError:
            pass
        return got + b"<closed>"


def side_by_side(
    blocklist: BlocklistDns,
    chain: tuple[str, str],
    options: list[str],
    clients: list[tuple[str, list[bytes]]],
    host: str = "127.0.0.1",
    flaky: frozenset[str] = frozenset(),
) -> dict[str, list[bytes]]:
    tcpserver = require_tool("tcpserver")
    require_tool("rblsmtpd")
    cdb, smtpd = chain
    env = {"DNSCACHEIP": blocklist.address}
    results: dict[str, list[bytes]] = {}
    for name in ("theirs", "ours"):
        blocklist.flaky |= flaky  # each server's first query for these is lost
        args = ["-HR", "-x", cdb, host, "0", "rblsmtpd", *options, smtpd]
        server = ours("-L", *args, env=env) if name == "ours" else theirs(tcpserver, *args, env=env)
        try:
            results[name] = [converse(server, source, script) for source, script in clients]
            logged = server.log()
        finally:
            server.stop()
        # rblsmtpd's own line for each client it turned away, the pid masked
        results[f"{name} log"] = [
            re.sub(rb" pid \d+:", b" pid PID:", line)
            for line in logged.encode().splitlines()
            if line.startswith(b"rblsmtpd: ")
        ]
    return results


ALL_CLIENTS = [LISTED, ALLOWED, CLEAN, LISTED_OK, BOUNCED, DEFERRED, LISTED]


@pytest.mark.parametrize(
    "options",
    [
        ["-a", "ok.test", "-r", "bl.test"],
        ["-b", "-r", "bl.test", "-a", "ok.test"],
        ["-c", "-a", "ok.test", "-b", "-r", "bl.test"],
        ["-bC", "-rbl.test", "-t", "0"],
    ],
    ids=["anti-first", "bounce", "fail-closed", "t0"],
)
def test_same_bytes_as_debians_rblsmtpd(
    blocklist: BlocklistDns, chain: tuple[str, str], options: list[str]
) -> None:
    got = side_by_side(blocklist, chain, options, [(ip, SCRIPT) for ip in ALL_CLIENTS])
    for index, (mine, theirs_) in enumerate(zip(got["ours"], got["theirs"], strict=True)):
        assert (index, mine) == (index, theirs_)
    assert got["ours log"] == got["theirs log"]
    assert len(got["ours log"]) >= 3
    listed_reply = got["ours"][0]
    if "-t" not in options:
        assert listed_reply.startswith(b"220 rblsmtpd.local\r\n250 rblsmtpd.local\r\n")
        assert listed_reply.endswith(b"221 rblsmtpd.local\r\n<closed>")
    assert b"220 real smtpd for 127.0.0.4 RBLSMTPD=unset" in got["ours"][2]


def test_failed_lookups_decide_as_rblsmtpd(blocklist: BlocklistDns, chain: tuple[str, str]) -> None:
    """-C passes a client whose lookup failed, -c turns it away with 451 even under -b.
    Both cases at once: rblsmtpd takes 14 s to give up on each."""
    cases = [
        (FLAKY, FLAKY_NAME, ["-a", "ok.test", "-b", "-r", "bl.test"], b"220 real smtpd for "),
        (FLAKY2, FLAKY2_NAME, ["-c", "-a", "ok.test", "-b", "-r", "bl.test"], b"451 temporary"),
    ]

    def run(ip: str, name: str, options: list[str]) -> dict[str, list[bytes]]:
        script = [b"RCPT TO:<x>\r\n", b"QUIT\r\n"]
        return side_by_side(blocklist, chain, options, [(ip, script)], flaky=frozenset({name}))

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(run, ip, name, options) for ip, name, options, _ in cases]
        results = [future.result() for future in futures]
    for got, (ip, _, _, expected) in zip(results, cases, strict=True):
        assert got["ours"] == got["theirs"]
        assert expected in got["ours"][0], ip
        assert got["ours log"] == got["theirs log"]


def test_an_ipv6_client_is_asked_as_rblsmtpd_asks(
    blocklist: BlocklistDns, chain: tuple[str, str]
) -> None:
    """0.88 puts an address without dots before the base as it is: `::1.bl.test`."""
    script = [SCRIPT[0], SCRIPT[-1]]
    got = side_by_side(blocklist, chain, ["-r", "bl.test"], [("::1", script)], host="::1")
    assert got["ours"] == got["theirs"]
    assert got["ours"][0].startswith(b"220 rblsmtpd.local\r\n250 rblsmtpd.local\r\n")
    assert got["ours log"] == [b"rblsmtpd: ::1 pid PID: 451 rblsmtpd 0.88 asks ::1.bl.test"]


def test_timeout_and_hostile_clients_match(blocklist: BlocklistDns, chain: tuple[str, str]) -> None:
    clients = [
        (LISTED, [b"HELO x\r\n", b"NOOP\r\n"]),  # then silence: -t 1 ends it
        (LISTED, [b"NOOP" + b"A" * 300_000 + b"\r\n", b"quit\r\n"]),
        (LISTED, [b"\xff\xfe\x00\r\n", b"QUIT\r\r\n", b"QUIT\0\n", b"QUIT\n"]),
        (DEFERRED, [b"HELO\r\n", b"QUIT extra\r\n"]),
    ]
    started = time.monotonic()
    got = side_by_side(blocklist, chain, ["-t", "1", "-r", "bl.test"], clients)
    assert got["ours"] == got["theirs"]
    assert got["ours"][0] == (
        b"220 rblsmtpd.local\r\n250 rblsmtpd.local\r\n250 rblsmtpd.local\r\n<closed>"
    )
    assert time.monotonic() - started < 30


def test_a_listed_flood_is_answered_without_the_chain(
    blocklist: BlocklistDns, chain: tuple[str, str], tmp_path: Path
) -> None:
    """Listed clients never run the program, and one lookup serves them all (cache)."""
    cdb, _ = chain
    marker = tmp_path / "ran"
    program = write_script(tmp_path, "smtpd", f"#!/bin/sh\ntouch {marker}\n")
    before = len(blocklist.queries)
    server = ours(
        "-L",
        "-HR",
        "-x",
        cdb,
        "127.0.0.1",
        "0",
        "rblsmtpd",
        "-r",
        "bl.test",
        program,
        env={"DNSCACHEIP": blocklist.address},
    )
    try:
        for _ in range(20):
            assert converse(server, LISTED, [b"QUIT\r\n"]).endswith(
                b"221 rblsmtpd.local\r\n<closed>"
            )
        assert converse(server, CLEAN, []) == b"<closed>"
        log = server.log()
    finally:
        server.stop()
    asked = [name for name, _ in blocklist.queries[before:] if name.endswith(".bl.test")]
    assert asked == ["2.0.0.127.bl.test", "4.0.0.127.bl.test"]  # once per address
    assert log.count(f"rblsmtpd: {LISTED} pid ") == 20
    assert marker.exists()  # the clean client ran it


def test_a_chain_rblsmtpd_cannot_take_stays_a_process(tmp_path: Path) -> None:
    program = write_script(tmp_path, "smtpd", "#!/bin/sh\necho ran\n")
    fake = write_script(tmp_path, "rblsmtpd", '#!/bin/sh\necho "own rblsmtpd $*"\n')
    server = ours("-L", "-HR", "127.0.0.1", "0", fake, "-x", "y", program)
    try:
        got = server.request()
        log = server.log()
    finally:
        server.stop()
    assert got == f"own rblsmtpd -x y {program}\n".encode()
    assert "it runs as a program" in log


def test_rate_limit_answers_421_and_logs(tmp_path: Path) -> None:
    program = write_script(tmp_path, "smtpd", "#!/bin/sh\necho hello\n")
    server = ours("-HR", "-M", "3", "127.0.0.1", "0", program)
    try:
        answers = [server.request(source="127.0.0.9") for _ in range(5)]
        other = server.request(source="127.0.0.10")
        log = server.wait_log("rate limit 3/min reached")
    finally:
        server.stop()
    assert answers[:3] == [b"hello\n"] * 3
    assert answers[3:] == [b"421 too many connections from your address; try again later\r\n"] * 2
    assert other == b"hello\n"
    assert "rate limit 3/min reached, dropping connection from 127.0.0.9" in log


def test_rate_limit_can_just_close(tmp_path: Path) -> None:
    program = write_script(tmp_path, "smtpd", "#!/bin/sh\necho hello\n")
    server = ours("-HR", "-N", "1", "127.0.0.1", "0", program)
    try:
        answers = [server.request(source="127.0.0.9") for _ in range(2)]
    finally:
        server.stop()
    assert answers == [b"hello\n", b""]


def test_listed_session_cap_gives_the_answer_line_only(chain: tuple[str, str]) -> None:
    """Past the cap of dialogues (a quarter of the fd limit: 6 here), a listed client gets
    the line alone, as with -t 0."""
    cdb, smtpd = chain
    prlimit = require_tool("prlimit")
    argv = [prlimit, "--nofile=24", venv_script("qboot-tcpsrv"), "-1", "-L", "-HR", "-x", cdb]
    server = Running([*argv, "127.0.0.1", "0", "rblsmtpd", smtpd])
    held = []
    try:
        for _ in range(6):
            client = server.connect(source=DEFERRED)
            assert client.recv(100) == b"220 rblsmtpd.local\r\n"
            held.append(client)
        assert converse(server, DEFERRED, []) == b"451 later please\r\n<closed>"
    finally:
        for client in held:
            client.close()
        server.stop()


# --- the env file and the unit -------------------------------------------------------------
def exec_start(tmp_path: Path, env: str) -> tuple[list[str], str]:
    model = make(tmp_path, env + "SMTPD=/q/bin/qmail-smtpd\n")
    assert model.problems == ()
    (service,) = model.services
    return units.tcpsrv_argv(service, units.Paths()), units.service_dropin(service, units.Paths())


def test_dnsbl_becomes_an_in_core_rblsmtpd(tmp_path: Path) -> None:
    argv, dropin = exec_start(
        tmp_path, "DNSBL='zen.spamhaus.org bl.test'\nDNSBLFLAGS='-b -a ok.test'\nRATE=30\n"
    )
    options, chain = argv[: argv.index("-")], argv[argv.index("-") + 2 :]
    assert options[-3:] == ["-N", "30", "-L"]
    assert chain == [
        "rblsmtpd", "-b", "-a", "ok.test", "-r", "zen.spamhaus.org", "-r", "bl.test",
        "/q/bin/qmail-smtpd",
    ]  # fmt: skip
    assert "# rblsmtpd" not in dropin


@pytest.mark.parametrize(
    ("env", "note"),
    [
        ("PRESMTPD='rblsmtpd -r zen.spamhaus.org'\n", None),
        ("PRESMTPD='/usr/bin/rblsmtpd -bC -t30 -rzen.spamhaus.org'\n", None),
        ("PRESMTPD='rblsmtpd -r zen.spamhaus.org'\nRBL_INCORE=no\n", "RBL_INCORE=no"),
        ("PRESMTPD='/opt/bin/rblsmtpd -r zen'\n", "not at a usual path"),
        ("PRESMTPD='rblsmtpd -r zen:go away'\n", "not a plain DNS name"),
        ("PRESMTPD='rblsmtpd -R -r zen'\n", "not all ones ucspi-tcp 0.88 knows"),
        ("PRESMTPD='greetdelay rblsmtpd -r zen'\n", None),
    ],
)
def test_which_presmtpd_is_translated(tmp_path: Path, env: str, note: str | None) -> None:
    argv, dropin = exec_start(tmp_path, env + "RATE=5\nRATE_ANSWER=421\n")
    assert ("-M" in argv and "5" in argv) and "-N" not in argv
    translated = "-L" in argv[: argv.index("-")]
    if note is None:
        assert translated == ("greetdelay" not in env)
        assert "# rblsmtpd" not in dropin
    else:
        assert not translated
        assert "# rblsmtpd runs as a process: " in dropin and note in dropin


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ("DNSBL='zen;rm'\n", "is not a DNS name"),
        # an option where a list belongs would become a list named '-b': refused
        ("DNSBL='-b zen.spamhaus.org'\n", "is not a DNS name"),
        ("DNSBL='zen.spamhaus.org -c'\n", "is not a DNS name"),
        ("DNSBL=zen\nDNSBLFLAGS='-r x y'\n", "rblsmtpd options only"),
        ("DNSBLFLAGS=-b\n", "set DNSBL too"),
        ("RBL_INCORE=maybe\n", "expected yes or no"),
        ("RATE=0\n", "expected a number"),
        ("RATE_ANSWER=450\n", "expected close or 421"),
    ],
)
def test_bad_screening_settings_are_problems(tmp_path: Path, env: str, fragment: str) -> None:
    model = make(tmp_path, env)
    (problem,) = model.problems
    assert problem.line >= 1 and fragment in problem.message


def test_a_listed_client_that_never_reads_costs_bounded_output_and_time(
    chain: tuple[str, str],
) -> None:
    """It sends NOOPs without reading our replies: we stop reading it once 4 KiB of
    replies wait (as rblsmtpd blocks in write), others are served meanwhile, and -t ends
    it; the server's memory does not grow with what it sent."""
    cdb, smtpd = chain
    server = ours("-L", "-HR", "-l", "x", "-x", cdb, "127.0.0.1", "0", "rblsmtpd", "-t", "3", smtpd)
    try:
        hog = server.connect(source=DEFERRED)
        hog.setblocking(False)
        sent = 0
        deadline = time.monotonic() + 1.5  # the server's -t is 3 s
        while time.monotonic() < deadline:
            try:
                sent += hog.send(b"NOOP\r\n" * 10000)
            except BlockingIOError:
                time.sleep(0.05)
                continue
        assert sent < 20_000_000  # the kernel's buffers filled up: we stopped reading
        rss = int(
            Path(f"/proc/{server.process.pid}/status").read_text().split("VmRSS:")[1].split()[0]
        )
        assert rss < 200_000
        other = converse(server, DEFERRED, [b"QUIT\r\n"])
        assert other == b"220 rblsmtpd.local\r\n221 rblsmtpd.local\r\n<closed>"
        hog.setblocking(True)
        hog.settimeout(10)
        got = b""
        try:
            while chunk := hog.recv(65536):
                got += chunk
        except ConnectionResetError:
            pass
        assert got.startswith(b"220 rblsmtpd.local\r\n250 rblsmtpd.local\r\n")
        assert got.count(b"\n") - 1 <= sent // 6  # a reply per NOOP at most, then -t
        hog.close()
    finally:
        server.stop()


def test_sighup_forgets_cached_verdicts(blocklist: BlocklistDns, chain: tuple[str, str]) -> None:
    cdb, smtpd = chain
    server = ours(
        "-vL", "-HR", "-l", "x", "-x", cdb, "127.0.0.1", "0", "rblsmtpd", "-r", "bl.test", smtpd,
        env={"DNSCACHEIP": blocklist.address},
    )  # fmt: skip
    try:
        assert converse(server, CLEAN, []).startswith(b"220 real smtpd")
        assert converse(server, CLEAN, []).startswith(b"220 real smtpd")
        asked = [q for q in blocklist.queries if q[0] == "4.0.0.127.bl.test"]
        server.process.send_signal(signal.SIGHUP)
        server.wait_log("SIGHUP")
        assert converse(server, CLEAN, []).startswith(b"220 real smtpd")
        again = [q for q in blocklist.queries if q[0] == "4.0.0.127.bl.test"]
        assert len(again) == len(asked) + 1
    finally:
        server.stop()
