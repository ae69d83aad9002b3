"""Start-up stand-ins: what the generator and qboot-tcpsrv would take from the standard
library, if its import did not cost more than their budgets allow.

The budgets. The generator runs before any unit loads, at boot and at every
daemon-reload: its whole run for 10 services stays within 1.5 x a bare `python3 -c pass`,
as installed (bench/generator_bench.py --installed measures it). qboot-tcpsrv runs one
process per service for months: its idle memory is measured in bench/tcpsrv_bench.py.
Both start without typing, pathlib, json and re; tests/test_generator.py holds the
generator to a short list of imports.

Here, and only here, is what stands in for them, each held to the original by
tests/test_startup.py:
- TYPE_CHECKING: typing.TYPE_CHECKING's value (False), without importing typing;
- NamedTuple: typing.NamedTuple's class statement, built on collections.namedtuple;
- pure_path, absolute_path, join_path: paths as text, written as pathlib writes them
  (messages and units name files as str(Path(...)) did);
- json_text, json_string: json.dumps(value, sort_keys=True, separators=(",", ":")) for
  plain data (the config stamps hash this text: another text would restart every
  service once after an upgrade).
Two small modules serve the same budget without standing in for anything: iptext writes
an address as ipaddress writes it (tests/test_iptext.py holds it to ipaddress), and
tcpsrv/rblcommand reads rblsmtpd's command line without the decision's enums. Other
modules import what they need late (difflib for the typo hint) at the one place that
needs it, and say so there.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False


# Records.

if TYPE_CHECKING:
    from typing import NamedTuple as NamedTuple
else:
    from collections import namedtuple

    class _NamedTupleMeta(type):
        def __new__(cls, name, bases, namespace):
            if namespace.get("__module__") == __name__:  # the base class below
                return super().__new__(cls, name, bases, namespace)
            fields = list(namespace.get("__annotations__", {}))
            defaults = [namespace[field] for field in fields if field in namespace]
            if fields[: len(fields) - len(defaults)] != [f for f in fields if f not in namespace]:
                raise TypeError(f"{name}: a field without a default after one with a default")
            base = namedtuple(name, fields, defaults=defaults, module=namespace["__module__"])
            body = {key: value for key, value in namespace.items() if key not in fields}
            body["__slots__"] = ()
            return type(name, (base,), body)

    class NamedTuple(metaclass=_NamedTupleMeta):
        pass


# Paths as text.


def pure_path(path: str | os.PathLike[str]) -> str:
    """str(PurePosixPath(path)): empty and `.` components and repeated slashes dropped,
    `..` kept; exactly two leading slashes stay two (POSIX leaves their meaning open)."""
    text = os.fspath(path)
    rest = text.lstrip("/")
    slashes = len(text) - len(rest)
    root = "//" if slashes == 2 else "/" if slashes else ""
    parts = [part for part in rest.split("/") if part and part != "."]
    if not root and not parts:
        return "."
    return root + "/".join(parts)


def absolute_path(path: str | os.PathLike[str]) -> str:
    """str(Path(path).absolute()): relative paths from the working directory, `..` kept."""
    text = pure_path(path)
    return text if text.startswith("/") else pure_path(os.getcwd() + "/" + text)


def join_path(base: str, *names: str) -> str:
    """str(Path(base).joinpath(*names)) for a base already in pure_path() form; an absolute
    name starts over, as with pathlib."""
    return pure_path(os.path.join(base, *names))


# JSON text.

# json's escapes with ensure_ascii: these by name, other controls, DEL and non-ASCII as
# \uXXXX (beyond the BMP as a surrogate pair).
_NAMED = {"\\": "\\\\", '"': '\\"', "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def json_string(text: str) -> str:
    if text.isascii() and text.isprintable() and '"' not in text and "\\" not in text:
        return f'"{text}"'
    out = []
    for char in text:
        code = ord(char)
        if char in _NAMED:
            out.append(_NAMED[char])
        elif 32 <= code < 127:
            out.append(char)
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            code -= 0x10000
            out.append(f"\\u{0xD800 | (code >> 10):04x}\\u{0xDC00 | (code & 0x3FF):04x}")
    return '"' + "".join(out) + '"'


def json_text(value: object) -> str:
    """The text json.dumps(value, sort_keys=True, separators=(",", ":")) gives."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, str):
        return json_string(value)
    if isinstance(value, int):
        return int.__repr__(value)
    if isinstance(value, list | tuple):
        return "[" + ",".join(json_text(item) for item in value) + "]"
    if isinstance(value, dict):
        if not all(isinstance(key, str) for key in value):
            raise TypeError("only str keys")
        items = sorted(value.items())
        return "{" + ",".join(f"{json_string(key)}:{json_text(item)}" for key, item in items) + "}"
    raise TypeError(f"{type(value).__name__} is not plain data")
