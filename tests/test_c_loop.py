"""The _core extension's ConnectionLoop (accept, rules, environment, spawn and reap in C) against
the Python loop it stands in for: the same flags, rules and clients through both, and
the same environment, bytes and log lines out. The Python loop is the one the tcpserver
differential tests checked first; QBOOT_NO_EXTENSION=1 selects it."""

from __future__ import annotations

import difflib
import os
import random
import re
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from qboot_systemd import rules
from qboot_systemd.cdb import write_cdb
from qboot_systemd.tcpsrv.options import parse
from qboot_systemd.tcpsrv.server import Server, c_loop_fits

from .conftest import require_extension, require_tool, venv_script
from .dnsbl_server import BlocklistDns, Table, txt_rdata
from .tcpsrv_harness import (
    ACTIVATE,
    FakeDns,
    Identd,
    Running,
    dns_labels,
    loopback_address,
    ours,
    read_all,
    write_script,
)

DUMP = "#!/bin/sh\nenv | grep -a -v -E '^(_|PWD|SHLVL|QBOOT_NO_EXTENSION)=' | sort\n"
PATHS = {"c_loop": {}, "python": {"QBOOT_NO_EXTENSION": "1"}}

# Rules as an admin (or an attacker who got a line into the source) may write them: a
# deny, overrides of tcp-environ and of the server's own variables, a name set twice,
# `=` and non-ASCII in values, an empty value and name, a long value, many variables.
RULES = (
    b"127.0.0.2:deny\n"
    b'127.0.0.3:allow,TCPLOCALHOST="over",TCPREMOTEIP="9.9.9.9",HOME="/nowhere",'
    b'A="1",A="2",EQ="x=y=z",UTF="\xc3\xa9\xff",EMPTY=""\n'
    b'127.0.0.4:allow,LONG="' + b"L" * 60000 + b'"\n'
    b"127.0.0.5:allow," + b",".join(b'V%d="%d"' % (n, n) for n in range(1500)) + b"\n"
    b'127.:allow,RELAYCLIENT=""\n'
    b'::1:allow,SIX="1"\n'
    b":deny\n"
)
SOURCES = ["127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"]


def compile_rules(path: Path, text: bytes) -> None:
    rules.compile_file(text, path, path.with_suffix(".tmp"))


def masked(text: str) -> str:
    """Pids and ephemeral ports differ from run to run."""
    text = re.sub(r"\b(pid|ok|deny|end) \d+", r"\1 PID", text)
    text = re.sub(r"PORT=\d+", "PORT=N", text)
    return re.sub(r":\d{4,5}\b", ":PORT", text)


def assert_same(c_loop: tuple[list[str], str], python: tuple[list[str], str]) -> None:
    """Equal, or a failure that shows the lines that differ."""
    if c_loop == python:
        return
    diff = [
        "".join(difflib.unified_diff(p.splitlines(True), o.splitlines(True), "python", "c_loop"))
        for p, o in zip([*python[0], python[1]], [*c_loop[0], c_loop[1]], strict=False)
    ]
    pytest.fail("the ConnectionLoop differs from the Python loop:\n" + "".join(diff))


def extension_loaded(server: Running) -> bool:
    return "/_core." in Path(f"/proc/{server.process.pid}/maps").read_text()


@pytest.fixture()
def dump(tmp_path: Path) -> str:
    return write_script(tmp_path, "dump", DUMP)


def both(start: Callable[[dict[str, str]], Running]) -> Iterator[tuple[str, Running]]:
    """Each path's server in turn; the Python loop's without the extension loaded, so a
    test cannot compare a path with itself."""
    for name, env in PATHS.items():
        server = start(env)
        try:
            yield name, server
            assert extension_loaded(server) == (name == "c_loop"), name
        finally:
            server.stop()


def one_at_a_time(server: Running, sources: list[str], host: str = "127.0.0.1") -> list[str]:
    outputs = []
    verbose = "-v" in server.process.args  # type: ignore[operator]
    if verbose:
        server.wait_log(r"status: 0/")  # the first line: logged after the port is printed
    for source in sources:
        ended = len(re.findall(r"status: 0/", server.log()))
        outputs.append(masked(server.request(host, source).decode("utf-8", "replace")))
        if verbose:
            server.wait_count(r"status: 0/\d+\n", ended + 1)  # one order for both logs
    return outputs


