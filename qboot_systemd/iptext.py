"""IP addresses as text: the one canonical form IP= is compared and written in.

canonical() accepts exactly what ipaddress.ip_address() accepts and gives the text
str(ipaddress.ip_address(text)) gives on Python 3.11 (lower-case hextets, the first
longest run of two or more zero hextets as `::`; a scope id kept after `%`).
It is written out because the generator parses IP= at every boot and ipaddress costs more
start-up than the generator's whole budget allows (see _startup); tests/test_iptext.py
holds it to ipaddress. One difference is on purpose: Python 3.13 prints an IPv4-mapped
address as `::ffff:1.2.3.4`; here it stays `::ffff:102:304` on every Python, so a units'
config stamp does not change (and restart a service) when the distribution's Python does.
"""

from __future__ import annotations

_DECIMAL = frozenset("0123456789")
_HEX = frozenset("0123456789abcdefABCDEF")
_HEXTETS = 8


def canonical(text: str) -> str | None:
    """The address's canonical text, or None when text is not an IPv4 or IPv6 address."""
    ipv4 = _ipv4_value(text)
    if ipv4 is not None:
        return ".".join(str(ipv4 >> shift & 0xFF) for shift in (24, 16, 8, 0))
    address, percent, scope = text.partition("%")
    if "/" in text or (percent and (not scope or "%" in scope)):
        return None
    hextets = _ipv6_hextets(address)
    if hextets is None:
        return None
    return _compressed(hextets) + (percent + scope if scope else "")


def is_unspecified(canonical_text: str) -> bool:
    return canonical_text in ("0.0.0.0", "::")


def _ipv4_value(text: str) -> int | None:
    parts = text.split(".")
    if len(parts) != 4:
        return None
    value = 0
    for part in parts:
        if not part or len(part) > 3 or not _DECIMAL.issuperset(part):
            return None
        if len(part) > 1 and part[0] == "0":
            return None  # ipaddress refuses leading zeros (octal or decimal?)
        octet = int(part)
        if octet > 255:
            return None
        value = value << 8 | octet
    return value


def _ipv6_hextets(text: str) -> list[int] | None:
    parts = text.split(":")
    if len(parts) < 3:
        return None
    if "." in parts[-1]:
        ipv4 = _ipv4_value(parts.pop())
        if ipv4 is None:
            return None
        parts += [f"{ipv4 >> 16:x}", f"{ipv4 & 0xFFFF:x}"]
    if len(parts) > _HEXTETS + 1:
        return None
    gaps = [index for index in range(1, len(parts) - 1) if not parts[index]]
    if len(gaps) > 1:
        return None
    if gaps:
        high, low = parts[: gaps[0]], parts[gaps[0] + 1 :]
        if high == [""]:
            high = []  # `::` at the start
        if low == [""]:
            low = []  # `::` at the end
        if len(high) + len(low) > _HEXTETS - 1:
            return None
    else:
        if len(parts) != _HEXTETS:
            return None
        high, low = parts, []
    values = []
    for part in high + low:
        if not part or len(part) > 4 or not _HEX.issuperset(part):
            return None  # an empty one is a lone `:` at either end
        values.append(int(part, 16))
    return values[: len(high)] + [0] * (_HEXTETS - len(values)) + values[len(high) :]


def _compressed(hextets: list[int]) -> str:
    best_start, best_length = -1, 1
    start = -1
    for index, value in enumerate(hextets):
        if value:
            start = -1
            continue
        start = index if start == -1 else start
        if index - start + 1 > best_length:
            best_start, best_length = start, index - start + 1
    words = [f"{value:x}" for value in hextets]
    if best_start == -1:
        return ":".join(words)
    end = best_start + best_length
    return ":".join(words[:best_start]) + "::" + ":".join(words[end:])
