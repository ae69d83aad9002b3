"""Real qmail for the sandbox tests: notqmail 1.09 built once per test run, installed into a
sandbox stage directory, never onto the host.

`install_into_stage(stage)` leaves in `stage` what `make setup check` and `config-fast` leave
on a real host (/var/qmail with its owners and setuid qmail-queue, control files, aliases),
plus qmail's users and groups in a staged /etc/passwd and /etc/group, and a test user with a
~/Maildir. The stage is copied over the sandbox's root, so all of it exists only inside.
The install runs in a private mount namespace in which the stage's /var/qmail, /etc/passwd
and /etc/group are bind-mounted over the host's paths, because qmail's installer writes to
the compiled-in /var/qmail and looks its users up by name.
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

TARBALL_NAME = "notqmail-1.09.tar.gz"
# $QBOOT_NOTQMAIL_TARBALL, else the project's shared oracles directory (beside the checkout).
TARBALL_PLACES = (
    Path(__file__).resolve().parent.parent.parent / "shared" / "oracles" / TARBALL_NAME,
    Path("/work/shared/oracles") / TARBALL_NAME,
)
QMAIL_HOME = "/var/qmail"
ME = "mail.example.org"  # control/me, locals and rcpthosts via config-fast
TEST_USER = "qtest"
TEST_HOME = f"/home/{TEST_USER}"
# qmail's accounts, as INSTALL.ids says: (name, group, home)
GROUPS = ("nofiles", "qmail")
USERS = (
    ("alias", "nofiles", f"{QMAIL_HOME}/alias"),
    ("qmaild", "nofiles", QMAIL_HOME),
    ("qmaill", "nofiles", QMAIL_HOME),
    ("qmailp", "nofiles", QMAIL_HOME),
    ("qmailq", "qmail", QMAIL_HOME),
    ("qmailr", "qmail", QMAIL_HOME),
    ("qmails", "qmail", QMAIL_HOME),
)
FIRST_ID = 7790  # ids are picked from here upwards, skipping any the host uses


class OracleUnavailable(RuntimeError):
    pass


def tarball() -> Path | None:
    override = os.environ.get("QBOOT_NOTQMAIL_TARBALL")
    places = (Path(override),) if override else TARBALL_PLACES
    return next((place for place in places if place.is_file()), None)


def missing_requirements() -> str | None:
    if tarball() is None:
        where = os.environ.get("QBOOT_NOTQMAIL_TARBALL") or " or ".join(map(str, TARBALL_PLACES))
        return f"the notqmail source is missing ({where}); set QBOOT_NOTQMAIL_TARBALL"
    for tool in ("gcc", "make", "nroff", "unshare"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    return None


@functools.cache
def build() -> Path:
    """The notqmail source tree after `make it man`, built once per process."""
    reason = missing_requirements()
    if reason:
        raise OracleUnavailable(reason)
    work = Path(tempfile.mkdtemp(prefix="qboot-notqmail."))
    atexit.register(shutil.rmtree, work, True)
    source_tarball = tarball()
    assert source_tarball is not None
    with tarfile.open(source_tarball) as archive:
        archive.extractall(work, filter="tar")
    source = next(work.glob("notqmail-*"))
    done = subprocess.run(
        ["make", "it", "man"], cwd=source, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise OracleUnavailable(f"make it man failed: {done.stderr[-2000:]}")
    return source


@dataclass(frozen=True)
class Accounts:
    """Ids given to qmail's accounts and the test user in a stage."""

    uids: dict[str, int]
    gids: dict[str, int]


def _free_ids(used: set[int], count: int) -> list[int]:
    ids, candidate = [], FIRST_ID
    while len(ids) < count:
        if candidate not in used:
            ids.append(candidate)
        candidate += 1
    return ids


def _ids_in(path: Path) -> set[int]:
    return {
        int(line.split(":")[2]) for line in path.read_text().splitlines() if line.count(":") >= 3
    }


def stage_accounts(stage: Path) -> Accounts:
    """Copy the host's /etc/passwd and /etc/group into the stage with qmail's accounts and
    the test user added (idempotent)."""
    etc = stage / "etc"
    etc.mkdir(parents=True, exist_ok=True)
    passwd, group = etc / "passwd", etc / "group"
    for staged, host in ((passwd, Path("/etc/passwd")), (group, Path("/etc/group"))):
        if not staged.exists():
            shutil.copyfile(host, staged)
            staged.chmod(0o644)
    existing_users = {line.split(":")[0]: line for line in passwd.read_text().splitlines()}
    existing_groups = {line.split(":")[0]: line for line in group.read_text().splitlines()}
    used = _ids_in(passwd) | _ids_in(group)
    wanted_groups = [*GROUPS, TEST_USER]
    wanted_users = [*(name for name, _, _ in USERS), TEST_USER]
    fresh = iter(_free_ids(used, len(wanted_groups) + len(wanted_users)))
    gids: dict[str, int] = {}
    with group.open("a") as out:
        for name in wanted_groups:
            if name in existing_groups:
                gids[name] = int(existing_groups[name].split(":")[2])
            else:
                gids[name] = next(fresh)
                out.write(f"{name}:x:{gids[name]}:\n")
    homes = {name: (group_name, home) for name, group_name, home in USERS}
    homes[TEST_USER] = (TEST_USER, TEST_HOME)
    uids: dict[str, int] = {}
    with passwd.open("a") as out:
        for name in wanted_users:
            if name in existing_users:
                uids[name] = int(existing_users[name].split(":")[2])
                continue
            uids[name] = next(fresh)
            group_name, home = homes[name]
            shell = "/bin/sh" if name == TEST_USER else "/usr/sbin/nologin"
            out.write(f"{name}:x:{uids[name]}:{gids[group_name]}::{home}:{shell}\n")
    return Accounts(uids, gids)


INSTALL_SCRIPT = r"""
set -eu
stage="$1"; source="$2"; me="$3"; user="$4"; home="$5"
# Private mount namespace: these mounts hide the host's files from this script only.
mount --bind "$stage/etc/passwd" /etc/passwd
mount --bind "$stage/etc/group" /etc/group
mkdir -p "$stage/var/qmail" "$stage$home"
mount -t tmpfs -o mode=0755 tmpfs /var
mkdir /var/qmail
mount --bind "$stage/var/qmail" /var/qmail
mkdir -p /home
mount -t tmpfs -o mode=0755 tmpfs /home
mkdir "$home"
mount --bind "$stage$home" "$home"
cd "$source"
make setup check >/dev/null
./config-fast "$me" >/dev/null
echo ./Maildir/ > /var/qmail/control/defaultdelivery
for name in postmaster mailer-daemon root; do
    echo "$user" > "/var/qmail/alias/.qmail-$name"
done
chmod 644 /var/qmail/alias/.qmail-*
/var/qmail/bin/maildirmake "$home/Maildir"
chown -R "$user:$user" "$home"
chmod 755 "$home"
"""


def install_into_stage(stage: Path) -> Accounts:
    """notqmail installed into `stage` as on a real host (see the module text)."""
    source = build()
    accounts = stage_accounts(stage)
    done = subprocess.run(
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            INSTALL_SCRIPT,
            "install",
            str(stage),
            str(source),
            ME,
            TEST_USER,
            TEST_HOME,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise OracleUnavailable(f"installing notqmail failed: {done.stdout}{done.stderr}")
    return accounts
