"""The small things an admin meets around health: the shipped env files (every service's
chain unprivileged, no socket restart after an edit), a reconcile that says a thing
once, stop-all listing what systemd runs, the packages saying how to start and stopping
everything of ours on removal."""

from __future__ import annotations

from pathlib import Path

import pytest

from qboot_systemd import admin, bootctrl, units
from qboot_systemd.apply import observe, reconcile, stamps
from qboot_systemd.systemd import UnitState

from .bootctrl_trees import copy_shipped
from .conftest import ROOT, SHIPPED_BOOTCTRL
from .fake_systemd import SMTP, FakeSystemd, generate, model, running_with, stage_site

SHIPPED_SERVICES = sorted(
    path.name.removeprefix("qmail-").removesuffix(".env")
    for path in SHIPPED_BOOTCTRL.glob("qmail-*.env")
)


def test_every_shipped_service_runs_its_chain_unprivileged(tmp_path: Path) -> None:
    """`ln -s qmail-tcpd qmail-subm.rc` as the seed says: qmail-smtpd must not run as root
    (no USER= meant root; root is now said in the file, USER=root, when a chain needs it)."""
    directory = copy_shipped(tmp_path)  # with set modes: not the checkout's (umask 002)
    ports = {"smtp": 2525, "subm": 2587, "qmtp": 2209, "smtps": 2465}
    for name in SHIPPED_SERVICES:
        if not (directory / f"qmail-{name}.rc").exists():
            (directory / f"qmail-{name}.rc").symlink_to("qmail-tcpd")
        if not (directory / f"tcprules-{name}.cdb").exists():
            (directory / f"tcprules-{name}.cdb").symlink_to("tcprules-default.cdb")
        env = directory / f"qmail-{name}.env"
        env.write_text(env.read_text().replace("\nPORT=", f"\nPORT={ports[name]}\n#PORT="))
    loaded = bootctrl.load(directory, "/var/qmail")
    assert loaded.problems == ()
    assert sorted(s.name for s in loaded.services) == SHIPPED_SERVICES == sorted(ports)
    for service in loaded.services:
        assert (service.user, service.group) == ("qmaild", "nofiles"), service.name
        argv = units.tcpsrv_argv(service, units.Paths())
        assert argv[argv.index("-u") + 1] == "qmaild", service.name


@pytest.mark.parametrize("name", SHIPPED_SERVICES)
def test_shipped_env_files_say_a_daemon_reload_is_enough(name: str) -> None:
    """A socket restart refuses connections for a moment, and is not needed: the
    reconcile after a plain daemon-reload moves the port."""
    text = (SHIPPED_BOOTCTRL / f"qmail-{name}.env").read_text()
    assert "restart qmail-tcpd@" not in text and ".socket" not in text
    assert "After a change: systemctl daemon-reload" in "\n".join(text.splitlines()[:5])


class RestartsAfterTheReconcile(FakeSystemd):
    """A tcp service's restart job is ordered after qboot-reconcile.service: while the
    reconcile runs, the old process goes on."""

    def __init__(self, directory: Path, output: Path, running: bool) -> None:
        super().__init__(directory, output, running)
        self.queued: list[str] = []

    def queue_restart(self, unit: str) -> None:
        self.calls.append(("restart", unit))
        self.queued.append(unit)

    def run_queued_jobs(self) -> None:
        for _ in self.queued:
            self.close()
            self.main = running_with(observe.loaded_hash(self.output, SMTP))
        self.queued.clear()


def test_a_queued_restart_is_logged_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    directory, output, state = stage_site(tmp_path, monkeypatch, "PORT=2525\n")
    sent: list[tuple[str, str]] = []
    monkeypatch.setattr(reconcile.journal, "send", lambda text, unit, _p: sent.append((unit, text)))
    generate(directory, output)
    manager = RestartsAfterTheReconcile(directory, output, True)
    try:
        assert reconcile.reconcile(manager, model(directory), output, state).lines == ()  # type: ignore[arg-type]
        (directory / "qmail-smtp.env").write_text("PORT=2525\nsetenv DATABYTES 1000\n")
        generate(directory, output)
        outcome = reconcile.reconcile(manager, model(directory), output, state)  # type: ignore[arg-type]
        message = f"restarted {SMTP} (command or environment changed)"
        assert outcome.lines == (message,)
        assert manager.calls == [("restart", SMTP)]
        assert sent == [((SMTP, stamps.RECONCILE_UNIT), message)]
        manager.run_queued_jobs()
        manager.calls.clear()
        assert reconcile.reconcile(manager, model(directory), output, state).lines == ()  # type: ignore[arg-type]
        assert manager.calls == []
    finally:
        manager.close()


