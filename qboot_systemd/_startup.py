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
- NamedTuple: typing.NamedTuple's class statement, without collections.namedtuple;
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
    from operator import itemgetter

    # A tuple subclass with a field per annotation, as typing.NamedTuple builds, without
    # collections (namedtuple's import and per-class work were a fifth of the generator's
    # run). Only what the models use: fields by name, defaults, _replace, _fields,
    # _field_defaults, _make, repr, equality and hashing as tuples.

    def _make(cls, values):
        record = tuple.__new__(cls, values)
        if len(record) != len(cls._fields):
            raise TypeError(f"{cls.__name__}: expected {len(cls._fields)} values")
        return record

    def _replace(self, /, **changes):
        record = self._make(map(changes.pop, self._fields, self))
        if changes:
            raise ValueError(f"{type(self).__name__}: no field {' '.join(changes)}")
        return record

    def _repr(self):
        pairs = zip(self._fields, self, strict=True)
        fields = ", ".join(f"{field}={value!r}" for field, value in pairs)
        return f"{type(self).__name__}({fields})"

    def _getnewargs(self):
        return tuple(self)

    # What the class statement may not define itself, as typing.NamedTuple refuses it.
    _RESERVED = frozenset(
        (
            "__new__",
            "__init__",
            "__slots__",
            "__getnewargs__",
            "_fields",
            "_field_defaults",
            "_make",
            "_replace",
            "_asdict",
            "_source",
            "__match_args__",
        )
    )

    class _NamedTupleMeta(type):
        def __new__(cls, name, bases, namespace):
            if namespace.get("__module__") == __name__:  # the base class below
                return super().__new__(cls, name, bases, namespace)
            fields = tuple(namespace.get("__annotations__", {}))
            defaults = {field: namespace[field] for field in fields if field in namespace}
            if any(field in defaults for field in fields[: len(fields) - len(defaults)]):
                raise TypeError(f"{name}: a field without a default after one with a default")
            for field in fields:
                if field.startswith("_") or not field.isidentifier():
                    raise ValueError(f"{name}: {field!r} is not a field name (a name, no '_')")
            for reserved in _RESERVED.intersection(namespace):
                raise AttributeError(f"Cannot overwrite NamedTuple attribute {reserved}")
            # The one generated function: a constructor taking the fields by position or
            # name, with the defaults, as fast as namedtuple's.
            parameters = ", ".join(f"{f}=_defaults[{f!r}]" if f in defaults else f for f in fields)
            source = (
                f"def __new__(_cls, {parameters}):\n"
                f"    return _tuple_new(_cls, ({''.join(f + ', ' for f in fields)}))\n"
            )
            scope = {"_defaults": defaults, "_tuple_new": tuple.__new__}
            try:
                exec(source, scope)
            except SyntaxError:  # a keyword as a field name
                raise ValueError(f"{name}: a keyword is not a field name") from None
            constructor = scope["__new__"]
            constructor.__qualname__ = f"{name}.__new__"
            body = {key: value for key, value in namespace.items() if key not in fields}
            body.update(
                __slots__=(),
                __new__=constructor,
                __match_args__=fields,
                _fields=fields,
                _field_defaults=defaults,
                _make=classmethod(_make),
                _replace=_replace,
                __repr__=body.get("__repr__", _repr),
                __getnewargs__=_getnewargs,
            )
            for index, field in enumerate(fields):
                body[field] = property(itemgetter(index), doc=f"Alias for field number {index}")
            return type(name, (tuple,), body)

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
