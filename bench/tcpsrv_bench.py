"""qboot-tcpsrv against Debian's tcpserver, measured in the same run.

Same 1000-line rules cdb, same tiny child (bench/greet.c, built here with gcc -nostdlib
-static: a greeting and exit, no libc start-up, so the servers' own cost shows), flags
-HR -l x -c 100 -b 256, loopback clients at concurrency 1, 10 and 50, the two servers
interleaved round by round. Prints the median and the best of the rounds: connections per
second, greeting latency p50/p99, the server's own CPU time per connection (the server
process without its children, from schedstat) and the ratios ours/theirs; then the same for our
Python loop (QBOOT_NO_EXTENSION=1: what serves -h, -r, -L, -C and -N, and a build without
the extension); then the servers' idle RSS and how fast each way of spawning from Python is.
Run: .venv/bin/python bench/tcpsrv_bench.py [connections-per-round]
"""

from __future__ import annotations

import asyncio
import compileall
import contextlib
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from qboot_systemd import rules

ROOT = Path(__file__).resolve().parent.parent
OURS = str(ROOT / ".venv" / "bin" / "qboot-tcpsrv")
GREET_SOURCE = ROOT / "bench" / "greet.c"
# Interleaved rounds: on a shared machine a round is as often slowed by a neighbour as by
# the server; the median is the typical round, the best each server's own capacity.
ROUNDS = 5


def rules_text(count: int) -> bytes:
    rng = random.Random(5)
    lines = [
        f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(256)}:deny"
        for _ in range(count - 2)
    ]
    lines += ['127.0.0.1:allow,RELAYCLIENT=""', ":allow"]
    return ("\n".join(lines) + "\n").encode()


def start(
    argv: list[str], env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], int]:
    process = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env={**os.environ, **(env or {})}
    )
    assert process.stdout is not None
    port = int(process.stdout.readline())
    return process, port


async def one(port: int, latencies: list[float]) -> None:
    begin = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await reader.readexactly(1)
    latencies.append(time.perf_counter() - begin)
    await reader.read()
    writer.close()


async def load(port: int, total: int, concurrency: int) -> tuple[float, list[float]]:
    latencies: list[float] = []
    queue = iter(range(total))

    async def worker() -> None:
        for _ in queue:
            await one(port, latencies)

    begin = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return total / (time.perf_counter() - begin), latencies


