"""What identifies a certificate to an admin: the fingerprint of the leaf and its end.

qboot-tcpsrv puts them in its STATUS= line when it loads a certificate (at start and at
each reload); `qbootctl status` reads them there and compares them with CERTFILE as it
is now, so a renewed certificate that was never reloaded, or one that has run out, is
named. Pure functions on PEM bytes: no OpenSSL, no clock.
"""

from __future__ import annotations

import binascii
import hashlib

from ..._startup import NamedTuple

_BEGIN = b"-----BEGIN CERTIFICATE-----"
_END = b"-----END CERTIFICATE-----"
SHOWN_HEX = 16  # of the SHA-256 fingerprint: 64 bits tell two certificates apart


class CertInfo(NamedTuple):
    fingerprint: str  # SHA-256 of the leaf's DER, lower-case hex
    not_after: str  # its notAfter as YYYY-MM-DDTHH:MM:SSZ (compares as text)

    def status_words(self) -> str:
        """For STATUS=: `certificate 0123456789abcdef until 2027-03-01`."""
        return f"certificate {self.fingerprint[:SHOWN_HEX]} until {self.not_after[:10]}"


def leaf_info(pem: bytes) -> CertInfo | None:
    """The first certificate of a PEM file (the leaf, as OpenSSL serves it); None when
    there is none or it is not a well-formed X.509 certificate."""
    start = pem.find(_BEGIN)
    end = pem.find(_END, start)
    if start < 0 or end < 0:
        return None
    try:
        der = binascii.a2b_base64(pem[start + len(_BEGIN) : end])
        not_after = _not_after(der)
    except (binascii.Error, ValueError, IndexError):
        return None
    return CertInfo(hashlib.sha256(der).hexdigest(), not_after)


def served(status_text: str) -> tuple[str, str] | None:
    """(fingerprint prefix, notAfter date) from a STATUS= line, or None."""
    words = status_text.replace(",", " ").split()
    for index, word in enumerate(words[:-3]):
        if word == "certificate" and words[index + 2] == "until":
            fingerprint, until = words[index + 1], words[index + 3]
            # The server's words, but shown to the admin: only what it would write.
            hexadecimal = all(c in "0123456789abcdef" for c in fingerprint)
            if len(fingerprint) == SHOWN_HEX and hexadecimal and _is_date(until):
                return fingerprint, until
    return None


def _is_date(text: str) -> bool:
    digits = text.replace("-", "")
    return len(text) == 10 and text[4] == text[7] == "-" and digits.isascii() and digits.isdigit()


def _items(der: bytes, offset: int, end: int) -> list[tuple[int, int, int]]:
    """The DER elements between offset and end: (tag, content start, content end)."""
    found = []
    while offset < end:
        tag, size = der[offset], der[offset + 1]
        offset += 2
        if size & 0x80:
            count = size & 0x7F
            if not 1 <= count <= 4:
                raise ValueError("DER length")
            size = int.from_bytes(der[offset : offset + count], "big")
            offset += count
        if offset + size > end:
            raise ValueError("DER element past its end")
        found.append((tag, offset, offset + size))
        offset += size
    return found


def _not_after(der: bytes) -> str:
    """Certificate -> tbsCertificate -> validity -> notAfter (RFC 5280, 4.1)."""
    (certificate,) = _items(der, 0, len(der))
    tbs = _items(der, certificate[1], certificate[2])[0]
    fields = _items(der, tbs[1], tbs[2])
    if fields and fields[0][0] == 0xA0:  # [0] version
        fields = fields[1:]
    validity = fields[3]  # after serialNumber, signature, issuer
    if validity[0] != 0x30:
        raise ValueError("no validity")
    tag, start, end = _items(der, validity[1], validity[2])[1]
    text = der[start:end].decode("ascii")
    if tag == 0x17 and len(text) == 13:  # UTCTime YYMMDDHHMMSSZ; 50-99 are 19xx
        text = ("19" if text[:2] >= "50" else "20") + text
    elif tag != 0x18 or len(text) != 15:  # GeneralizedTime YYYYMMDDHHMMSSZ
        raise ValueError("notAfter")
    if not (text[:14].isdigit() and text[14] == "Z"):
        raise ValueError("notAfter")
    return f"{text[:4]}-{text[4:6]}-{text[6:8]}T{text[8:10]}:{text[10:12]}:{text[12:14]}Z"
