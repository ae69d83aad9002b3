"""qboot-tcpsrv -S: implicit TLS and STARTTLS in the server's loop, judged by what real
clients get (openssl s_client, Python's ssl), and the certificate's handling (checks,
reload on SIGHUP, the key kept from the chain)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from .conftest import require_tool, venv_script
from .tcpsrv_harness import Running, write_script
from .tls_harness import (
    Pair,
    client_context,
    echo_env_program,
    fds_of,
    make_client_pair,
    make_pair,
    read_until,
    smtp_recorder,
    tls_connect,
    tls_server,
)

MB20 = 20 * 1024 * 1024


@pytest.fixture
def pair(tmp_path: Path) -> Pair:
    return make_pair(tmp_path, "server")


def test_s_client_gets_the_greeting_with_sslserver_variables(tmp_path: Path, pair: Pair) -> None:
    server = tls_server(
        pair, "implicit", "-v", "-R", "-H", "-l0", program=echo_env_program(tmp_path)
    )
    try:
        done = subprocess.run(
            [require_tool("openssl"), "s_client", "-quiet", "-connect", f"127.0.0.1:{server.port}"],
            input=b"hello\nquit\n",
            capture_output=True,
            timeout=20,
        )
        out = done.stdout.decode()
        assert re.search(r"^220 greeting TLSv1\.3 TLS_AES_\w+ \[\] \[\]$", out, re.M), out
        assert "echo hello" in out and "echo quit" in out
        assert re.search(r"qboot-tcpsrv: ok \d+ 0:127\.0\.0\.1:", server.wait_log(" end "))
    finally:
        server.stop()


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_tls_12_and_13_only(tmp_path: Path, pair: Pair, version: ssl.TLSVersion) -> None:
    server = tls_server(pair, "implicit", "-R", "-H", "-l0", program=echo_env_program(tmp_path))
    try:
        context = client_context(pair.cert)
        context.minimum_version = context.maximum_version = version
        with tls_connect(server.port, context) as client:
            line = read_until(client, b"\n").decode()
            assert line.startswith(f"220 greeting {version.name.replace('v1_', 'v1.')} ")
            # Mozilla intermediate: ECDHE with AEAD only in TLS 1.2
            assert (client.cipher() is not None and "GCM" in line) or "CHACHA20" in line
        old = client_context()
        old.minimum_version = ssl.TLSVersion.TLSv1
        old.maximum_version = ssl.TLSVersion.TLSv1_1
        old.set_ciphers("ALL:@SECLEVEL=0")
        with pytest.raises((ssl.SSLError, ConnectionResetError)):
            tls_connect(server.port, old).close()
    finally:
        server.stop()


def test_ciphers_overrides_the_tls12_list(tmp_path: Path, pair: Pair) -> None:
    server = tls_server(
        pair,
        "implicit",
        "-R",
        "-H",
        "-l0",
        "-F",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        program=echo_env_program(tmp_path),
    )
    try:
        context = client_context()
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        with tls_connect(server.port, context) as client:
            assert (
                "220 greeting TLSv1.2 ECDHE-ECDSA-CHACHA20-POLY1305"
                in read_until(client, b"\n").decode()
            )
    finally:
        server.stop()


def test_client_certificate_subject_and_verify_result(tmp_path: Path, pair: Pair) -> None:
    ca = make_pair(tmp_path, "ca", cn="Test CA")
    client_pair = make_client_pair(tmp_path, ca, "client", "alice")
    server = tls_server(
        pair, "implicit", "-R", "-H", "-l0", "-A", str(ca.cert), program=echo_env_program(tmp_path)
    )
    try:
        with tls_connect(server.port, client_context(client=client_pair)) as client:
            line = read_until(client, b"\n").decode()
            assert "[SUCCESS] [/O=Test/CN=alice]" in line, line
        with tls_connect(server.port) as client:  # none given: served, and told so
            assert "[NONE] []" in read_until(client, b"\n").decode()
        stranger = make_client_pair(tmp_path, make_pair(tmp_path, "other", cn="Other"), "x", "eve")
        with (
            pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError)),
            tls_connect(server.port, client_context(client=stranger)) as client,
        ):
            client.sendall(b"x\n")
            assert client.recv(100) == b""
    finally:
        server.stop()


def test_plain_client_on_implicit_port_gets_no_greeting(tmp_path: Path, pair: Pair) -> None:
    server = tls_server(
        pair, "implicit", "-v", "-R", "-H", "-l0", program=echo_env_program(tmp_path)
    )
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as client:
            client.sendall(b"EHLO plain.example\r\n")
            answer = b""
            try:
                while chunk := client.recv(4096):
                    answer += chunk
            except ConnectionResetError:
                pass
        assert b"220" not in answer and b"greeting" not in answer
        assert answer == b"" or answer.startswith(b"\x15\x03")  # nothing, or a TLS alert
        log = server.wait_log("TLS from 127.0.0.1")
        assert " ok " not in log  # no chain ran, no slot was taken
    finally:
        server.stop()


def transfer_program(directory: Path) -> list[str]:
    """A chain that reads 20 MB and answers their SHA-256, then sends 20 MB of its own."""
    path = write_script(
        directory,
        "transfer",
        f"""#!/usr/bin/env python3
