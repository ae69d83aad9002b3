"""qboot-tcpsrv side by side with Debian's tcpserver: same cdb, flags and child."""

from __future__ import annotations

import re
import socket
import subprocess
import time
from pathlib import Path

import pytest

from qboot_systemd import rules
from qboot_systemd.tcpsrv.environ import base_environment

from .conftest import require_tool, venv_script
from .tcpsrv_harness import (
    DUMP_ENV,
    NO_DNS,
    Running,
    masked_log,
    ours,
    read_all,
    theirs,
    write_script,
)

RULES = (
    b'127.0.0.1:allow,X="one",RELAYCLIENT=""\n'
    b'127.0.0.2:deny,X="denied"\n'
    b'127.0.0.3:allow,TCPREMOTEIP="9.9.9.9",TCPLOCALHOST="override"\n'
    b'::1:allow,Y="six"\n'
    b":allow\n"
)

CLIENTS = [
    ("127.0.0.1", None),
    ("127.0.0.1", "127.0.0.2"),
    ("127.0.0.1", "127.0.0.3"),
    ("127.0.0.1", "127.0.0.4"),
    ("::1", None),
]


def masked_env(output: bytes) -> list[str]:
    return [re.sub(r"PORT=\d+", "PORT=N", line) for line in output.decode().splitlines()]


@pytest.fixture()
def setup(tmp_path: Path) -> tuple[str, str]:
    cdb = tmp_path / "rules.cdb"
    rules.compile_file(RULES, cdb, tmp_path / "rules.tmp")
    return str(cdb), write_script(tmp_path, "dumpenv", DUMP_ENV)


@pytest.mark.parametrize("flags", [["-v", "-HR", "-l", "mx.local"], ["-v", "-HRD", "-l0"]])
def test_environment_and_log_match_tcpserver(setup: tuple[str, str], flags: list[str]) -> None:
    tcpserver = require_tool("tcpserver")
    cdb, dump = setup
    results = {}
    # X and Y are in the servers' own environment too: a rule's value must replace them.
    own = {"X": "server-x", "Y": "server-y"}
    for name, start in (
        ("ours", lambda *a: ours(*a, env=own)),
        ("theirs", lambda *a: theirs(tcpserver, *a, env=own)),
    ):
        server: Running = start(*flags, "-x", cdb, "0", "0", dump)
        try:
            outputs = []
            for count, (host, source) in enumerate(CLIENTS, start=1):
                outputs.append(masked_env(server.request(host, source)))
                # one connection at a time, so both logs have one order
                server.wait_count(r"end \d+ status \d+\n[^\n]*status: 0/40\n", count)
        finally:
            program = "qboot-tcpsrv" if name == "ours" else "tcpserver"
            log = server.log()
            server.stop()
        results[name] = (outputs, masked_log(log, program))
    our_env, our_log = results["ours"]
    their_env, their_log = results["theirs"]
    assert our_env == their_env
    assert our_env[1] == []  # denied: the child never ran
    assert "X=one" in our_env[0] and "PROTO=TCP6" in our_env[4]
    assert our_env[0].count("X=one") == 1 and "X=server-x" not in our_env[0]
    assert "X=server-x" in our_env[3] and "Y=six" in our_env[4]
    assert our_log == their_log


@pytest.mark.parametrize("verbosity", ["-q", "-Q", "-v"])
def test_unreadable_rules_warning_shown_as_tcpserver_shows_it(
    tmp_path: Path, verbosity: str
) -> None:
    """A connection dropped for rules that cannot be read is a warning: hidden only by
    -q, as tcpserver's (an admin with TCPFLAGS=-Q must still see why mail is refused).
    The reason's wording is the C library's, not djb's ('file does not exist')."""
    tcpserver = require_tool("tcpserver")
    missing = str(tmp_path / "missing.cdb")
    shown = {}
    for name, start in (("ours", ours), ("theirs", lambda *a: theirs(tcpserver, *a))):
        server: Running = start(
            verbosity, "-HR", "-l", "x", "-x", missing, "127.0.0.1", "0", "/bin/true"
        )
        try:
            with server.connect() as client:
                assert client.recv(100) == b"", name  # dropped: nothing ran
            time.sleep(0.3)
            shown[name] = f"warning: dropping connection, unable to read {missing}" in server.log()
        finally:
            server.stop()
    assert shown["ours"] == shown["theirs"] == (verbosity != "-q")


def test_child_environment_under_the_c_locale_matches_tcpserver(tmp_path: Path) -> None:
    """Started with an empty environment (the C locale, as under systemd without LANG),
    Python coerces the locale and sets LC_CTYPE=C.UTF-8 in its own environment (PEP 538);
    the chain must not get it: tcpserver's child does not."""
    tcpserver = require_tool("tcpserver")
    children = {}
    for name, program in (("ours", venv_script("qboot-tcpsrv")), ("theirs", tcpserver)):
        server = subprocess.Popen(
            [program, "-1", "-HR", "-l", "x", "127.0.0.1", "0", "/usr/bin/env"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env={"PATH": "/usr/bin:/bin", "DNSCACHEIP": NO_DNS},
        )
        try:
            assert server.stdout is not None
            port = int(server.stdout.readline())
            with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
                output = read_all(client)
        finally:
            server.terminate()
            server.wait(10)
        children[name] = sorted(masked_env(output))
    assert children["ours"] == children["theirs"]
    assert not any(line.startswith("LC_CTYPE=") for line in children["ours"])


def test_base_environment_keeps_an_lc_ctype_the_admin_set() -> None:
    coerced = {"LC_CTYPE": "C.UTF-8", "PATH": "/bin"}
    assert base_environment(coerced, frozenset({"PATH"})) == {"PATH": "/bin"}
    assert base_environment(coerced, frozenset({"PATH", "LC_CTYPE"})) == coerced
