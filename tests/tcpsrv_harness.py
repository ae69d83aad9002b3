"""Start qboot-tcpsrv or Debian's tcpserver on a free loopback port and talk to it."""

from __future__ import annotations

import ipaddress
import os
import random
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

from .conftest import venv_script
from .dns_wire import read_question, receive, response

DUMP_ENV = """#!/bin/sh
env | grep -E '^(PROTO|TCP[A-Z0-9]*|RELAYCLIENT|RBLSMTPD|X|Y)=' | sort
"""


def write_script(directory: Path, name: str, text: str) -> str:
    path = directory / name
    path.write_text(text)
    path.chmod(0o755)
    return str(path)


NO_DNS = "127.0.0.254"


def loopback_address() -> str:
    """A loopback address of its own for a test's identd or DNS server (ports 113 and
    53 are fixed, and other test runs on the machine may use 127.0.0.1)."""
    return f"127.{random.randint(64, 250)}.{random.randint(0, 255)}.{random.randint(1, 254)}"


class Identd:
    """An identd on address:113 that sends `reply` (bytes, or a function of the query)
    to every query, `drip` seconds between bytes when set, and counts connections."""

    def __init__(
        self,
        address: str,
        reply: bytes | Callable[[bytes], bytes],
        drip: float = 0.0,
    ) -> None:
        self.reply = reply
        self.drip = drip
        self.queries = 0
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((address, 113))
        self.listener.listen(256)
        # Closed only by its own thread: a socket closed under a blocked call frees its
        # fd number for the next socket the test opens, and the call would read that.
        self.listener.settimeout(0.1)
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        with self.listener:
            while not self.stopped.is_set():
                try:
                    conn, _ = self.listener.accept()
                except TimeoutError:
                    continue
                except OSError:
                    return
                self.queries += 1
                threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            try:
                conn.settimeout(60)
                query = conn.recv(100).strip()
                reply = self.reply(query) if callable(self.reply) else self.reply
                if not self.drip:
                    conn.sendall(reply)
                    return
                for byte in reply:
                    if self.stopped.wait(self.drip):
                        return
                    conn.sendall(bytes([byte]))
            except OSError:
                return

    def close(self) -> None:
        self.stopped.set()
        self.thread.join(5)


def dns_labels(*labels: bytes) -> bytes:
    return b"".join(bytes([len(label)]) + label for label in labels) + b"\0"


class FakeDns:
    """A DNS server on address:53 (UDP). records maps (question name as dotted text,
    type) to answers: a list of (type, rdata bytes) or, for PTR, wire names. delay
    holds answers back; queries counts what was asked. rcode answers every question
    with that error; forged (a wire name) is first sent as the answer under a wrong id
    and from another address with the right id, as a spoofer would. Questions for the
    reverse names of `silent` addresses are never answered (a zone that drops them)."""

    def __init__(
        self,
        address: str,
        delay: float = 0.0,
        rcode: int | None = None,
        forged: bytes = b"",
        silent: frozenset[str] = frozenset(),
    ) -> None:
        self.records: dict[tuple[str, int], list[tuple[int, bytes]]] = {}
        self.silent = {ipaddress.ip_address(ip).reverse_pointer for ip in silent}
        self.delay = delay
        self.rcode = rcode
        self.forged = forged
        self.queries: list[tuple[str, int]] = []
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.socket.bind((address, 53))
        self.socket.settimeout(0.1)  # closed by its own thread, as Identd's listener
        self.address = address
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def ptr(self, ip: str, wire_name: bytes) -> None:
        reverse = ipaddress.ip_address(ip).reverse_pointer
        self.records.setdefault((reverse, 12), []).append((12, wire_name))

    def a(self, name: str, ip: str) -> None:
        if ":" in ip:
            self.records.setdefault((name, 28), []).append((28, ipaddress.ip_address(ip).packed))
        else:
            self.records.setdefault((name, 1), []).append((1, socket.inet_aton(ip)))

    def _serve(self) -> None:
        receive(self.socket, self.stopped, self._answer_in_thread)

    def _answer_in_thread(self, packet: bytes, peer: tuple[str, int]) -> None:
        if self.silent and read_question(packet)[0] in self.silent:
            self.queries.append(read_question(packet)[:2])
            return
        threading.Thread(target=self._answer, args=(packet, peer), daemon=True).start()

    def _answer(self, packet: bytes, peer: tuple[str, int]) -> None:
        if self.delay and self.stopped.wait(self.delay):
            return
        query_id = packet[:2]
        name, qtype, question = read_question(packet)
        self.queries.append((name, qtype))
        found = self.records.get((name, qtype), [])
        rcode = 0 if found or any(key[0] == name for key in self.records) else 3
        if self.rcode is not None:
            rcode, found = self.rcode, []
        if self.stopped.is_set():
            return
        try:
            if self.forged:
                forged = self._packet(query_id, rcode, question, [(12, self.forged)])
                wrong_id = bytes([query_id[0] ^ 0x55, query_id[1]])
                self.socket.sendto(
                    self._packet(wrong_id, rcode, question, [(12, self.forged)]), peer
                )
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other:
                    other.bind((loopback_address(), 53))
                    other.sendto(forged, peer)
                time.sleep(0.05)
            self.socket.sendto(self._packet(query_id, rcode, question, found), peer)
        except OSError:
            return

    @staticmethod
    def _packet(
        query_id: bytes, rcode: int, question: bytes, found: list[tuple[int, bytes]]
    ) -> bytes:
        return response(query_id, rcode, question, found, 60)

    def close(self) -> None:
        self.stopped.set()
        self.thread.join(5)


