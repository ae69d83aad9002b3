"""The TLS relay's Session driven one loop turn at a time: the test holds the client's
end of the connection and the chain's end, so it can put a write exactly where a race
would put it (a real server's loop and clients cannot be timed that finely)."""

from __future__ import annotations

import contextlib
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from qboot_systemd.tcpsrv.reactor import Reactor
from qboot_systemd.tcpsrv.tls.certs import CertPaths, read_material
from qboot_systemd.tcpsrv.tls.context import server_context
from qboot_systemd.tcpsrv.tls.relay import Phase, Session
from qboot_systemd.tcpsrv.tls.smtp import READY_220, SmtpShim

from .tls_harness import client_context, make_pair


@pytest.fixture
def reactor() -> Iterator[Reactor]:
    made = Reactor()
    made.start()
    yield made
    made.close()


def turn(reactor: Reactor, times: int = 20) -> None:
    """A few turns of the server's loop (each runs what is ready now)."""
    for _ in range(times):
        reactor.run_ready()


def pending(sock: socket.socket) -> bytes:
    """What the socket holds now, without waiting."""
    got = b""
    while True:
        try:
            chunk = sock.recv(65536, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return got
        if not chunk:
            return got
        got += chunk


def test_starttls_220_is_the_last_clear_byte_when_the_server_writes_unasked(
    tmp_path: Path, reactor: Reactor
) -> None:
    """qmail-smtpd writes on its own when its timeout fires ("451 timeout" and exit).
    If that comes while the 220 to STARTTLS still waits to go out (the client is slow to
    read), it must reach the client encrypted after the handshake, never in the clear
    behind the 220 (where a client's TLS stack would take it for a handshake record)."""
    pair = make_pair(tmp_path, "server")
    paths = CertPaths(str(pair.cert), str(pair.key))
    context = server_context(paths, read_material(paths), None)
    client, server_end = socket.socketpair()
    # Small buffers: the client's unread replies fill them and the rest waits in the relay.
    server_end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    closed: list[str | None] = []
    session = Session(
        reactor,
        context,
        server_end.detach(),
        timeout=30,
        on_ready=lambda env: None,
        on_closed=closed.append,
    )
    session.start_plain(SmtpShim(require_tls=False))
    chain = socket.socket(fileno=session.chain_end())
    try:
        chain.sendall(b"220 mx ESMTP\r\n")
        turn(reactor)
        assert pending(client) == b"220 mx ESMTP\r\n"
        client.sendall(b"EHLO c\r\nHELP\r\n")
        turn(reactor)
        assert pending(chain) == b"EHLO c\r\nHELP\r\n"
        long_help = b"".join(b"214-%05d %s\r\n" % (n, b"x" * 90) for n in range(300))
        chain.sendall(b"250-mx\r\n250 PIPELINING\r\n" + long_help + b"214 end\r\n")
        turn(reactor)
        client.sendall(b"STARTTLS\r\n")  # not reading: the 220 queues behind the help text
        turn(reactor)
        assert pending(chain) == b"RSET\r\n"
        assert session.phase is Phase.PLAIN
        chain.sendall(b"250 flushed\r\n451 timeout (#4.4.2)\r\n")  # as qmail-smtpd's timeout
        chain.close()
        turn(reactor)

        clear = b""
        for _ in range(1000):
            clear += pending(client)
            if READY_220 in clear:
                break
            turn(reactor, 1)
        turn(reactor)
        clear += pending(client)
        assert clear.endswith(b"214 end\r\n" + READY_220), clear[-200:]
        assert session.phase is Phase.HANDSHAKE

        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = client_context().wrap_bio(incoming, outgoing, server_hostname="mx")
        said, shaken = b"", False
        for _ in range(200):
            try:
                if not shaken:
                    tls.do_handshake()
                    shaken = True
                while data := tls.read(65536):
                    said += data
                if shaken:
                    break  # the server's close_notify (its chain ended)
            except ssl.SSLWantReadError:
                pass
            if outgoing.pending:
                client.sendall(outgoing.read())
            turn(reactor, 1)
            if got := pending(client):
                incoming.write(got)
        assert said == b"451 timeout (#4.4.2)\r\n"
    finally:
        client.close()
        chain.close()
        session.abort("test over")


# --- UCSPI-TLS: the chain asks for TLS on its fd 3 ----------------------------------------
class Ucspi:
    """A UCSPI-TLS session with the client's end, the chain's clear end (fds 0 and 1) and
    its UCSPI end (fds 3 to 5) in the test's hands."""

    def __init__(self, tmp_path: Path, reactor: Reactor) -> None:
        pair = make_pair(tmp_path, "server")
        paths = CertPaths(str(pair.cert), str(pair.key))
        self.reactor = reactor
        self.client, server_end = socket.socketpair()
        self.session = Session(
            reactor,
            server_context(paths, read_material(paths), None),
            server_end.detach(),
            timeout=30,
            on_ready=lambda env: None,
            on_closed=lambda reason: None,
        )
        self.session.start_ucspi()
        self.clear = socket.socket(fileno=self.session.chain_end())
        self.ucspi = socket.socket(fileno=self.session.ucspi_end())
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = client_context().wrap_bio(self.incoming, self.outgoing, server_hostname="mx")

    def pump(self) -> None:
        """The client's TLS bytes out, a loop turn, the server's bytes in."""
        if self.outgoing.pending:
            self.client.sendall(self.outgoing.read())
        turn(self.reactor, 1)
        if got := pending(self.client):
            self.incoming.write(got)

    def shake_hands(self) -> None:
        for _ in range(200):
            try:
                self.tls.do_handshake()
                return
            except ssl.SSLWantReadError:
                pass
            finally:
                self.pump()
        raise AssertionError("no handshake")

    def read_tls(self, want: bytes) -> bytes:
        said = b""
        for _ in range(200):
            with contextlib.suppress(ssl.SSLWantReadError):
                said += self.tls.read(65536)
            if said.endswith(want):
                return said
            self.pump()
        raise AssertionError(f"got {said!r}")

    def quit_reaches_the_chain(self) -> None:
        """The session carries the client's encrypted QUIT to the chain's fd 4."""
        self.tls.write(b"QUIT\r\n")
        self.client.sendall(self.outgoing.read())
        turn(self.reactor)
        assert pending(self.ucspi) == b"QUIT\r\n"

    def close(self) -> None:
        for sock in (self.client, self.clear, self.ucspi):
            sock.close()
        self.session.abort("test over")


def test_ucspi_y_reports_the_ssl_variables_first_then_relays(
    tmp_path: Path, reactor: Reactor
) -> None:
    """With Y (the protocol's second command) the chain reads the SSL variables on its
    fd 4 before the client's first encrypted bytes: VAR=value NUL each, one NUL more."""
    test = Ucspi(tmp_path, reactor)
    try:
        test.clear.sendall(b"220 ready\r\n")
        test.ucspi.sendall(b"Y")
        turn(reactor)
        assert pending(test.client) == b"220 ready\r\n"
        test.shake_hands()
        test.tls.write(b"EHLO c\r\n")
        test.client.sendall(test.outgoing.read())
        turn(reactor)
        got = pending(test.ucspi)
        report, _, rest = got.partition(b"\0\0")
        env = dict(entry.split(b"=", 1) for entry in report.split(b"\0"))
        assert env[b"SSL_PROTOCOL"] == b"TLSv1.3" and b"SSL_CIPHER" in env, env
        assert rest == b"EHLO c\r\n"
        test.ucspi.sendall(b"250 mx\r\n")
        assert test.read_tls(b"\r\n") == b"250 mx\r\n"
    finally:
        test.close()


def test_ucspi_client_hello_before_the_chains_y_waits_for_it(
    tmp_path: Path, reactor: Reactor
) -> None:
    """The client got the 220 and sent its ClientHello before the loop saw the chain's
    y: the hello is kept for the handshake, never given to the chain as clear text."""
    test = Ucspi(tmp_path, reactor)
    try:
        test.clear.sendall(b"220 ready\r\n")
        turn(reactor)
        assert pending(test.client) == b"220 ready\r\n"
        with contextlib.suppress(ssl.SSLWantReadError):
            test.tls.do_handshake()
        test.client.sendall(test.outgoing.read())  # the ClientHello, before the y
        turn(reactor)
        assert pending(test.clear) == b""
        test.ucspi.sendall(b"y")
        test.shake_hands()
        test.quit_reaches_the_chain()
    finally:
        test.close()


def test_ucspi_y_then_the_clear_socket_closed_is_no_end(tmp_path: Path, reactor: Reactor) -> None:
    """mailfront writes y, then puts fds 4 and 5 over 0 and 1, closing its clear socket:
    when the loop sees that end first, it is the switch, not the chain's end. Clear text
    the client pipelined behind STARTTLS is dropped, never put into the session."""
    test = Ucspi(tmp_path, reactor)
    try:
        test.client.sendall(b"STARTTLS\r\nMAIL FROM:<evil@example>\r\n")
        turn(reactor)
        assert pending(test.clear) == b"STARTTLS\r\nMAIL FROM:<evil@example>\r\n"
        test.client.sendall(b"RCPT TO:<evil@example>\r\n")  # read, not yet given to the chain
        test.clear.sendall(b"220 2.0.0 Ready to start TLS\r\n")
        test.ucspi.sendall(b"y")
        test.clear.close()
        turn(reactor)
        assert pending(test.client) == b"220 2.0.0 Ready to start TLS\r\n"
        test.shake_hands()
        test.ucspi.sendall(b"500 5.5.1 Unexpected pipelined commands following STARTTLS\r\n")
        assert test.read_tls(b"\r\n").startswith(b"500 5.5.1")
        test.quit_reaches_the_chain()
    finally:
        test.close()


def test_ucspi_neither_y_nor_Y_then_the_clear_socket_closed_ends_it_once(
    tmp_path: Path, reactor: Reactor, capsys: pytest.CaptureFixture[str]
) -> None:
    """A chain that writes something else on its fd 3 and ends: when the loop sees its
    clear socket's end first, the session is aborted there and stays closed (it once went
    on to linger with its sockets closed and met fd -1: an internal error)."""
    test = Ucspi(tmp_path, reactor)
    try:
        test.clear.sendall(b"220 ready\r\n")
        turn(reactor)
        test.clear.close()  # its end first, then the bad command: one wake sees both
        test.ucspi.sendall(b"x")
        turn(reactor)
        assert test.session.phase is Phase.CLOSED
        assert test.session.phase_before_close is Phase.PLAIN
        assert "internal error" not in capsys.readouterr().err
        assert pending(test.client) == b"220 ready\r\n"
    finally:
        test.close()


def test_ucspi_y_after_the_chain_ended_its_clear_side_is_no_crash(
    tmp_path: Path, reactor: Reactor
) -> None:
    """A chain that lets its clear socket go before it writes y (the wrong order) has
    ended the session: the late y is ignored, and the client gets the end."""
    test = Ucspi(tmp_path, reactor)
    try:
        test.clear.sendall(b"220 ready\r\n")
        test.clear.close()
        turn(reactor)
        with contextlib.suppress(BrokenPipeError):  # the server let its end go: too late
            test.ucspi.sendall(b"y")
        turn(reactor)
        assert pending(test.client) == b"220 ready\r\n"
        assert test.session.phase is Phase.LINGER
        test.client.close()
        turn(reactor)
        assert test.session.closed
    finally:
        test.close()


def test_ucspi_a_client_that_leaves_behind_its_early_client_hello_ends_the_chains_input(
    tmp_path: Path, reactor: Reactor
) -> None:
    """A ClientHello before any STARTTLS waits for a y that never comes; the client then
    closes: the chain gets its EOF (mailfront ends), rather than the session and the
    chain's -c slot being kept until the chain's own timeout."""
    test = Ucspi(tmp_path, reactor)
    try:
        test.clear.sendall(b"220 mx ESMTP\r\n")
        turn(reactor)
        assert pending(test.client) == b"220 mx ESMTP\r\n"
        test.client.sendall(b"\x16\x03\x01\x00\x05hello")
        turn(reactor)
        test.client.shutdown(socket.SHUT_WR)
        turn(reactor)
        assert test.clear.recv(1, socket.MSG_DONTWAIT) == b""  # EOF, nothing of the hello
    finally:
        test.close()


def test_a_defect_in_one_session_ends_that_session_not_the_loop(
    tmp_path: Path, reactor: Reactor, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two sessions on one loop; one meets an exception (a stand-in for a defect, as the
    shim's verb parser had one): it ends with a line on stderr, the other goes on."""
    broken, healthy = Ucspi(tmp_path, reactor), Ucspi(tmp_path, reactor)
    try:

        def defect() -> bool:
            raise IndexError("a defect")

        broken.session._read_net = defect  # type: ignore[method-assign]
        broken.client.sendall(b"EHLO c\r\n")
        healthy.client.sendall(b"EHLO c\r\n")
        turn(reactor)  # raises nothing
        assert broken.session.closed
        assert "TLS session ended by an internal error: IndexError: a defect" in (
            capsys.readouterr().err
        )
        assert pending(healthy.clear) == b"EHLO c\r\n"
        assert not healthy.session.closed
    finally:
        broken.close()
        healthy.close()
