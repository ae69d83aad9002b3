"""TLS sessions in the server's loop: the handshake, then the relay between the client's
socket and the chain's end of a socket pair, all non-blocking on the loop's Reactor (no
thread or process per connection).

A Session owns two fds: the client's TCP socket (`net`) and our end of a socket pair
(`inner`) whose other end is the chain's fd 0 and 1. OpenSSL works on memory BIOs; the
bytes move only when the loop says a socket is ready. Both ways are bounded: past
BUFFER_CAP unsent bytes a side is not read until the other drains (so at most the cap
plus one read wait), and a client that never reads stalls the chain's writes (in the
kernel) and not the server's memory.

UCSPI-TLS (start_ucspi), for a chain with STARTTLS of its own that leaves TLS to its
server, as under sslserver -n: the chain talks in the clear on fds 0 and 1 and gets a
third socket as fds 3, 4 and 5 (SSLCTLFD, SSLREADFD, SSLWRITEFD). When it writes `y` (or
`Y`: the SSL variables come back first, as VAR=value NUL-terminated and one more NUL)
on fd 3, what it wrote on fd 1 goes out in the clear, then the handshake, then the
session goes on over that third socket. What the client sent in the clear and the chain
had not read yet is dropped, never put into the encrypted session.

Ends, as under sslserver: the client's close_notify or EOF is the chain's EOF on read
(its writes still go out); the chain's EOF sends close_notify, then the client gets
LINGER seconds to close before the socket is closed (a close with unread input would
reset the connection and could lose the last reply).

Kernel TLS (the socket going to the chain with no relay) needs ssl.OP_ENABLE_KTLS
(Python 3.12) on an SSLSocket, the kernel's tls module, and OpenSSL's kTLS for both
ways; none of these are on Debian 12's Python 3.11 and kernel here, so the relay runs.
"""

from __future__ import annotations

import contextlib
import functools
import select
import socket
import ssl
import sys
import time
from collections.abc import Callable
from enum import Enum
from typing import cast

from ..logline import PROGRAM
from ..reactor import Reactor, Timer
from .environ import ssl_environment
from .smtp import Outcome, SmtpShim

BUFFER_CAP = 64 * 1024
# Large reads: a read of the chain's output is encrypted in one call and sent in one;
# the cost is one read beyond the cap while a side waits.
READ_SIZE = 256 * 1024
READS_PER_WAKE = 4
SEND_BATCH = 16 * 1024  # a full TLS record: less than this from the chain waits for its next read
LINGER = 10.0

# Every read lands here: the loop is one thread, and a read's bytes are copied on (into
# OpenSSL, or a session's buffer) before the next read. A fresh bytes object a read
# cost an allocation, and for OpenSSL's reads one of READ_SIZE for a 16 KB record.
_SCRATCH = memoryview(bytearray(READ_SIZE))

IN = select.EPOLLIN
OUT = select.EPOLLOUT
CLOSED = select.EPOLLHUP | select.EPOLLERR


class Phase(Enum):
    PLAIN = "plain"  # STARTTLS: the clear-text part of the session
    HANDSHAKE = "handshake"
    OPEN = "open"
    LINGER = "linger"  # close_notify sent; waiting for the client to close
    CLOSED = "closed"


