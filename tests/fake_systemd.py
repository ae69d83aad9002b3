"""A fake systemd for reconcile tests: its reload runs the generator into a directory, as
systemd would, and a tcp service's main process is a real process that keeps the stamp
(QBOOT_CONFIG) it was started with, so reconcile reads it from /proc as on a host."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from qboot_systemd import bootctrl, generator, journal, units
from qboot_systemd.apply import observe, stamps
from qboot_systemd.systemd import UnitState

SMTP = "qmail-tcpd@smtp.service"


class FakeSystemd:
    """What reconcile asks of systemd; reload runs the generator as systemd would."""

    def __init__(self, directory: Path, output: Path, running: bool) -> None:
        self.directory = directory
        self.output = output
        self.main: subprocess.Popen[bytes] | None = None
        if running:
            self.main = running_with(observe.loaded_hash(output, SMTP))
        self.socket_active = True
        self.calls: list[tuple[str, str]] = []

    def close(self) -> None:
        if self.main is not None:
            self.main.kill()
            self.main.wait()

    def reload(self) -> None:
        self.calls.append(("reload", ""))
        generate(self.directory, self.output)

    def active_units(self, _pattern: str) -> list[str]:
        return [f"qmail-tcpd@smtp.{kind}" for kind in ("socket", "service")]

    def state(self, unit: str) -> UnitState:
        if unit.endswith(".socket"):
            return UnitState(unit, "loaded", "active" if self.socket_active else "inactive", "")
        if unit == SMTP and self.main is not None:
            return UnitState(unit, "loaded", "active", "running", main_pid=self.main.pid)
        return UnitState(unit, "loaded", "inactive", "dead")

    def act(self, verb: str, unit: str) -> None:
        self.calls.append((verb, unit))
        if unit.endswith(".socket"):
            self.socket_active = verb != "stop"
        elif verb == "stop":
            self.close()
            self.main = None

    def queue_start(self, unit: str) -> None:
        self.calls.append(("start", unit))

    def queue_restart(self, unit: str) -> None:
        self.calls.append(("restart", unit))
        self.close()
        self.main = running_with(observe.loaded_hash(self.output, SMTP))


def generate(directory: Path, output: Path) -> None:
    if output.exists():
        subprocess.run(["rm", "-rf", str(output)], check=True)
    output.mkdir()
    generator.run(output, directory, directory.parent / "q", units.Paths(), "/dev/null")


def running_with(stamp: str) -> subprocess.Popen[bytes]:
    """A stand-in for the service's main process: it keeps the stamp it started with."""
    return subprocess.Popen(["sleep", "60"], env={stamps.STAMP_VARIABLE: stamp})


def model(directory: Path) -> bootctrl.Bootctrl:
    return stamps.load(directory, directory.parent / "q", check_accounts=True)


def dropins(output: Path) -> dict[str, bytes]:
    return {name: (output / name).read_bytes() for name in stamps.service_files("smtp")}


def stage_site(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, env: str
) -> tuple[Path, Path, Path]:
    """A bootctrl enabling smtp with `env` as its env file, the generator's output
    directory and reconcile's state directory (journal messages go nowhere)."""
    directory = tmp_path / "b"
    directory.mkdir()
    (directory / "qmail-tcpd").write_text("#!/bin/sh\n")
    (directory / "qmail-smtp.rc").symlink_to("qmail-tcpd")
    (directory / "tcprules-smtp.cdb").write_bytes(b"\0" * 2048)
    (directory / "qmail-smtp.env").write_text(env)
    state = tmp_path / "state"
    monkeypatch.setenv("QBOOT_STATE_DIR", str(state))
    monkeypatch.setenv("QBOOT_PERSIST_DIR", str(tmp_path / "var-lib-qboot"))
    sent: list[tuple[str, str]] = []
    monkeypatch.setattr(journal, "send", lambda text, unit, _p: sent.append((unit, text)))
    return directory, tmp_path / "output", state
