"""TLS clients run inside the sandbox; each prints a JSON summary.

usage: tls_e2e_client.py reload PORT UNIT NEW_CERT CERT NEW_KEY KEY SENDER RCPT TAG
       tls_e2e_client.py plain PORT"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import smtplib
import socket
import ssl
import subprocess
import sys
import time


def context() -> ssl.SSLContext:
    made = ssl.create_default_context()
    made.check_hostname = False
    made.verify_mode = ssl.CERT_NONE
    return made


def fingerprint(client: smtplib.SMTP) -> str:
    sock = client.sock
    assert isinstance(sock, ssl.SSLSocket)
    der = sock.getpeercert(binary_form=True)
    assert der is not None
    return hashlib.sha256(der).hexdigest()


def reload_during_session(argv: list[str]) -> dict[str, object]:
    """A session open across a certificate renewal and reload: it completes with its
    keys; the next session sees the new certificate."""
    port, unit, new_cert, cert, new_key, key, sender, rcpt, tag = argv
    first = smtplib.SMTP_SSL("127.0.0.1", int(port), timeout=30, context=context())
    first.ehlo("first.example")
    before = fingerprint(first)
    first.mail(sender)
    first.rcpt(rcpt)
    shutil.copyfile(new_cert, cert + ".new")
    shutil.copyfile(new_key, key + ".new")
    os.chmod(key + ".new", 0o600)
    os.replace(cert + ".new", cert)
    os.replace(key + ".new", key)
    subprocess.run(["systemctl", "kill", "-s", "HUP", "--kill-whom=main", unit], check=True)
    time.sleep(1)
    with smtplib.SMTP_SSL("127.0.0.1", int(port), timeout=30, context=context()) as second:
        second.ehlo("second.example")
        after = fingerprint(second)
    code, _ = first.data(f"Subject: {tag}-0\r\n\r\nacross a reload\r\n".encode())
    first.quit()
    return {"before": before, "after": after, "first_data": code}


def plain_client(argv: list[str]) -> dict[str, object]:
    """A plain-text SMTP client on the implicit-TLS port: what does it get in 3 s?"""
    (port,) = argv
    with socket.create_connection(("127.0.0.1", int(port)), timeout=3) as sock:
        got = b""
        try:
            while chunk := sock.recv(4096):
                got += chunk
                if len(got) > 4096:
                    break
        except (TimeoutError, ConnectionResetError):
            pass
        if not got:
            try:
                sock.sendall(b"EHLO plain.example\r\n")
                got = sock.recv(4096)
            except (TimeoutError, OSError):
                pass
    return {"got": got.decode("latin-1")}


def main() -> None:
    mode, rest = sys.argv[1], sys.argv[2:]
    summary = reload_during_session(rest) if mode == "reload" else plain_client(rest)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