def test_c_loop_is_for_every_server_the_extension_runs() -> None:
    """c_loop_fits decides; a server it fits starts with a ConnectionLoop (and a pool)."""
    require_extension()
    options = parse(["-HR", "-l", "x", "127.0.0.1", "0", "/bin/true"])
    listener = socket.create_server(("127.0.0.1", 0))
    server = Server(options, [listener], None)
    try:
        server.start()
        assert server.c_loop is not None and server.spawns is not None
    finally:
        server.close()
        listener.close()
    assert server.c_loop is None
    for flags in (["-HR", "-l", "x"], ["-R", "-l", "x"], ["-H", "-l", "x"], ["-HR"], ["-hrp"]):
        assert c_loop_fits(parse([*flags, "0", "25", "p"])), flags
    assert c_loop_fits(parse(["-HR", "-l", "x", "-N", "60", "0", "25", "p"]))
    assert c_loop_fits(parse(["-HR", "-l", "x", "-C", "2", "0", "25", "p"]))
    assert c_loop_fits(parse(["-HRL", "-l", "x", "0", "25", "rblsmtpd", "-r", "bl.test", "p"]))


@pytest.mark.parametrize(
    "flags",
    [
        ["-v", "-HR", "-l", "mx.example"],
        ["-v", "-HR", "-l", "bad%name\x01", "-B", "220 hi\r\n", "-6"],
        ["-HR", "-l0", "-D", "-o"],
    ],
)
def test_environment_bytes_and_log_as_the_python_loop(
    tmp_path: Path, dump: str, flags: list[str]
) -> None:
    require_extension()
    cdb = tmp_path / "rules.cdb"
    compile_rules(cdb, RULES)
    results = {}
    for name, server in both(lambda env: ours(*flags, "-x", str(cdb), "0", "0", dump, env=env)):
        outputs = one_at_a_time(server, SOURCES)
        outputs += one_at_a_time(server, [None], host="::1")  # type: ignore[list-item]
        results[name] = (outputs, masked(server.log()))
    assert_same(results["c_loop"], results["python"])
    c_loop_outputs, c_loop_log = results["c_loop"]
    assert "EQ=x=y=z" in c_loop_outputs[2] and "A=2" in c_loop_outputs[2]
    assert "HOME=/nowhere" in c_loop_outputs[2] and "TCPLOCALHOST=over" in c_loop_outputs[2]
    assert "L" * 60000 in c_loop_outputs[3] and "V1499=1499" in c_loop_outputs[4]
    assert c_loop_outputs[1].removeprefix("220 hi\r\n") == ""  # denied: no program
    assert "SIX=1" in c_loop_outputs[5] and "RELAYCLIENT=" in c_loop_outputs[0]
    if "-v" in flags:
        assert "deny PID" in c_loop_log and "end PID status 25600" in c_loop_log


def test_rules_replaced_removed_and_broken_while_serving(tmp_path: Path, dump: str) -> None:
    """tcprules' rename takes effect at the next connection; a removed file drops every
    client (fail closed) with tcpserver's warning, or lets it in under -X; a file that is
    not a cdb drops them too."""
    require_extension()
    cdb = tmp_path / "rules.cdb"
    results = {}
    for extra in ([], ["-X"]):
        for name, server in both(
            lambda env, extra=extra: ours(
                "-v", *extra, "-HR", "-l", "x", "-x", str(cdb), "0", "0", dump, env=env
            )
        ):
            compile_rules(cdb, b'127.0.0.1:allow,STEP="one"\n:deny\n')
            outputs = one_at_a_time(server, ["127.0.0.1"])
            compile_rules(cdb, b'127.0.0.1:allow,STEP="two"\n:deny\n')
            outputs += one_at_a_time(server, ["127.0.0.1"])
            cdb.unlink()
            outputs += one_at_a_time(server, ["127.0.0.1"])
            cdb.write_bytes(b"\xff" * 100)  # not a cdb: shorter than its header
            outputs += one_at_a_time(server, ["127.0.0.1"])
            compile_rules(cdb, b'127.0.0.1:allow,STEP="three"\n')
            outputs += one_at_a_time(server, ["127.0.0.1"])
            results[(name, tuple(extra))] = (outputs, masked(server.log()))
            cdb.unlink()
        c_loop_outputs, c_loop_log = results[("c_loop", tuple(extra))]
        assert_same((c_loop_outputs, c_loop_log), results[("python", tuple(extra))])
        assert "STEP=one" in c_loop_outputs[0] and "STEP=two" in c_loop_outputs[1]
        assert "STEP=three" in c_loop_outputs[4] and c_loop_outputs[3] == ""
        assert "unable to read" in c_loop_log and "invalid argument" in c_loop_log
        assert (c_loop_outputs[2] != "") == bool(extra)


