"""djb's constant database: a reader with djb's bounds checks and a safe writer.

The reader works on a copy of the file in memory, so a lookup costs no system call, and
an admin who rewrites the file in place (`cp new.cdb rules.cdb`) gives the server a
half-written copy at worst (a format error, fail closed), never a SIGBUS as an mmap would.
The writer is pure-cdb's, with its hash-0 slot bug fixed.
"""

from __future__ import annotations

import errno
import os
import stat
import struct
from itertools import chain
from typing import IO

import cdblib
from cdblib import djb_hash

_PAIR = struct.Struct("<LL")
_HEADER_SIZE = 2048
MAX_SIZE = 1 << 30  # 4 million rules take about 200 MB
_CHUNK = 1 << 20


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


class SafeCdbWriter(cdblib.Writer):  # type: ignore[misc]
    """cdblib.Writer whose finalize() tells a used slot by its record position.

    pure-cdb marks a slot as free when its stored hash is 0, so a key whose djb hash
    is 0 is overwritten by the next key of the same table. A record position is never
    0 (the header comes first), which is also how djb's cdb_make tests it.
    """

    fp: IO[bytes] | None
    _unordered: list[list[tuple[int, int]]]

    def finalize(self) -> None:
        assert self.fp is not None, "finalize() called twice"
        index = []
        for table in self._unordered:
            length = len(table) * 2
            ordered: list[tuple[int, int]] = [(0, 0)] * length
            for pair in table:
                where = (pair[0] >> 8) % length
                for slot in chain(range(where, length), range(0, where)):
                    if not ordered[slot][1]:
                        ordered[slot] = pair
                        break
            index.append((self.fp.tell(), length))
            for pair in ordered:
                self.fp.write(self.write_pair(*pair))
        self.fp.seek(0)
        for pair in index:
            self.fp.write(self.write_pair(*pair))
        self.fp = None


def write_cdb(handle: IO[bytes], items: list[tuple[bytes, bytes]]) -> None:
    """Write key/value records, in order, as one cdb into an open binary file."""
    writer = SafeCdbWriter(handle, strict=True)
    for key, value in items:
        writer.put(key, value)
    writer.finalize()
