"""iptext.canonical() against ipaddress, on written-out cases and thousands of generated
ones, valid and hostile."""

from __future__ import annotations

import ipaddress
import random
import sys

import pytest

from qboot_systemd import iptext


def ipaddress_text(text: str) -> str | None:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    mapped_v4 = isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None
    if mapped_v4 and sys.version_info >= (3, 13):  # prints ::ffff:a.b.c.d; iptext keeps hextets
        scope = f"%{address.scope_id}" if address.scope_id else ""  # type: ignore[union-attr]
        mapped = address.packed[12:]
        return f"::ffff:{mapped[0] << 8 | mapped[1]:x}:{mapped[2] << 8 | mapped[3]:x}{scope}"
    return str(address)


WRITTEN = [
    "127.0.0.1",
    "0.0.0.0",
    "255.255.255.255",
    "1.2.3.04",
    "01.2.3.4",
    "1.2.3",
    "1.2.3.4.5",
    "256.1.1.1",
    "1.2.3.4 ",
    " 1.2.3.4",
    "1.2.3.4\n",
    "1.2.3.4\0",
    "1..3.4",
    "1.2.3.",
    "+1.2.3.4",
    "1.2.3.\u0664",
    "\uff11.2.3.4",
    "1_0.2.3.4",
    "0x1.2.3.4",
    "",
    "::",
    "::1",
    "1::",
    "::ffff:1.2.3.4",
    "::1.2.3.4",
    "1:2:3:4:5:6:1.2.3.4",
    "1:2:3:4:5:6:7:8",
    "1:2:3:4:5:6:7::",
    "::2:3:4:5:6:7:8",
    "1:2:3:4:5:6:7:8:9",
    "1::2::3",
    ":::",
    "::::",
    ":1::2",
    "1::2:",
    ":1:2:3:4:5:6:7:8",
    "1:2:3:4:5:6:7:8:",
    "12345::",
    "g::",
    "FE80::1",
    "fe80::1%eth0",
    "fe80::1%",
    "fe80::1%a%b",
    "fe80::1%%",
    "2001:db8:0:0:1:0:0:1",
    "2001:0:0:1:0:0:0:1",
    "0:0:0:0:0:0:0:0",
    "1:0:0:2:0:0:3:4",
    "::ffff:1.2.3.04",
    "::1.2.3",
    "1:2:3:4:5:6:7:1.2.3.4",
    "[::1]",
    "::1/128",
    "1.2.3.4/32",
    "::+1",
    "::-1",
    "::\u0661",
    "1:2:3:4:5:6::1.2.3.4",
]


@pytest.mark.parametrize("text", WRITTEN)
def test_written_cases_read_as_ipaddress_reads_them(text: str) -> None:
    assert iptext.canonical(text) == ipaddress_text(text)


def generated(seed: int, count: int) -> list[str]:
    """IPv6 and IPv4 texts in every spelling, then each with one character changed."""
    rng = random.Random(seed)
    found = []
    for _ in range(count):
        if rng.random() < 0.3:
            found.append(
                ".".join(str(rng.choice([0, 1, 9, 10, 99, 100, 255, 256])) for _ in "1234")
            )
            continue
        hextets = [rng.choice([0, 0, 0, 1, 0xABCD, 0xFFFF, rng.randrange(65536)]) for _ in range(8)]
        words = [f"{h:x}".upper() if rng.random() < 0.2 else f"{h:x}" for h in hextets]
        if rng.random() < 0.3:
            words = [f"{h:04x}" for h in hextets]
        if rng.random() < 0.2:
            words[6:] = [".".join(str(rng.randrange(256)) for _ in "1234")]
        if rng.random() < 0.7:
            start = rng.randrange(len(words))
            end = rng.randrange(start, len(words) + 1)
            words[start:end] = [""]
            if start == 0:
                words.insert(0, "")
            if end == len(hextets) or start == len(words) - 1:
                words.append("")
        text = ":".join(words)
        if rng.random() < 0.1:
            text += "%" + rng.choice(["eth0", "1", "", "a%b"])
        found.append(text)
    alphabet = "0123456789abcdefABCDEFg:.%% \0\n/\u0661"
    for text in list(found):
        if text:
            index = rng.randrange(len(text))
            found.append(text[:index] + rng.choice(alphabet) + text[index + 1 :])
            found.append(text[:index] + text[index + 1 :])
    return found


def test_generated_addresses_read_as_ipaddress_reads_them() -> None:
    texts = generated(seed=25, count=6000)
    valid = 0
    for text in texts:
        expected = ipaddress_text(text)
        assert iptext.canonical(text) == expected, repr(text)
        valid += expected is not None
    # The generator makes both kinds in numbers, or this test would prove little.
    assert 0.2 * len(texts) < valid < 0.8 * len(texts)


def test_unspecified() -> None:
    assert iptext.is_unspecified(iptext.canonical("0:0::0") or "")
    assert iptext.is_unspecified(iptext.canonical("0.0.0.0") or "")
    assert not iptext.is_unspecified(iptext.canonical("::1") or "")
