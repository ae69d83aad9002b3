"""The decisions of apply that cli.py used to make inline, as pure functions without
systemd: what fails reload-config, how a verb treats a broken service, which targets a
verb takes, the order uninstall stops things in."""

from __future__ import annotations

import pytest

from qboot_systemd import admin
from qboot_systemd.apply import plan
from qboot_systemd.apply.plan import Treatment
from qboot_systemd.problems import Problem

SMTP_TYPO = Problem("/b/qmail-smtp.env", 2, "unknown user 'nobody2' (USER=)", "smtp")
SUBM_TYPO = Problem("/b/qmail-subm.env", 1, "PORT='x': not a port", "subm")
PROBLEMS = {"smtp": [SMTP_TYPO], "subm": [SUBM_TYPO]}


@pytest.mark.parametrize(
    ("touched", "broken", "admin_waits", "failed", "wait_for"),
    [
        # qboot-reconcile.service: problems are shown, only a failed change fails it.
        (("smtp",), ("subm",), False, False, ()),
        # reload-config: a broken service fails it, restarts it queued are waited for.
        ((), ("subm",), True, True, ()),
        (("smtp",), (), True, True, ("smtp",)),
        # A problem of an untouched, working service is shown but fails nothing.
        (("pop",), (), True, False, ("pop",)),
        # send has no restart to wait for; a broken one is not waited for either.
        (("send", "subm"), ("subm",), True, True, ()),
    ],
)
def test_reconcile_verdict(
    touched: tuple[str, ...],
    broken: tuple[str, ...],
    admin_waits: bool,
    failed: bool,
    wait_for: tuple[str, ...],
) -> None:
    verdict = plan.reconcile_verdict(
        False, touched, broken, ["pop", "smtp", "subm"], PROBLEMS, admin_waits
    )
    assert verdict.failed is failed
    assert verdict.wait_for == wait_for
    # Every known problem shown once, broken services' first.
    assert sorted(verdict.problems) == [SMTP_TYPO, SUBM_TYPO]
    if broken:
        assert verdict.problems[0].service == broken[0]


def test_a_failed_change_fails_either_way() -> None:
    for admin_waits in (False, True):
        assert plan.reconcile_verdict(True, (), (), [], {}, admin_waits).failed


@pytest.mark.parametrize(
    ("verb", "broken", "kept", "treatment"),
    [
        ("start", False, False, Treatment.AS_IS),
        ("start", True, True, Treatment.LAST_GOOD),
        ("restart", True, False, Treatment.NOT_DONE),
        ("reload", True, True, Treatment.LAST_GOOD),
        ("stop", True, False, Treatment.AS_IS),  # stopping needs no settings
    ],
)
def test_treat_broken(verb: str, broken: bool, kept: bool, treatment: Treatment) -> None:
    assert plan.treat_broken(verb, broken, kept) is treatment


def test_uninstall_order() -> None:
    running = [
        "qmail-send.service",
        "qmail-tcpd@smtp.socket",
        "qmail-tcpd@smtp.service",
        "qboot-reconcile.path",
        "qmail-tcpd@subm.socket",
        "qboot-boot.service",
    ]
    assert plan.uninstall_order(running) == [
        "qboot-reconcile.path",  # no reconcile starts what is being stopped
        "qboot-boot.service",
        "qmail-tcpd@smtp.service",  # each service before its socket
        "qmail-tcpd@smtp.socket",
        "qmail-tcpd@subm.socket",
        "qmail-send.service",  # the queue last: what was accepted gets delivered
    ]
    assert plan.uninstall_order([]) == []


def test_acted_on() -> None:
    targets = [admin.target(name) for name in ("send", "old", "smtp")]
    # For all: start takes only what bootctrl enables, stop takes what runs as well.
    started = admin.acted_on("start", (), targets, {"smtp"}, send=True)
    assert [item.name for item in started] == ["send", "smtp"]
    assert admin.acted_on("stop", ("all",), targets, {"smtp"}, send=False) == targets
    assert [t.name for t in admin.acted_on("start", (), targets, {"smtp"}, False)] == ["smtp"]
    # Named targets are taken as named.
    assert admin.acted_on("restart", ("old",), targets[1:2], set(), send=False) == targets[1:2]


def test_problems_belong_to_their_service_by_field() -> None:
    from qboot_systemd import bootctrl
    from qboot_systemd.apply import observe

    clash = Problem(
        "/b/qmail-abc.env", 1, "25 is already used by service smtp; service abc skipped"
    )
    elsewhere = Problem("/srv/rules/abc.cdb", 0, "group-writable; service abc skipped")
    model = bootctrl.Bootctrl(
        "/b", "/q", None, (), (clash._replace(service="abc"), elsewhere._replace(service="abc"))
    )
    # smtp holds the port: the problem is abc's alone, though its text names smtp.
    assert observe.service_problems(model, "smtp") == []
    assert [p.message for p in observe.service_problems(model, "abc")] == [
        "25 is already used by service smtp",
        "group-writable",
    ]


def test_a_refused_service_is_stopped_for_its_account() -> None:
    gone = plan.Observed("smtp", False, True, True, True, "", "a1")
    (change,) = plan.changes([gone], refused=frozenset({"smtp"}))
    assert change.message == "stopped smtp (unknown account: see qbootctl status)"
    (change,) = plan.changes([gone])
    assert change.message == "stopped smtp (no longer enabled)"
