"""An unknown USER=/GROUP= on a running service: the reconcile looks the accounts up before
it applies anything, and keeps the last good drop-ins (the generator never looks them up).

systemd is played by a fake manager whose reload runs the generator into a directory, and
the running service by a process started with the stamp the good settings had.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from qboot_systemd import accounts, bootctrl, convergence, generator, journal, reconcile, units
from qboot_systemd.systemd import UnitState

SMTP = "qmail-tcpd@smtp.service"
GOOD = "PORT=2525\n"
UNKNOWN = "PORT=2525\nUSER=qboot-no-such-user\n"
PROBLEM = 'qmail-smtp.env:2: unknown user "qboot-no-such-user" (USER=)'


class FakeSystemd:
    """What reconcile asks of systemd; reload runs the generator as systemd would."""

    def __init__(self, directory: Path, output: Path, running: bool) -> None:
        self.directory = directory
        self.output = output
        self.main: subprocess.Popen[bytes] | None = None
        if running:
            self.main = running_with(reconcile.loaded_hash(output, SMTP))
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
        if verb == "stop" and unit.endswith(".socket"):
            self.socket_active = False
        elif verb == "stop":
            self.close()
            self.main = None

    def start(self, unit: str) -> None:
        self.calls.append(("start", unit))

    def queue_restart(self, unit: str) -> None:
        self.calls.append(("restart", unit))
        self.close()
        self.main = running_with(reconcile.loaded_hash(self.output, SMTP))


def generate(directory: Path, output: Path) -> None:
    if output.exists():
        subprocess.run(["rm", "-rf", str(output)], check=True)
    output.mkdir()
    generator.run(output, directory, directory.parent / "q", units.Paths(), "/dev/null")


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, Path, Path]]:
    directory = tmp_path / "b"
    directory.mkdir()
    (directory / "qmail-tcpd").write_text("#!/bin/sh\n")
    (directory / "qmail-smtp.rc").symlink_to("qmail-tcpd")
    (directory / "tcprules-smtp.cdb").write_bytes(b"\0" * 2048)
    (directory / "qmail-smtp.env").write_text(GOOD)
    state = tmp_path / "state"
    monkeypatch.setenv("QBOOT_STATE_DIR", str(state))
    sent: list[tuple[str, str]] = []
    monkeypatch.setattr(journal, "send", lambda text, unit, _p: sent.append((unit, text)))
    yield directory, tmp_path / "output", state


def running_with(stamp: str) -> subprocess.Popen[bytes]:
    """A stand-in for the service's main process: it keeps the stamp it started with."""
    return subprocess.Popen(["sleep", "60"], env={convergence.STAMP_VARIABLE: stamp})


def model(directory: Path) -> bootctrl.Bootctrl:
    return convergence.load(directory, directory.parent / "q", check_accounts=True)


def dropins(output: Path) -> dict[str, bytes]:
    return {name: (output / name).read_bytes() for name in convergence.service_files("smtp")}


