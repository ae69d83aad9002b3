from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHIPPED_BOOTCTRL = ROOT / "etc" / "bootctrl"
STRICT = bool(os.environ.get("QBOOT_STRICT_SKIPS"))


def require_tool(name: str) -> str:
    """Path of a system tool; skip without it, or fail when QBOOT_STRICT_SKIPS is set (CI)."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (run: make test, which installs it)"
        if STRICT:
            pytest.fail(message)
        pytest.skip(message)
    return path


def venv_script(name: str) -> str:
    path = ROOT / ".venv" / "bin" / name
    assert path.exists(), f"{path} missing: the package is not installed in .venv"
    return str(path)


@pytest.fixture(autouse=True, scope="session")
def _umask_022() -> Iterator[None]:
    """Files the tests create are 644/755 whatever the caller's umask: the generator
    refuses group-writable bootctrl files (StrictModes), as it must on a host."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


QMAIL_USERS = frozenset({"alias", "qmaild", "qmaill", "qmailp", "qmailq", "qmailr", "qmails"})
QMAIL_GROUPS = frozenset({"nofiles", "qmail"})


@pytest.fixture(autouse=True)
def qmail_accounts(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process tests see qmail's users and groups as if qmail were installed here (the
    shipped qmail-smtp.env names qmaild:nofiles); other names are looked up for real."""
    from qboot_systemd import accounts

    real_user, real_group = accounts.user_exists, accounts.group_exists
    monkeypatch.setattr(accounts, "user_exists", lambda n: n in QMAIL_USERS or real_user(n))
    monkeypatch.setattr(accounts, "group_exists", lambda n: n in QMAIL_GROUPS or real_group(n))


def require_extension() -> None:
    """The _core extension must be built (setup.sh builds it); skip only when the run
    asked for the pure-Python path with QBOOT_NO_EXTENSION=1."""
    from qboot_systemd.tcpsrv import syscalls

    if syscalls.EXTENSION is not None:
        return
    if os.environ.get("QBOOT_NO_EXTENSION") == "1":
        pytest.skip("QBOOT_NO_EXTENSION=1: the pure-Python path only")
    pytest.fail("the _core extension is not built (run: scripts/setup.sh test)")
