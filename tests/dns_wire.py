"""What the tests' two loopback DNS servers share (tcpsrv_harness.FakeDns for names,
dnsbl_server.BlocklistDns for blocklists): reading a question, building an answer, and
the receive loop that hands each datagram on."""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Callable


def read_question(packet: bytes) -> tuple[str, int, bytes]:
    """The question's name (dotted, lower case), its type, and its bytes as sent."""
    labels, position = [], 12
    while packet[position]:
        length = packet[position]
        labels.append(packet[position + 1 : position + 1 + length].decode("latin-1"))
        position += 1 + length
    (qtype,) = struct.unpack("!H", packet[position + 1 : position + 3])
    return ".".join(labels).lower(), qtype, packet[12 : position + 5]


def response(
    query_id: bytes,
    rcode: int,
    question: bytes,
    answers: list[tuple[int, bytes]],
    ttl: int,
    authority: bytes = b"",
) -> bytes:
    """A reply to question: answers as (type, rdata) under its name, and one authority
    record (already on the wire) if given."""
    header = query_id + struct.pack(
        "!HHHHH", 0x8180 | rcode, 1, len(answers), 1 if authority else 0, 0
    )
    body = b"".join(
        b"\xc0\x0c" + struct.pack("!HHIH", rtype, 1, ttl, len(data)) + data
        for rtype, data in answers
    )
    return header + question + body + authority


def receive(
    sock: socket.socket,
    stopped: threading.Event,
    handle: Callable[[bytes, tuple[str, int]], None],
) -> None:
    """Hand each datagram to handle until stopped (sock has a short timeout); closes sock."""
    with sock:
        while not stopped.is_set():
            try:
                packet, peer = sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            handle(packet, peer)
