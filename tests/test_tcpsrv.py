"""qboot-tcpsrv's own behaviour: limits, faults, signals, socket activation."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import select
import signal
import socket
import struct
import subprocess
import time
from pathlib import Path

import pytest

from qboot_systemd import rules
from qboot_systemd.tcpsrv.logline import safe
from qboot_systemd.tcpsrv.options import UsageError, parse

from .conftest import require_extension, require_tool, venv_script
from .tcpsrv_harness import (
    DUMP_ENV,
    FakeDns,
    Running,
    dns_labels,
    loopback_address,
    ours,
    read_all,
    write_script,
)

HOLD = "#!/bin/sh\necho hello\nread line\necho bye $line\n"


def compile_rules(path: Path, text: bytes) -> str:
    rules.compile_file(text, path, path.with_suffix(".tmp"))
    return str(path)


def test_options_like_djb() -> None:
    options = parse(["-vRl0", "-c40", "-x", "r.cdb", "-C", "3", "0", "25", "prog", "-a"])
    assert (options.verbosity, options.remote_info, options.localname) == (2, False, "0")
    assert (options.limit, options.per_ip, options.rules) == (40, 3, "r.cdb")
    assert options.program == ("prog", "-a")
    defaults = parse(["0", "25", "prog"])
    assert (defaults.limit, defaults.backlog, defaults.timeout) == (40, 20, 26)
    assert defaults.remote_host and defaults.remote_info and not defaults.nodelay
    for bad in (["-c"], ["-Z", "0", "25", "p"], ["0", "25"], ["-c", "x", "0", "25", "p"]):
        with pytest.raises(UsageError):
            parse(bad)


def test_usage_error_exits_100() -> None:
    done = subprocess.run(
        [venv_script("qboot-tcpsrv"), "-c"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 100 and "usage: qboot-tcpsrv" in done.stderr


@pytest.mark.parametrize(
    ("argv", "status", "message"),
    [
        (["-b", "99999999999", "127.0.0.1", "0", "/bin/true"], 100, "-b 99999999999 is too large"),
        (["-c", "\u00b2", "127.0.0.1", "0", "/bin/true"], 100, "-c needs a number"),
        (["127.0.0.1", "99999", "/bin/true"], 111, "port 99999 is out of range"),
    ],
)
def test_numbers_out_of_range_are_one_line(argv: list[str], status: int, message: str) -> None:
    """Numbers a C int or a port cannot hold: a usage or fatal line, no OverflowError."""
    done = subprocess.run(
        [venv_script("qboot-tcpsrv"), *argv], capture_output=True, text=True, check=False
    )
    assert done.returncode == status, done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr


def test_log_escaping() -> None:
    assert safe("a b%c\x01\xe9") == "a?b?c???"
    assert safe("x" * 99) == "x" * 99
    assert safe("x" * 100) == "x" * 100 + "..."
    assert safe("host\nname") == "host?name"


def test_limit_queues_and_refuses_nobody(tmp_path: Path) -> None:
    hold = write_script(tmp_path, "hold", HOLD)
    server = ours("-HR", "-l", "x", "-c", "2", "0", "0", hold)
    try:
        clients = [server.connect() for _ in range(6)]  # all connects succeed: kernel queue
        greeted = [c for c in clients[:2] if c.recv(100) == b"hello\n"]
        assert len(greeted) == 2
        clients[2].settimeout(0.3)
        with pytest.raises(TimeoutError):
            clients[2].recv(100)  # queued, not refused, not served yet
        for index, client in enumerate(clients):
            client.settimeout(10)
            if index >= 2:
                assert client.recv(100) == b"hello\n"
            client.sendall(b"%d\n" % index)
            assert read_all(client) == b"bye %d\n" % index
            client.close()
    finally:
        server.stop()


def test_per_ip_cap(tmp_path: Path) -> None:
    hold = write_script(tmp_path, "hold", HOLD)
    server = ours("-HR", "-l", "x", "-C", "1", "0", "0", hold)
    try:
        first = server.connect()
        assert first.recv(100) == b"hello\n"
        second = server.connect()
        assert read_all(second) == b""  # closed at once
        other = server.connect(source="127.0.0.2")
        assert other.recv(100) == b"hello\n"
        assert "per-IP limit 1 reached, dropping connection from 127.0.0.1" in server.log()
        for client in (first, other):
            client.sendall(b"x\n")
            assert read_all(client) == b"bye x\n"
        # the first session's end (reaped a moment later) gives its address room again
        deadline = time.monotonic() + 5
        while (again := server.connect()).recv(100) != b"hello\n":
            again.close()
            assert time.monotonic() < deadline, "the ended session still counted for -C"
            time.sleep(0.05)
        again.sendall(b"y\n")
        assert read_all(again) == b"bye y\n"
    finally:
        server.stop()


def test_deny_missing_and_replaced_cdb(tmp_path: Path) -> None:
    dump = write_script(tmp_path, "dump", DUMP_ENV)
    cdb = tmp_path / "rules.cdb"
    compile_rules(cdb, b'127.0.0.2:deny\n:allow,X="v1"\n')
    server = ours("-v", "-HR", "-l", "x", "-x", str(cdb), "0", "0", dump)
    try:
        assert b"X=v1" in server.request()
        assert server.request(source="127.0.0.2") == b""
        server.wait_log(r"deny \d+ .*:::ffff:127.0.0.2::")
        compile_rules(cdb, b':allow,X="v2"\n')  # a tcprules run: next connection sees it
        assert b"X=v2" in server.request()
        cdb.unlink()
        assert server.request() == b""  # fail closed
        server.wait_log("dropping connection, unable to read .*rules.cdb: No such file")
        cdb.write_bytes(b"garbage")
        assert server.request() == b""
        compile_rules(cdb, b':allow,X="v3"\n')
        assert b"X=v3" in server.request()  # and it keeps serving
    finally:
        server.stop()


def test_missing_cdb_with_X_is_allowed(tmp_path: Path) -> None:
    dump = write_script(tmp_path, "dump", DUMP_ENV)
    server = ours("-X", "-HR", "-l", "x", "-x", str(tmp_path / "none.cdb"), "0", "0", dump)
    try:
        assert b"PROTO=TCP" in server.request()
    finally:
        server.stop()


def test_exec_failure_is_logged_and_serving_goes_on(tmp_path: Path) -> None:
    server = ours("-HR", "-l", "x", "0", "0", str(tmp_path / "no-such-program"))
    try:
        assert server.request() == b""
        server.wait_log("unable to run .*no-such-program: No such file")
        assert server.request() == b""
        assert server.process.poll() is None
    finally:
        server.stop()


def test_reverse_dns_and_banner(tmp_path: Path) -> None:
    dump = write_script(tmp_path, "dump", DUMP_ENV)
    dns = FakeDns(loopback_address())
    dns.ptr("127.0.0.1", dns_labels(b"LocalHost"))  # names come back in lower case
    server = ours("-hR", "-B", "220 hi\r\n", "0", "0", dump, env={"DNSCACHEIP": dns.address})
    try:
        output = server.request()
        assert output.startswith(b"220 hi\r\n")
        assert b"TCPREMOTEHOST=localhost" in output and b"TCPLOCALHOST=localhost" in output
    finally:
        server.stop()
        dns.close()


def test_client_reset_before_accept(tmp_path: Path) -> None:
    hold = write_script(tmp_path, "hold", HOLD)
    server = ours("-HR", "-l", "x", "-c", "1", "0", "0", hold)
    try:
        first = server.connect()
        assert first.recv(100) == b"hello\n"
        doomed = server.connect()
        doomed.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        doomed.close()  # RST while it waits in the queue
        first.sendall(b"1\n")
        assert read_all(first) == b"bye 1\n"
        first.close()
        third = server.connect()
        assert third.recv(100) == b"hello\n"
        third.sendall(b"3\n")
        assert read_all(third) == b"bye 3\n"
    finally:
        server.stop()


class NotifySocket:
    def __init__(self, directory: Path) -> None:
        self.path = str(directory / "notify")
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.socket.bind(self.path)
        self.socket.settimeout(10)
        self.messages: list[str] = []

    def wait_for(self, text: str) -> list[str]:
        while not any(text in message for message in self.messages):
            self.messages.append(self.socket.recv(4096).decode())
        return self.messages


def test_notify_reload_and_drain_on_sigterm(tmp_path: Path) -> None:
    hold = write_script(tmp_path, "hold", HOLD)
    notify = NotifySocket(tmp_path)
    server = ours("-HR", "-l", "x", "-c", "5", "0", "0", hold, env={"NOTIFY_SOCKET": notify.path})
    try:
        notify.wait_for("READY=1")
        session = server.connect()
        assert session.recv(100) == b"hello\n"
        notify.wait_for("STATUS=1/5 sessions, 1 served, 0 denied")
        server.process.send_signal(signal.SIGHUP)
        notify.wait_for("RELOADING=1")
        notify.messages.clear()
        notify.wait_for("READY=1")
        server.process.send_signal(signal.SIGTERM)
        notify.wait_for("STOPPING=1")
        time.sleep(0.3)
        assert server.process.poll() is None  # the session may finish
        with pytest.raises(OSError):
            server.connect(timeout=1)  # but nobody new is taken
        session.sendall(b"done\n")
        assert read_all(session) == b"bye done\n"
        assert server.process.wait(10) == 0
    finally:
        server.stop()


def test_sigterm_without_systemd_exits_at_once(tmp_path: Path) -> None:
    hold = write_script(tmp_path, "hold", HOLD)
    server = ours("-HR", "-l", "x", "0", "0", hold)
    try:
        session = server.connect()
        assert session.recv(100) == b"hello\n"
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(5) == 0
        session.sendall(b"still\n")  # the child goes on, as under tcpserver
        assert read_all(session) == b"bye still\n"
    finally:
        server.stop()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_socket_activation_with_two_sockets(tmp_path: Path) -> None:
    activate = require_tool("systemd-socket-activate")
    dump = write_script(tmp_path, "dump", DUMP_ENV)
    first, second = free_port(), free_port()
    server = Running(
        [
            activate,
            "-l",
            f"127.0.0.1:{first}",
            "-l",
            f"[::1]:{second}",
            venv_script("qboot-tcpsrv"),
            "-HR",
            "-l",
            "x",
            "-",
            "-",
            dump,
        ],
        port=first,
    )
    try:
        deadline = time.monotonic() + 10
        while "Listening on" not in server.log() and time.monotonic() < deadline:
            time.sleep(0.02)
        four = server.request("127.0.0.1")
        server.port = second
        six = server.request("::1")
        assert f"TCPLOCALPORT={first}".encode() in four and b"PROTO=TCP\n" in four
        assert f"TCPLOCALPORT={second}".encode() in six and b"PROTO=TCP6" in six
        assert b"LISTEN_" not in four + six
    finally:
        server.stop()


def test_child_environment_loses_systemd_variables(tmp_path: Path) -> None:
    script = write_script(tmp_path, "env", "#!/bin/sh\nenv\n")
    notify = NotifySocket(tmp_path)
    server = ours(
        "-HR",
        "-l",
        "x",
        "0",
        "0",
        script,
        env={"NOTIFY_SOCKET": notify.path, "KEEP_ME": "1", "TCPREMOTEHOST": "stale"},
    )
    try:
        output = server.request().decode()
        assert "KEEP_ME=1" in output
        assert "NOTIFY_SOCKET" not in output and "TCPREMOTEHOST" not in output
    finally:
        server.stop()


def test_no_zombies_after_many_sessions(tmp_path: Path) -> None:
    server = ours("-HR", "-l", "x", "-c", "10", "0", "0", "/bin/true")
    try:
        for _ in range(50):
            server.request()

        def children() -> list[str]:  # of every thread: the spawner threads fork too
            tasks = Path(f"/proc/{server.process.pid}/task")
            return [
                pid for task in tasks.iterdir() for pid in (task / "children").read_text().split()
            ]

        deadline = time.monotonic() + 10  # the last child's exit is reaped soon after
        while children() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert children() == []
        status = Path(f"/proc/{server.process.pid}/status").read_text()
        assert os.path.exists(f"/proc/{server.process.pid}")
        assert "State:" in status
    finally:
        server.stop()


@pytest.mark.parametrize("extension", [True, False])
def test_child_reaped_before_its_spawn_was_reported(extension: bool) -> None:
    """A child can exit, and the loop reap it, before the pool has reported its spawn:
    the session must still end once, with its log lines in tcpserver's order."""
    from io import StringIO

    from qboot_systemd.tcpsrv import spawn
    from qboot_systemd.tcpsrv.server import Server

    if extension:
        require_extension()
    options = parse(["-v", "-HR", "-l", "x", "127.0.0.1", "0", "/bin/true"])
    log = StringIO()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        server = Server(options, [listener], None, log=log)
        if not extension:
            server.spawner = spawn.PythonSpawner(server.program, {})
        server.start()
        assert server.spawns is not None
        with socket.create_connection(listener.getsockname()):
            server._on_listener(listener)
            spawned, _, _ = select.select([server.spawns.fileno()], [], [], 10)
            assert spawned, "the pool did not spawn"  # done, not yet reported
            os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOWAIT)  # it has exited ...
            server._reap()  # ... and the loop reaped it before hearing of its spawn
            assert len(server.exited_early) == 1
            deadline = time.monotonic() + 10
            while server.spawning:
                assert time.monotonic() < deadline, log.getvalue()
                select.select([server.spawns.fileno()], [], [], 0.1)
                server._on_spawned()
        server.close()
    assert (server.running, server.children, server.exited_early) == (0, {}, {})
    words = [line.split()[1] for line in log.getvalue().splitlines()]
    assert words == ["status:", "pid", "ok", "end", "status:"], log.getvalue()
    assert log.getvalue().splitlines()[-1].endswith("status: 0/40")


