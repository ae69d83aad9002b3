"""How the chain is started: the extension's clone+execve against glibc's posix_spawnp
(the Python loop's, QBOOT_NO_EXTENSION=1) and Debian's tcpserver (fork+execve): the
program found on PATH the same way, and the same signal dispositions and mask."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import pytest

from .conftest import require_extension, require_tool
from .tcpsrv_harness import Running, ours, theirs, write_script

PATHS = {"extension": {}, "python": {"QBOOT_NO_EXTENSION": "1"}}


# glibc keeps 32 and 33 for its threads: no program linked with it can use them, and
# whether the test's own parent ignored them says nothing about the servers.
GLIBC_INTERNAL = (1 << 31) | (1 << 32)


def signal_masks(server: Running) -> dict[str, int]:
    status = server.request().decode()
    return {
        name: int(mask, 16) & ~GLIBC_INTERNAL
        for name, mask in re.findall(r"^Sig(Ign|Blk|Cgt):\s*([0-9a-f]+)$", status, re.M)
    }


def test_signals_of_the_child_as_under_tcpserver() -> None:
    """Every signal starts at its default and none is blocked, except what the server's
    own parent ignored (here SIGHUP and SIGINT, as under nohup or in a background job,
    SIGUSR2 and SIGQUIT), which stays ignored: as tcpserver's children, whatever Python
    did to our own dispositions."""
    require_extension()
    tcpserver = require_tool("tcpserver")
    program = ["/bin/cat", "/proc/self/status"]  # cat sets no handler of its own
    flags = ["-HR", "-l", "x", "127.0.0.1", "0", *program]
    ignored = (signal.SIGHUP, signal.SIGINT, signal.SIGUSR2, signal.SIGQUIT)

    def ignoring(*argv: str, env: dict[str, str] | None = None) -> Running:
        previous = {number: signal.signal(number, signal.SIG_IGN) for number in ignored}
        try:  # the dispositions a child is started with are inherited through exec
            return ours(*argv, env=env) if tcpserver not in argv else theirs(*argv, env=env)
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)

    results = {}
    for name, env in PATHS.items():
        server = ignoring(*flags, env=env)
        try:
            results[name] = signal_masks(server)
        finally:
            server.stop()
    server = ignoring(tcpserver, *flags)
    try:
        results["tcpserver"] = signal_masks(server)
    finally:
        server.stop()
    assert results["extension"] == results["tcpserver"] == results["python"]
    assert results["tcpserver"] == {
        "Ign": sum(1 << (number - 1) for number in ignored),
        "Blk": 0,
        "Cgt": 0,
    }


def test_program_found_on_path_as_execvp(tmp_path: Path) -> None:
    """A name without '/' is looked for on the server's PATH at each connection's spawn:
    past a directory where it is not executable or is a directory, to where it runs; a
    name that is nowhere runnable is refused with the error that says most."""
    require_extension()
    first, second, third = (tmp_path / name for name in ("first", "second", "third"))
    for directory in (first, second, third):
        directory.mkdir()
    (first / "greet").write_text("#!/bin/sh\necho first\n")  # not executable
    (second / "greet").mkdir()
    write_script(third, "greet", "#!/bin/sh\necho third\n")
    (first / "blocked").write_text("#!/bin/sh\necho no\n")
    path = f"{first}:{second}:{third}"
    cases = (
        ("greet", b"third\n", None),
        ("blocked", b"", "unable to run blocked: Permission denied"),
        ("nowhere", b"", "unable to run nowhere: No such file or directory"),
    )
    for name, env in PATHS.items():
        for program, reply, logged in cases:
            server = ours(
                "-v", "-HR", "-l", "x", "127.0.0.1", "0", program, env={**env, "PATH": path}
            )
            try:
                assert server.request() == reply, (name, program)
                if logged is not None:
                    server.wait_log(logged)
            finally:
                server.stop()


def test_no_zombie_and_no_session_left_by_a_program_that_cannot_run(tmp_path: Path) -> None:
    """A child that cannot exec is reaped, its session ends, and -c 1 lets the next
    client in (its pid must not linger among the ones the server waits for)."""
    require_extension()
    missing = str(tmp_path / "missing")
    server = ours("-v", "-HR", "-l", "x", "-c", "1", "127.0.0.1", "0", missing)
    try:
        for count in range(1, 21):
            assert server.request() == b""
            server.wait_count(r"status: 0/1\n", count + 1)
        children = Path(f"/proc/{server.process.pid}/task/{server.process.pid}/children")
        assert children.read_text().split() == []
        assert "unable to run" in server.log()
    finally:
        server.stop()


@pytest.mark.parametrize("name", list(PATHS))
def test_stdin_and_stdout_are_the_connection(name: str, tmp_path: Path) -> None:
    echo = write_script(tmp_path, "echo", '#!/bin/sh\nread line\necho "got $line"\n')
    server = ours("-HR", "-l", "x", "127.0.0.1", "0", echo, env=PATHS[name])
    try:
        with server.connect() as client:
            client.sendall(b"hello\n")
            assert client.recv(100) == b"got hello\n"
        assert os.path.exists(f"/proc/{server.process.pid}")
    finally:
        server.stop()
