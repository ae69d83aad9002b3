"""djb's constant database: a reader with djb's bounds checks and a safe writer.

The reader works on a copy of the file in memory, so a lookup costs no system call, and
an admin who rewrites the file in place (`cp new.cdb rules.cdb`) gives the server a
half-written copy at worst (a format error, fail closed), never a SIGBUS as an mmap would.
The writer is djb's cdb_make (pure-cdb's has a hash-0 slot bug); the hash is the
_core extension's when built (it runs per rules lookup), else the same in Python.
"""

from __future__ import annotations

import errno
import os
import stat
import struct
from collections.abc import Callable

from ._startup import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import IO

_PAIR = struct.Struct("<LL")
_HEADER_SIZE = 2048
MAX_SIZE = 1 << 30  # 4 million rules take about 200 MB
_CHUNK = 1 << 20
_MAX_POSITION = 0xFFFFFFFF


def python_djb_hash(key: bytes) -> int:
    """cdb's hash: h = ((h << 5) + h) ^ byte, from 5381, in 32 bits."""
    value = 5381
    for byte in key:
        value = (((value << 5) + value) ^ byte) & 0xFFFFFFFF
    return value


def _best_djb_hash() -> Callable[[bytes], int]:
    """The _core extension's hash (it runs a few times per connection), else Python's."""
    if os.environ.get("QBOOT_NO_EXTENSION") == "1":
        return python_djb_hash
    try:
        from .tcpsrv._core import djb_hash as extension_djb_hash
    except ImportError:
        return python_djb_hash
    return extension_djb_hash


djb_hash = _best_djb_hash()


class CdbFormatError(Exception):
    """The file is not a cdb (truncated or garbage): djb reports EPROTO/EINVAL."""


class CdbReader:
    """First-value lookups with the exact semantics of djb's cdb_find()."""

    __slots__ = ("_data", "_size")

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._size = len(data)

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> CdbReader:
        """Read the file into memory. O_NONBLOCK and the regular-file check keep a FIFO or
        a device at the path from holding up the caller (OSError: EINVAL, EFBIG)."""
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            status = os.fstat(fd)
            if not stat.S_ISREG(status.st_mode):
                raise OSError(errno.EINVAL, "not a regular file")
            if status.st_size > MAX_SIZE:
                raise OSError(errno.EFBIG, os.strerror(errno.EFBIG))
            chunks = []
            total = 0
            while chunk := os.read(fd, _CHUNK):
                chunks.append(chunk)
                total += len(chunk)
                if total > MAX_SIZE:  # it grew while we read
                    raise OSError(errno.EFBIG, os.strerror(errno.EFBIG))
        finally:
            os.close(fd)
        return cls(b"".join(chunks))

    @property
    def data(self) -> bytes:
        """The whole file as read (the C ConnectionLoop looks keys up in it itself)."""
        return self._data

    def _pair(self, position: int) -> tuple[int, int]:
        if position + 8 > self._size:
            raise CdbFormatError("invalid argument")
        first, second = _PAIR.unpack_from(self._data, position)
        return first, second

    def get(self, key: bytes) -> bytes | None:
        """The first value stored under key, or None."""
        key_hash = djb_hash(key)
        table_position, slots = self._pair((key_hash << 3) & 2047)
        if not slots:
            return None
        table_end = table_position + (slots << 3)
        slot_position = table_position + (((key_hash >> 8) % slots) << 3)
        key_length = len(key)
        data = self._data
        for _ in range(slots):
            slot_hash, record = self._pair(slot_position)
            if not record:
                return None
            slot_position += 8
            if slot_position == table_end:
                slot_position = table_position
            if slot_hash == key_hash:
                stored_key_length, value_length = self._pair(record)
                if stored_key_length == key_length:
                    start = record + 8
                    if start + key_length + value_length > self._size:
                        raise CdbFormatError("invalid argument")
                    if data[start : start + key_length] == key:
                        value_start = start + key_length
                        return bytes(data[value_start : value_start + value_length])
        return None

    def close(self) -> None:
        self._data = b""
        self._size = 0


class CdbTooBig(OSError):
    """The cdb would pass 4 GiB, which its 32-bit positions cannot address."""


class SafeCdbWriter:
    """djb's cdb_make: records in the order put, then 256 hash tables, then the header.

    Written here, not taken from pure-cdb, whose Writer marks a slot as free when its
    stored hash is 0, so a key whose djb hash is 0 is overwritten by the next key of the
    same table. A slot is free when its record position is 0 (the header comes first), as
    in djb's cdb_make. `strict` is accepted for pure-cdb's signature; limits always hold.
    """

    def __init__(self, fp: IO[bytes], strict: bool = True) -> None:
        self.fp: IO[bytes] | None = fp
        self._start = fp.tell()
        self._position = _HEADER_SIZE
        self._tables: list[list[tuple[int, int]]] = [[] for _ in range(256)]
        fp.write(bytes(_HEADER_SIZE))

    def _advance(self, size: int) -> int:
        at = self._position
        self._position += size
        if self._position > _MAX_POSITION:
            raise CdbTooBig(errno.ENOMEM, "the cdb would pass 4 GiB")
        return at

    def put(self, key: bytes, value: bytes) -> None:
        assert self.fp is not None, "put() after finalize()"
        at = self._advance(8 + len(key) + len(value))
        key_hash = djb_hash(key)
        self._tables[key_hash & 0xFF].append((key_hash, at))
        self.fp.write(_PAIR.pack(len(key), len(value)) + key + value)

    def finalize(self) -> None:
        assert self.fp is not None, "finalize() called twice"
        index = []
        for table in self._tables:
            length = len(table) * 2
            slots: list[tuple[int, int]] = [(0, 0)] * length
            for key_hash, at in table:
                where = (key_hash >> 8) % length
                while slots[where][1]:  # a used slot: its record position is never 0
                    where = (where + 1) % length
                slots[where] = (key_hash, at)
            index.append((self._advance(8 * length), length))
            self.fp.write(b"".join(_PAIR.pack(*pair) for pair in slots))
        self.fp.seek(self._start)
        self.fp.write(b"".join(_PAIR.pack(*pair) for pair in index))
        self.fp.seek(0, os.SEEK_END)
        self.fp = None


def write_cdb(handle: IO[bytes], items: list[tuple[bytes, bytes]]) -> None:
    """Write key/value records, in order, as one cdb into an open binary file."""
    writer = SafeCdbWriter(handle, strict=True)
    for key, value in items:
        writer.put(key, value)
    writer.finalize()