def test_stop_all_is_what_systemd_runs_and_what_bootctrl_enables(tmp_path: Path) -> None:
    """A degraded service (broken files, last good settings) and one whose unit files are
    gone (not-found) are stopped too: stop-all and the package's removal list systemd's
    units, not only bootctrl's services."""
    directory = tmp_path / "b"
    directory.mkdir()
    (directory / "qmail-tcpd").write_text("#!/bin/sh\n")
    (directory / "qmail-init.rc").write_text("#!/bin/sh\n")
    (directory / "qmail-smtp.rc").symlink_to("qmail-tcpd")
    (directory / "tcprules-smtp.cdb").write_bytes(b"\0" * 2048)
    (directory / "qmail-subm.rc").symlink_to("qmail-tcpd")
    (directory / "qmail-subm.env").write_text("PORT=25x\n")  # broken: runs its last good
    loaded = stamps.load(directory, tmp_path / "q")
    assert [s.name for s in loaded.services] == ["smtp"]
    systemd_has = [
        "qmail-tcpd@gone.service",  # not-found active running
        "qmail-tcpd@subm.service",
        "qmail-tcpd@subm.socket",
        "qmail-tcpd@x;y.socket",  # no service name of ours: never acted on
    ]
    running = admin.running_names(systemd_has)
    assert running == ["gone", "subm"]
    targets = admin.everything(loaded, running, send_running=True)
    assert [t.name for t in targets] == ["send", "gone", "smtp", "subm"]
    assert admin.unit_jobs("stop", targets[1]) == [
        ("stop", "qmail-tcpd@gone.service"),
        ("stop", "qmail-tcpd@gone.socket"),
    ]
    nothing = bootctrl.Bootctrl("", "", None, ())  # no bootctrl at all: systemd says
    assert [t.name for t in admin.everything(nothing, running, False)] == ["gone", "subm"]


def test_the_packages_say_how_to_start_and_stop_everything_on_removal() -> None:
    """dpkg -i starts nothing: it says how. Removal stops what systemd runs of ours
    (qbootctl stop lists systemd's units) in every package, not only the deb."""
    packaging = ROOT / "packaging"
    for script in (
        packaging / "debian/postinst",
        packaging / "rpm/qboot-systemd.spec",
        packaging / "arch/qboot-systemd.install",
    ):
        assert "start mail with: eqmaild start (or: qbootctl start)" in (
            script.read_text().replace('" \\\n        "', " ").replace('" \\\n            "', " ")
        ), script
    prerm = (packaging / "debian/prerm").read_text()
    spec = (packaging / "rpm/qboot-systemd.spec").read_text()
    arch = (packaging / "arch/qboot-systemd.install").read_text()
    assert "qbootctl stop" in prerm
    assert "qbootctl stop" in spec.split("%preun", 1)[1].split("%postun", 1)[0]
    assert "qbootctl stop" in arch.split("pre_remove()", 1)[1].split("}", 1)[0]


def test_status_shows_the_old_port_until_the_reload_and_the_new_one_pending() -> None:
    """Before the reload the socket still listens on 587 while bootctrl says 2587:
    both are shown, the new one as pending."""

    def socket(*listen: str) -> UnitState:
        return UnitState("qmail-tcpd@subm.socket", "loaded", "active", "listening", listen=listen)

    service = UnitState(SMTP, "loaded", "active", "running")
    entry = admin.Status(admin.target("subm"), True, (socket("[::]:587"), service), None)
    assert entry.listening() == ("587",)
    other = socket("127.0.0.1:2587", "[::1]:2587")
    assert admin.Status(entry.target, True, (other, service), None).listening() == (
        "127.0.0.1:2587",
        "[::1]:2587",
    )
