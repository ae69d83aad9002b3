"""What an admin does and looks at in a booted sandbox: reload and wait for the
reconcile, a client's first line, who a service runs as, what listens. Shared by the
sandbox tests of the admin's tools."""

from __future__ import annotations

from qboot_systemd.apply import stamps

from . import sandbox
from .conftest import ROOT
from .sandbox import Sandbox, show

QBOOTCTL = str(ROOT / ".venv" / "bin" / "qbootctl")
EQMAILD = str(ROOT / ".venv" / "bin" / "eqmaild")


def settled(box: Sandbox) -> bool:
    """The reconcile that the last reload triggered has run."""
    trigger = box.run("test", "-e", f"/run/systemd/generator/{stamps.TRIGGER}", check=False)
    active = show(box, stamps.RECONCILE_UNIT, "ActiveState")
    return trigger.returncode != 0 and active in ("inactive", "failed")


def reload_and_settle(box: Sandbox, timeout: float = 30) -> None:
    """`systemctl daemon-reload`, as the admin types it, then the reconcile it starts."""
    box.run("systemctl", "daemon-reload")
    assert sandbox.wait_until(lambda: settled(box), timeout), box.run(
        "journalctl", "-u", stamps.RECONCILE_UNIT, "--no-pager", check=False
    ).stdout


def greeting(box: Sandbox, port: int) -> str:
    """The first line the service sends (socket activation starts it); "" for none."""
    script = f"exec 3<>/dev/tcp/127.0.0.1/{port} && timeout 10 head -n 1 <&3"
    return box.run("bash", "-c", script, check=False, timeout=30).stdout


def user_of(box: Sandbox, unit: str) -> str:
    """The user a unit's main process runs as."""
    pid = show(box, unit, "MainPID")
    uid = box.run("awk", "/^Uid:/ {print $2}", f"/proc/{pid}/status").stdout.strip()
    return box.run("getent", "passwd", uid).stdout.split(":")[0]


def listening_on(box: Sandbox, port: int) -> bool:
    return bool(box.run("ss", "-Htln", f"sport = :{port}", check=False).stdout.strip())