def cpu_seconds(pid: int) -> float:
    """On-CPU time of the server process, all its threads, not its children: the sum of
    /proc/PID/task/*/schedstat (nanoseconds; /proc/PID/stat counts 10 ms ticks, 7 µs per
    connection over a round). Our threads live as long as the server; tcpserver has one."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(FileNotFoundError):
            total += int(Path(f"/proc/{pid}/task/{task}/schedstat").read_text().split()[0])
    return total / 1e9


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def spawn_methods(count: int = 300) -> dict[str, float]:
    def fork_exec() -> None:
        pid = os.fork()
        if pid == 0:
            os.execv("/bin/true", ["/bin/true"])
        os.waitpid(pid, 0)

    def posix_spawn() -> None:
        pid = os.posix_spawn("/bin/true", ["/bin/true"], os.environ)
        os.waitpid(pid, 0)

    def popen() -> None:
        subprocess.Popen(["/bin/true"]).wait()

    results = {}
    for name, function in (
        ("fork+exec", fork_exec),
        ("posix_spawn", posix_spawn),
        ("subprocess", popen),
    ):
        begin = time.perf_counter()
        for _ in range(count):
            function()
        results[name] = (time.perf_counter() - begin) / count * 1e6
    return results


def build_child(directory: Path) -> list[str]:
    child = directory / "greet"
    subprocess.run(
        ["gcc", "-nostdlib", "-static", "-O2", "-o", str(child), str(GREET_SOURCE)], check=True
    )
    return [str(child)]


Figures = tuple[float, float, float, float]  # conn/s, p50 ms, p99 ms, cpu us per connection


def median_figures(rounds: list[Figures]) -> Figures:
    rate, p50, p99, cpu = (statistics.median(column) for column in zip(*rounds, strict=True))
    return rate, p50, p99, cpu


def measure(argv: list[str], env: dict[str, str] | None, total: int, concurrency: int) -> Figures:
    process, port = start(argv, env)
    try:
        before = cpu_seconds(process.pid)
        rate, latencies = asyncio.run(load(port, total, concurrency))
        cpu = (cpu_seconds(process.pid) - before) / total * 1e6
    finally:
        process.terminate()
        process.wait()
    return rate, percentile(latencies, 0.5) * 1e3, percentile(latencies, 0.99) * 1e3, cpu


def show(concurrency: int, label: str, ours: Figures, theirs: Figures, name: str = "ours") -> None:
    rows = [(name, ours), ("tcpserver", theirs)] if name == "ours" else [(name, ours)]
    for row_name, (rate, p50, p99, cpu) in rows:
        print(
            f"{concurrency:>4} {label:>6} {row_name:>10} {rate:>8.0f} "
            f"{p50:>7.2f} {p99:>7.2f} {cpu:>7.0f}"
        )
    print(
        f"{concurrency:>4} {label:>6} {'ratio':>10} {ours[0] / theirs[0]:>8.2f} "
        f"{ours[1] / theirs[1]:>7.2f} {ours[2] / theirs[2]:>7.2f} "
        f"{ours[3] / max(theirs[3], 1e-9):>7.2f}"
    )


def main() -> None:
    total = int(sys.argv[1]) if len(sys.argv) > 1 else 1500
    # Byte-compiled, as a package installs it: a module whose .pyc is stale (or missing,
    # under PYTHONDONTWRITEBYTECODE=1) is compiled again by every start, and its compiler's
    # garbage stays in the idle RSS (1.5 MiB more, measured).
    compileall.compile_dir(str(ROOT / "qboot_systemd"), quiet=1)
    tcpserver = shutil.which("tcpserver")
    if tcpserver is None:
        sys.exit("tcpserver not installed: apt-get install ucspi-tcp-ipv6")
    with tempfile.TemporaryDirectory() as scratch:
        child = build_child(Path(scratch))
        cdb = Path(scratch) / "rules.cdb"
        rules.compile_file(rules_text(1000), cdb, cdb.with_suffix(".tmp"))
        flags = [
            "-1",
            "-HR",
            "-l",
            "x",
            "-c",
            "100",
            "-b",
            "256",
            "-x",
            str(cdb),
            "127.0.0.1",
            "0",
            *child,
        ]
        servers = {"ours": [OURS, *flags], "tcpserver": [tcpserver, *flags]}
        # Our Python loop, which serves what the ConnectionLoop does not (names, screening, limits)
        # and everything without the extension: the same flags, QBOOT_NO_EXTENSION=1.
        python_loop = {"QBOOT_NO_EXTENSION": "1"}
        print(f"{total} connections per round, {ROUNDS} interleaved rounds")
        print(
            f"{'conc':>4} {'of':>6} {'server':>10} {'conn/s':>8} "
            f"{'p50 ms':>7} {'p99 ms':>7} {'cpu us':>7}"
        )
        for concurrency in (1, 10, 50):
            rounds: dict[str, list[Figures]] = {name: [] for name in (*servers, "python")}
            for _ in range(ROUNDS):
                for name, argv, env in (
                    ("ours", servers["ours"], None),
                    ("tcpserver", servers["tcpserver"], None),
                    ("python", servers["ours"], python_loop),
                ):
                    rounds[name].append(measure(argv, env, total, concurrency))
            ours, theirs, python = rounds["ours"], rounds["tcpserver"], rounds["python"]
            show(concurrency, "median", median_figures(ours), median_figures(theirs))
            show(concurrency, "best", max(ours), max(theirs))
            show(concurrency, "py", median_figures(python), median_figures(theirs), "python")
        # RSS of ours as a package runs it (no development venv: its editable-install hook
        # imports pathlib, re and importlib.util into every process) and from the venv.
        packaged = [
            sys.executable,
            "-S",
            "-c",
            f"import sys; sys.path.insert(0, {str(ROOT)!r}); "
            "from qboot_systemd.tcpsrv.main import main; sys.exit(main())",
            *flags,
        ]
        for name, argv in (
            ("ours (as packaged)", packaged),
            ("ours (from the venv)", servers["ours"]),
            ("tcpserver", servers["tcpserver"]),
        ):
            process, _ = start(argv)
            time.sleep(0.5)
            print(f"idle RSS of {name}: {rss_kib(process.pid) / 1024:.1f} MiB")
            process.terminate()
            process.wait()
    print(
        "spawning /bin/true from Python, us per child:",
        ", ".join(f"{k} {v:.0f}" for k, v in spawn_methods().items()),
    )


if __name__ == "__main__":
    main()
