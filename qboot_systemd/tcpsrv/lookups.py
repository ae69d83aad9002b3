"""Reverse DNS (-h, -p) and ident (-r, RFC 1413), run in worker threads.

tcpserver does these in its forked child; we do them off the accept loop, so a slow
resolver or a silent port 113 delays only its own connection, bounded by -t. Names come
from the system resolver (nsswitch: /etc/hosts, systemd-resolved, DNS), not from a
private DNS client as in djb's code.
"""

from __future__ import annotations

import socket


def reverse_name(ip: str, paranoid: bool) -> str | None:
    """The host name of ip, or None; with paranoid, only if it maps back to ip."""
    ip = ip[7:] if ip.startswith("::ffff:") and "." in ip else ip
    try:
        name, _ = socket.getnameinfo((ip, 0), socket.NI_NAMEREQD)
    except (OSError, UnicodeError):
        return None
    name = name.lower()
    if paranoid:
        try:
            addresses = {info[4][0] for info in socket.getaddrinfo(name, None)}
        except (OSError, UnicodeError):
            return None
        if ip not in addresses:
            return None
    return name


def ident(remote: tuple[str, int], local: tuple[str, int], timeout: float) -> str | None:
    """Ask the client's identd who owns the connection (RFC 1413); None when it does not say."""
    if timeout <= 0:
        return None
    family = socket.AF_INET6 if ":" in remote[0] else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as query:
            query.settimeout(timeout)
            query.bind((local[0], 0))
            query.connect((remote[0], 113))
            query.sendall(f"{remote[1]} , {local[1]}\r\n".encode())
            answer = b""
            while b"\n" not in answer and len(answer) < 1000:
                chunk = query.recv(1000)
                if not chunk:
                    break
                answer += chunk
    except OSError:
        return None
    fields = answer.split(b"\n")[0].rstrip(b"\r").split(b":", 3)
    if len(fields) != 4 or fields[1].strip().upper() != b"USERID":
        return None
    user = fields[3].strip()
    return user.decode("utf-8", "surrogateescape") if user else None
