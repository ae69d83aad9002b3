"""What the generator writes for apply, and reads back from it, so that edits reach what
runs. No D-Bus, no click, no pathlib: the generator imports this module (what
`qbootctl reconcile` does with it is in the rest of the package).

systemd runs nothing after a daemon-reload. So the generator also writes
  - a stamp drop-in per service: Environment=QBOOT_CONFIG=<hash of the service's model>.
    The running process keeps the hash it was started with (/proc/PID/environ), the
    loaded unit has the new one: they differ exactly when a restart is due;
  - a trigger file that qboot-reconcile.path waits for (PathExists=): the path unit
    checks it again after every reload and starts qboot-reconcile.service, which
    deletes it, compares what is loaded with what runs and restarts only what differs.
A service whose files became broken gets its last good drop-ins again (reconcile keeps
a copy under /run/qboot/last-good), so a typo never stops what runs. So does one whose
USER=/GROUP= the reconcile found unknown (/run/qboot/refused/SVC holds the hash of the
refused settings): the generator never looks accounts up itself.
"""

from __future__ import annotations

import os
import stat
from binascii import crc32

from .. import bootctrl, units
from .._startup import TYPE_CHECKING, json_string, json_text

if TYPE_CHECKING:
    from pathlib import Path

STATE_DIR = "/run/qboot"
LAST_GOOD = "last-good"
REFUSED = "refused"
LOCK_NAME = "lock"
STAMP_NAME = "qboot-config.conf"
STAMP_VARIABLE = "QBOOT_CONFIG"
TRIGGER = "qboot-reconcile.trigger"
PATH_UNIT = "qboot-reconcile.path"
RECONCILE_UNIT = "qboot-reconcile.service"


def state_path() -> str:
    """The state directory as text, for the generator (which does without pathlib)."""
    return os.environ.get("QBOOT_STATE_DIR", STATE_DIR)


def state_dir() -> Path:
    from pathlib import Path  # for the commands

    return Path(state_path())


# --- what the generator adds ---------------------------------------------------------------
def config_hash(model: bootctrl.Service | bootctrl.Send, directory: str) -> str:
    """Everything bootctrl says about one service, hashed: equal hashes, nothing to do.
    Paths are taken relative to the bootctrl directory, so a copy hashes the same."""
    text = json_text(model.as_json())
    text = text.replace(json_string(directory.rstrip("/") + "/")[1:-1], "@BOOTCTRL@/")
    # A change detector for files only root may write, not a defence against forgery:
    # two CRC-32s (forwards and backwards) give 64 bits without hashlib, whose OpenSSL
    # load the generator's start-up cannot afford (binascii's CRC-32 is zlib's).
    data = text.encode()
    return f"{crc32(data):08x}{crc32(data[::-1]):08x}"


def stamp_dropin(value: str) -> str:
    return f"{units.HEADER}[Service]\nEnvironment={STAMP_VARIABLE}={value}\n"


def stamp_path(unit: str) -> str:
    return f"{unit}.d/{STAMP_NAME}"


def service_files(name: str) -> tuple[str, ...]:
    """The generated files of one tcp service, relative to the generator's output."""
    socket, service = units.tcpd_socket(name), units.tcpd_service(name)
    return (
        f"{socket}.d/{units.DROPIN_NAME}",
        f"{service}.d/{units.DROPIN_NAME}",
        stamp_path(service),
    )


def wants_link(name: str) -> str:
    return f"sockets.target.wants/{units.tcpd_socket(name)}"


def enabled_names(directory: str | os.PathLike[str]) -> tuple[str, ...]:
    """Services whose rc link points at qmail-tcpd, broken or not: the admin's switch. A
    regular file in its place (a copy of the script, as SysV rc directories allowed) is a
    switch too: the service stays, broken ("not a symlink"), on its last good settings."""
    try:
        entries = sorted(os.listdir(directory))
    except OSError:
        return ()
    found = []
    for entry in entries:
        if not (entry.startswith("qmail-") and entry.endswith(".rc")) or entry == bootctrl.SEND_RC:
            continue
        name = entry[len("qmail-") : -len(".rc")]
        path = os.path.join(directory, entry)
        if not bootctrl.valid_service_name(name):
            continue
        try:
            status = os.lstat(path)
        except (FileNotFoundError, NotADirectoryError):  # gone since the listing
            continue
        if stat.S_ISLNK(status.st_mode):
            if os.path.basename(os.readlink(path)) == bootctrl.RC_TARGET:
                found.append(name)
        elif stat.S_ISREG(status.st_mode):
            found.append(name)
    return tuple(found)


