"""Certificate and key files: read, checked, and turned into an SSLContext.

The files are read with close-on-exec fds into memory, by root before the server drops
privileges; a reload (SIGHUP) after the drop asks a small reader process forked before
it, which keeps root for that one job. The material reaches OpenSSL through a memfd of
our own (OpenSSL loads keys from paths only): no file the chain could open, nothing in
its environment. What is wrong is one line naming the file, with a hint.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import ssl
import stat
import struct
from collections.abc import Callable
from dataclasses import dataclass

MAX_FILE = 1 << 20  # a certificate chain or key larger than this is not one
_MESSAGE = 3 * MAX_FILE + 4096
# The reader's reply goes in pieces: one datagram must fit the socket's send buffer
# (net.core.wmem_default, 208 KiB), and a CCAFILE such as the system's CA bundle is larger.
_PIECE = 32 * 1024


class CertError(Exception):
    """A certificate problem, as one line: `file: what (hint)`."""


@dataclass(frozen=True)
class ProgramAccount:
    """The uid and gid the program (qmail-smtpd) runs as after the drop (-u, -g)."""

    uid: int
    gid: int


@dataclass(frozen=True)
class CertPaths:
    certfile: str
    keyfile: str
    ccafile: str | None = None  # CAs whose client certificates are asked for and checked
    program: ProgramAccount | None = None  # a key this account could read is refused


def program_account(user: str | None, group: str | None) -> ProgramAccount | None:
    """Who the program will run as: -u and -g, and for the one not given the id the
    server keeps (as tcpserver, -u alone leaves the group). None without a drop, for an
    unknown name (reported on its own), or for a program that stays root."""
    from ...accounts import UnknownAccount, group_id, user_id

    if user is None and group is None:
        return None
    try:
        uid = user_id(user) if user is not None else os.geteuid()
        gid = group_id(group) if group is not None else os.getegid()
    except UnknownAccount:
        return None
    return ProgramAccount(uid, gid) if uid != 0 else None


@dataclass(frozen=True)
class Material:
    """The files' bytes; repr() never shows them."""

    cert: bytes
    key: bytes
    cca: bytes | None

    def __repr__(self) -> str:
        return "Material(...)"


