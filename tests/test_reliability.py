"""Reliability: bounded load, slow clients, faults and hostile input (issue: reliability).

The long soak is bench/soak.py; this is its bounded twin for CI.
"""

from __future__ import annotations

import os
import resource
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qboot_systemd import bootctrl, generator, rules, units

from .conftest import ROOT, venv_script
from .generated import ALLOWED
from .load import run_load
from .tcpsrv_harness import Identd, loopback_address, ours, write_script

HOLD = "#!/bin/sh\necho hello\nread line\n"


def test_bounded_load_at_concurrency_200(tmp_path: Path) -> None:
    """Two rounds of 1500 connections: each served, every fd and child gone after each
    round, and the second round leaves the memory where the first did (what the first
    took is the allocator's working set; a leak grows with every round)."""
    run = run_load(tmp_path, 1500, rounds=2)
    assert run.counts == {"served": 3000, "refused": 0, "reset": 0, "empty": 0}
    for fds, _, children in run.rounds:
        assert (fds, children) == (run.idle[0], 0)  # no fd kept, no child, no zombie
    (_, first, _), (_, second, _) = run.rounds
    # 1 MiB: one more obmalloc arena and its pages; 700 bytes a connection are more.
    assert second <= first + 1024, run


def test_log_lines_keep_their_order_under_load(tmp_path: Path) -> None:
    """Spawner threads log `pid`/`ok` and the loop logs `end`: under load, with children
    that exit at once, every session still logs pid, ok, end in that order, once."""
    import asyncio
    import re

    from .load import hammer

    server = ours("-v", "-HR", "-l", "x", "-c", "30", "-b", "256", "0", "0", "/bin/true")
    try:
        counts = asyncio.run(hammer(server.port, 600, 30))
        assert counts == {"served": 0, "refused": 0, "reset": 0, "empty": 600}
        server.wait_count(r"end \d+ status 0\n", 600)
        log = server.wait_log(r"status: 0/30\n\Z")
    finally:
        server.stop()
    seen: dict[str, list[str]] = {}
    for word, pid in re.findall(r"^qboot-tcpsrv: (pid|ok|end) (\d+)", log, re.M):
        seen.setdefault(pid, []).append(word)
    assert len(seen) == 600
    assert {tuple(words) for words in seen.values()} == {("pid", "ok", "end")}


def test_slow_clients_are_capped_per_address(tmp_path: Path) -> None:
    hold = write_script(tmp_path, "hold", HOLD)
    server = ours("-HR", "-l", "x", "-c", "20", "-C", "5", "127.0.0.1", "0", hold)
    idle = []
    try:
        for _ in range(200):  # connect and never speak
            client = socket.socket()
            client.bind(("127.0.0.2", 0))
            client.connect(("127.0.0.1", server.port))
            idle.append(client)
        server.wait_count("per-IP limit 5 reached", 195)
        other = server.connect(source="127.0.0.3")
        assert other.recv(100) == b"hello\n"  # a slot is free for somebody else
        other.close()
    finally:
        for client in idle:
            client.close()
        server.stop()


def test_chain_not_executable_is_logged_and_serving_goes_on(tmp_path: Path) -> None:
    script = tmp_path / "noexec"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o644)
    server = ours("-HR", "-l", "x", "127.0.0.1", "0", str(script))
    try:
        assert server.request() == b""
        server.wait_log("unable to run .*noexec: Permission denied")
        script.chmod(0o755)
        assert server.request() == b"hi\n"
    finally:
        server.stop()


def test_emfile_backs_off_and_recovers(tmp_path: Path) -> None:
    """With no fd left, accept() fails with EMFILE: the server logs it, backs off instead
    of spinning, and serves the queued clients once fds are there again. The limit is set
    to exactly the fds the running server holds (it closes each connection's fd as soon as
    the child has it, so a fixed low limit would not always run out)."""
    hold = write_script(tmp_path, "hold", HOLD)
    process = subprocess.Popen(
        [venv_script("qboot-tcpsrv"), "-1", "-HR", "-l", "x", "-c", "100", "127.0.0.1", "0", hold],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None and process.stderr is not None
    port = int(process.stdout.readline())
    clients = []
    try:
        warm = socket.create_connection(("127.0.0.1", port), timeout=10)
        clients.append(warm)
        assert warm.recv(100) == b"hello\n"  # every fd the server keeps is open by now
        # The spawner closes the connection's fd once the child runs, which may be after
        # the child's greeting: wait until the count settles, with no gap below the top.
        held = -1
        for _ in range(100):
            fds = sorted(int(fd) for fd in os.listdir(f"/proc/{process.pid}/fd"))
            if len(fds) == held and fds[-1] == held - 1:
                break
            held = len(fds)
            time.sleep(0.05)
        else:
            pytest.fail(f"the server's fds did not settle: {fds}")
        _, hard = resource.prlimit(process.pid, resource.RLIMIT_NOFILE)
        resource.prlimit(process.pid, resource.RLIMIT_NOFILE, (held, hard))
        for _ in range(10):
            client = socket.create_connection(("127.0.0.1", port), timeout=10)
            client.settimeout(1.0)
            clients.append(client)
        with pytest.raises(TimeoutError):
            clients[1].recv(100)  # queued in the kernel: the server cannot accept
        resource.prlimit(process.pid, resource.RLIMIT_NOFILE, (held + 16, hard))
        for client in clients[1:]:  # fds are there again: the queued ones are served
            client.settimeout(15)
            assert client.recv(100) == b"hello\n"
        for client in clients:
            client.sendall(b"x\n")
    finally:
        for client in clients:
            client.close()
        process.terminate()
        _, err = process.communicate(timeout=10)
    assert b"unable to accept: Too many open files; pausing" in err
    assert err.count(b"pausing") < 200  # backs off, does not spin


def test_disk_full_while_compiling_keeps_the_old_cdb(tmp_path: Path) -> None:
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(small)], check=True)
    try:
        cdb = small / "rules.cdb"
        rules.compile_file(b":allow\n", cdb, small / "rules.tmp")
        before = cdb.read_bytes()
        big = "".join(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}:deny\n" for i in range(9000))
        done = subprocess.run(
            [venv_script("qboot-tcprules"), str(cdb), str(small / "rules.tmp")],
            input=big.encode(),
            capture_output=True,
            check=False,
        )
        assert done.returncode == 111
        assert b"No space left on device" in done.stderr
        assert cdb.read_bytes() == before
        assert not (small / "rules.tmp").exists()
    finally:
        subprocess.run(["umount", str(small)], check=True)


