"""Certificates made with the openssl command, a TLS qboot-tcpsrv, and clients for it."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .conftest import require_tool, venv_script
from .tcpsrv_harness import Running, write_script


@dataclass(frozen=True)
class Pair:
    cert: Path
    key: Path


def make_pair(
    directory: Path, name: str, kind: str = "ec", cn: str = "mail.example.org", days: int = 90
) -> Pair:
    """A self-signed certificate and its key (0600): kind `ec` (P-256) or `rsa` (2048).
    90 days, as Let's Encrypt issues them (status calls one due within a week degraded)."""
    openssl = require_tool("openssl")
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    algorithm = (
        ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]
        if kind == "ec"
        else ["-newkey", "rsa:2048"]
    )
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            *algorithm,
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-subj",
            f"/CN={cn}",
            "-days",
            str(days),
        ],
        check=True,
        capture_output=True,
    )
    key.chmod(0o600)
    return Pair(cert, key)


def make_client_pair(directory: Path, ca: Pair, name: str, cn: str) -> Pair:
    """A client certificate signed by ca."""
    openssl = require_tool("openssl")
    cert, key, request = directory / f"{name}.crt", directory / f"{name}.key", directory / "r.csr"
    subprocess.run(
        [
            openssl,
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(request),
            "-subj",
            f"/O=Test/CN={cn}",
        ],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [
            openssl,
            "x509",
            "-req",
            "-in",
            str(request),
            "-CA",
            str(ca.cert),
            "-CAkey",
            str(ca.key),
            "-CAcreateserial",
            "-out",
            str(cert),
            "-days",
            "2",
        ],
        check=True,
        capture_output=True,
    )
    return Pair(cert, key)


def tls_server_argv(pair: Pair, mode: str, *args: str) -> list[str]:
    """qboot-tcpsrv -1 with TLS in mode and pair's files, before its address."""
    command = [venv_script("qboot-tcpsrv"), "-1", "-S", mode, "-E", str(pair.cert)]
    return [*command, "-K", str(pair.key), *args]


def tls_server(pair: Pair, mode: str, *args: str, program: list[str]) -> Running:
    return Running([*tls_server_argv(pair, mode, *args), "127.0.0.1", "0", *program])


def client_context(cert: Path | None = None, client: Pair | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(cert) if cert else None)
    if cert is None:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        context.check_hostname = False
    if client is not None:
        context.load_cert_chain(str(client.cert), str(client.key))
    return context


def tls_connect(
    port: int, context: ssl.SSLContext | None = None, timeout: float = 10, source: str = ""
) -> ssl.SSLSocket:
    raw = socket.create_connection(
        ("127.0.0.1", port), timeout=timeout, source_address=(source, 0) if source else None
    )
    return (context or client_context()).wrap_socket(raw, server_hostname="mail.example.org")


def read_until(sock: socket.socket, marker: bytes, limit: int = 1 << 20) -> bytes:
    data = b""
    while marker not in data and len(data) < limit:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def echo_env_program(directory: Path) -> list[str]:
    """A chain that greets with its SSL_* variables, then echoes lines until `quit`."""
    path = write_script(
        directory,
        "greet-env",
        "#!/bin/sh\n"
        'echo "220 greeting $SSL_PROTOCOL $SSL_CIPHER '
        '[$SSL_CLIENT_VERIFY] [$SSL_CLIENT_S_DN]"\n'
        'while read line; do echo "echo $line"; [ "$line" = quit ] && exit 0; done\n',
    )
    return [path]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def fds_of(pid: int) -> list[str]:
    base = f"/proc/{pid}/fd"
    return [os.readlink(f"{base}/{name}") for name in os.listdir(base)]


def smtp_recorder(directory: Path) -> list[str]:
    """An SMTP server that records every line it gets (qmail-smtpd cannot say what it
    was sent): 220, then 250 for each line, 221 and the end at QUIT."""
    record = directory / "received"
    path = write_script(
        directory,
        "recorder",
        f"""#!/bin/sh
printf '220 rec ESMTP\\r\\n'
while IFS= read -r line; do
    printf '%s\\n' "$line" >> {record}
    case "$line" in
        EHLO*) printf '250-rec\\r\\n250 PIPELINING\\r\\n' ;;
        QUIT*) printf '221 rec\\r\\n'; exit 0 ;;
        *) printf '250 ok\\r\\n' ;;
    esac
done
""",
    )
    return [path]