def test_a_rule_with_thousands_of_variables(tmp_path: Path, dump: str) -> None:
    """Each name once, the last value of a name set twice, in the order first set, the
    server's own variables replaced: as the Python loop's dict gives them."""
    require_extension()
    settings = [b'N%d="%d"' % (n % 20000, n) for n in range(30000)]
    cdb = tmp_path / "rules.cdb"
    compile_rules(cdb, b":allow," + b",".join(settings) + b',HOME="/x"\n')
    results = {}
    for name, server in both(
        lambda env: ours("-HR", "-l", "x", "-x", str(cdb), "0", "0", dump, env=env)
    ):
        results[name] = masked(server.request().decode())
    assert results["c_loop"] == results["python"]
    lines = results["c_loop"].splitlines()
    assert "N0=20000" in lines and "N19999=19999" in lines and "HOME=/x" in lines
    assert len([line for line in lines if re.match(r"N\d+=", line)]) == 20000


def test_program_that_cannot_run(tmp_path: Path) -> None:
    require_extension()
    results = {}
    missing = str(tmp_path / "no-such-program")
    for name, server in both(lambda env: ours("-v", "-HR", "-l", "x", "0", "0", missing, env=env)):
        assert server.request() == b""
        server.wait_log(r"status: 0/40\n.*\Z")
        results[name] = masked(server.log())
    assert results["c_loop"] == results["python"]
    assert "unable to run" in results["c_loop"] and "end PID status 28416" in results["c_loop"]


def test_limit_and_signals(tmp_path: Path) -> None:
    """-c 1: the second client waits for the first session; SIGHUP reloads the rules;
    SIGTERM closes the listener and ends the server (outside systemd: no drain), and the
    running session goes on."""
    require_extension()
    hold = write_script(tmp_path, "hold", "#!/bin/sh\necho hello\nread line\necho bye $line\n")
    cdb = tmp_path / "rules.cdb"
    compile_rules(cdb, b":allow\n")
    server = ours("-v", "-HR", "-l", "x", "-c", "1", "-x", str(cdb), "0", "0", hold)
    try:
        first = server.connect()
        assert first.recv(100) == b"hello\n"
        second = server.connect()
        second.settimeout(0.5)
        with pytest.raises(TimeoutError):
            second.recv(100)  # accepted by the kernel, not yet by the server
        first.sendall(b"1\n")
        assert first.recv(100) == b"bye 1\n"
        second.settimeout(10)
        assert second.recv(100) == b"hello\n"
        server.process.send_signal(signal.SIGHUP)
        server.wait_log("SIGHUP")
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(10) == 0  # outside systemd no drain, as tcpserver
        with (
            pytest.raises(ConnectionRefusedError),
            socket.create_connection(("127.0.0.1", server.port), timeout=2),
        ):
            pass
        second.sendall(b"2\n")  # the session goes on without the server
        assert second.recv(100) == b"bye 2\n"
        first.close()
        second.close()
    finally:
        server.stop()


def test_bursts_with_resets_never_pass_the_limit_nor_leak(tmp_path: Path) -> None:
    """Simultaneous clients, a third of them reset at once (SO_LINGER 0), against -c 1
    and -c 2 with a child that exits at once: the ConnectionLoop accepts one connection ahead, and
    that one must count against -c before it is a session; every session ends, no child
    is left over and the server holds no more fds than before the burst."""
    require_extension()
    quick = write_script(tmp_path, "quick", "#!/bin/sh\necho hi\n")
    for limit in ("1", "2"):

        def start(env: dict[str, str], limit: str = limit) -> Running:
            return ours("-v", "-HR", "-l", "x", "-c", limit, "0", "0", quick, env=env)

        for name, server in both(start):
            server.wait_log(r"status: 0/")
            fds = len(os.listdir(f"/proc/{server.process.pid}/fd"))
            clients = []
            for n in range(45):
                client = server.connect()
                if n % 3 == 0:
                    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    client.close()
                else:
                    clients.append(client)
            for client in clients:
                assert read_all(client) == b"hi\n", name
                client.close()
            log = server.wait_log(r"status: 0/\d+\n\Z")
            running = [int(count) for count in re.findall(r"status: (\d+)/", log)]
            assert max(running) == int(limit), (name, limit)
            assert len(re.findall(r" ok \d+ ", log)) == len(re.findall(r" end \d+ ", log))
            assert len(re.findall(r" ok \d+ ", log)) >= len(clients), (name, limit)
            children = Path(f"/proc/{server.process.pid}/task/{server.process.pid}/children")
            assert children.read_text().split() == [], (name, limit)
            assert len(os.listdir(f"/proc/{server.process.pid}/fd")) == fds, (name, limit)


