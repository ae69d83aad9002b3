"""Which TCP addresses a process listens on, from /proc (no ss, no netlink).

A socket unit's Listen property says what its unit file asks for; only the kernel says
what is bound. systemd holds the listening fds of every active socket unit, and the
service holds its own copies: comparing the three finds a socket left on an old port.
"""

from __future__ import annotations

import ipaddress
import os
import sys
from pathlib import Path

Address = tuple[str, int]
_LISTEN_STATE = "0A"  # TCP_LISTEN in /proc/net/tcp's `st` column


def _address(field: str) -> Address:
    """`0100007F:0019` -> ("127.0.0.1", 25). The address is printed as 32-bit words in
    the host's byte order, the port as a number."""
    hex_address, hex_port = field.split(":")
    raw = b"".join(
        int(hex_address[i : i + 8], 16).to_bytes(4, sys.byteorder)
        for i in range(0, len(hex_address), 8)
    )
    address = ipaddress.ip_address(raw)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_unspecified:
        # systemd binds 0.0.0.0 for ListenStream=PORT when the kernel has no IPv6.
        return ("::", int(hex_port, 16))
    return (str(address), int(hex_port, 16))


def listening_sockets(proc: Path = Path("/proc")) -> dict[int, Address]:
    """Socket inode -> local address, for every TCP socket in LISTEN state."""
    found: dict[int, Address] = {}
    for table in ("net/tcp", "net/tcp6"):
        try:
            lines = (proc / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] == _LISTEN_STATE:
                found[int(fields[9])] = _address(fields[1])
    return found


def socket_inodes(pid: int, proc: Path = Path("/proc")) -> set[int]:
    inodes: set[int] = set()
    directory = proc / str(pid) / "fd"
    try:
        names = os.listdir(directory)
    except OSError:
        return inodes
    for name in names:
        try:
            target = os.readlink(directory / name)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[len("socket:[") : -1]))
    return inodes


def held_by(pid: int, table: dict[int, Address], proc: Path = Path("/proc")) -> frozenset[Address]:
    """The listening addresses among a process's open fds."""
    return frozenset(table[inode] for inode in socket_inodes(pid, proc) if inode in table)


def readable(pid: int, proc: Path = Path("/proc")) -> bool:
    """Can we see this process's fds and environment (root, or our own)?"""
    return os.access(proc / str(pid) / "environ", os.R_OK) and os.access(
        proc / str(pid) / "fd", os.R_OK | os.X_OK
    )


def environment_value(pid: int, name: str, proc: Path = Path("/proc")) -> str:
    """A variable as the process was started with it ("" when it has none)."""
    try:
        data = (proc / str(pid) / "environ").read_bytes()
    except OSError:
        return ""
    prefix = name.encode() + b"="
    for entry in data.split(b"\0"):
        if entry.startswith(prefix):
            return entry[len(prefix) :].decode("utf-8", "replace")
    return ""
