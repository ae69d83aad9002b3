"""UCSPI-TLS (-S ucspi) in front of a real program that speaks it: Debian's mailfront
with its starttls-ucspi plugin, which offers STARTTLS itself when UCSPITLS is set and,
on the command, writes y on $SSLCTLFD and moves to $SSLREADFD and $SSLWRITEFD, as under
sslserver -n. Judged by what swaks and a raw client get."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest

from .conftest import require_tool
from .tcpsrv_harness import Running
from .tls_harness import Pair, client_context, make_pair, read_until, tls_server, tls_server_argv

# Both spawners give the program its fds 3 to 5: the extension's and the fallback's.
SPAWNERS = {"extension": {}, "python": {"QBOOT_NO_EXTENSION": "1"}}


@pytest.fixture
def pair(tmp_path: Path) -> Pair:
    return make_pair(tmp_path, "server")


def mailfront() -> list[str]:
    """mailfront's SMTP with the echo back end (the message to its stderr), accepting
    every sender and recipient, with STARTTLS by UCSPI-TLS."""
    return [require_tool("mailfront"), "smtp", "echo", "accept", "starttls-ucspi"]


def test_swaks_starttls_through_mailfronts_own_starttls(pair: Pair) -> None:
    server = tls_server(pair, "ucspi", "-RHl", "mx.example.org", program=mailfront())
    try:
        done = subprocess.run(
            [
                require_tool("swaks"),
                "-s",
                "127.0.0.1",
                "-p",
                str(server.port),
                "--tls",
                "-f",
                "a@example.org",
                "-t",
                "b@example.org",
                "--h-Subject",
                "by-ucspi-tls",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        out = done.stdout + done.stderr
        clear, _, encrypted = out.partition("=== TLS started with cipher TLSv1.3")
        assert "<-  250-STARTTLS" in clear, out  # mailfront offers it: it got UCSPITLS
        assert "<-  220 2.0.0 Ready to start TLS" in clear, out
        assert encrypted, out
        assert "STARTTLS" not in encrypted, out  # it knows the session is encrypted now
        assert "<~  250 Received" in encrypted and "<~  221 2.0.0" in encrypted, out
    finally:
        assert server.stop() == 0


@pytest.mark.parametrize("spawner", list(SPAWNERS))
def test_commands_pipelined_behind_starttls_never_reach_the_session(
    pair: Pair, spawner: str
) -> None:
    argv = tls_server_argv(pair, "ucspi", "-RHl", "mx.example.org")
    server = Running([*argv, "127.0.0.1", "0", *mailfront()], env=SPAWNERS[spawner])
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw:
            assert read_until(raw, b"\r\n").startswith(b"220 mx.example.org")
            raw.sendall(b"EHLO c\r\n")
            assert b"250-STARTTLS\r\n" in read_until(raw, b"250 ")
            raw.sendall(b"STARTTLS\r\nMAIL FROM:<evil@example.org>\r\n")
            assert read_until(raw, b"\r\n") == b"220 2.0.0 Ready to start TLS\r\n"
            with client_context().wrap_socket(raw, server_hostname="mx") as tls:
                said = read_until(tls, b"\r\n")
                assert said.startswith(b"500 5.5.1 Unexpected pipelined commands"), said
                tls.sendall(b"RCPT TO:<b@example.org>\r\n")  # no MAIL was taken
                assert read_until(tls, b"\r\n").startswith(b"503"), "a MAIL sent in the clear"
                tls.sendall(b"QUIT\r\n")
                assert read_until(tls, b"\r\n").startswith(b"221")
    finally:
        assert server.stop() == 0


def test_auth_that_requires_tls_is_offered_once_the_chain_knows(tmp_path: Path, pair: Pair) -> None:
    """What the hand-over is for: mailfront's AUTH_REQUIRES_TLS offers AUTH only once its
    starttls-ucspi plugin has taken TLS (a chain behind the STARTTLS shim never learns
    that it has). Passwords checked by Debian's cvm-pwfile."""
    passwords = tmp_path / "passwords"
    passwords.write_text("alice:s3cret:1000:1000:Alice:/tmp:/bin/sh\n")
    program = [
        "env",
        f"CVM_PWFILE_PATH={passwords}",
        f"CVM_SASL_PLAIN={require_tool('cvm-pwfile')}",
        "AUTH_REQUIRES_TLS=1",
        *mailfront(),
        "cvm-authenticate",
    ]
    server = tls_server(pair, "ucspi", "-RHl", "mx.example.org", program=program)
    try:

        def swaks(*args: str) -> str:
            to = ["-s", "127.0.0.1", "-p", str(server.port)]
            login = ["--auth", "PLAIN", "--auth-user", "alice", "--auth-password", "s3cret"]
            envelope = ["-f", "alice@example.org", "-t", "b@example.org"]
            done = subprocess.run(
                [require_tool("swaks"), *to, *args, *login, *envelope],
                capture_output=True,
                text=True,
                timeout=60,
            )
            return done.stdout + done.stderr

        clear = swaks()
        assert "Host did not advertise authentication" in clear, clear
        encrypted = swaks("--tls")
        assert "<~  250-AUTH LOGIN PLAIN" in encrypted, encrypted
        assert "<~  235 2.7.0 Authentication succeeded" in encrypted, encrypted
    finally:
        assert server.stop() == 0
