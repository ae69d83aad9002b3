"""tcprules: the text format, the cdb it compiles to, and tcpserver's lookup.

Everything here is bytes, as in ucspi-tcp: rules files and cdbs are byte strings and
must round-trip exactly.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator

from ._startup import TYPE_CHECKING, NamedTuple
from .addresses import unmap_ipv4
from .cdb import CdbFormatError, CdbReader, write_cdb

if TYPE_CHECKING:  # not at run time: qboot-tcpsrv starts without pathlib
    from pathlib import Path

_ULONG_MASK = (1 << 64) - 1


class Rule(NamedTuple):
    address: bytes
    deny: bool
    env: tuple[tuple[bytes, bytes], ...]
    line: int
    keys: tuple[bytes, ...]  # the address after range expansion

    def value(self) -> bytes:
        """The cdb value: `D\\0` for deny, then `+VAR=value\\0` per variable."""
        parts = [b"D\0"] if self.deny else []
        parts.extend(b"+" + name + b"=" + value + b"\0" for name, value in self.env)
        return b"".join(parts)


class RulesSyntaxError(ValueError):
    def __init__(self, line: int, text: bytes) -> None:
        super().__init__(f"unable to parse line {line}: {text.decode('utf-8', 'replace')}")
        self.line = line
        self.text = text


def _find_separator(text: bytes) -> tuple[int, bool] | None:
    """Position of the first `:allow` / `:deny` (the IPv6 tcprules way), and deny."""
    position = text.find(b":")
    while position != -1:
        if text.startswith(b"allow", position + 1):
            return position, False
        if text.startswith(b"deny", position + 1):
            return position, True
        position = text.find(b":", position + 1)
    return None


def parse_line(raw: bytes, line: int) -> Rule | None:
    """One line of a rules file (without its newline); None for comments and blanks."""
    if not raw or raw.startswith(b"#"):
        return None
    text = raw.rstrip(b" \t")
    found = _find_separator(text)
    if found is None:
        raise RulesSyntaxError(line, text)
    colon, deny = found
    rest = text[colon + 1 + (4 if deny else 5) :]
    env: list[tuple[bytes, bytes]] = []
    while rest:
        if not rest.startswith(b","):
            raise RulesSyntaxError(line, text)
        equals = rest.find(b"=")
        if equals == -1:
            raise RulesSyntaxError(line, text)
        name = rest[1:equals]
        rest = rest[equals + 1 :]
        if not rest:
            raise RulesSyntaxError(line, text)
        quote = rest[:1]
        end = rest.find(quote, 1)
        if end == -1:
            raise RulesSyntaxError(line, text)
        env.append((name, rest[1:end]))
        rest = rest[end + 1 :]
    address = text[:colon]
    try:
        keys = expand_address(address)
    except ValueError:
        raise RulesSyntaxError(line, text) from None
    return Rule(address, deny, tuple(env), line, tuple(keys))


def parse(data: bytes) -> list[Rule]:
    """All rules of a file; raises RulesSyntaxError at the first bad line, like tcprules."""
    rules: list[Rule] = []
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    for number, raw in enumerate(lines, start=1):
        rule = parse_line(raw, number)
        if rule is not None:
            rules.append(rule)
    return rules


def _scan_ulong(text: bytes) -> tuple[int, int]:
    """djb's scan_ulong: the decimal prefix (wrapping like a C unsigned long), its length."""
    value = 0
    length = 0
    for byte in text:
        if not 48 <= byte <= 57:
            break
        value = (value * 10 + byte - 48) & _ULONG_MASK
        length += 1
    return value, length


def expand_address(address: bytes) -> list[bytes]:
    """Range expansion: `1.2.3.37-53` is 17 keys; `10.2-3.` is `10.2.` and `10.3.`."""
    if b"=" in address or b"@" in address:
        return [address]
    dash = address.find(b"-")
    if dash == -1:
        return [address]
    left = address.rfind(b".", 0, dash) + 1
    top_start = dash + 1
    right = address.find(b".", top_start)
    if right == -1:
        right = len(address)
    bottom, bottom_length = _scan_ulong(address[left:dash])
    top, top_length = _scan_ulong(address[top_start:right])
    if bottom_length != dash - left or top_length != right - top_start:
        raise ValueError("bad range")
    top = min(top, 255)
    prefix, suffix = address[:left], address[right:]
    return [prefix + str(number).encode() + suffix for number in range(bottom, top + 1)]


def records(rules: list[Rule]) -> list[tuple[bytes, bytes]]:
    return [(key, rule.value()) for rule in rules for key in rule.keys]


def compile_file(source: bytes, cdb_path: Path, tmp_path: Path) -> int:
    """Compile rules text into cdb_path through tmp_path, atomically; returns key count.

    Raises RulesSyntaxError or OSError; in both cases cdb_path is untouched.
    """
    items = records(parse(source))
    descriptor = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    write_and_rename(items, descriptor, tmp_path, cdb_path)
    return len(items)


