"""tcpserver's -v log lines, with its escaping: bytes < 33, > 126 and % become ?, and a
field is cut at 100 characters with `...` (so remote names cannot forge log lines)."""

from __future__ import annotations

PROGRAM = "qboot-tcpsrv"
_LIMIT = 100


def safe(text: str | None) -> str:
    if not text:
        return ""
    data = text.encode("utf-8", "surrogateescape")
    out = bytearray()
    for byte in data[:_LIMIT]:
        if byte == 0:
            return out.decode("ascii")
        out.append(63 if byte < 33 or byte > 126 or byte == 37 else byte)
    text_out = out.decode("ascii")
    return text_out + "..." if len(data) >= _LIMIT else text_out


def status(running: int, limit: int) -> str:
    return f"{PROGRAM}: status: {running}/{limit}\n"


def pid_from(pid: int, remote_ip: str) -> str:
    return f"{PROGRAM}: pid {pid} from {safe(remote_ip)}\n"


def verdict(
    word: str,
    pid: int,
    local: tuple[str | None, str, str],
    remote: tuple[str | None, str, str | None, str],
) -> str:
    """`ok|deny PID LOCALHOST:LOCALIP:LOCALPORT REMOTEHOST:REMOTEIP:REMOTEINFO:REMOTEPORT`."""
    local_host, local_ip, local_port = local
    remote_host, remote_ip, remote_info, remote_port = remote
    return (
        f"{PROGRAM}: {word} {pid} {safe(local_host)}:{safe(local_ip)}:{safe(local_port)} "
        f"{safe(remote_host)}:{safe(remote_ip)}:{safe(remote_info)}:{safe(remote_port)}\n"
    )


def end(pid: int, wait_status: int) -> str:
    return f"{PROGRAM}: end {pid} status {wait_status}\n"


def warning(message: str) -> str:
    return f"{PROGRAM}: warning: {message}\n"