class Running:
    def __init__(
        self,
        argv: list[str],
        env: dict[str, str] | None = None,
        pass_fds: tuple[int, ...] = (),
        port: int | None = None,
    ) -> None:
        self.stderr_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"srv-{os.getpid()}-{id(self)}"
        self._stderr = open(self.stderr_path, "w+b")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            # /etc/resolv.conf points off the machine: DNS goes to loopback, where
            # nothing answers unless a test starts its own server (FakeDns).
            env={**os.environ, "DNSCACHEIP": NO_DNS, **(env or {})},
            pass_fds=pass_fds,
        )
        if port is None:
            assert self.process.stdout is not None
            line = self.process.stdout.readline()
            assert line.strip().isdigit(), f"no port printed: {line!r} {self.log()}"
            port = int(line)
        self.port = port

    def connect(
        self, host: str = "127.0.0.1", source: str | None = None, timeout: float = 10
    ) -> socket.socket:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        client = socket.socket(family, socket.SOCK_STREAM)
        client.settimeout(timeout)
        if source:
            client.bind((source, 0))
        client.connect((host, self.port))
        return client

    def request(
        self, host: str = "127.0.0.1", source: str | None = None, send: bytes = b""
    ) -> bytes:
        with self.connect(host, source) as client:
            if send:
                client.sendall(send)
            return read_all(client)

    def log(self) -> str:
        self._stderr.flush()
        return self.stderr_path.read_text(errors="replace")

    def wait_log(self, pattern: str, timeout: float = 10) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log()
            if re.search(pattern, text, re.M):
                return text
            time.sleep(0.02)
        raise AssertionError(f"{pattern!r} not in log:\n{self.log()}")

    def wait_count(self, pattern: str, count: int, timeout: float = 20) -> str:
        """Wait until pattern occurs count times in the log."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log()
            if len(re.findall(pattern, text)) >= count:
                return text
            time.sleep(0.02)
        raise AssertionError(f"{pattern!r} not {count} times in log:\n{self.log()[-2000:]}")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout:
            self.process.stdout.close()
        self._stderr.close()
        self.stderr_path.unlink(missing_ok=True)
        return self.process.returncode


def read_all(client: socket.socket) -> bytes:
    chunks = []
    while True:
        try:
            chunk = client.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def ours(*args: str, env: dict[str, str] | None = None) -> Running:
    return Running([venv_script("qboot-tcpsrv"), "-1", *args], env=env)


def theirs(tcpserver: str, *args: str, env: dict[str, str] | None = None) -> Running:
    return Running([tcpserver, "-1", *args], env=env)


def env_of(output: bytes) -> dict[bytes, bytes]:
    entries = [entry.partition(b"=") for entry in output.split(b"\0")[:-1]]
    return {name: value for name, _, value in entries}


def masked_log(text: str, program: str) -> list[str]:
    lines = []
    for line in text.splitlines():
        line = line.replace(f"{program}: ", "PROGRAM: ", 1)
        line = re.sub(r"(pid|ok|deny|end) \d+", r"\1 PID", line)
        line = re.sub(r":(\d+)( |$)", r":PORT\2", line)
        lines.append(line)
    return lines


# sd_listen_fds(3) as systemd hands a socket over: fd 3 and LISTEN_PID the server's own.
ACTIVATE = (
    "import os, sys; os.dup2(int(sys.argv[1]), 3); os.environ['LISTEN_FDS'] = '1'; "
    "os.environ['LISTEN_PID'] = str(os.getpid()); os.execv(sys.argv[2], sys.argv[2:])"
)