def write_and_rename(
    items: list[tuple[bytes, bytes]],
    descriptor: int,
    temporary: Path,
    target: Path,
    mode: int | None = None,
) -> None:
    """Write items as a cdb into the open temporary file, fsync, rename it onto target and
    fsync the directory: the new cdb appears whole or not at all, and the temporary file
    is gone on any error. mode, when given, is set whatever the umask."""
    try:
        with os.fdopen(descriptor, "wb") as handle:
            write_cdb(handle, items)
            handle.flush()
            if mode is not None:
                os.fchmod(handle.fileno(), mode)
            os.fsync(handle.fileno())
        os.rename(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    _fsync_directory(target.parent)


def _fsync_directory(directory: Path) -> None:
    try:
        descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def candidate_keys(ip: bytes, host: bytes | None, info: bytes | None) -> Iterator[bytes]:
    """The keys tcpserver tries, in its order (rules.c of ucspi-tcp with IPv6)."""
    if info is not None:
        yield info + b"@" + ip
        if host is not None:
            yield info + b"@=" + host
    yield ip
    if host is not None:
        yield b"=" + host
    for length in range(len(ip), 0, -1):
        if ip[length - 1] in b".:":
            yield ip[:length]
    if host is not None:
        for position in range(len(host)):
            if host[position] == 46:  # '.'
                yield b"=" + host[position:]
        yield b"="
    yield b""


def find(
    reader: CdbReader, ip: bytes, host: bytes | None, info: bytes | None
) -> tuple[bytes, bytes] | None:
    """The first matching key and its value, or None when no rule matches."""
    for key in candidate_keys(ip, host, info):
        value = reader.get(key)
        if value is not None:
            return key, value
    return None


class Decision(NamedTuple):
    deny: bool
    env: tuple[tuple[str, str], ...]
    key: bytes | None  # None: no rule matched (default allow)


class RulesError(NamedTuple):
    """The cdb could not be read: the server drops the connection (fail closed)."""

    path: str
    message: str
    missing: bool = False

    def __str__(self) -> str:
        return f"unable to read {self.path}: {self.message}"


def decide(found: tuple[bytes, bytes] | None) -> Decision:
    if found is None:
        return Decision(False, (), None)
    key, value = found
    env: list[tuple[str, str]] = []
    for record in value.split(b"\0")[:-1]:
        if record.startswith(b"D"):
            return Decision(True, tuple(env), key)
        if record.startswith(b"+"):
            name, equals, setting = record[1:].partition(b"=")
            if equals:
                env.append(
                    (
                        name.decode("utf-8", "surrogateescape"),
                        setting.decode("utf-8", "surrogateescape"),
                    )
                )
    return Decision(False, tuple(env), key)


class RuleSet:
    """The rules cdb of one service, reopened only when the file was replaced.

    tcpserver opens its cdb on every connection, so a tcprules run takes effect at the
    next connection. One stat() per lookup gives the same behaviour cheaper.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._identity: tuple[int, int, int, int] | None = None
        self._reader: CdbReader | None = None

    def _current(self) -> CdbReader | RulesError:
        try:
            status = os.stat(self.path)
        except OSError as error:
            self._drop()
            return RulesError(
                self.path,
                os.strerror(error.errno or errno.EIO),
                missing=error.errno == errno.ENOENT,
            )
        identity = (status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns)
        if identity != self._identity or self._reader is None:
            self._drop()
            try:
                self._reader = CdbReader.open(self.path)
            except OSError as error:
                return RulesError(
                    self.path,
                    error.strerror or os.strerror(error.errno or errno.EIO),
                    missing=error.errno == errno.ENOENT,
                )
            self._identity = identity
        return self._reader

    def snapshot(self) -> tuple[tuple[int, int, int, int], bytes] | RulesError:
        """The file's identity (st_dev, st_ino, st_size, st_mtime_ns) and its bytes, for
        a reader of its own (the C ConnectionLoop), which stat()s and asks again when it changes."""
        reader = self._current()
        if isinstance(reader, RulesError):
            return reader
        assert self._identity is not None, "_current() sets it with the reader"
        return self._identity, reader.data

    def _drop(self) -> None:
        if self._reader is not None:
            self._reader.close()
        self._reader = None
        self._identity = None

    def match(
        self, ip: str, host: str | None = None, info: str | None = None
    ) -> Decision | RulesError:
        reader = self._current()
        if isinstance(reader, RulesError):
            return reader
        try:
            found = find(
                reader, _encode(unmap_ipv4(ip)), _encode_optional(host), _encode_optional(info)
            )
        except CdbFormatError as error:
            return RulesError(self.path, str(error))
        return decide(found)


def _encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def _encode_optional(text: str | None) -> bytes | None:
    return None if text is None else _encode(text)


def check_report(reader: CdbReader, ip: bytes, host: bytes | None, info: bytes | None) -> bytes:
    """What tcprulescheck prints for one client (raises CdbFormatError)."""
    found = find(reader, ip, host, info)
    if found is None:
        return b"default:\nallow connection\n"
    key, value = found
    out = [b"rule " + key + b":\n"]
    while (end := value.find(b"\0")) != -1:
        record, value = value[:end], value[end + 1 :]
        if record.startswith(b"D"):
            out.append(b"deny connection\n")
            return b"".join(out)
        if record.startswith(b"+"):
            out.append(b"set environment variable " + record[1:] + b"\n")
    out.append(b"allow connection\n")
    return b"".join(out)


def is_ip(text: str) -> bool:
    import ipaddress  # here, not at the top: qboot-tcpsrv never needs it

    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