@pytest.mark.parametrize("spawner_name", ["ExtensionSpawner", "PythonSpawner"])
def test_spawned_environment_is_exact(spawner_name: str) -> None:
    """The child's environment is the server's plus the connection's, the connection's
    winning, with non-ASCII and undecodable bytes intact and nothing twice."""
    from qboot_systemd.tcpsrv import spawn

    if spawner_name == "ExtensionSpawner":
        require_extension()
    kind = getattr(spawn, spawner_name)
    base = {"A": "1", "KEEP": "ü", "EMPTY": ""}
    spawner = kind([b"/usr/bin/env"], base)
    ours, theirs = socket.socketpair()
    with ours, theirs:
        pid = spawner.spawn({"A": "2", "RAW": "\udcff", "TCPREMOTEIP": "::1"}, theirs.fileno())
        theirs.close()
        output = read_all(ours)
        assert os.waitpid(pid, 0)[1] == 0
    lines = sorted(output.split(b"\n")[:-1])
    expected = [b"A=2", b"EMPTY=", b"KEEP=\xc3\xbc", b"RAW=\xff", b"TCPREMOTEIP=::1"]
    assert lines == expected
    null = os.open(os.devnull, os.O_RDWR)
    try:  # no connection variables at all
        assert os.waitpid(spawner.spawn({}, null), 0)[1] == 0
    finally:
        os.close(null)


