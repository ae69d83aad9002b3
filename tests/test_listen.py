"""Sockets handed over by systemd (LISTEN_FDS) that qboot-tcpsrv cannot accept TCP
connections on: a unit's mistake, told in one line at start-up."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import venv_script
from .tcpsrv_harness import ACTIVATE, write_script


def unix_listener(tmp_path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(tmp_path / "s"))
    sock.listen(4)
    return sock


def udp(tmp_path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    return sock


def not_listening(tmp_path: Path) -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


def accepted(tmp_path: Path) -> socket.socket:
    """What Accept=yes hands over: one connection, not the listener."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        client = socket.create_connection(listener.getsockname())
        connection, _ = listener.accept()
        client.close()
        return connection


def regular_file(tmp_path: Path) -> socket.socket:
    # an object with a fileno(): the fd of a file, not of a socket
    return open(tmp_path / "f", "w")  # type: ignore[return-value]


@pytest.mark.parametrize("make", [unix_listener, udp, not_listening, accepted, regular_file])
def test_a_passed_fd_that_is_no_tcp_listener_is_a_one_line_error(
    tmp_path: Path, make: Callable[[Path], socket.socket]
) -> None:
    quick = write_script(tmp_path, "quick", "#!/bin/sh\necho hi\n")
    passed = make(tmp_path)
    try:
        fd = passed.fileno()
        command = [sys.executable, "-c", ACTIVATE, str(fd), venv_script("qboot-tcpsrv")]
        done = subprocess.run(
            [*command, "-HR", "-l", "x", "0", "0", quick],
            pass_fds=(fd,),
            capture_output=True,
            timeout=20,
        )
    finally:
        passed.close()
    lines = done.stderr.decode().splitlines()
    assert done.returncode == 111, lines
    assert lines == [
        "qboot-tcpsrv: fatal: fd 3 from systemd is not a "
        + (
            "socket (Socket operation on non-socket)"
            if make is regular_file
            else "listening TCP socket"
        )
        + ": the .socket unit needs ListenStream= with a port or address:port, and Accept=no"
    ]