def test_drain_ends_with_the_last_session(tmp_path: Path) -> None:
    """Under systemd (socket activation, here without NOTIFY_SOCKET) SIGTERM drains: the
    server exits when the last session ends, not when -W runs out, on both paths."""
    require_extension()
    activate = require_tool("systemd-socket-activate")
    hold = write_script(tmp_path, "hold", "#!/bin/sh\necho hello\nread line\necho bye $line\n")
    for name, env in PATHS.items():
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        passed = [arg for item in env.items() for arg in ("-E", "=".join(item))]
        command = [activate, *passed, "-l", f"127.0.0.1:{port}", venv_script("qboot-tcpsrv")]
        server = Running([*command, "-v", "-HR", "-l", "x", "-W", "30", "-", "-", hold], port=port)
        try:
            deadline = time.monotonic() + 10
            while "Listening on" not in server.log():  # activate execs us at the first client
                assert time.monotonic() < deadline, server.log()
                time.sleep(0.02)
            session = server.connect()
            assert session.recv(100) == b"hello\n"
            assert extension_loaded(server) == (name == "c_loop"), name
            server.process.send_signal(signal.SIGTERM)
            time.sleep(0.3)
            assert server.process.poll() is None, name  # draining: the session may finish
            session.sendall(b"done\n")
            assert read_all(session) == b"bye done\n"
            session.close()
            started = time.monotonic()
            assert server.process.wait(20) == 0, name
            assert time.monotonic() - started < 3, f"{name}: waited for -W, not the session"
        finally:
            server.stop()


def test_a_listener_shut_down_by_another_holder_leaves_sigterm_working(tmp_path: Path) -> None:
    """A passed socket is shared (systemd, a sibling holds it too): one holder's
    shutdown() leaves it not listening, accept() fails with EINVAL at every try and epoll
    reports it at every wait. The loop must still hear SIGTERM: the ConnectionLoop once retried that
    accept for ever, signals unread."""
    require_extension()
    quick = write_script(tmp_path, "quick", "#!/bin/sh\necho hi\n")
    for name, env in PATHS.items():
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen(16)
            port = int(listener.getsockname()[1])
            fd = str(listener.fileno())
            command = [sys.executable, "-c", ACTIVATE, fd, venv_script("qboot-tcpsrv")]
            server = Running(
                [*command, "-v", "-HR", "-l", "x", "0", "0", quick],
                env=env,
                pass_fds=(listener.fileno(),),
                port=port,
            )
            try:
                assert server.request() == b"hi\n", name
                server.wait_log(r"status: 0/40\n.*\Z")
                assert extension_loaded(server) == (name == "c_loop"), name
                listener.shutdown(socket.SHUT_RDWR)
                time.sleep(0.3)
                server.process.send_signal(signal.SIGTERM)
                try:
                    server.process.wait(5)
                except subprocess.TimeoutExpired:
                    pytest.fail(f"{name}: SIGTERM not heard with the listener shut down")
            finally:
                server.stop(signal.SIGKILL)


def cpu_ns(pid: int) -> int:
    """The process's own on-CPU time in ns, all its threads (schedstat: no 10 ms ticks)."""
    return sum(
        int((task / "schedstat").read_text().split()[0])
        for task in Path(f"/proc/{pid}/task").iterdir()
    )


