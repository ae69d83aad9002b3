"""tcp-environ(5): the variables a connection's program gets, as Debian's IPv6 tcpserver
sets them (TCP* plus TCP6*, PROTO=TCP for IPv4 and mapped clients, TCP6 for IPv6)."""

from __future__ import annotations

from .._startup import NamedTuple
from ..addresses import is_mapped, map_ipv4, unmap_ipv4

# Removed from every child: they describe our systemd hand-over, not the child's.
PRIVATE_VARIABLES = (
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "NOTIFY_SOCKET",
    "WATCHDOG_PID",
    "WATCHDOG_USEC",
)
TCP_VARIABLES = (
    "PROTO",
    "TCPLOCALIP",
    "TCPLOCALPORT",
    "TCPLOCALHOST",
    "TCPREMOTEIP",
    "TCPREMOTEPORT",
    "TCPREMOTEHOST",
    "TCPREMOTEINFO",
    "TCP6LOCALIP",
    "TCP6LOCALPORT",
    "TCP6LOCALHOST",
    "TCP6REMOTEIP",
    "TCP6REMOTEPORT",
    "TCP6REMOTEHOST",
    "TCP6REMOTEINFO",
    "TCP6INTERFACE",
)


class Endpoints(NamedTuple):
    """Addresses as the socket reports them (IPv6 sockets give mapped IPv4). A NamedTuple,
    not a frozen dataclass: one is built per connection, and this builds 5x faster."""

    local_ip: str
    local_port: int
    remote_ip: str
    remote_port: int

    @property
    def ipv4(self) -> bool:
        return ":" not in self.remote_ip or is_mapped(self.remote_ip)


def base_environment(
    environ: dict[str, str], initial_names: frozenset[str] | None = None
) -> dict[str, str]:
    """The server's environment minus systemd's hand-over and stale TCP variables, and
    minus an LC_CTYPE that Python itself added (PEP 538 locale coercion under the C
    locale, as under systemd without LANG): tcpserver's children do not get one.
    initial_names: the names the process was started with (from /proc/self/environ)."""
    names = initial_environment_names() if initial_names is None else initial_names
    coerced = names is not None and "LC_CTYPE" not in names
    return {
        k: v
        for k, v in environ.items()
        if k not in PRIVATE_VARIABLES
        and k not in TCP_VARIABLES
        and not (coerced and k == "LC_CTYPE")
    }


def initial_environment_names() -> frozenset[str] | None:
    """Names in the environment this process was exec'd with (the kernel's copy, which
    setenv() does not change); None where /proc cannot tell."""
    try:
        with open("/proc/self/environ", "rb") as initial:
            data = initial.read()
    except OSError:
        return None
    return frozenset(
        entry.partition(b"=")[0].decode("utf-8", "surrogateescape")
        for entry in data.split(b"\0")
        if entry
    )


def connection_environment(
    endpoints: Endpoints,
    local_host: str | None,
    remote_host: str | None,
    remote_info: str | None,
    ipv6_env: bool,
) -> dict[str, str]:
    """TCP* and TCP6* variables; unknown names are left unset."""
    ipv4 = endpoints.ipv4 and not ipv6_env
    show = unmap_ipv4 if ipv4 else map_ipv4
    local_port, remote_port = str(endpoints.local_port), str(endpoints.remote_port)
    env = {
        "PROTO": "TCP" if ipv4 else "TCP6",
        "TCPLOCALIP": show(endpoints.local_ip),
        "TCPLOCALPORT": local_port,
        "TCPREMOTEIP": show(endpoints.remote_ip),
        "TCPREMOTEPORT": remote_port,
        "TCP6LOCALIP": map_ipv4(endpoints.local_ip),
        "TCP6LOCALPORT": local_port,
        "TCP6REMOTEIP": map_ipv4(endpoints.remote_ip),
        "TCP6REMOTEPORT": remote_port,
    }
    for suffix, value in (
        ("LOCALHOST", local_host),
        ("REMOTEHOST", remote_host),
        ("REMOTEINFO", remote_info),
    ):
        if value is not None:
            env[f"TCP{suffix}"] = value
            env[f"TCP6{suffix}"] = value
    return env
