"""qboot-tcpsrv -S implicit against Debian's stunnel4 in front of the same child, measured
in the same run, with the same certificate: ECDSA P-256 and RSA 2048.

stunnel runs in its exec mode (a process per connection for the child, the TLS in its
own threads), which is how it serves a chain as sslserver would; both run the same
children: a tiny static one for the handshake rate (bench/greet.c: a greeting and
exit), `head -c 20M /dev/zero` for the transfer to the client, and a script that reads
20 MB and says ok for the transfer from the client (a message's way in SMTP).
Handshakes: several `openssl s_time -new -www /` clients at once (C clients, full
handshakes, each reads until the child's EOF) for a few seconds; rounds interleaved,
medians shown. Server CPU per connection is the server process's own (all threads,
children not counted), from /proc/PID/stat.
Run: .venv/bin/python bench/tls_bench.py [seconds-per-round]
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from tcpsrv_bench import build_child  # noqa: E402

OURS = str(ROOT / ".venv" / "bin" / "qboot-tcpsrv")
ROUNDS = 3
CLIENTS = 4  # s_time processes at once
TRANSFERS = 5  # 20 MB transfers a round, each server
BIG = 20 * 1024 * 1024
TICK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def make_pair(directory: Path, kind: str) -> tuple[Path, Path]:
    cert, key = directory / f"{kind}.crt", directory / f"{kind}.key"
    algorithm = (
        ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]
        if kind == "ecdsa"
        else ["-newkey", "rsa:2048"]
    )
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            *algorithm,
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-subj",
            "/CN=bench",
            "-days",
            "2",
        ],
        check=True,
        capture_output=True,
    )
    key.chmod(0o600)
    return cert, key


def wait_listening(port: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def start_ours(cert: Path, key: Path, program: list[str]) -> tuple[subprocess.Popen[bytes], int]:
    process = subprocess.Popen(
        [
            OURS,
            "-1",
            "-HR",
            "-l",
            "x",
            "-c",
            "100",
            "-b",
            "256",
            "-S",
            "implicit",
            "-E",
            str(cert),
            "-K",
            str(key),
            "127.0.0.1",
            "0",
            *program,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert process.stdout is not None
    return process, int(process.stdout.readline())


def start_stunnel(
    directory: Path, cert: Path, key: Path, program: list[str]
) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    config = directory / f"stunnel-{port}.conf"
    config.write_text(
        "foreground = yes\npid =\ndebug = 3\n"
        f"[bench]\naccept = 127.0.0.1:{port}\nexec = {program[0]}\n"
        f"execArgs = {' '.join([Path(program[0]).name, *program[1:]])}\n"
        f"cert = {cert}\nkey = {key}\n"
    )
    process = subprocess.Popen(
        [shutil.which("stunnel4") or "stunnel4", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_listening(port)
    return process, port


def cpu_seconds(pid: int) -> float:
    """utime + stime of the process, every thread's (exited ones too), not its children."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def handshakes(port: int, seconds: int) -> int:
    clients = [
        subprocess.Popen(
            [
                "openssl",
                "s_time",
                "-connect",
                f"127.0.0.1:{port}",
                "-new",
                "-www",
                "/",
                "-time",
                str(seconds),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        for _ in range(CLIENTS)
    ]
    total = 0
    for client in clients:
        out, _ = client.communicate(timeout=seconds + 60)
        found = re.search(r"(\d+) connections in [\d.]+s;", out)
        if found is None:
            raise RuntimeError(f"s_time said: {out[-500:]}")
        total += int(found.group(1))
    return total


def client_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def transfer(port: int, context: ssl.SSLContext) -> float:
    """Seconds to read the child's 20 MB through TLS."""
    begin = time.perf_counter()
    with context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=60)) as client:
        got = 0
        while chunk := client.recv(1 << 18):
            got += len(chunk)
    elapsed = time.perf_counter() - begin
    if got != BIG:
        raise RuntimeError(f"transfer: {got} bytes, not {BIG}")
    return elapsed


def upload(port: int, context: ssl.SSLContext, payload: bytes) -> float:
    """Seconds to send the child 20 MB through TLS and get its ok."""
    begin = time.perf_counter()
    with context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=60)) as client:
        client.sendall(payload)
        answer = b""
        while chunk := client.recv(100):
            answer += chunk
    elapsed = time.perf_counter() - begin
    if answer != b"ok\n":
        raise RuntimeError(f"upload: the child said {answer[:100]!r}")
    return elapsed


