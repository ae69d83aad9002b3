"""User and group names and numbers, as USER=/GROUP= and qboot-tcpsrv -u/-g take them.

One definition for the bootctrl model (which reports an unknown name as a problem) and for
qboot-tcpsrv (which resolves the names when it starts, after systemd handed it the sockets).
"""

from __future__ import annotations

import grp
import pwd


class UnknownAccount(LookupError):
    pass


def user_id(name: str) -> int:
    """A uid from a number or a user name; UnknownAccount when the name does not exist."""
    if name.isascii() and name.isdigit():
        return int(name)
    try:
        return pwd.getpwnam(name).pw_uid
    except KeyError:
        raise UnknownAccount(f"unknown user {name}") from None


def group_id(name: str) -> int:
    """A gid from a number or a group name; UnknownAccount when the name does not exist."""
    if name.isascii() and name.isdigit():
        return int(name)
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise UnknownAccount(f"unknown group {name}") from None


def user_exists(name: str) -> bool:
    try:
        user_id(name)
    except UnknownAccount:
        return False
    return True


def group_exists(name: str) -> bool:
    try:
        group_id(name)
    except UnknownAccount:
        return False
    return True