def test_a_rule_with_many_variables_is_laid_out_in_linear_time(tmp_path: Path) -> None:
    """A rule with tens of thousands of variables (a hostile or generated rules file):
    laying out the environment is linear in both loops, not a scan of every variable set
    so far per variable (seconds of a stalled loop each). Four times the variables cost
    about four times the CPU; a quadratic layout costs sixteen."""
    require_extension()
    cdb = tmp_path / "rules.cdb"

    def rule(address: str, count: int) -> bytes:
        names = b",".join(b'V%d="%d"' % (n, n) for n in range(count))
        return address.encode() + b":allow," + names + b',V7="last"\n'

    compile_rules(cdb, rule("127.0.0.8", 15000) + rule("127.0.0.9", 60000) + b":allow\n")
    count = write_script(tmp_path, "count", "#!/bin/sh\nenv | grep -c '^V'\necho $V7\n")
    for name, server in both(
        lambda env: ours("-HR", "-l", "x", "-x", str(cdb), "127.0.0.1", "0", count, env=env)
    ):
        assert server.request(source="127.0.0.1") == b"0\n\n"  # the rules are read
        cost = {}
        for source, variables in (("127.0.0.8", 15000), ("127.0.0.9", 60000)):
            rounds = []
            for _ in range(3):
                before = cpu_ns(server.process.pid)
                answer = server.request(source=source)
                rounds.append(cpu_ns(server.process.pid) - before)
                assert answer == b"%d\nlast\n" % variables, name
            cost[variables] = min(rounds)
        assert cost[60000] < 8 * cost[15000], (name, cost)


def test_a_child_not_ours_is_not_taken_for_a_spawn_that_reuses_its_pid(tmp_path: Path) -> None:
    """A child the server did not spawn (started before it exec'd, or an orphan it gets
    as a container's pid 1) is reaped and forgotten: when its pid comes back for a spawn,
    that session is not ended at once, and -c 1 holds. In a pid namespace of its own,
    where ns_last_pid makes the pid come back at once."""
    require_extension()
    unshare = require_tool("unshare")
    program = write_script(
        tmp_path,
        "program",
        '#!/bin/sh\necho "pid $$"\nread line\n'
        'if [ "$line" = next ]; then echo 1 > /proc/sys/kernel/ns_last_pid; fi\n'
        "echo bye\n",
    )
    tcpsrv = venv_script("qboot-tcpsrv")
    for name, env in PATHS.items():
        # sh is the namespace's pid 1, its sleep pid 2, and sh becomes the server
        script = f"sleep 0.2 & exec {tcpsrv} -1 -v -HR -l x -c 1 127.0.0.1 0 {program}"
        server = Running([unshare, "--pid", "--fork", "--mount-proc", "sh", "-c", script], env)
        try:
            time.sleep(0.6)  # the sleep has ended and been reaped: a child not spawned
            with server.connect() as first:
                first.sendall(b"next\n")  # the next pid is 2 again
                assert read_all(first).endswith(b"bye\n"), name
            server.wait_log(r"end \d+ status")  # reaped, and the sleep with it (waitpid(-1))
            with server.connect() as held:
                assert held.recv(100) == b"pid 2\n", (name, server.log())
                with server.connect() as waiting:
                    waiting.settimeout(0.5)
                    with pytest.raises(TimeoutError):
                        waiting.recv(100)  # -c 1: the held session still runs
                    held.sendall(b"x\n")
                    assert read_all(held) == b"bye\n", name
                    waiting.settimeout(10)
                    assert waiting.recv(100).startswith(b"pid "), name
        finally:
            children = Path(f"/proc/{server.process.pid}/task/{server.process.pid}/children")
            for pid in children.read_text().split():  # the server, the namespace's pid 1
                os.kill(int(pid), signal.SIGTERM)
            server.stop()


