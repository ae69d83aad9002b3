"""The listening sockets: handed over by systemd (LISTEN_FDS), or bound like tcpserver."""

from __future__ import annotations

import os
import socket

SD_LISTEN_FDS_START = 3


class ListenError(Exception):
    pass


def systemd_sockets() -> list[socket.socket] | None:
    """The sockets systemd passed us, or None when it passed none."""
    if not os.environ.get("LISTEN_FDS") or os.environ.get("LISTEN_PID") != str(os.getpid()):
        return None
    # sd_listen_fds(3) without libsystemd: the count, the fds from 3 on (our children never
    # see the variables: environ.py removes them).
    count = int(os.environ["LISTEN_FDS"]) if os.environ["LISTEN_FDS"].isdigit() else 0
    sockets = []
    for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + count):
        os.set_inheritable(fd, False)  # children get their connection only
        sockets.append(_listening_tcp(fd))
    return sockets


def _listening_tcp(fd: int) -> socket.socket:
    """The passed fd as a socket, if it is one we can accept TCP connections on: a unit's
    ListenStream=/path, ListenDatagram= or Accept=yes would otherwise fail at start-up
    with a traceback, or make every accept() fail (EINVAL) for ever."""
    hint = "the .socket unit needs ListenStream= with a port or address:port, and Accept=no"
    try:
        sock = socket.socket(fileno=fd)
    except OSError as error:
        message = f"fd {fd} from systemd is not a socket ({error.strerror}): {hint}"
        raise ListenError(message) from None
    try:
        listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    except OSError:
        listening = 0
    if (
        sock.family not in (socket.AF_INET, socket.AF_INET6)
        or sock.type != socket.SOCK_STREAM
        or not listening
    ):
        sock.detach()
        raise ListenError(f"fd {fd} from systemd is not a listening TCP socket: {hint}")
    return sock


def _port(port: str) -> int:
    if port.isascii() and port.isdigit():
        if int(port) > 65535:
            raise ListenError(f"port {port} is out of range (0 to 65535)")
        return int(port)
    try:
        return socket.getservbyname(port, "tcp")
    except OSError:
        raise ListenError(f"unable to figure out port number for {port}") from None


def bind(host: str, port: str, backlog: int, ipv4_only: bool) -> socket.socket:
    """Bind host:port as tcpserver does: host 0 is every address (IPv6 and IPv4)."""
    number = _port(port)
    if host in ("0", "", "::") and not ipv4_only:
        family, address = socket.AF_INET6, "::"
    elif host in ("0", ""):
        family, address = socket.AF_INET, "0.0.0.0"
    else:
        try:
            info = socket.getaddrinfo(
                host, number, socket.AF_INET if ipv4_only else 0, socket.SOCK_STREAM
            )
        except OSError as error:
            raise ListenError(
                f"temporarily unable to figure out IP address for {host}: {error}"
            ) from None
        family, address = info[0][0], str(info[0][4][0])
    listener = socket.socket(family, socket.SOCK_STREAM)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        listener.bind((address, number))
        listener.listen(backlog)
    except OSError as error:
        listener.close()
        raise ListenError(f"unable to bind: {error.strerror}") from None
    return listener
