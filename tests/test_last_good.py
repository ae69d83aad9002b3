"""Last good drop-ins beyond broken files: an unknown USER=/GROUP= (the reconcile looks the
accounts up before it applies anything; the generator never does), and a reboot (the
reconcile keeps a copy on disk and brings it back into the emptied /run).

systemd is played by a fake manager whose reload runs the generator into a directory, and
the running service by a process started with the stamp the good settings had.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from qboot_systemd import __version__, accounts, units
from qboot_systemd.apply import lastgood, observe, plan, reconcile, stamps

from .fake_systemd import SMTP, FakeSystemd, dropins, generate, model, stage_site

GOOD = "PORT=2525\n"
UNKNOWN = "PORT=2525\nUSER=qboot-no-such-user\n"
PROBLEM = 'qmail-smtp.env:2: unknown user "qboot-no-such-user" (USER=)'


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, Path, Path]]:
    yield stage_site(tmp_path, monkeypatch, GOOD)


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
        assert stamps.read_refused(state) == {
            "smtp": stamps.config_hash(model(directory).services[0], str(directory))
        }
        (broken,) = observe.broken_services(model(directory), output)
        assert broken.kept and [str(p).split("/")[-1] for p in broken.problems] == [
            f"{PROBLEM}: no such user on this system; create it or fix the name"
        ]
        notes = observe.status_notes(
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
        assert stamps.read_refused(state) == {}
        assert observe.broken_services(model(directory), output) == []
    finally:
        manager.close()


def test_a_fresh_service_with_an_unknown_user_is_not_started_and_says_why(
    site: tuple[Path, Path, Path],
) -> None:
    directory, output, state = site
    (directory / "qmail-smtp.env").write_text(UNKNOWN)
    generate(directory, output)  # boot: no last good settings yet
    manager = FakeSystemd(directory, output, False)
    (broken,) = observe.broken_services(model(directory), output)
    assert not broken.kept  # what is loaded is these very settings
    outcome = reconcile.reconcile(manager, model(directory), output, state)  # type: ignore[arg-type]
    assert outcome.lines == ("stopped smtp (unknown account: see qbootctl status)",)
    assert manager.calls[0] == ("reload", "")
    assert not (output / f"{SMTP}.d").exists()  # not generated: nothing crash-loops
    notes = observe.status_notes(
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
    lastgood.remember(output, state, [plan.Observed("smtp", True, True, True, True, "", None)])
    good = dropins(output)
    (directory / "qmail-smtp.env").write_text(UNKNOWN)
    assert lastgood.refuse_unknown_accounts(model(directory), state)
    assert not lastgood.refuse_unknown_accounts(model(directory), state)  # unchanged: no reload
    generate(directory, output)
    assert dropins(output) == good
    # Another edit (still the unknown user): refused again only once the reconcile says so.
    (directory / "qmail-smtp.env").write_text(UNKNOWN + "setenv DATABYTES 1000\n")
    generate(directory, output)
    assert b"DATABYTES" in dropins(output)[f"{SMTP}.d/{units.DROPIN_NAME}"]
    # Garbage in the marks never breaks the generator.
    (state / stamps.REFUSED / "smtp").write_bytes(b"\xff\xfe")
    generate(directory, output)
    assert b"DATABYTES" in dropins(output)[f"{SMTP}.d/{units.DROPIN_NAME}"]


# --- across a reboot ----------------------------------------------------------------------
def reboot(directory: Path, output: Path, state: Path) -> FakeSystemd:
    """/run is emptied, the generator runs at boot, sockets.target starts what it made."""
    subprocess.run(["rm", "-rf", str(state)], check=True)
    generate(directory, output)
    manager = FakeSystemd(directory, output, False)
    manager.socket_active = (output / f"{SMTP}.d").exists()
    return manager


@pytest.mark.parametrize(
    ("broken", "generated_at_boot"), [('PORT=2525\nBANNER="oops\n', False), (UNKNOWN, True)]
)
def test_a_broken_service_runs_its_last_good_settings_after_a_reboot(
    site: tuple[Path, Path, Path], broken: str, generated_at_boot: bool
) -> None:
    directory, output, state = site
    persist = lastgood.persist_dir()
    generate(directory, output)
    manager = FakeSystemd(directory, output, True)
    try:
        reconcile.reconcile(manager, model(directory), output, state)  # type: ignore[arg-type]
    finally:
        manager.close()
    good = dropins(output)
    assert lastgood.load(persist, "smtp", stamps.service_files("smtp")) == good
    (directory / "qmail-smtp.env").write_text(broken)
    manager = reboot(directory, output, state)
    assert manager.socket_active == generated_at_boot
    outcome = reconcile.reconcile(manager, model(directory), output, state)  # type: ignore[arg-type]
    if generated_at_boot:  # its socket is up already: the service starts on the old settings
        assert (outcome.lines, manager.calls) == ((), [("reload", "")])
    else:
        assert manager.calls == [("reload", ""), ("start", "qmail-tcpd@smtp.socket")]
        assert outcome.lines == (
            "started qmail-tcpd@smtp.socket (last good settings kept on disk)",
        )
    assert dropins(output) == good and manager.socket_active
    (found,) = observe.broken_services(model(directory), output)
    assert found.kept
    # Fixed: the new settings run and are kept from now on; disabled: forgotten.
    (directory / "qmail-smtp.env").write_text("PORT=2526\n")
    generate(directory, output)
    reconcile.reconcile(manager, model(directory), output, state)  # type: ignore[arg-type]
    assert lastgood.load(persist, "smtp", stamps.service_files("smtp")) == dropins(output)
    (directory / "qmail-smtp.rc").unlink()
    generate(directory, output)
    reconcile.reconcile(manager, model(directory), output, state)  # type: ignore[arg-type]
    assert lastgood.load(persist, "smtp", stamps.service_files("smtp")) is None
    assert not (persist / "last-good" / "smtp.json").exists()


def test_without_a_copy_on_disk_a_broken_service_stays_down_after_a_reboot(
    site: tuple[Path, Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    directory, output, state = site
    monkeypatch.setenv("QBOOT_PERSIST_DIR", "/proc/no-such-dir")  # not writable: warned
    generate(directory, output)
    manager = FakeSystemd(directory, output, True)
    try:
        reconcile.reconcile(manager, model(directory), output, state)  # type: ignore[arg-type]
    finally:
        manager.close()
    (directory / "qmail-smtp.env").write_text('BANNER="oops\n')
    manager = reboot(directory, output, state)
    outcome = reconcile.reconcile(manager, model(directory), output, state)  # type: ignore[arg-type]
    assert (outcome.lines, manager.calls) == ((), [])
    (found,) = observe.broken_services(model(directory), output)
    assert not found.kept


def test_what_is_kept_on_disk_is_used_only_as_written(tmp_path: Path) -> None:
    wanted = stamps.service_files("smtp")
    files = {name: f"[Unit]\n# {name}\n".encode() for name in wanted}
    files[wanted[0]] += b"\xff not UTF-8\n"
    base = tmp_path / "qboot"
    assert lastgood.save(base, "smtp", files)
    assert not lastgood.save(base, "smtp", files)  # unchanged: not written again
    assert lastgood.load(base, "smtp", wanted) == files
    assert lastgood.load(base, "smtp", wanted[:2]) is None  # not the files asked for
    entry = base / "last-good" / "smtp.json"
    assert oct(entry.stat().st_mode & 0o777) == "0o600"
    text = entry.read_text()
    entry.write_text(text.replace(__version__, "0.0.0"))  # another version's
    assert lastgood.load(base, "smtp", wanted) is None
    for garbage in (b"", b"\0" * 10, b"[]", b'{"qboot-systemd": 1}', b"\xff"):
        entry.write_bytes(garbage)
        assert lastgood.load(base, "smtp", wanted) is None
    entry.write_text(text)
    (base / "last-good").chmod(0o777)  # writable by others: its files could run as root
    assert lastgood.load(base, "smtp", wanted) is None
    (base / "last-good").chmod(0o700)
    entry.unlink()
    entry.symlink_to(tmp_path / "elsewhere.json")
    (tmp_path / "elsewhere.json").write_text(text)
    assert lastgood.load(base, "smtp", wanted) is None  # never followed
    entry.unlink()
    entry.write_bytes(b" " * (lastgood.MAX_BYTES + 1))
    assert lastgood.load(base, "smtp", wanted) is None
    assert lastgood.remove(base, "smtp") and not lastgood.remove(base, "smtp")
    assert lastgood.forget_all(base) and not base.exists()