def test_unreadable_bootctrl_does_not_fail_the_boot() -> None:
    # Debian's python3 (readable by nobody) runs the generator, which needs no cdblib.
    base = Path(tempfile.mkdtemp(prefix="qboot-unreadable.", dir="/tmp"))
    try:
        base.chmod(0o755)
        for name, mode in (("bootctrl", 0o700), ("parent-locked", 0o700), ("out", 0o777)):
            (base / name).mkdir()
            (base / name).chmod(mode)
        (base / "parent-locked" / "bootctrl").mkdir()
        for bootctrl_dir, message in (
            (base / "bootctrl", "cannot read directory: Permission denied"),
            (base / "parent-locked" / "bootctrl", "cannot read: Permission denied"),
        ):
            done = subprocess.run(
                [
                    "setpriv",
                    "--reuid=65534",
                    "--regid=65534",
                    "--clear-groups",
                    "/usr/bin/python3",
                    "-I",
                    "-c",
                    f"import sys; sys.path.insert(0, {str(ROOT)!r}); "
                    "from qboot_systemd.generator import main; sys.exit(main())",
                    str(base / "out"),
                ],
                env={"QBOOT_BOOTCTRL": str(bootctrl_dir), "PATH": "/usr/bin:/bin"},
                capture_output=True,
                text=True,
                check=False,
            )
            assert done.returncode == 0, done.stderr
            assert f"{bootctrl_dir}: {message}" in done.stderr
            assert list((base / "out").iterdir()) == []
    finally:
        subprocess.run(["rm", "-rf", str(base)], check=False)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_rules_parser_never_crashes_or_hangs(data: bytes) -> None:
    try:
        parsed = rules.parse(data)
    except rules.RulesSyntaxError as error:
        assert 1 <= error.line <= data.count(b"\n") + 1
        return
    for rule in parsed:
        assert b"\n" not in rule.address


unit_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(st.from_regex(r"[A-Z][A-Z0-9_]{0,8}", fullmatch=True), unit_text), max_size=4
    ),
    st.lists(unit_text.filter(lambda w: w and not w.isspace()), max_size=4),
    unit_text,
)
def test_generated_units_only_carry_fixed_settings(
    env: list[tuple[str, str]], words: list[str], banner: str
) -> None:
    service = bootctrl.Service(
        name="fuzz",
        rc_file="/b/qmail-fuzz.rc",
        env_file="/b/qmail-fuzz.env",
        listen=(bootctrl.Listen(25),),
        rules="/b/tcprules-fuzz.cdb",
        maxconn=40,
        smtpd=("/var/qmail/bin/qmail-smtpd",),
        presmtpd=tuple(words),
        environment=tuple(env),
        banner=banner,
    )
    try:
        text = units.service_dropin(service, units.Paths())
    except units.UnsafeValue as error:
        assert error.setting is not None
        return
    lines = text.splitlines()
    for line in lines:
        assert ALLOWED.match(line), line
    assert sum(line.startswith("Environment=") for line in lines) == len(env)
    assert sum(line.startswith("ExecStart=/") for line in lines) == 1
    assert generator.PROGRAM  # the generator module stays importable without click


def test_hostile_ident_answer_is_escaped_in_logs_and_cut_in_env(tmp_path: Path) -> None:
    """An identd answers with control characters, %, and 300 bytes: the log line shows it
    escaped and cut at 100, the child's environment gets it cut as tcpserver cuts it
    (257 bytes, spaces dropped)."""
    hostile = "evil\x01name%" + "x" * 300
    client = loopback_address()
    identd = Identd(client, lambda query: query + f" : USERID : UNIX : {hostile}\r\n".encode())
    script = write_script(tmp_path, "info", '#!/bin/sh\nprintf "%s" "$TCPREMOTEINFO"\n')
    server = ours("-v", "-Hr", "-t", "5", "-l", "x", "127.0.0.1", "0", script)
    try:
        assert server.request(source=client).decode() == hostile[:257]
        log = server.wait_log(r"ok \d+ ")
        line = next(line for line in log.splitlines() if " ok " in line)
        remote = line.split(" ")[-1]
        info = remote.split(":")[2]
        assert info == ("evil?name?" + "x" * 90 + "...")
        assert "\x01" not in log
    finally:
        server.stop()
        identd.close()
