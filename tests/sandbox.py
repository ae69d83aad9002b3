"""A real systemd as PID 1 in a throwaway container, for end-to-end tests.

The container's root is an overlay of the host's / over a tmpfs: everything the booted
system writes (tmpfiles, journal, our units) lands in RAM and is gone at teardown; the
host's /tmp, /etc and /var are never touched. It has its own loopback network. Steps and
pitfalls: ../shared/reference/systemd.md ("A real systemd for tests").
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

CGROUP_ROOTS = (Path("/sys/fs/cgroup/systemd"), Path("/sys/fs/cgroup/unified"))

BOOT_SCRIPT = r"""
set -eu
work="$1"; stage="$2"; name="$3"; project="$4"
mount -t tmpfs -o mode=0755 tmpfs "$work"
mkdir "$work/upper" "$work/work" "$work/root"
mount -t overlay overlay -o "lowerdir=/,upperdir=$work/upper,workdir=$work/work" "$work/root"
# nspawn keeps its state in /run, which is on disk here: give this namespace its own.
mount -t tmpfs -o mode=0755 tmpfs /run
# Numeric owners: the staged qmail accounts exist only in the stage's /etc/passwd.
tar -C "$stage" --numeric-owner -cf - . \
    | tar -C "$work/root" --numeric-owner -xpf - --no-overwrite-dir
for root in /sys/fs/cgroup/systemd /sys/fs/cgroup/unified; do
    if [ -d "$root" ]; then mkdir -p "$root/$name"; echo $$ > "$root/$name/cgroup.procs"; fi
done
# `systemctl reboot` inside ends nspawn with 133 (systemd-nspawn@.service restarts on it):
# boot the same overlay again, so what the container wrote stays and its /run is new.
# SIGTERM (stop) goes on to nspawn, which powers the container off.
child=""
trap 'kill -TERM "$child" 2>/dev/null || :' TERM
while :; do
    # The project (its venv, the generator's interpreter) at the same path inside, even
    # when the checkout lives under /tmp, which the container gets empty.
    systemd-nspawn -q -D "$work/root" -M "$name" --boot --private-network \
        --bind-ro="$project" \
        --register=no --keep-unit --link-journal=no --resolv-conf=off --timezone=off \
        --console=read-only systemd.mask=postgresql.service &
    child=$!
    status=0
    while kill -0 "$child" 2>/dev/null; do  # a trapped SIGTERM interrupts wait: again
        status=0
        wait "$child" || status=$?
    done
    [ "$status" = 133 ] || exit "$status"
