"""TLS for one server: its settings, the current SSLContext, and its sessions.

The server calls: load() at start (before privileges drop; start_reader() too when they
will), reload() on SIGHUP (a new context for new sessions; a session keeps the one it
began with), handshake() for an implicit-TLS client, plain() for a STARTTLS or UCSPI-TLS client.
"""

from __future__ import annotations

import resource
import ssl
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from .. import syscalls
from ..lookups import lookup_key
from ..reactor import Reactor
from .certinfo import CertInfo, leaf_info
from .certs import CertPaths, CertReader
from .context import server_context
from .relay import Phase, Session
from .smtp import SmtpShim

MAX_HANDSHAKES = 1024
# Sessions ended between two trims of the C heap at most (see TlsService._ended).
TRIM_AFTER = 128


class TlsMode(Enum):
    IMPLICIT = "implicit"  # smtps, 465: TLS from the first byte
    STARTTLS = "starttls"  # smtp, submission: the SMTP shim offers it
    STARTTLS_REQUIRED = "starttls-required"  # and MAIL or AUTH before it get 530
    UCSPI = "ucspi"  # a chain with STARTTLS of its own asks for TLS (UCSPI-TLS, sslserver -n)

    @property
    def starttls(self) -> bool:
        """The chain runs from the start, and TLS comes later (or not)."""
        return self is not TlsMode.IMPLICIT

    @property
    def ucspi(self) -> bool:
        return self is TlsMode.UCSPI


# What a UCSPI-TLS chain is told (its fds 3 to 5 are the spawner's doing): TLS may be
# asked for, and where.
UCSPI_ENVIRONMENT = {"UCSPITLS": "", "SSLCTLFD": "3", "SSLREADFD": "4", "SSLWRITEFD": "5"}


@dataclass(frozen=True)
class TlsConfig:
    mode: TlsMode
    paths: CertPaths
    ciphers: str | None
    handshake_seconds: float


def per_address_cap(cap: int) -> int:
    """Handshakes in flight from one address (IPv6: one /64): an eighth of all, so one
    address cannot hold every place for the -t seconds of its stalled handshakes."""
    return max(8, cap // 8)


def handshake_cap() -> int:
    """Handshakes in flight at most: MAX_HANDSHAKES, or a quarter of the fds we may open."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_HANDSHAKES
    return max(1, min(MAX_HANDSHAKES, soft // 4))


class TlsService:
    def __init__(self, config: TlsConfig) -> None:
        self.config = config
        self.reader = CertReader(config.paths)
        self.context: ssl.SSLContext | None = None
        self.certificate: CertInfo | None = None  # what new sessions are shown (STATUS=)
        self.sessions: set[Session] = set()
        self.handshaking = 0
        self.cap = handshake_cap()
        self.by_address: Counter[str] = Counter()
        self.ended_since_trim = 0

    def load(self) -> None:
        """The first context; CertError (one line) when a file is wrong."""
        material = self.reader.read()
        self.context = server_context(self.config.paths, material, self.config.ciphers)
        self.certificate = leaf_info(material.cert)

    def start_reader(self) -> None:
        """Before privileges drop: a reader keeps root to read the files at reloads."""
        self.reader.start()

    def reload(self) -> None:
        """A new context from the files as they are now; CertError leaves the old one."""
        self.load()

    def close(self) -> None:
        for session in list(self.sessions):
            session.abort("server stopping")
        self.reader.close()

    def _ended(self, session: Session) -> None:
        """OpenSSL frees a session's state into the C heap, where a burst of handshakes
        (a flood of abandoned ones) would keep the server's RSS at the burst's peak: once
        no handshake is in flight, the heap's free pages go back to the system."""
        self.sessions.discard(session)
        self.ended_since_trim += 1
        if self.handshaking == 0 and self.ended_since_trim >= TRIM_AFTER:
            self.ended_since_trim = 0
            syscalls.trim_heap()

    def crowded(self, remote_ip: str) -> bool:
        """Has this client's address (or /64) its share of handshakes in flight?"""
        return self.by_address[lookup_key(remote_ip)] >= per_address_cap(self.cap)

    def handshake(
        self,
        reactor: Reactor,
        fd: int,
        remote_ip: str,
        on_ready: Callable[[Session, dict[str, str]], None],
        on_failed: Callable[[str], None],
    ) -> Session:
        """Implicit TLS: the handshake, then on_ready(session, SSL variables)."""
        assert self.context is not None, "load() first"
        key = lookup_key(remote_ip)
        self.handshaking += 1
        self.by_address[key] += 1
        holder: list[Session] = []

        def done() -> None:
            self.handshaking -= 1
            self.by_address[key] -= 1
            if self.by_address[key] <= 0:
                del self.by_address[key]

        def ready(env: dict[str, str]) -> None:
            done()
            on_ready(holder[0], env)

        def closed(reason: str | None) -> None:
            session = holder[0]
            if session.phase_before_close is Phase.HANDSHAKE:
                done()
                on_failed(reason or "closed")
            self._ended(session)

        session = Session(
            reactor,
            self.context,
            fd,
            self.config.handshake_seconds,
            ready,
            closed,
            client_ca=self.config.paths.ccafile is not None,
        )
        holder.append(session)
        self.sessions.add(session)
        session.start()
        return session

    def plain(self, reactor: Reactor, fd: int) -> Session:
        """STARTTLS: clear text through the SMTP shim until the client asks for TLS; with
        UCSPI-TLS, clear text until the chain asks for it."""
        assert self.context is not None, "load() first"
        holder: list[Session] = []

        def closed(_reason: str | None) -> None:
            self._ended(holder[0])

        session = Session(
            reactor,
            self.context,
            fd,
            self.config.handshake_seconds,
            lambda env: None,
            closed,
            client_ca=self.config.paths.ccafile is not None,
        )
        holder.append(session)
        self.sessions.add(session)
        if self.config.mode is TlsMode.UCSPI:
            session.start_ucspi()
        else:
            session.start_plain(SmtpShim(self.config.mode is TlsMode.STARTTLS_REQUIRED))
        return session
