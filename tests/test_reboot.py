"""A broken edit survives a reboot: the services keep their last good settings.

/run (where the reconcile keeps the last good drop-ins) is emptied at reboot; a copy on
disk (/var/lib/qboot) brings them back. Tried as an admin would, in the real-systemd
sandbox: edits, plain `systemctl daemon-reload`, `systemctl reboot`.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import pytest

from . import sandbox
from .admin_sandbox import QBOOTCTL, greeting, reload_and_settle, settled, user_of
from .e2e_stage import BOOTCTRL, booted_sandbox
from .sandbox import Sandbox, show

# a reboot takes longer than the other sandbox tests' waits
wait_until = functools.partial(sandbox.wait_until, timeout=30)


@pytest.fixture(scope="module")
def box() -> Iterator[Sandbox]:
    with booted_sandbox() as sandbox:
        yield sandbox


def test_broken_edits_keep_their_last_good_settings_across_a_reboot(box: Sandbox) -> None:
    smtp_env, subm_env = f"{BOOTCTRL}/qmail-smtp.env", f"{BOOTCTRL}/qmail-subm.env"
    assert wait_until(lambda: settled(box))
    box.run("ln", "-s", "qmail-tcpd", f"{BOOTCTRL}/qmail-subm.rc")
    box.run("ln", "-s", "tcprules-default.cdb", f"{BOOTCTRL}/tcprules-subm.cdb")
    reload_and_settle(box)
    assert greeting(box, 25).startswith("220 ") and greeting(box, 587).startswith("220 ")
    # Two broken edits, each applied with a plain reload: both keep running as they were.
    box.run("sed", "-i", "s/^USER=qmaild$/USER=nosuchuser/", smtp_env)
    box.run("sh", "-c", f"echo 'BANNER=\"unterminated' >> {subm_env}")
    reload_and_settle(box)
    kept = box.run("ls", "/var/lib/qboot/last-good").stdout.split()
    assert kept == ["smtp.json", "subm.json"]
    box.run("touch", "/run/qboot/before-the-reboot")

    box.reboot()

    assert box.run("test", "-e", "/run/qboot/before-the-reboot", check=False).returncode != 0
    assert wait_until(lambda: settled(box))
    assert greeting(box, 25).startswith("220 "), box.run(
        "journalctl", "-b", "-u", "qmail-tcpd@smtp.service", "--no-pager", check=False
    ).stdout
    assert greeting(box, 587).startswith("220 ")
    assert user_of(box, "qmail-tcpd@smtp.service") == "qmaild"
    assert "nosuchuser" not in show(box, "qmail-tcpd@smtp.service", "ExecStart")
    done = box.run(QBOOTCTL, "status", check=False)
    print(done.stdout)
    assert done.returncode == 150  # degraded: both serve, not as bootctrl says
    smtp_problem = f'{smtp_env}:19: unknown user "nosuchuser"'
    subm_problem = f"{subm_env}:"
    assert f"degraded, runs its last good settings: {smtp_problem}" in done.stdout
    assert f"degraded, runs its last good settings: {subm_problem}" in done.stdout
    journal = box.run(
        "journalctl", "-b", "-u", "qmail-tcpd@subm.socket", "-o", "cat", "--no-pager"
    ).stdout
    assert "started qmail-tcpd@subm.socket (last good settings kept on disk)" in journal
    journal = box.run(
        "journalctl", "-b", "-u", "qmail-tcpd@smtp.service", "-o", "cat", "--no-pager"
    ).stdout
    assert smtp_problem in journal and "fatal: unknown user" not in journal
    # Fixed after the reboot: the new settings run, and status is clean again.
    box.run("sed", "-i", "s/^USER=nosuchuser$/USER=qmaild/", smtp_env)
    box.run("sed", "-i", "/^BANNER=/d", subm_env)
    box.run("sh", "-c", f"echo 'setenv FIXED 1' >> {subm_env}")
    reload_and_settle(box)
    assert wait_until(lambda: box.run(QBOOTCTL, "status", check=False).returncode == 0)
    pid = show(box, "qmail-tcpd@subm.service", "MainPID")
    assert greeting(box, 587).startswith("220 ")
    pid = show(box, "qmail-tcpd@subm.service", "MainPID")
    assert "FIXED=1" in box.run("cat", f"/proc/{pid}/environ").stdout.split("\0")