def _read(path: str, secret: bool, program: ProgramAccount | None = None) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise CertError(f"{path}: no such file (check the path, or the renewal left it)") from None
    except PermissionError:
        raise CertError(f"{path}: permission denied (it must be readable by root)") from None
    except OSError as error:
        raise CertError(f"{path}: {error.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise CertError(f"{path}: not a regular file")
        if info.st_size > MAX_FILE:
            raise CertError(f"{path}: larger than {MAX_FILE} bytes, not a PEM file")
        chunks = []
        total = 0
        while chunk := os.read(fd, 65536):
            total += len(chunk)
            if total > MAX_FILE:
                raise CertError(f"{path}: larger than {MAX_FILE} bytes, not a PEM file")
            chunks.append(chunk)
        data = b"".join(chunks)
        # A file with no key in it (a certificate named for both) is told so in load_into.
        if secret and b"PRIVATE KEY-----" in data:
            _refuse_readable_key(path, info, program)
        return data
    except OSError as error:
        raise CertError(f"{path}: {error.strerror}") from None
    finally:
        os.close(fd)


def _refuse_readable_key(path: str, info: os.stat_result, program: ProgramAccount | None) -> None:
    """A key others, or the program's own account, could open is no secret from the program."""
    mode = stat.S_IMODE(info.st_mode)
    if mode & stat.S_IROTH:
        reader = "everyone"
    elif program is not None and info.st_uid == program.uid and mode & stat.S_IRUSR:
        reader = f"the program's user (uid {program.uid} owns it)"
    elif program is not None and info.st_gid == program.gid and mode & stat.S_IRGRP:
        reader = f"the program's group (gid {program.gid})"
    else:
        return
    raise CertError(
        f"{path}: private key readable by {reader} (mode {mode:04o}, uid {info.st_uid},"
        f" gid {info.st_gid}; chown root:root {path} && chmod 600 {path})"
    )


def read_material(paths: CertPaths) -> Material:
    """The three files, checked; CertError names the first one that is wrong."""
    return Material(
        _read(paths.certfile, secret=False),
        _read(paths.keyfile, secret=True, program=paths.program),
        _read(paths.ccafile, secret=False) if paths.ccafile else None,
    )


def load_into(context: ssl.SSLContext, paths: CertPaths, material: Material) -> None:
    """The certificate and key into context, through a memfd only this process holds.
    The check that they belong together is OpenSSL's."""
    if b"PRIVATE KEY-----" not in material.key:
        unset = " (the key is in a file of its own? name it: KEYFILE, -K)"
        hint = unset if paths.keyfile == paths.certfile else ""
        raise CertError(f"{paths.keyfile}: no PEM private key in it{hint}")
    if b"-----BEGIN CERTIFICATE-----" not in material.cert:
        raise CertError(f"{paths.certfile}: no PEM certificate in it")
    locked = CertError(
        f"{paths.keyfile}: the private key is encrypted (a passphrase; a server cannot type"
        f" it: openssl pkey -in {paths.keyfile} -out NEW, then use NEW)"
    )
    if b"ENCRYPTED" in material.key:  # PKCS#8's and the traditional PEM's marks
        raise locked

    def no_passphrase() -> bytes:  # else OpenSSL asks on the terminal, and waits
        raise locked

    fd = os.memfd_create("qboot-tls", os.MFD_CLOEXEC)
    try:
        for blob in (material.cert, b"\n", material.key):
            view = memoryview(blob)
            while view:
                view = view[os.write(fd, view) :]
        path = f"/proc/self/fd/{fd}"
        try:
            context.load_cert_chain(path, password=no_passphrase)
        except ssl.SSLError as error:
            reason = str(error.reason or error)
            if "MISMATCH" in reason.upper():
                raise CertError(
                    f"{paths.keyfile}: the key does not match the certificate in "
                    f"{paths.certfile} (renewed one file but not the other?)"
                ) from None
            raise CertError(f"{paths.certfile}: {reason.lower()} (is it PEM?)") from None
        except OSError as error:  # what OpenSSL's PEM reader left in errno
            raise CertError(f"{paths.certfile}: {error.strerror} (is it PEM?)") from None
    finally:
        os.close(fd)
    if material.cca is not None:
        assert paths.ccafile is not None
        try:
            context.load_verify_locations(cadata=material.cca.decode("ascii", "replace"))
        except ssl.SSLError as error:
            raise CertError(f"{paths.ccafile}: {str(error.reason or error).lower()}") from None


# --- the reader process: root's reads after the server dropped privileges -----------------
def _pack(fields: list[bytes | None]) -> bytes:
    out = bytearray()
    for field in fields:
        if field is None:
            out += struct.pack("!i", -1)
        else:
            out += struct.pack("!i", len(field)) + field
    return bytes(out)


def _unpack(data: bytes, count: int) -> list[bytes | None]:
    fields: list[bytes | None] = []
    offset = 0
    for _ in range(count):
        (size,) = struct.unpack_from("!i", data, offset)
        offset += 4
        if size < 0:
            fields.append(None)
            continue
        fields.append(data[offset : offset + size])
        offset += size
    return fields


class CertReader:
    """Reads the files for the server: in this process while it may (root, or no drop
    planned), else through the reader process start() forked."""

    def __init__(self, paths: CertPaths) -> None:
        self.paths = paths
        self._channel: socket.socket | None = None
        self._pid: int | None = None

    def start(self, keep: Callable[[int], bool] = lambda fd: False) -> None:
        """Fork the reader, before privileges drop. It keeps root, its socket and
        nothing else (keep() may name fds it must not close, for tests); it ends when the
        server's end of the socket closes."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the reader process
            try:
                ours.close()
                for number in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM, signal.SIGPIPE):
                    signal.signal(number, signal.SIG_IGN)
                _close_all_but(theirs.fileno(), keep)
                self._serve(theirs)
            finally:
                os._exit(0)
        theirs.close()
        self._channel, self._pid = ours, pid

    def _serve(self, channel: socket.socket) -> None:  # pragma: no cover - the reader
        while channel.recv(16):
            try:
                material = read_material(self.paths)
                reply = b"K" + _pack([material.cert, material.key, material.cca])
            except CertError as error:
                reply = b"E" + str(error).encode("utf-8", "replace")
            channel.send(struct.pack("!I", len(reply)))
            for start in range(0, len(reply), _PIECE):
                channel.send(reply[start : start + _PIECE])

    def read(self) -> Material:
        if self._channel is None:
            return read_material(self.paths)
        try:
            self._channel.send(b"r")
            reply = self._receive(self._channel)
        except OSError as error:
            raise CertError(f"{self.paths.keyfile}: key reader gone ({error.strerror})") from None
        if reply[:1] == b"E":
            raise CertError(reply[1:].decode("utf-8", "replace"))
        if reply[:1] != b"K":
            raise CertError(f"{self.paths.keyfile}: key reader gone")
        cert, key, cca = _unpack(reply[1:], 3)
        assert cert is not None and key is not None
        return Material(cert, key, cca)

    @staticmethod
    def _receive(channel: socket.socket) -> bytes:
        head = channel.recv(4)
        if len(head) != 4:
            return b""
        (size,) = struct.unpack("!I", head)
        if size > _MESSAGE:
            return b""
        reply = bytearray()
        while len(reply) < size:
            piece = channel.recv(_PIECE)
            if not piece:
                return b""
            reply += piece
        return bytes(reply)

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        if self._pid is not None:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self._pid, 0)
            self._pid = None

    @property
    def pid(self) -> int | None:
        return self._pid


def _close_all_but(fd: int, keep: Callable[[int], bool]) -> None:  # pragma: no cover
    for name in os.listdir("/proc/self/fd"):
        number = int(name)
        if number > 2 and number != fd and not keep(number):
            with contextlib.suppress(OSError):
                os.close(number)