import hashlib, sys
digest, left = hashlib.sha256(), {MB20}
while left:
    chunk = sys.stdin.buffer.read1(min(left, 1 << 16))
    if not chunk:
        break
    digest.update(chunk)
    left -= len(chunk)
out = sys.stdout.buffer
out.write(digest.hexdigest().encode() + b"\\n")
block = bytes(range(256)) * 256
for _ in range({MB20} // len(block)):
    out.write(block)
out.flush()
""",
    )
    return [path]


def test_20mb_both_ways_arrive_intact(tmp_path: Path, pair: Pair) -> None:
    server = tls_server(pair, "implicit", "-R", "-H", "-l0", program=transfer_program(tmp_path))
    try:
        payload = os.urandom(MB20)
        with tls_connect(server.port, timeout=60) as client:
            client.sendall(payload)
            answer = read_until(client, b"\n")
            digest, _, rest = answer.partition(b"\n")
            assert digest.decode() == hashlib.sha256(payload).hexdigest()
            received = hashlib.sha256(rest)
            total = len(rest)
            while chunk := client.recv(1 << 16):
                received.update(chunk)
                total += len(chunk)
        block = bytes(range(256)) * 256
        assert total == MB20
        assert received.hexdigest() == hashlib.sha256(block * (MB20 // len(block))).hexdigest()
    finally:
        server.stop()


# --- the certificate -------------------------------------------------------------------------
def start_fails(*args: str) -> str:
    done = subprocess.run(
        [venv_script("qboot-tcpsrv"), "-1", *args, "127.0.0.1", "0", "true"],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert done.returncode == 111, done
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("qboot-tcpsrv: fatal: "), done.stderr
    return lines[0]


def test_bad_certificate_files_are_one_line_naming_the_file(tmp_path: Path, pair: Pair) -> None:
    tls = ["-S", "implicit", "-E", str(pair.cert), "-K"]
    missing = tmp_path / "missing.key"
    assert f"{missing}: no such file" in start_fails(*tls, str(missing))
    pair.key.chmod(0o644)
    line = start_fails(*tls, str(pair.key))
    assert f"{pair.key}: private key readable by everyone" in line and "chmod 600" in line
    pair.key.chmod(0o600)
    other = make_pair(tmp_path, "other")
    line = start_fails(*tls, str(other.key))
    assert f"{other.key}: the key does not match the certificate in {pair.cert}" in line
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert f"{fifo}: not a regular file" in start_fails(*tls, str(fifo))
    garbage = tmp_path / "garbage.crt"
    garbage.write_bytes(b"\0\xff not pem\n" * 10)
    line = start_fails("-S", "implicit", "-E", str(garbage), "-K", str(pair.key))
    assert f"{garbage}: no PEM certificate" in line
    line = start_fails("-S", "implicit", "-E", str(pair.cert), "-K", str(pair.key), "-F", "NOPE")
    assert "CIPHERS 'NOPE'" in line


def test_a_key_the_programs_account_could_read_is_refused(tmp_path: Path, pair: Pair) -> None:
    """qmail-smtpd runs as -u/-g (qmaild:nofiles): a key that account can open is no
    secret from it, whatever its mode for others. -u alone keeps the server's group
    (root's), as under tcpserver, so a root:root 0640 key is readable then too."""
    nobody, nogroup = "65534", "65534"
    tls = ["-S", "implicit", "-E", str(pair.cert), "-K", str(pair.key)]
    cases = (
        (65534, 0, 0o600, ["-u", nobody, "-g", nogroup], "the program's user (uid 65534"),
        (0, 65534, 0o640, ["-u", nobody, "-g", nogroup], "the program's group (gid 65534)"),
        (0, 0, 0o640, ["-u", nobody], "the program's group (gid 0)"),
    )
    for uid, gid, mode, drop, reader in cases:
        os.chown(pair.key, uid, gid)
        pair.key.chmod(mode)
        line = start_fails(*tls, *drop)
        assert f"{pair.key}: private key readable by {reader}" in line, line
        assert f"chown root:root {pair.key} && chmod 600 {pair.key}" in line, line
    os.chown(pair.key, 0, 0)  # root's group may read it: the program is in nogroup
    server = tls_server(pair, "implicit", "-u", nobody, "-g", nogroup, program=["cat"])
    try:
        assert tls_connect(server.port).version() is not None
    finally:
        assert server.stop() == 0


def test_a_key_with_a_passphrase_is_one_line_and_no_prompt(tmp_path: Path, pair: Pair) -> None:
    """OpenSSL asks for a passphrase on the terminal by default: qboot-tcpsrv (at start
    and at a reload) and qbootctl verify must never wait there, nor die with a traceback."""
    from qboot_systemd.tcpsrv.tls.certs import CertPaths
    from qboot_systemd.tcpsrv.tls.context import check

    for name, form in (("pkcs8", []), ("traditional", ["-traditional"])):
        locked = tmp_path / f"{name}.key"
        subprocess.run(
            [
                "openssl",
                "pkey",
                "-in",
                str(pair.key),
                "-aes256",
                "-passout",
                "pass:s3cret",
                *form,
                "-out",
                str(locked),
            ],
            check=True,
            capture_output=True,
        )
        locked.chmod(0o600)
        line = start_fails("-S", "implicit", "-E", str(pair.cert), "-K", str(locked))
        assert f"{locked}: the private key is encrypted" in line, line
        problem = check(CertPaths(str(pair.cert), str(locked)))
        assert problem is not None and str(problem).startswith(f"{locked}: the private key")


def test_the_reader_brings_a_ccafile_as_large_as_a_ca_bundle(tmp_path: Path, pair: Pair) -> None:
    """After the privilege drop the reader process reads the files at each reload. Its
    reply was one datagram, larger than a socket's send buffer with a CCAFILE the size of
    the system's CA bundle: the reader died and every reload after it failed."""
    from qboot_systemd.tcpsrv.tls.certs import MAX_FILE, CertPaths, CertReader

    bundle = tmp_path / "bundle.pem"
    one = pair.cert.read_bytes()
    bundle.write_bytes(one * (MAX_FILE // len(one)))
    reader = CertReader(CertPaths(str(pair.cert), str(pair.key), str(bundle)))
    reader.start()
    try:
        for _ in range(2):  # a reload, and the next one
            material = reader.read()
            assert material.cca == bundle.read_bytes() and material.key == pair.key.read_bytes()
    finally:
        reader.close()


def test_a_certificate_without_its_key_is_not_called_a_readable_key(pair: Pair) -> None:
    """KEYFILE unset is CERTFILE: a certbot fullchain.pem (0644, no key in it) was
    'private key readable by everyone; chmod 600', which sends the admin the wrong way."""
    pair.cert.chmod(0o644)
    line = start_fails("-S", "implicit", "-E", str(pair.cert))
    assert f"{pair.cert}: no PEM private key in it" in line and "chmod" not in line, line
    assert "-K" in line and "KEYFILE" in line, line


def test_usage_errors(pair: Pair) -> None:
    for args, message in (
        (["-S", "tls"], "-S needs one of implicit, starttls, starttls-required"),
        (["-S", "implicit"], "-S implicit needs -E certfile"),
        (["-E", str(pair.cert)], "-E without -S"),
    ):
        done = subprocess.run(
            [venv_script("qboot-tcpsrv"), *args, "127.0.0.1", "0", "true"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        assert done.returncode == 100 and message in done.stderr, done.stderr


def test_key_never_reaches_the_chain() -> None:
    """The chain (as the -u user) lists its fds and environment: no key, no memfd, and it
    cannot read the key file; a reload through the reader process changes none of it."""
    with tempfile.TemporaryDirectory() as name:  # pytest's tmp_path is closed to nobody
        tmp_path = Path(name)
        tmp_path.chmod(0o755)
        key_kept_from_chain(tmp_path, make_pair(tmp_path, "server"))


def key_kept_from_chain(tmp_path: Path, pair: Pair) -> None:
    nobody = "65534"
    report = tmp_path / "report"
    report.mkdir(mode=0o777)
    report.chmod(0o777)
    program = write_script(
        tmp_path,
        "inspect",
        f"""#!/bin/sh
{{ id -u; ls -l /proc/self/fd/; env; cat {pair.key} 2>&1; }} > {report}/$$ 2>&1
echo done
""",
    )
    server = tls_server(
        pair, "implicit", "-v", "-R", "-H", "-l0", "-u", nobody, "-g", nobody, program=[program]
    )
    try:
        for round_ in range(2):
            with tls_connect(server.port) as client:
                assert read_until(client, b"\n") == b"done\n"
            if round_ == 0:
                server.process.send_signal(signal.SIGHUP)
                server.wait_log("SIGHUP: rules and names reloaded")
        texts = [path.read_text() for path in report.iterdir()]
        assert len(texts) == 2
        key_text = pair.key.read_text()
        key_body = key_text.splitlines()[1]
        for text in texts:
            assert text.splitlines()[0] == nobody
            assert key_body not in text and "PRIVATE KEY" not in text
            assert "Permission denied" in text
            assert (
                "memfd" not in text
                and str(pair.key) not in text.split("\n", 1)[1].split("\n", 1)[0]
            )
            fd_lines = [line for line in text.splitlines() if " -> " in line]
            # 0, 1 (the socket pair), 2 (the log) and the fd ls itself reads
            assert len(fd_lines) <= 4, fd_lines
            assert all(str(pair.key) not in line for line in fd_lines)
        # the server (uid nobody now) kept one process as root, for the reloads
        assert "TLS certificate kept" not in server.log()
        pid = server.process.pid
        assert uid_of(pid) == int(nobody)
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        readers = [int(child) for child in children if uid_of(int(child)) == 0]
        assert len(readers) == 1, children
        assert all(str(pair.key) not in link for link in fds_of(readers[0]))
    finally:
        server.stop()
    deadline = time.monotonic() + 5  # it goes with the server
    while Path(f"/proc/{readers[0]}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (
        not Path(f"/proc/{readers[0]}/status").exists()
        or "Z" in Path(f"/proc/{readers[0]}/status").read_text().split("State:")[1][:5]
    )


def uid_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[2])  # effective
    raise AssertionError("no Uid")


def test_reload_new_sessions_get_the_new_certificate_old_ones_finish(
    tmp_path: Path, pair: Pair
) -> None:
    server = tls_server(
        pair, "implicit", "-R", "-H", "-l0", "-v", program=echo_env_program(tmp_path)
    )
    try:
        first = tls_connect(server.port)
        assert read_until(first, b"\n").startswith(b"220 ")
        old_der = first.getpeercert(binary_form=True)
        renewed = make_pair(tmp_path, "renewed", kind="rsa")
        # certbot's habit: the files are replaced, then the service reloaded
        os.replace(renewed.cert, pair.cert)
        os.replace(renewed.key, pair.key)
        server.process.send_signal(signal.SIGHUP)
        server.wait_log("SIGHUP")
        second = tls_connect(server.port)
        assert read_until(second, b"\n").startswith(b"220 ")
        new_der = second.getpeercert(binary_form=True)
        assert new_der != old_der
        # the first session goes on with its own keys
        first.sendall(b"still here\n")
        assert read_until(first, b"still here\n").endswith(b"echo still here\n")
        first.sendall(b"quit\n")
        assert read_until(first, b"quit\n").endswith(b"echo quit\n")
        first.close()
        second.close()
        # a broken renewal keeps the last good certificate, and says why
        pair.key.write_text("broken\n")
        server.process.send_signal(signal.SIGHUP)
        log = server.wait_log("TLS certificate kept")
        assert f"{pair.key}: no PEM private key" in log
        with tls_connect(server.port) as third:
            assert read_until(third, b"\n").startswith(b"220 ")
            assert third.getpeercert(binary_form=True) == new_der
        assert server.process.poll() is None
    finally:
        server.stop()


def test_handshake_holds_no_session_slot(tmp_path: Path, pair: Pair) -> None:
    """-c 1: a client stuck in its handshake does not keep the one slot from an honest
    client, and is cut at the -t deadline."""
    server = tls_server(
        pair, "implicit", "-c1", "-t3", "-v", "-R", "-H", "-l0", program=echo_env_program(tmp_path)
    )
    try:
        stalled = socket.create_connection(("127.0.0.1", server.port))
        stalled.sendall(b"\x16\x03\x01\x00")  # a ClientHello's first bytes, no more
        time.sleep(0.3)
        started = time.monotonic()
        with tls_connect(server.port) as client:
            assert read_until(client, b"\n").startswith(b"220 greeting")
        assert time.monotonic() - started < 2
        stalled.settimeout(10)
        started = time.monotonic()
        assert stalled.recv(100) == b""  # cut
        assert 1.5 < time.monotonic() - started < 6
        assert "handshake timed out" in server.wait_log("handshake timed out")
    finally:
        server.stop()


def test_stop_lets_sessions_finish(tmp_path: Path, pair: Pair) -> None:
    server = Running(
        [
            venv_script("qboot-tcpsrv"),
            "-1",
            "-S",
            "implicit",
            "-E",
            str(pair.cert),
            "-K",
            str(pair.key),
            "-R",
            "-H",
            "-l0",
            "127.0.0.1",
            "0",
            *echo_env_program(tmp_path),
        ],
        env={"NOTIFY_SOCKET": ""},
    )
    try:
        client = tls_connect(server.port)
        assert read_until(client, b"\n").startswith(b"220")
        client.sendall(b"quit\n")
        assert read_until(client, b"quit\n").endswith(b"echo quit\n")
        client.close()
    finally:
        assert server.stop() == 0


def test_starttls_discards_commands_pipelined_behind_it(tmp_path: Path, pair: Pair) -> None:
    server = tls_server(pair, "starttls", "-R", "-H", "-l0", program=smtp_recorder(tmp_path))
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw:
            assert read_until(raw, b"\r\n") == b"220 rec ESMTP\r\n"
            raw.sendall(b"EHLO c\r\n")
            assert read_until(raw, b"250 ").endswith(b"250-PIPELINING\r\n250 STARTTLS\r\n")
            raw.sendall(b"STARTTLS\r\nMAIL FROM:<injected@example>\r\n")
            assert read_until(raw, b"\r\n") == b"220 2.0.0 Ready to start TLS\r\n"
            with client_context().wrap_socket(raw, server_hostname="x") as tls:
                tls.sendall(b"EHLO c\r\n")
                assert read_until(tls, b"250 ") == b"250-rec\r\n250 PIPELINING\r\n"
                tls.sendall(b"QUIT\r\n")
                assert read_until(tls, b"\r\n") == b"221 rec\r\n"
        received = (tmp_path / "received").read_text().replace("\r", "").splitlines()
        assert received == ["EHLO c", "RSET", "EHLO c", "QUIT"]
    finally:
        server.stop()


def test_check_for_verify_and_status(tmp_path: Path, pair: Pair) -> None:
    from qboot_systemd.tcpsrv.tls.certs import CertPaths
    from qboot_systemd.tcpsrv.tls.context import check

    assert check(CertPaths(str(pair.cert), str(pair.key))) is None
    other = make_pair(tmp_path, "other")
    problem = check(CertPaths(str(pair.cert), str(other.key)))
    assert problem is not None and str(problem).startswith(f"{other.key}: the key does not match")


class MemoryClient:
    """A TLS client on memory BIOs over a plain socket, so the test decides when
    close_notify goes (Python's SSLSocket cannot send it and read on)."""

    def __init__(self, port: int, version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=20)
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.context = context = client_context()
        context.maximum_version = version
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_hostname="x")
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush()
                self._fill()
        self._flush()

    def _flush(self) -> None:
        if self.outgoing.pending:
            self.sock.sendall(self.outgoing.read())

    def _fill(self) -> bool:
        data = self.sock.recv(65536)
        if data:
            self.incoming.write(data)
        else:
            self.incoming.write_eof()
        return bool(data)

    def send(self, data: bytes) -> None:
        self.tls.write(data)
        self._flush()

    def close_notify(self) -> None:
        with contextlib.suppress(ssl.SSLWantReadError):
            self.tls.unwrap()
        self._flush()

    def read_all(self) -> tuple[bytes, bool]:
        """Everything until the server's close_notify (True) or a bare EOF (False)."""
        got = b""
        while True:
            try:
                chunk = self.tls.read(65536)
                if not chunk:  # the server's close_notify, ours not sent (Python's way)
                    return got, True
                got += chunk
                continue
            except ssl.SSLWantReadError:
                if not self._fill() and not self.incoming.pending:
                    try:
                        got += self.tls.read(65536)
                    except (ssl.SSLZeroReturnError, ssl.SSLEOFError) as error:
                        return got, isinstance(error, ssl.SSLZeroReturnError)
            except ssl.SSLZeroReturnError:
                return got, True
            except ssl.SSLEOFError:
                return got, False


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
@pytest.mark.parametrize("how", ["close_notify", "tcp_fin"])
def test_half_close_as_sslserver(
    tmp_path: Path, pair: Pair, how: str, version: ssl.TLSVersion
) -> None:
    """The client's close_notify (or a bare TCP FIN) is the chain's end of input; what the
    chain writes after it still reaches the client, then the server's close_notify ends
    the session."""
    digest = write_script(tmp_path, "digest", "#!/bin/sh\nsha256sum | cut -c1-64\necho done\n")
    server = tls_server(pair, "implicit", "-RHl0", program=[digest])
    try:
        payload = os.urandom(1 << 20)
        client = MemoryClient(server.port, version)
        assert client.tls.version() == version.name.replace("v1_", "v1.")
        client.send(payload)
        if how == "close_notify":
            client.close_notify()
        else:
            client.sock.shutdown(socket.SHUT_WR)
        got, clean = client.read_all()
        assert got == hashlib.sha256(payload).hexdigest().encode() + b"\ndone\n"
        assert clean  # the server's close_notify, not a bare EOF
        client.sock.close()
    finally:
        server.stop()


def test_tls13_tickets_leave_with_the_chains_first_bytes(tmp_path: Path, pair: Pair) -> None:
    """After a TLS 1.3 handshake nothing is sent until the chain speaks: the session
    tickets go out with its greeting (a packet fewer per connection), and they work: the
    next connection resumes. TLS 1.2's last flight is never held (its client waits for it:
    test_half_close_as_sslserver's TLS 1.2 cases would hang)."""
    late = write_script(tmp_path, "late", "#!/bin/sh\nsleep 0.5\necho 220 late\n")
    server = tls_server(pair, "implicit", "-RHl0", program=[late])
    try:
        client = MemoryClient(server.port)
        client.sock.settimeout(0.3)
        with pytest.raises(TimeoutError):
            client.sock.recv(65536)  # the tickets did not come alone
        client.sock.settimeout(20)
        got, clean = client.read_all()
        assert (got, clean) == (b"220 late\n", True)
        session = client.tls.session
        assert session is not None and session.has_ticket
        client.sock.close()
        raw = socket.create_connection(("127.0.0.1", server.port), timeout=20)
        with client.context.wrap_socket(raw, server_hostname="x", session=session) as again:
            assert again.session_reused
            assert read_until(again, b"\n") == b"220 late\n"
    finally:
        server.stop()
