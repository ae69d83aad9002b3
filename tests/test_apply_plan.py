"""What the reconcile plans from what systemd reports, and what status says about drift:
pure functions, no systemd."""

from __future__ import annotations

import os
import socket
import sys

from qboot_systemd import listening
from qboot_systemd.apply import plan
from qboot_systemd.apply.plan import Observed, Step, Verb


def observed(**changes: object) -> Observed:
    base: dict[str, object] = {
        "name": "smtp",
        "generated": True,
        "applied_before": True,
        "socket_active": True,
        "service_active": True,
        "loaded_hash": "new",
        "running_hash": "new",
        "wanted": frozenset({("::", 25)}),
        "bound": frozenset({("::", 25)}),
        "held": frozenset({("::", 25)}),
    }
    return Observed(**(base | changes))  # type: ignore[arg-type]


def steps(item: Observed) -> list[tuple[str, str]]:
    change = plan.change_for(item)
    return [(step.verb.value, step.unit) for step in change.steps] if change else []


def test_plan_touches_nothing_that_did_not_change() -> None:
    assert steps(observed()) == []
    assert steps(observed(service_active=False, running_hash=None, held=frozenset())) == []


def test_plan_listen_change_restarts_socket_between_service_stop_and_start() -> None:
    moved = observed(wanted=frozenset({("::", 2525)}), bound=frozenset())
    assert steps(moved) == [
        ("stop", "qmail-tcpd@smtp.service"),
        ("restart", "qmail-tcpd@smtp.socket"),
        ("start", "qmail-tcpd@smtp.service"),
    ]
    change = plan.change_for(moved)
    assert change is not None and change.message.endswith("[::]:25 -> [::]:2525")
    idle = observed(
        wanted=frozenset({("::", 2525)}), bound=frozenset(), service_active=False, held=frozenset()
    )
    assert steps(idle) == [("restart", "qmail-tcpd@smtp.socket")]
    assert [step.waits for step in plan.change_for(moved).steps] == [True, True, False]


def test_plan_command_or_environment_change_restarts_only_the_service() -> None:
    assert steps(observed(running_hash="old")) == [("restart", "qmail-tcpd@smtp.service")]


def test_plan_new_removed_and_stopped_by_the_admin() -> None:
    new = observed(applied_before=False, socket_active=False, service_active=False)
    assert steps(new) == [("start", "qmail-tcpd@smtp.socket")]
    stopped = observed(socket_active=False, service_active=False)
    assert steps(stopped) == []  # a reload does not undo `qbootctl stop`
    failed = observed(socket_active=False, service_active=False, socket_failed=True)
    assert steps(failed) == [("start", "qmail-tcpd@smtp.socket")]  # its port may be free now
    removed = observed(generated=False)
    assert steps(removed) == [
        ("stop", "qmail-tcpd@smtp.service"),
        ("stop", "qmail-tcpd@smtp.socket"),
    ]
    changes = plan.changes(
        [observed(name="a", running_hash="old"), observed(name="z", generated=False)]
    )
    assert [change.name for change in changes] == ["z", "a"]  # a freed port first
    assert changes[0].steps[0] == Step(Verb.STOP, "qmail-tcpd@z.service")


def test_plan_send() -> None:
    send = observed(name="send", wanted=frozenset(), bound=frozenset(), held=frozenset())
    assert steps(send) == []
    assert steps(observed(name="send", running_hash="old")) == [("restart", "qmail-send.service")]
    assert steps(observed(name="send", generated=False)) == [("stop", "qmail-send.service")]


def test_listen_entries_and_kernel_addresses_compare() -> None:
    assert plan.parse_listen("[::]:25") == ("::", 25)
    assert plan.parse_listen("25") == ("::", 25)
    assert plan.parse_listen("127.0.0.1:2525") == ("127.0.0.1", 2525)
    assert plan.parse_listen("[::1]:25") == ("::1", 25)
    assert plan.parse_listen("/run/x.sock") is None
    little = sys.byteorder == "little"
    loopback = "0100007F" if little else "7F000001"
    assert listening._address(f"{loopback}:0019") == ("127.0.0.1", 25)
    assert listening._address("00000000:0019") == ("::", 25)  # no IPv6: systemd binds 0.0.0.0
    assert listening._address("0" * 32 + ":0019") == ("::", 25)


def test_listening_finds_our_own_socket() -> None:
    with socket.socket(socket.AF_INET6) as server:
        server.bind(("::1", 0))
        server.listen()
        port = server.getsockname()[1]
        held = listening.held_by(os.getpid(), listening.listening_sockets())
        assert ("::1", port) in held


def test_drift_says_what_differs() -> None:
    here = frozenset({("::", 25)})
    assert plan.drift(None, "", None, None, None) is None
    assert plan.drift("a", "a", "a", here, here) is None
    assert "daemon-reload" in (plan.drift("b", "a", "a", here, here) or "")
    assert "listens on nothing" in (plan.drift("a", "a", None, here, frozenset()) or "")
    assert "older settings" in (plan.drift("a", "a", "old", here, here) or "")
