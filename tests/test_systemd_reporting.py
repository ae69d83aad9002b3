"""How qbootctl and eqmaild word what systemd says (pure parts; the sandbox tests run them)."""

from __future__ import annotations

from qboot_systemd import admin
from qboot_systemd.systemd import JobFailed, UnitState, _refusal


def test_refusal_keeps_systemd_words_only() -> None:
    raw = Exception(
        "b'org.freedesktop.systemd1.BadUnitSetting'[err -8]: b'Unit x.socket has a bad unit "
        "file setting.'\nThis is DBusBaseError, a base error for DBus (i bet you did not see "
        "that coming) ..."
    )
    assert _refusal(raw) == "Unit x.socket has a bad unit file setting."
    assert _refusal(Exception("plain words")) == "plain words"


def test_job_failed_names_the_result_or_the_sub_state() -> None:
    crashed = UnitState("a.service", "loaded", "activating", "auto-restart", "exit-code")
    assert str(JobFailed("a.service", crashed, "")) == "a.service: activating (exit-code)"
    between = UnitState("a.service", "loaded", "activating", "auto-restart", "success")
    assert (
        str(JobFailed("a.service", between, "", "did not stay up"))
        == "a.service: activating (auto-restart), did not stay up"
    )


def test_plans_start_the_service_too_and_keep_the_socket_on_restart() -> None:
    smtp = admin.target("smtp")
    socket, service = "qmail-tcpd@smtp.socket", "qmail-tcpd@smtp.service"
    assert admin.unit_jobs("start", smtp) == [("start", socket), ("start", service)]
    assert admin.unit_jobs("restart", smtp) == [("start", socket), ("restart", service)]
    assert admin.unit_jobs("stop", smtp) == [("stop", service), ("stop", socket)]
    assert admin.unit_jobs("reload", admin.target("send")) == [("reload", "qmail-send.service")]


def test_a_crash_loop_is_not_running() -> None:
    """Restart=always never lets the service fail: between restarts it is activating."""
    socket = UnitState("a.socket", "loaded", "active", "running")

    def entry(active: str, sub: str, result: str) -> admin.Status:
        service = UnitState("a.service", "loaded", active, sub, result)
        return admin.Status(admin.target("a"), True, (socket, service), None)

    assert not entry("activating", "auto-restart", "success").running
    assert not entry("activating", "start", "exit-code").running
    assert not entry("failed", "failed", "start-limit-hit").running
    assert entry("inactive", "dead", "success").running  # waits for its first connection
    assert entry("activating", "start", "success").running  # starting
    assert entry("active", "running", "success").running
    assert entry("reloading", "reload", "success").running
