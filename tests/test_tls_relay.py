"""The TLS relay's Session driven one loop turn at a time: the test holds the client's
end of the connection and the chain's end, so it can put a write exactly where a race
would put it (a real server's loop and clients cannot be timed that finely)."""

from __future__ import annotations

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