done
"""


class SandboxError(RuntimeError):
    pass


def missing_requirements() -> str | None:
    """Why a sandbox cannot run here, or None."""
    if os.geteuid() != 0:
        return "not root"
    for tool in ("systemd-nspawn", "unshare", "nsenter"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (package systemd-container / util-linux)"
    if "overlay" not in Path("/proc/filesystems").read_text():
        return "overlayfs is not available"
    return None


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status  # a zombie owner is dead too


def reap_stale() -> list[str]:
    """Sandboxes whose test process was killed (timeout, Ctrl-C) before teardown: their
    cgroups are named qboot-<owner pid>-N, so a dead owner marks them as ours to end."""
    reaped = []
    for directory in sorted(CGROUP_ROOTS[0].glob("qboot-*-*")):
        owner = directory.name.split("-")[1]
        if not owner.isdigit() or _alive(int(owner)):
            continue
        stale = Sandbox.__new__(Sandbox)
        stale.name, stale.process = directory.name, None
        stale.work = Path("/nonexistent")
        stale.log_path = Path("/nonexistent")
        for pid in stale._cgroup_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)
        reaped.append(directory.name)
        stale.stop()
        for leftover in Path(tempfile.gettempdir()).glob(f"qboot-sandbox.{directory.name}.*"):
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)
    return reaped


class Sandbox:
    def __init__(self, stage: Path, project: Path, name: str | None = None) -> None:
        self.project = project
        self.name = name or f"qboot-{os.getpid()}-{int(time.monotonic() * 1000) % 100000}"
        self.work = Path(tempfile.mkdtemp(prefix=f"qboot-sandbox.{self.name}."))
        self.stage = stage
        self.log_path = self.work.with_name(self.work.name + ".console")
        self.process: subprocess.Popen[bytes] | None = None
        self.pid1 = 0

    # --- life cycle --------------------------------------------------------------------
    def start(self, timeout: float = 60) -> None:
        reap_stale()
        with open(self.log_path, "wb") as console:
            self.process = subprocess.Popen(
                [
                    "unshare",
                    "--mount",
                    "--propagation",
                    "private",
                    "sh",
                    "-c",
                    BOOT_SCRIPT,
                    "sandbox",
                    str(self.work),
                    str(self.stage),
                    self.name,
                    str(self.project),
                ],
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._wait_booted(time.monotonic() + timeout)

    def reboot(self, timeout: float = 90) -> None:
        """`systemctl reboot` inside: the same disk (what the container wrote to its root
        stays), a new PID 1, an empty /run."""
        before = self.pid1
        self.run("systemctl", "reboot", check=False)
        self._wait_booted(time.monotonic() + timeout, before)

    def _wait_booted(self, deadline: float, old_pid1: int = 0) -> None:
        self.pid1 = 0
        while not self.pid1:
            self._check_alive()
            found = self._find_pid1()
            self.pid1 = found if found != old_pid1 else 0
            if time.monotonic() > deadline:
                raise SandboxError(f"no systemd in the container: {self.console()}")
            time.sleep(0.05)
        while True:
            state = self.run("systemctl", "is-system-running", check=False).stdout.strip()
            if state in ("running", "degraded"):
                return
            if time.monotonic() > deadline:
                raise SandboxError(f"system did not come up ({state}): {self.console()}")
            time.sleep(0.1)

    def _check_alive(self) -> None:
        assert self.process is not None
        if self.process.poll() is not None:
            raise SandboxError(f"container exited: {self.console()}")

    def _find_pid1(self) -> int:
        assert self.process is not None
        for pid in self._cgroup_pids():
            try:
                comm = Path(f"/proc/{pid}/comm").read_text().strip()
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            nspid = next(
                (line.split()[1:] for line in status.splitlines() if line.startswith("NSpid:")), []
            )
            if comm == "systemd" and nspid[-1:] == ["1"]:
                return pid
        return 0

    def _cgroup_pids(self) -> list[int]:
        pids: set[int] = set()
        for root in CGROUP_ROOTS:
            directory = root / self.name
            if not directory.is_dir():
                continue
            # os.walk, not rglob: cgroups vanish while the container shuts down or reboots.
            for parent, _, files in os.walk(directory):
                if "cgroup.procs" not in files:
                    continue
                try:
                    pids.update(int(p) for p in Path(parent, "cgroup.procs").read_text().split())
                except OSError:
                    continue
        return sorted(pids)

    def console(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def stop(self) -> list[str]:
        """Stop the container and remove every trace; returns what was left (should be [])."""
        if self.process is not None:
            deadline = time.monotonic() + 20
            while self.process.poll() is None and time.monotonic() < deadline:
                # nspawn turns SIGTERM into a clean poweroff of the container; a signal
                # sent before PID 1 is ready is lost, so repeat it every second.
                try:
                    os.kill(self.process.pid, signal.SIGTERM)
                except ProcessLookupError:
                    break
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.process.wait(1)
            for pid in self._cgroup_pids():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            if self.process.poll() is None:
                self.process.kill()
            self.process.wait(10)
        left: list[str] = []
        for root in CGROUP_ROOTS:
            directory = root / self.name
            if directory.is_dir():
                for sub in sorted(directory.rglob("*"), key=lambda p: -len(p.parts)):
                    if sub.is_dir():
                        try:
                            sub.rmdir()
                        except OSError:
                            left.append(str(sub))
                try:
                    directory.rmdir()
                except OSError:
                    left.append(str(directory))
        shutil.rmtree(self.work, ignore_errors=True)
        self.log_path.unlink(missing_ok=True)
        if self.work.exists():
            left.append(str(self.work))
        return left

    # --- inside ------------------------------------------------------------------------
    def run(
        self, *argv: str, check: bool = True, timeout: float = 60, input: bytes | None = None
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            ["nsenter", "-t", str(self.pid1), "-a", *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            input=input.decode() if input is not None else None,
        )
        if check and done.returncode != 0:
            raise SandboxError(
                f"{' '.join(argv)}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
            )
        return done


def show(box: Sandbox, unit: str, prop: str) -> str:
    """A unit's property as `systemctl show -P` prints it, inside the sandbox."""
    return box.run("systemctl", "show", "-P", prop, unit).stdout.strip()


def wait_until(condition: Callable[[], object], timeout: float = 20, interval: float = 0.1) -> bool:
    """Poll condition until it is true (True) or timeout seconds have passed (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return False