def test_hostile_cdbs_decide_as_the_python_loop(tmp_path: Path, dump: str) -> None:
    """Rules files damaged where a reader trusts them (table positions and counts, record
    and value lengths claiming up to 4 GiB, a header only, every slot taken): the ConnectionLoop's
    bounds checks give the Python reader's decision (run, deny, drop) for every client."""
    require_extension()
    cdb = tmp_path / "rules.cdb"
    compile_rules(cdb, RULES)
    valid = cdb.read_bytes()
    shuffle = random.Random(17)
    variants = [valid[:2048], valid[:2056], b"\xff" * 4096]
    variants.append(struct.pack("<LL", 2048, 0xFFFFFFFF) * 256 + b"\1" * 64)  # 2^32 slots
    variants.append(struct.pack("<LL", 2048, 64) * 256 + struct.pack("<LL", 1, 2048) * 64)
    record = valid.index(b"127.0.0.3") - 8  # key and value lengths, then the key
    for value_length in (len(valid), 0xFFFFFFFF, 40):  # past the end; a value cut short
        variants.append(valid[: record + 4] + struct.pack("<L", value_length) + valid[record + 8 :])
    for _ in range(25):
        data = bytearray(valid)
        for _ in range(shuffle.randint(1, 6)):
            at = shuffle.randrange(len(data) - 4)
            claim = shuffle.choice([0, 1, 0x7FFFFFFF, 0xFFFFFFFF, len(data) - 4])
            data[at : at + 4] = struct.pack("<L", shuffle.choice([claim, shuffle.getrandbits(32)]))
        variants.append(bytes(data))
    results = {}
    for name, server in both(
        lambda env: ours("-v", "-HR", "-l", "x", "-x", str(cdb), "127.0.0.1", "0", dump, env=env)
    ):
        outputs = []
        for data in variants:
            (tmp_path / "new.cdb").write_bytes(data)
            (tmp_path / "new.cdb").rename(cdb)
            outputs += one_at_a_time(server, ["127.0.0.1", "127.0.0.2", "127.0.0.3"])
        results[name] = (outputs, masked(server.log()))
    assert_same(results["c_loop"], results["python"])
    assert "invalid argument" in results["c_loop"][1] and "PROTO=TCP" in "".join(
        results["c_loop"][0]
    )


@pytest.mark.parametrize(
    "flags",
    [["-v", "-r", "-l", "mx.example"], ["-v", "-hpR"], ["-R", "-l", "mx.example", "-D"]],
)
def test_names_and_ident_decide_and_log_as_the_python_loop(
    tmp_path: Path, dump: str, flags: list[str]
) -> None:
    """Connections held for their names and ident and handed back to the ConnectionLoop: the rules'
    info@, =name and =.suffix keys in tcpserver's order, the TCP*HOST and TCP*INFO
    variables and the -v lines with names, as in the Python loop."""
    require_extension()
    named, suffixed, ident, denied, nameless = (loopback_address() for _ in range(5))
    resolver = FakeDns(loopback_address())
    resolver.ptr(named, dns_labels(b"named", b"test"))
    resolver.a("named.test", named)
    resolver.ptr(suffixed, dns_labels(b"x", b"sub", b"test"))  # no A: -p drops the name
    resolver.ptr(ident, dns_labels(b"ident", b"test"))
    resolver.a("ident.test", ident)
    resolver.ptr(denied, dns_labels(b"deny", b"me"))
    resolver.a("deny.me", denied)
    identd = Identd(ident, b"0,0:USERID:UNIX:joe%x\r\n")
    cdb = tmp_path / "rules.cdb"
    compile_rules(
        cdb,
        b"joe%x@" + ident.encode() + b':allow,WHO="info@ip"\n'
        b'=named.test:allow,NAMED="1"\n'
        b'=.test:allow,SUFFIX="1"\n'
        b"=deny.me:deny\n"
        b'=:allow,ANY="named"\n'
        b':allow,NONE="1"\n',
    )
    results = {}
    try:
        args = [*flags, "-t", "3", "-x", str(cdb), "127.0.0.1", "0", dump]
        dns_env = {"DNSCACHEIP": resolver.address}
        for name, server in both(lambda env: ours(*args, env={**env, **dns_env})):
            outputs = one_at_a_time(server, [named, suffixed, ident, denied, nameless] * 2)
            results[name] = (outputs, masked(server.log()))
    finally:
        identd.close()
        resolver.close()
    assert_same(results["c_loop"], results["python"])
    outputs = results["c_loop"][0]
    if "-R" in flags and "-hpR" not in flags:
        assert "NAMED=1" in outputs[0] and "TCPREMOTEHOST=named.test" in outputs[0]
        assert "SUFFIX=1" in outputs[1]
        assert outputs[3] == ""  # denied by name
    if "-r" in flags:
        assert "WHO=info@ip" in outputs[2] and "TCPREMOTEINFO=joe%x" in outputs[2]
    if "-p" in "".join(flags):
        assert "TCPREMOTEHOST" not in outputs[1]  # its name does not map back