def sink_program(directory: Path) -> list[str]:
    """Reads 20 MB, then says ok (a script: stunnel splits execArgs at spaces)."""
    path = directory / "sink"
    path.write_text(f"#!/bin/sh\nhead -c {BIG} >/dev/null\necho ok\n")
    path.chmod(0o755)
    return [str(path)]


@contextlib.contextmanager
def serving(
    directory: Path, name: str, cert: Path, key: Path, program: list[str]
) -> Iterator[tuple[int, int]]:
    """ours or stunnel4 in front of program: its pid and port, stopped afterwards."""
    process, port = (
        start_ours(cert, key, program)
        if name == "ours"
        else start_stunnel(directory, cert, key, program)
    )
    try:
        yield process.pid, port
    finally:
        process.terminate()
        process.wait()


def run_kind(directory: Path, kind: str, greet: list[str], seconds: int) -> None:
    cert, key = make_pair(directory, kind)
    big = ["/usr/bin/head", "-c", str(BIG), "/dev/zero"]
    sink = sink_program(directory)
    context = client_context()
    payload = b"x" * BIG
    rates: dict[str, list[float]] = {"ours": [], "stunnel4": []}
    cpu: dict[str, list[float]] = {"ours": [], "stunnel4": []}
    speed: dict[str, list[float]] = {"ours": [], "stunnel4": []}
    speed_in: dict[str, list[float]] = {"ours": [], "stunnel4": []}
    for _ in range(ROUNDS):
        for name in ("ours", "stunnel4"):
            with serving(directory, name, cert, key, greet) as (pid, port):
                handshakes(port, 1)  # warm-up
                before = cpu_seconds(pid)
                count = handshakes(port, seconds)
                used = cpu_seconds(pid) - before
                rates[name].append(count / seconds)
                cpu[name].append(used / max(1, count) * 1e6)
            with serving(directory, name, cert, key, big) as (_, port):
                transfer(port, context)  # warm-up
                # Several a round: on 2 cores a transfer's speed depends on where the
                # scheduler puts the client, the server and the child (two modes, for both).
                speed[name] += [BIG / transfer(port, context) / 1e6 for _ in range(TRANSFERS)]
            with serving(directory, name, cert, key, sink) as (_, port):
                upload(port, context, payload)  # warm-up
                speed_in[name] += [
                    BIG / upload(port, context, payload) / 1e6 for _ in range(TRANSFERS)
                ]
    median = {k: statistics.median(v) for k, v in rates.items()}
    median_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    median_speed = {k: statistics.median(v) for k, v in speed.items()}
    median_in = {k: statistics.median(v) for k, v in speed_in.items()}
    print(
        f"\n{kind}: {ROUNDS} rounds, {CLIENTS} s_time clients x {seconds} s, "
        f"{TRANSFERS} transfers a round, medians"
    )
    print(
        f"  handshakes/s      ours {median['ours']:8.0f}  stunnel4 {median['stunnel4']:8.0f}"
        f"  ratio {median['ours'] / median['stunnel4']:.2f}x"
    )
    print(
        f"  server CPU/conn   ours {median_cpu['ours']:6.0f} us  stunnel4 "
        f"{median_cpu['stunnel4']:6.0f} us  ratio {median_cpu['ours'] / median_cpu['stunnel4']:.2f}"
    )
    for label, medians in (("20 MB to client  ", median_speed), ("20 MB from client", median_in)):
        print(
            f"  {label} ours {medians['ours']:6.0f} MB/s  stunnel4 "
            f"{medians['stunnel4']:6.0f} MB/s  ratio "
            f"{medians['ours'] / medians['stunnel4']:.2f}x"
        )


def main() -> None:
    seconds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    with tempfile.TemporaryDirectory() as name:
        directory = Path(name)
        greet = build_child(directory)
        print(f"load average before: {os.getloadavg()[0]:.2f} (2 cores)")
        for kind in ("ecdsa", "rsa"):
            run_kind(directory, kind, greet, seconds)


if __name__ == "__main__":
    main()