def test_extension_and_python_calls_agree() -> None:
    """syscalls' two paths: the same fd kind and addresses from accept, the same local
    address, a banner sent, options set without error."""
    require_extension()
    from qboot_systemd.tcpsrv import syscalls

    python_calls = (syscalls._python_accept, syscalls._python_local_address)
    extension_calls = (syscalls.accept, syscalls.local_address)
    for accept, local_address in (python_calls, extension_calls):
        with socket.create_server(("127.0.0.1", 0)) as listener:
            listener.setblocking(False)
            with pytest.raises(BlockingIOError):
                accept(listener)
            with socket.create_connection(listener.getsockname()) as client:
                fd, (ip, port) = accept(listener)
                try:
                    assert (ip, port) == client.getsockname()
                    assert local_address(fd) == listener.getsockname()
                    assert os.get_blocking(fd) and not os.get_inheritable(fd)
                    syscalls.set_option(fd, socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    syscalls.send_now(fd, b"220 hi\r\n")
                    assert client.recv(100) == b"220 hi\r\n"
                finally:
                    syscalls.close(fd)


def test_status_throttle_ends_on_the_latest_text(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """STATUS= is throttled, but what systemd shows at the end is the latest text: a
    queued one is sent at the next flush, and one made stale by a return to what systemd
    already shows is dropped."""
    from qboot_systemd.tcpsrv.notify import Notifier

    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as systemd:
        systemd.bind(str(path))
        systemd.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        notifier = Notifier(interval=0.5)
        notifier.status("0 served", now=10.0)
        notifier.status("1 served", now=10.1)  # throttled: queued
        assert notifier.next_flush() == 10.5
        notifier.flush(10.6)
        notifier.status("2 served", now=10.7)  # queued ...
        notifier.status("1 served", now=10.8)  # ... and stale: systemd shows this
        assert notifier.next_flush() is None
        sent = [systemd.recv(100) for _ in range(2)]
    assert sent == [b"STATUS=0 served", b"STATUS=1 served"]


def test_sd_notify_reaches_an_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    from qboot_systemd.tcpsrv.notify import notify_address, sd_notify

    name = f"qboot-notify-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as systemd:
        systemd.bind(b"\0" + name.encode())
        systemd.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        sd_notify("READY=1", "STATUS=up")
        assert systemd.recv(100) == b"READY=1\nSTATUS=up"
    assert notify_address("vsock:2:1234") is None
    monkeypatch.setenv("NOTIFY_SOCKET", "/nonexistent/notify")
    sd_notify("READY=1")  # nobody listening: ignored, as by libsystemd's callers


@pytest.mark.parametrize("extension", [True, False])
def test_spawn_pool_gives_the_exact_environment_and_reports(extension: bool) -> None:
    """Through the pool (the server's path): the child's environment is the server's plus
    the connection's, the connection's winning, a value cut at a NUL; a failed spawn is
    reported with its error, and the pool closes every fd it was given."""
    from qboot_systemd.tcpsrv import spawn

    if extension:
        require_extension()
    base = {"A": "1", "KEEP": "ü"}
    kind = spawn.ExtensionSpawner if extension else spawn.PythonSpawner
    pool = spawn.spawn_pool(kind([b"/usr/bin/env"], base), 2)
    missing = spawn.spawn_pool(kind([b"/nonexistent/program"], base), 1)
    try:
        ours, theirs = socket.socketpair()
        with ours:
            pool.submit(7, {"A": "2", "RAW": "\udcff", "CUT": "x\0y"}, theirs.detach())
            output = read_all(ours)
        done: list[tuple[int, int, str | None]] = []
        while not done:
            select.select([pool.fileno()], [], [], 10)
            done += pool.finished()
        ((ident, pid, error),) = done
        assert (ident, error) == (7, None)
        assert os.waitpid(pid, 0)[1] == 0
        lines = sorted(output.split(b"\n")[:-1])
        assert lines == [b"A=2", b"CUT=x", b"KEEP=\xc3\xbc", b"RAW=\xff"]
        null = os.open(os.devnull, os.O_RDWR)
        missing.submit(8, {}, null)
        failed: list[tuple[int, int, str | None]] = []
        while not failed:
            select.select([missing.fileno()], [], [], 10)
            failed += missing.finished()
        ((ident, pid, error),) = failed
        assert (ident, error) == (8, os.strerror(errno.ENOENT))
        if pid:  # the extension's child that could not exec: left to the one reaper,
            # the caller's waitpid (the pool's own could race the loop's and, with the pid
            # reused, take another session's status)
            assert os.waitpid(pid, 0) == (pid, 127 << 8)
        with pytest.raises(OSError):
            os.fstat(null)  # closed by the pool
    finally:
        pool.close()
        missing.close()


def test_status_under_systemd_ends_on_the_sessions_served(tmp_path: Path) -> None:
    """READY=1, then STATUS= lines throttled to two a second; once the sessions are over
    the last one systemd got says so (it used to be able to stay at `0 served`)."""
    from .tcpsrv_harness import Running

    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as systemd:
        systemd.bind(str(path))
        server = Running(
            [venv_script("qboot-tcpsrv"), "-1", "-HR", "-l", "x", "127.0.0.1", "0", "/bin/true"],
            env={"NOTIFY_SOCKET": str(path)},
        )
        try:
            for _ in range(3):
                with server.connect() as client:
                    assert read_all(client) == b""
            time.sleep(1.5)  # past the throttle's 0.5 s, with nothing else happening
            systemd.setblocking(False)
            messages = []
            with contextlib.suppress(BlockingIOError):
                while True:
                    messages.append(systemd.recv(4096).decode())
        finally:
            server.stop()
    assert messages[0] == "READY=1"
    statuses = [m for m in messages if m.startswith("STATUS=")]
    assert statuses[-1] == "STATUS=0/40 sessions, 3 served, 0 denied", messages


@pytest.mark.parametrize("no_extension", ["", "1"])
def test_sigterm_imports_nothing_a_server_without_names_did_not(no_extension: str) -> None:
    """The lookups' modules are imported before -u drops privileges, for the servers
    that use them; SIGTERM must not import them for one that never did (after -u the
    library may be unreadable, and a stop is no time to load it)."""
    env = {"PYTHONPROFILEIMPORTTIME": "1", "QBOOT_NO_EXTENSION": no_extension}
    server = ours("-HR", "-l", "x", "127.0.0.1", "0", "/bin/true", env=env)
    try:
        assert server.request() == b""
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(10) == 0
        imported = re.findall(r"\| +([\w.]+)$", server.log(), re.M)
        assert "qboot_systemd.tcpsrv.server" in imported  # the import log works
        assert "qboot_systemd.tcpsrv.lookups" not in imported
        assert "qboot_systemd.tcpsrv.dns" not in imported
    finally:
        server.stop()