class Session:
    """One client. Implicit TLS: start() shakes hands, then on_ready(env) is called and
    the server runs the chain on chain_end(). STARTTLS: start_plain() relays clear text
    through the SMTP shim until the client asks for TLS. on_closed(reason) runs once;
    reason is None after a session that ended as it should."""

    def __init__(
        self,
        reactor: Reactor,
        context: ssl.SSLContext,
        fd: int,
        timeout: float,
        on_ready: Callable[[dict[str, str]], None],
        on_closed: Callable[[str | None], None],
        client_ca: bool = False,
    ) -> None:
        self._reactor = reactor
        self._context = context  # the one from when the client came: a reload keeps it
        self._net = socket.socket(fileno=fd)
        self._net.setblocking(False)
        self._timeout = timeout
        self._on_ready: Callable[[dict[str, str]], None] | None = on_ready
        self._on_closed: Callable[[str | None], None] | None = on_closed
        self._client_ca = client_ca
        self.phase = Phase.HANDSHAKE
        self.phase_before_close = Phase.HANDSHAKE  # for on_closed: where it ended
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls: ssl.SSLObject | None = None
        self._inner: socket.socket | None = None
        self._chain_end: socket.socket | None = None
        self._shim: SmtpShim | None = None
        # UCSPI-TLS: our end of the chain's fds 3 to 5, until the chain asks for TLS
        self._ucspi_mode = False
        self._ucspi: socket.socket | None = None
        self._ucspi_end: socket.socket | None = None
        self._asked = False  # the chain wrote y or Y
        self._report_env = False  # it wrote Y: the SSL variables go to it first
        self._hello_held = False  # a ClientHello came before the chain's y: it waits
        self._to_net = bytearray()  # bytes for the client's socket (already encrypted)
        self._to_chain = bytearray()  # clear text for the chain
        self._client_eof = False  # no more from the client: the chain's input ends
        self._chain_eof = False
        self._net_shut = False
        # TLS 1.3's session tickets: the client needs them only to come back, so they leave
        # with the first bytes the server sends after the handshake (a packet fewer).
        self._tickets_held = False
        self._timer: Timer | None = None
        self._events: dict[int, int] = {}

    @property
    def closed(self) -> bool:
        return self.phase is Phase.CLOSED

    # --- starting -------------------------------------------------------------------------
    def start(self) -> None:
        """Implicit TLS: the handshake, cut at the deadline."""
        self._begin_handshake()
        self._update()

    def start_plain(self, shim: SmtpShim) -> None:
        """STARTTLS: the chain runs from now (chain_end()), clear text through the shim."""
        self._shim = shim
        self.phase = Phase.PLAIN
        self._make_pair()
        self._update()

    def start_ucspi(self) -> None:
        """UCSPI-TLS: the chain runs from now (chain_end() and ucspi_end()), in the clear
        until it asks for TLS on its fd 3."""
        self._ucspi_mode = True
        self.phase = Phase.PLAIN
        self._make_pair()
        ours, chain = socket.socketpair()
        ours.setblocking(False)
        self._ucspi, self._ucspi_end = ours, chain
        self._update()

    def chain_end(self) -> int:
        """The fd the chain gets as 0 and 1 (the server closes it once spawned)."""
        assert self._chain_end is not None, "after on_ready or start_plain"
        sock, self._chain_end = self._chain_end, None
        return sock.detach()

    def ucspi_end(self) -> int:
        """UCSPI-TLS: the fd the chain gets as 3, 4 and 5 (closed by the server too)."""
        assert self._ucspi_end is not None, "after start_ucspi"
        sock, self._ucspi_end = self._ucspi_end, None
        return sock.detach()

    def _make_pair(self) -> None:
        inner, chain = socket.socketpair()
        inner.setblocking(False)
        self._inner, self._chain_end = inner, chain

    def _begin_handshake(self) -> None:
        self.phase = Phase.HANDSHAKE
        self._tls = self._context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        self._set_timer(self._timeout, "handshake timed out")
        if self._incoming.pending:  # a ClientHello held until the chain asked
            self._handshake()

    def _set_timer(self, seconds: float, reason: str | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._reactor.call_at(time.monotonic() + seconds, lambda: self.abort(reason))

    # --- the end --------------------------------------------------------------------------
    def abort(self, reason: str | None) -> None:
        """Close both sides now."""
        if self.phase is Phase.CLOSED:
            return
        self.phase_before_close, self.phase = self.phase, Phase.CLOSED
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for sock in (self._net, self._inner, self._chain_end, self._ucspi, self._ucspi_end):
            if sock is not None:
                self._stop_watching(sock)
                sock.close()
        self._inner = self._chain_end = self._ucspi = self._ucspi_end = None
        self._to_net.clear()
        self._to_chain.clear()
        # The callbacks may hold this session (the service's closures do): dropping them
        # frees its OpenSSL state now, not at a later full garbage collection.
        self._on_ready = None
        on_closed, self._on_closed = self._on_closed, None
        if on_closed is not None:
            on_closed(reason)

    # --- the loop's calls -----------------------------------------------------------------
    # Each wake-up moves what it can both ways: a read is followed by the write it allows
    # (no second trip through epoll), and a few reads are tried while they give data.
    # The chain's small writes are sent together once its reads are done: a last reply
    # and the close_notify after it go out as one.
    def _on_net(self, events: int) -> None:
        if events & OUT:
            self._send_net()
        if events & (IN | CLOSED):
            for _ in range(READS_PER_WAKE):
                if self.phase is Phase.CLOSED or not self._reads_net():
                    break
                got = self._read_net()
                if self._to_chain and self._inner is not None:
                    self._send_inner()
                if self._to_net:
                    self._send_net()
                if not got:
                    break
        self._update()

    def _on_inner(self, events: int) -> None:
        if events & OUT:
            self._send_inner()
            if self.phase is Phase.OPEN and len(self._to_chain) < BUFFER_CAP:
                self._decrypt()  # what waited in OpenSSL for room
        if events & (IN | CLOSED):
            for _ in range(READS_PER_WAKE):
                if self.phase is Phase.CLOSED or not self._reads_inner():
                    break
                got = self._read_inner()
                if len(self._to_net) >= SEND_BATCH:
                    self._send_net()
                if self._inner is not None:
                    self._send_inner()  # the shim's held input may go on after a reply
                if not got:
                    break
            if self._to_net:
                self._send_net()
        self._update()

    # --- the client's side ----------------------------------------------------------------
    def _read_net(self) -> bool:
        """One read from the client; True when there may be more (it filled the read:
        a shorter one emptied the socket, and epoll says when more comes)."""
        try:
            count = self._net.recv_into(_SCRATCH)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as error:
            self.abort(f"client: {error.strerror}")
            return False
        if self.phase is Phase.LINGER:
            if not count:
                self.abort(None)
            return count == READ_SIZE
        if self.phase is Phase.PLAIN and self._shim is not None:
            if not count:
                self._client_eof = True
            else:
                self._shim_out(self._shim.from_client(bytes(_SCRATCH[:count])))
            return count == READ_SIZE
        if self.phase is Phase.PLAIN:  # UCSPI-TLS, the clear part
            return self._plain_from_client(_SCRATCH[:count])
        if count:
            self._incoming.write(_SCRATCH[:count])
        else:
            self._incoming.write_eof()
        if self.phase is Phase.HANDSHAKE:
            self._handshake()
        if self.phase is Phase.OPEN:
            self._decrypt()
        return count == READ_SIZE

    def _plain_from_client(self, data: memoryview) -> bool:
        """UCSPI-TLS before the chain asked: the client's bytes are the chain's, unless
        they are a ClientHello (the 220 went out, the chain's y is on its way)."""
        if not data:
            self._client_eof = True
            return False
        got = bytes(data)  # the scratch buffer is the switch's too
        self._poll_ucspi()  # the chain may have asked meanwhile
        if self._asked:
            # Its 220 had gone out (the handshake began): these bytes are the client's TLS.
            # Else the client has not seen the 220 yet: they were sent behind STARTTLS.
            if self.phase is Phase.HANDSHAKE:
                self._incoming.write(got)
                self._handshake()
            return False
        if self._hello_held or got[:2] == b"\x16\x03":  # TLS: the y is on its way
            self._incoming.write(got)
            self._hello_held = True
            return False
        self._to_chain += got
        return len(got) == READ_SIZE

    def _on_ucspi(self, events: int) -> None:
        self._poll_ucspi()
        self._update()

    def _poll_ucspi(self) -> None:
        """The chain's command on its fd 3, if it wrote one."""
        if self._ucspi is None or self._asked:
            return
        try:
            command = self._ucspi.recv(1)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            command = b""
        if command in (b"y", b"Y"):
            self._asked, self._report_env = True, command == b"Y"
            self._switch_to_ucspi()
        elif not command:  # the chain closed fds 3 to 5: it stays in the clear
            self._stop_watching(self._ucspi)
            self._ucspi.close()
            self._ucspi = None
        else:
            self.abort(f"UCSPI-TLS: the program wrote {command!r}, not y or Y")

    def _switch_to_ucspi(self) -> None:
        """What the chain wrote on fd 1 before asking (its 220) goes out in the clear;
        from now on it reads and writes on its fds 4 and 5. The client's clear text it
        had not read is dropped (it was sent behind STARTTLS)."""
        assert self._inner is not None and self._ucspi is not None
        while True:
            try:
                count = self._inner.recv_into(_SCRATCH)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                break
            if not count:
                break
            self._to_net += _SCRATCH[:count]
        self._stop_watching(self._inner)
        self._inner.close()
        self._stop_watching(self._ucspi)
        self._inner, self._ucspi = self._ucspi, None
        self._to_chain.clear()
        if not self._to_net:
            self._begin_handshake()

    def _handshake(self) -> None:
        assert self._tls is not None
        try:
            self._tls.do_handshake()
        except ssl.SSLWantReadError:
            self._pull_outgoing()
            if self._incoming.eof:
                self.abort("client closed during the handshake")
            return
        except (ssl.SSLError, OSError) as error:
            self._pull_outgoing()  # the alert, if OpenSSL made one
            self._send_net()
            self.abort(f"handshake failed: {_reason(error)}")
            return
        self._pull_outgoing()
        self._tickets_held = bool(self._to_net) and self._tls.version() == "TLSv1.3"
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.phase = Phase.OPEN
        if self._ucspi_mode:  # the chain runs already; with Y it hears how it went
            if self._report_env:
                env = ssl_environment(self._tls, self._client_ca)
                self._to_chain += b"".join(
                    f"{name}={value}".encode("utf-8", "replace") + b"\0"
                    for name, value in env.items()
                ) + (b"\0" if env else b"\0\0")
            return
        if self._shim is not None:
            return  # STARTTLS: the chain runs already
        self._make_pair()
        on_ready, self._on_ready = self._on_ready, None
        if on_ready is not None:
            on_ready(ssl_environment(self._tls, self._client_ca))

    def _decrypt(self) -> None:
        """Clear text from OpenSSL for the chain, while the chain's buffer has room. The
        records of one pass gather in the scratch buffer and go on together (the shim
        takes one at a time: what it holds stays small)."""
        assert self._tls is not None
        while (
            len(self._to_chain) < BUFFER_CAP
            and not self._client_eof
            and (self._shim is None or self._shim.wants_input())
        ):
            filled, drained = 0, False
            while filled < READ_SIZE:
                try:
                    # typeshed gives the buffer form bytes; it returns the count
                    count = cast(int, self._tls.read(READ_SIZE - filled, _SCRATCH[filled:]))
                except ssl.SSLWantReadError:
                    drained = True
                    break
                except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                    self._client_eof = True  # close_notify, or EOF without one: the same
                    break
                except ssl.SSLError as error:
                    self._pull_outgoing()
                    self._send_net()
                    self.abort(f"client: {_reason(error)}")
                    return
                if not count:
                    self._client_eof = True
                    break
                filled += count
                if self._shim is not None:
                    break
            if filled:
                self._take_from_client(_SCRATCH[:filled])
            if drained or self._client_eof or self.phase is Phase.CLOSED:
                break
        self._pull_outgoing()  # what reading made (a KeyUpdate's answer, an alert)

    def _take_from_client(self, data: memoryview) -> None:
        if self._shim is not None:
            self._shim_out(self._shim.from_client(bytes(data)))
            return
        if not self._to_chain and self._inner is not None:
            data = data[self._send_to_chain(data) :]  # straight on: no copy
        self._to_chain += data

    def _send_to_chain(self, data: bytes | bytearray | memoryview) -> int:
        """One send to the chain: how much it took (all of it when the chain is gone:
        what it did not read is lost with it)."""
        assert self._inner is not None
        try:
            return self._inner.send(data)
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError:
            return len(data)

    def _send_net(self) -> None:
        if self._tickets_held:
            return
        while self._to_net:
            sent = self._send_to_client(self._to_net)
            if not sent:
                return
            del self._to_net[:sent]
        if self.phase is Phase.PLAIN and self._tls_asked():
            self._begin_handshake()  # the 220 went out in the clear: the client's turn

    def _send_to_client(self, data: bytes | bytearray) -> int:
        """One send to the client: how much it took (nothing when it would block, or
        when the send failed and the session is closed)."""
        try:
            return self._net.send(data)
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError as error:
            self.abort(f"client: {error.strerror}")
            return 0

    def _pull_outgoing(self) -> None:
        if self._outgoing.pending:
            self._to_net += self._outgoing.read()
            self._tickets_held = False

    # --- the chain's side -----------------------------------------------------------------
    def _read_inner(self) -> bool:
        """One read from the chain; False when it gave nothing (yet) or ended."""
        assert self._inner is not None
        try:
            count = self._inner.recv_into(_SCRATCH)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            count = 0
        if not count:
            if self._ucspi_mode and self.phase is Phase.PLAIN:
                self._poll_ucspi()  # it wrote y, then let its clear socket go
                if self._asked or self.closed:  # or it wrote neither: aborted
                    return False
            self._chain_done()
            return False
        if self._shim is not None:
            self._shim_out(self._shim.from_chain(bytes(_SCRATCH[:count])))
        else:
            self._encrypt(_SCRATCH[:count])
        return True  # read again: a chain that wrote its last reply and ended shows EOF now

    def _reads_inner(self) -> bool:
        """Not from STARTTLS's 220 until the keys are there: what the chain writes then
        goes out encrypted, never in the clear behind the 220 waiting in _to_net."""
        return (
            self._inner is not None
            and len(self._to_net) < BUFFER_CAP
            and self.phase is not Phase.HANDSHAKE
            and not (self.phase is Phase.PLAIN and self._tls_asked())
        )

    def _tls_asked(self) -> bool:
        """STARTTLS taken (by the shim, or by the chain that asked for TLS)."""
        return self._asked or (self._shim is not None and self._shim.tls)

    def _encrypt(self, data: bytes | memoryview) -> None:
        if self.phase is Phase.PLAIN:
            self._to_net += data
            return
        assert self._tls is not None and self.phase is not Phase.HANDSHAKE
        try:
            self._tls.write(data)
        except ssl.SSLError as error:
            self.abort(f"client: {_reason(error)}")
            return
        if not self._to_net and self._outgoing.pending >= SEND_BATCH:
            # A full record or more and nothing before it: straight on, no copy.
            records = self._outgoing.read()
            self._tickets_held = False
            sent = self._send_to_client(records)
            if self.phase is not Phase.CLOSED:
                self._to_net += memoryview(records)[sent:]
            return
        self._pull_outgoing()

    def _shim_out(self, outcome: Outcome) -> None:
        if outcome.to_chain:
            self._to_chain += outcome.to_chain
        if outcome.to_client:
            self._encrypt(bytes(outcome.to_client))  # in the clear before STARTTLS

    def _send_inner(self) -> None:
        """Clear text to the chain; and while it takes it, what OpenSSL still holds
        (decrypting stopped at the cap, and no new bytes from the client may come)."""
        while self._inner is not None:
            while self._to_chain:
                sent = self._send_to_chain(self._to_chain)
                if not sent:
                    return
                del self._to_chain[:sent]
            if not self._holds_clear_text():
                return
            self._decrypt()
            if not self._to_chain:
                return

    def _holds_clear_text(self) -> bool:
        return (
            self.phase is Phase.OPEN
            and not self._client_eof
            and self._tls is not None
            and bool(self._incoming.pending or self._tls.pending())
        )

    def _chain_done(self) -> None:
        """The chain closed its output: close_notify, then wait a little for the client."""
        self._chain_eof = True
        self._tickets_held = False
        if self._tls is not None and self.phase is Phase.OPEN:
            with contextlib.suppress(ssl.SSLError):
                self._tls.unwrap()
            self._pull_outgoing()
        for sock in (self._inner, self._ucspi):  # a y after this would come too late
            if sock is not None:
                self._stop_watching(sock)
                sock.close()
        self._inner = self._ucspi = None
        self._to_chain.clear()
        self.phase = Phase.LINGER
        self._set_timer(LINGER, None)

    # --- which events to wait for ---------------------------------------------------------
    def _update(self) -> None:
        if self.phase is Phase.CLOSED:
            return
        if self.phase is Phase.LINGER and not self._to_net and not self._net_shut:
            self._net_shut = True
            with contextlib.suppress(OSError):
                self._net.shutdown(socket.SHUT_WR)
        if self._client_eof and not self._to_chain and self._inner is not None:
            with contextlib.suppress(OSError):
                self._inner.shutdown(socket.SHUT_WR)
        net = OUT if self._to_net and not self._tickets_held else 0
        if self._reads_net():
            net |= IN
        self._want(self._net, net)
        if self._inner is not None:
            inner = OUT if self._to_chain else 0
            # Not during STARTTLS's handshake: the chain's words wait for the keys.
            if self._reads_inner():
                inner |= IN
            self._want(self._inner, inner)
        if self._ucspi is not None:
            self._want(self._ucspi, IN)

    def _reads_net(self) -> bool:
        if self.phase is Phase.HANDSHAKE or self.phase is Phase.LINGER:
            return True
        if self._client_eof:
            return False
        # The client's bytes make replies of their own too (the shim's 530 and 501, TLS
        # 1.3's answer to a KeyUpdate): a client that does not read them is not read.
        if len(self._to_chain) >= BUFFER_CAP or len(self._to_net) >= BUFFER_CAP:
            return False
        if self.phase is Phase.PLAIN and self._shim is None:  # UCSPI-TLS
            # Behind a held ClientHello, read on (a little) all the same: a client that
            # leaves is the chain's EOF, not a session kept until the chain's own timeout.
            return not self._asked and (not self._hello_held or self._incoming.pending < BUFFER_CAP)
        if self.phase is Phase.PLAIN:
            assert self._shim is not None
            # After STARTTLS nothing more is read in the clear: the handshake reads next.
            return self._shim.wants_input() and not self._shim.tls
        return self._shim is None or self._shim.wants_input()

    def _want(self, sock: socket.socket, events: int) -> None:
        fd = sock.fileno()
        if self._events.get(fd, 0) == events:
            return
        if events:
            handler = (
                self._on_net
                if sock is self._net
                else self._on_ucspi
                if sock is self._ucspi
                else self._on_inner
            )
            self._reactor.watch(fd, events, functools.partial(self._guarded, handler))
            self._events[fd] = events
        else:
            self._stop_watching(sock)

    def _guarded(self, handler: Callable[[int], None], events: int) -> None:
        """A defect met in one session ends that session, said on stderr (the journal),
        and not the server with every other session in it."""
        try:
            handler(events)
        except Exception as error:
            sys.stderr.write(
                f"{PROGRAM}: warning: TLS session ended by an internal error: "
                f"{type(error).__name__}: {error}\n"
            )
            sys.stderr.flush()
            self.abort(f"internal error: {type(error).__name__}")

    def _stop_watching(self, sock: socket.socket) -> None:
        fd = sock.fileno()
        if self._events.pop(fd, None) is not None:
            self._reactor.unwatch(fd)


def _reason(error: BaseException) -> str:
    if isinstance(error, ssl.SSLError) and error.reason:
        return str(error.reason).lower().replace("_", " ")
    return str(error) or type(error).__name__