def test_an_unknown_user_keeps_the_last_good_drop_ins(
    site: tuple[Path, Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    directory, output, state = site
    generate(directory, output)  # boot
    good = dropins(output)
    manager = FakeSystemd(directory, output, True)
    try:
        first = reconcile.reconcile(manager, model(directory), output, state)  # type: ignore[arg-type]
        assert (first.lines, manager.calls) == ((), [])  # runs what is loaded: remembered
        # The admin's edit and plain daemon-reload: the generator does not look names up.
        (directory / "qmail-smtp.env").write_text(UNKNOWN)
        generate(directory, output)
        assert b"qboot-no-such-user" in (output / f"{SMTP}.d/{units.DROPIN_NAME}").read_bytes()
        outcome = reconcile.reconcile(manager, model(directory), output, state)  # type: ignore[arg-type]
        # Refused before anything was applied: one reload, no restart.
        assert manager.calls == [("reload", "")]
        assert outcome.lines == () and not outcome.failed
        assert dropins(output) == good  # systemd loaded the last good settings again
        assert convergence.read_refused(state) == {
            "smtp": convergence.config_hash(model(directory).services[0], str(directory))
        }
        (broken,) = reconcile.broken_services(model(directory), output)
        assert broken.kept and [str(p).split("/")[-1] for p in broken.problems] == [
            f"{PROBLEM}: no such user on this system; create it or fix the name"
        ]
        notes = reconcile.status_notes(
            model(directory),
            "smtp",
            manager.state("qmail-tcpd@smtp.socket"),
            manager.state(SMTP),
            output,
        )
        assert len(notes) == 1 and notes[0].startswith("degraded, runs its last good settings: ")
        assert notes[0].endswith(
            f"{PROBLEM}: no such user on this system; create it or fix the name"
        )
        # A later reload with the same files: the same last good settings, no reload loop.
        generate(directory, output)
        assert dropins(output) == good
        manager.calls.clear()
        assert reconcile.reconcile(manager, model(directory), output, state).lines == ()  # type: ignore[arg-type]
        assert manager.calls == []
        # The account is created (no edit): the mark goes, the new settings are applied.
        monkeypatch.setattr(accounts, "user_exists", lambda name: True)
        outcome = reconcile.reconcile(manager, model(directory), output, state)  # type: ignore[arg-type]
        assert manager.calls == [("reload", ""), ("restart", SMTP)]
        assert convergence.read_refused(state) == {}
        assert reconcile.broken_services(model(directory), output) == []
    finally:
        manager.close()


def test_a_fresh_service_with_an_unknown_user_is_not_started_and_says_why(
    site: tuple[Path, Path, Path],
) -> None:
    directory, output, state = site
    (directory / "qmail-smtp.env").write_text(UNKNOWN)
    generate(directory, output)  # boot: no last good settings yet
    manager = FakeSystemd(directory, output, False)
    (broken,) = reconcile.broken_services(model(directory), output)
    assert not broken.kept  # what is loaded is these very settings
    outcome = reconcile.reconcile(manager, model(directory), output, state)  # type: ignore[arg-type]
    assert outcome.lines == ("stopped smtp (unknown account: see qbootctl status)",)
    assert manager.calls[0] == ("reload", "")
    assert not (output / f"{SMTP}.d").exists()  # not generated: nothing crash-loops
    notes = reconcile.status_notes(
        model(directory),
        "smtp",
        manager.state("qmail-tcpd@smtp.socket"),
        manager.state(SMTP),
        output,
    )
    assert [note.split("/")[0] for note in notes] == ["broken: "]
    assert PROBLEM in notes[0]


def test_the_generator_emits_the_last_good_drop_ins_for_refused_settings_only(
    site: tuple[Path, Path, Path],
) -> None:
    directory, output, state = site
    generate(directory, output)
    reconcile.remember(
        output, state, [convergence.Observed("smtp", True, True, True, True, "", None)]
    )
    good = dropins(output)
    (directory / "qmail-smtp.env").write_text(UNKNOWN)
    assert reconcile.refuse_unknown_accounts(model(directory), state)
    assert not reconcile.refuse_unknown_accounts(model(directory), state)  # unchanged: no reload
    generate(directory, output)
    assert dropins(output) == good
    # Another edit (still the unknown user): refused again only once the reconcile says so.
    (directory / "qmail-smtp.env").write_text(UNKNOWN + "setenv DATABYTES 1000\n")
    generate(directory, output)
    assert b"DATABYTES" in dropins(output)[f"{SMTP}.d/{units.DROPIN_NAME}"]
    # Garbage in the marks never breaks the generator.
    (state / convergence.REFUSED / "smtp").write_bytes(b"\xff\xfe")
    generate(directory, output)
    assert b"DATABYTES" in dropins(output)[f"{SMTP}.d/{units.DROPIN_NAME}"]
