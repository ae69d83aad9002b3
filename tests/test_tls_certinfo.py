"""The certificate a TLS server names in STATUS= (fingerprint and end), held to openssl
x509's reading of the same files; and what qbootctl status accepts back from STATUS=."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from qboot_systemd.tcpsrv.tls.certinfo import CertInfo, leaf_info, served

from .conftest import require_tool
from .tls_harness import make_pair


def openssl_reading(cert: Path) -> tuple[str, str]:
    """(SHA-256 fingerprint, notAfter as YYYY-MM-DDTHH:MM:SSZ) as openssl x509 says."""
    openssl = require_tool("openssl")
    done = subprocess.run(
        [openssl, "x509", "-in", str(cert), "-noout", "-fingerprint", "-sha256", "-enddate",
         "-dateopt", "iso_8601"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    lines = dict(line.split("=", 1) for line in done.stdout.splitlines())
    fingerprint = lines["sha256 Fingerprint"].replace(":", "").lower()
    end = lines["notAfter"].replace(" ", "T")  # 2027-01-02 17:41:12Z
    return fingerprint, end


@pytest.mark.parametrize(("kind", "days"), [("ec", 30), ("rsa", 400), ("ec", 20000)])
def test_leaf_info_reads_what_openssl_reads(tmp_path: Path, kind: str, days: int) -> None:
    # 20000 days: past 2049, where X.509 writes GeneralizedTime instead of UTCTime
    pair = make_pair(tmp_path, "server", kind=kind, days=days)
    info = leaf_info(pair.cert.read_bytes())
    assert info is not None
    assert (info.fingerprint, info.not_after) == openssl_reading(pair.cert)


def test_the_leaf_is_the_first_certificate_of_a_chain(tmp_path: Path) -> None:
    leaf = make_pair(tmp_path, "leaf")
    other = make_pair(tmp_path, "other", kind="rsa")
    chain = tmp_path / "chain.pem"
    chain.write_bytes(b"junk before\n" + leaf.cert.read_bytes() + other.cert.read_bytes())
    info = leaf_info(chain.read_bytes())
    assert info is not None and info.fingerprint == openssl_reading(leaf.cert)[0]


@pytest.mark.parametrize(
    "pem",
    [
        b"",
        b"-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n",
        b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        b"-----BEGIN CERTIFICATE-----\n" + b"MII" * 50 + b"\n-----END CERTIFICATE-----\n",
        b"-----BEGIN CERTIFICATE-----\n\x00\xff=\r\n-----END CERTIFICATE-----\n",
        b"-----BEGIN CERTIFICATE-----\nMIIB",  # cut short
    ],
)
def test_what_is_no_certificate_gives_none(pem: bytes) -> None:
    assert leaf_info(pem) is None


def test_truncated_der_gives_none(tmp_path: Path) -> None:
    import base64

    pem = make_pair(tmp_path, "server").cert.read_bytes()
    der = base64.b64decode(b"".join(pem.splitlines()[1:-1]))
    for cut in (1, 10, 100, len(der) // 2):
        body = base64.encodebytes(der[:cut])
        assert (
            leaf_info(b"-----BEGIN CERTIFICATE-----\n" + body + b"-----END CERTIFICATE-----\n")
            is None
        )


def test_status_words_come_back() -> None:
    info = CertInfo("0123456789abcdef" * 4, "2027-03-01T12:00:00Z")
    text = f"0/40 sessions, 3 served, 0 denied, {info.status_words()}"
    assert served(text) == ("0123456789abcdef", "2027-03-01")
    assert served("down: no rules; 0/40 sessions, 3 served, 0 denied") is None


@pytest.mark.parametrize(
    "text",
    [
        "certificate 0123456789ABCDEF until 2027-03-01",  # not as the server writes it
        "certificate 0123456789abcdef until 2027-3-01x",
        "certificate 0123\x1b[2J456789ab until 2027-03-01",
        "certificate 0123456789abcdef0 until 2027-03-01",
        "certificate 0123456789abcdef until \u0662\u0660\u0662\u0667-03-01",  # non-ASCII digits
        "certificate",
    ],
)
def test_status_words_not_as_the_server_writes_them_are_ignored(text: str) -> None:
    assert served(text) is None
