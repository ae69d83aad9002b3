"""IPv4-mapped IPv6 addresses (`::ffff:1.2.3.4`), the one place that knows their form.

A dual-stack socket reports IPv4 clients that way; tcpserver's rules, environment and
(on an IPv4 listener) log lines show them as `1.2.3.4`.
"""

from __future__ import annotations

MAPPED_PREFIX = "::ffff:"


def is_mapped(ip: str) -> bool:
    return ip.startswith(MAPPED_PREFIX) and "." in ip


def unmap_ipv4(ip: str) -> str:
    """`::ffff:1.2.3.4` -> `1.2.3.4`; anything else as it is."""
    return ip[7:] if is_mapped(ip) else ip


def map_ipv4(ip: str) -> str:
    """`1.2.3.4` -> `::ffff:1.2.3.4`; IPv6 addresses as they are."""
    return ip if ":" in ip else MAPPED_PREFIX + ip