def _read_text(path: str) -> str:
    with open(path) as stream:  # as Path.read_text() reads
        return stream.read()


def read_last_good(state: str | os.PathLike[str], name: str) -> dict[str, str] | None:
    """The drop-ins a service last ran with, or None."""
    base = os.path.join(state, LAST_GOOD, name)
    files = {}
    for relative in service_files(name):
        try:
            files[relative] = _read_text(os.path.join(base, relative))
        except (OSError, UnicodeDecodeError):
            return None
    return files


def read_refused(state: str | os.PathLike[str]) -> dict[str, str]:
    """Settings the reconcile refused (an unknown USER=/GROUP=): service -> config hash."""
    base = os.path.join(state, REFUSED)
    try:
        names = sorted(os.listdir(base))
    except OSError:
        return {}
    found = {}
    for name in names:
        try:
            found[name] = _read_text(os.path.join(base, name)).strip()
        except (OSError, UnicodeDecodeError):
            continue
    return found


def holders(state: str | os.PathLike[str]) -> dict[str, frozenset[str]]:
    """ListenStream= values of the drop-ins each service last ran with."""
    found = {}
    base = os.path.join(state, LAST_GOOD)
    try:
        names = sorted(os.listdir(base))
    except OSError:
        return {}
    for name in names:
        try:
            text = _read_text(os.path.join(base, name, service_files(name)[0]))
        except (OSError, UnicodeDecodeError):
            continue
        found[name] = frozenset(
            line.removeprefix("ListenStream=")
            for line in text.splitlines()
            if line.startswith("ListenStream=")
        )
    return found


def load(
    directory: str | os.PathLike[str],
    qmail_home: str | os.PathLike[str] | None = None,
    *,
    check_accounts: bool = False,
) -> bootctrl.Bootctrl:
    """The model as the generator sees it: running services keep their addresses."""
    return bootctrl.load(
        directory, qmail_home, check_accounts=check_accounts, holders=holders(state_path())
    )


def add_stamps_and_last_good(
    model: bootctrl.Bootctrl,
    files: dict[str, str],
    links: dict[str, str],
    paths: units.Paths,
    state: str | os.PathLike[str],
) -> list[str]:
    """Stamps, the reconcile trigger, and last good drop-ins for broken services (and for
    settings the reconcile refused). Returns the names of the services kept on their last
    good settings (degraded)."""
    refused = read_refused(state)
    for service in model.services:
        unit = units.tcpd_service(service.name)
        if f"{unit}.d/{units.DROPIN_NAME}" in files:
            stamp = config_hash(service, model.directory)
            if refused.get(service.name) == stamp:
                for relative in service_files(service.name):
                    files.pop(relative, None)
                links.pop(wants_link(service.name), None)
                continue
            files[stamp_path(unit)] = stamp_dropin(stamp)
    if model.send is not None and f"{units.SEND_UNIT}.d/{units.DROPIN_NAME}" in files:
        files[stamp_path(units.SEND_UNIT)] = stamp_dropin(config_hash(model.send, model.directory))
    # bootctrl unreadable (or refused as a whole): everything that ran keeps running as it
    # was, and no reconcile is triggered: it would stop every service.
    unusable = any(p.file == model.directory and p.line == 0 for p in model.problems)
    names = sorted(holders(state)) if unusable else enabled_names(model.directory)
    degraded = []
    for name in names:
        if f"{units.tcpd_service(name)}.d/{units.DROPIN_NAME}" in files:
            continue
        kept = read_last_good(state, name)
        if kept is None:
            continue
        files.update(kept)
        links[wants_link(name)] = f"{paths.unit_dir}/qmail-tcpd@.socket"
        degraded.append(name)
    if unusable:
        return degraded
    files[TRIGGER] = "# qboot-reconcile.path starts qbootctl reconcile while this exists\n"
    links[f"paths.target.wants/{PATH_UNIT}"] = f"{paths.unit_dir}/{PATH_UNIT}"
    return degraded