def test_a_rule_of_millions_of_records_costs_one_connection_not_the_server(
    tmp_path: Path, dump: str
) -> None:
    """A damaged or hostile cdb whose rule holds 20 million empty records besides one `+`
    record, under a 600 MB address-space limit: the ConnectionLoop makes room for the `+` record
    only, so each connection runs at once with A=1, and the server goes on (sized by every
    record, it ran out of memory and left run(): the whole server exited)."""
    require_extension()
    cdb = tmp_path / "rules.cdb"
    with open(cdb, "wb") as handle:
        write_cdb(handle, [(b"127.0.0.1", b"+A=1\0" + b"\0" * 20_000_000)])
    server = Running(
        [require_tool("prlimit"), "--as=600000000", venv_script("qboot-tcpsrv"), "-1",
         "-HR", "-l", "x", "-x", str(cdb), "127.0.0.1", "0", dump],
    )  # fmt: skip
    try:
        for _ in range(3):
            started = time.monotonic()
            assert "A=1" in server.request().decode()
            assert time.monotonic() - started < 2.0
        assert server.process.poll() is None
    finally:
        server.stop()


def test_in_core_rblsmtpd_and_per_ip_as_the_python_loop(tmp_path: Path, dump: str) -> None:
    """-L and -C through the ConnectionLoop (screen() after the rules, ended() at each session's
    end) against the Python loop: a client listed by DNS, one the rules send away with
    RBLSMTPD, one the rules let through (RBLSMTPD=""), a clean one, and a second session
    from an address at its -C bound: the same bytes, environment and -v lines."""
    require_extension()
    listed, bounced, allowed, clean = (loopback_address() for _ in range(4))
    table: Table = {}
    for ip in (listed, allowed):
        reverse = ".".join(reversed(ip.split(".")))
        table[(f"{reverse}.bl.test", 16)] = [txt_rdata(b"listed " + ip.encode())]
        table[(f"{reverse}.bl.test", 1)] = [bytes([127, 0, 0, 2])]
    blocklist = BlocklistDns(loopback_address(), table).start()
    cdb = tmp_path / "rules.cdb"
    compile_rules(
        cdb,
        bounced.encode()
        + b':allow,RBLSMTPD="-go away"\n'
        + allowed.encode()
        + b':allow,RBLSMTPD="",X="y"\n'
        b":allow\n",
    )
    hold = write_script(tmp_path, "hold", "#!/bin/sh\necho hello; read line; echo bye\n")
    results = {}
    try:
        args = ["-v", "-L", "-HR", "-l", "x", "-C", "1", "-x", str(cdb), "127.0.0.1", "0"]
        dns_env = {"DNSCACHEIP": blocklist.address}
        for name, server in both(
            lambda env: ours(
                *args, "rblsmtpd", "-t0", "-r", "bl.test", dump, env={**env, **dns_env}
            )
        ):
            outputs = []
            for number, source in enumerate([listed, bounced, allowed, clean, listed], 1):
                outputs.append(masked(server.request(source=source).decode("utf-8", "replace")))
                server.wait_count(r"qboot-tcpsrv: end \d+ status", number)  # one log order
            results[name] = (outputs, masked(server.log()))
        for name, server in both(
            lambda env: ours(
                *args, "rblsmtpd", "-t0", "-r", "bl.test", hold, env={**env, **dns_env}
            )
        ):
            first = server.connect(source=clean)
            assert first.recv(100) == b"hello\n"
            server.wait_log(r": ok \d+ ")  # one log order: its spawn reported first
            second = server.request(source=clean)  # over -C 1 while the first runs
            server.wait_log("per-IP limit 1 reached")
            first.sendall(b"x\n")
            outputs = [second.decode(), read_all(first).decode()]
            first.close()
            server.wait_count(r"status: 0/\d+\n", 2)  # its end
            results[f"{name} -C"] = (outputs, masked(server.log()))
    finally:
        blocklist.close()
    assert_same(results["c_loop"], results["python"])
    assert_same(results["c_loop -C"], results["python -C"])
    outputs = results["c_loop"][0]
    assert outputs[0].startswith("451 listed " + listed)
    assert "go away" in outputs[1] and "X=y" in outputs[2] and "PROTO=TCP" in outputs[3]
    assert results["c_loop -C"][0] == ["", "bye\n"]
