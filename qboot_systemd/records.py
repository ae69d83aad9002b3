"""typing.NamedTuple for the modules qboot-tcpsrv starts with, without typing at run time.

Importing typing (and the re it pulls in) costs qboot-tcpsrv 1 MiB of its ~11 MiB. Type
checkers see typing.NamedTuple itself; at run time the same class statement builds a
collections.namedtuple subclass, fields and defaults from the annotations, methods and
properties kept, as typing's own NamedTuple does.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING's value, without importing typing

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
