"""Start qboot-tcpsrv or Debian's tcpserver on a free loopback port and talk to it."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

from .conftest import venv_script

DUMP_ENV = """#!/bin/sh
env | grep -E '^(PROTO|TCP[A-Z0-9]*|RELAYCLIENT|RBLSMTPD|X|Y)=' | sort
"""


def write_script(directory: Path, name: str, text: str) -> str:
    path = directory / name
    path.write_text(text)
    path.chmod(0o755)
    return str(path)


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
            env={**os.environ, **(env or {})},
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
