"""The start-up stand-ins give what the standard library gives: units and messages name
files as str(Path(...)) does, the config stamps hash what json.dumps writes (another text
would restart every service after an upgrade), and records behave as typing.NamedTuple."""

from __future__ import annotations

import copy
import json
import os
import pickle
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import NamedTuple

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qboot_systemd import _startup

from .bootctrl_trees import copy_shipped

# Paths.

path_text = st.lists(st.sampled_from(["/", ".", "..", "a", "b c", "é", "\n"]), max_size=12).map(
    "".join
)


@given(path_text)
def test_pure_is_pathlib_text(text: str) -> None:
    assert _startup.pure_path(text) == str(PurePosixPath(text))


@given(path_text)
def test_absolute_is_pathlib_absolute(text: str) -> None:
    assert _startup.absolute_path(text) == str(Path(text).absolute())


@given(path_text, st.lists(path_text, max_size=3))
def test_join_is_pathlib_join(base: str, names: list[str]) -> None:
    start = _startup.pure_path(base)
    assert _startup.join_path(start, *names) == str(Path(start).joinpath(*names))


@pytest.mark.parametrize("text", ["", ".", "/", "//", "///", "//a//b/", "a/./../b", "/var/qmail/"])
def test_path_edges(text: str) -> None:
    assert _startup.pure_path(text) == str(PurePosixPath(text))
    assert _startup.pure_path(Path(text)) == str(Path(text))


def test_absolute_from_elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert (
        _startup.absolute_path("x/../y") == str(Path("x/../y").absolute()) == f"{tmp_path}/x/../y"
    )
    assert os.getcwd() == str(tmp_path)


# JSON text.


def reference(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


plain = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
    max_leaves=20,
)


@given(plain)
def test_same_text_as_json(value: object) -> None:
    assert _startup.json_text(value) == reference(value)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "plain /var/qmail/bin/qmail-smtpd",
        'quote " and \\ backslash',
        "\b\f\n\r\t\x00\x1f\x7f",
        "é\u2028\ud800\udcff",  # non-ASCII and lone surrogates (surrogateescape'd names)
        "\U0001f600\U0010ffff",  # beyond the BMP: a surrogate pair
    ],
)
def test_strings_escaped_as_json_escapes_them(text: str) -> None:
    assert _startup.json_string(text) == json.dumps(text)


def test_tuples_are_lists_and_nested_keys_sorted() -> None:
    value = {"b": (1, True, None), "a": {"z": [], "y": {}}}
    assert _startup.json_text(value) == reference(value)


@pytest.mark.parametrize("value", [1.5, {1: "x"}, {"x"}, b"x"])
def test_anything_else_refused(value: object) -> None:
    with pytest.raises(TypeError):
        _startup.json_text(value)


# Records.


class Point(_startup.NamedTuple):
    """A record as the models write them: fields, a default, a method, a property."""

    x: int
    y: int = 0

    def moved(self, by: int) -> Point:
        return self._replace(x=self.x + by)

    @property
    def norm(self) -> int:
        return abs(self.x) + abs(self.y)


def test_records_behave_as_typing_namedtuple() -> None:
    point = Point(3)
    assert (point.x, point.y, point.norm) == (3, 0, 3)
    assert point.moved(2) == Point(5, 0) == (5, 0)
    assert Point._fields == ("x", "y") and Point._field_defaults == {"y": 0}
    assert repr(point) == "Point(x=3, y=0)"
    with pytest.raises(AttributeError):
        point.z = 1  # type: ignore[attr-defined]
    with pytest.raises(TypeError, match="without a default after one with a default"):

        class Bad(_startup.NamedTuple):
            a: int = 0
            b: int  # type: ignore[misc]


class TypingPoint(NamedTuple):
    x: int
    y: int = 0


@pytest.mark.parametrize(
    "make",
    [
        lambda cls: cls(1, 2),
        lambda cls: cls(y=2, x=1),
        lambda cls: cls(1),
        lambda cls: cls(),
        lambda cls: cls(1, 2, 3),
        lambda cls: cls(1, z=2),
        lambda cls: cls(1, x=2),
        lambda cls: cls._make([4, 5]),
        lambda cls: cls._make([4]),
        lambda cls: cls(1)._replace(y=7),
        lambda cls: cls(1)._replace(z=7),
        lambda cls: cls(1, 2) + (3,),  # noqa: RUF005 (tuple concatenation is the point)
        lambda cls: cls(1, 2)[::-1],
        lambda cls: hash(cls(1, 2)) == hash((1, 2)),
        lambda cls: cls(1, 2) < cls(1, 3),
        lambda cls: copy.copy(cls(1, 2)),
        lambda cls: [*cls(1, 2)],
        lambda cls: cls.__match_args__,
        lambda cls: (cls.x.__doc__, cls.y.__doc__),
    ],
)
def test_records_answer_as_typing_namedtuple_answers(make: Callable[[type], object]) -> None:
    def outcome(cls: type) -> object:
        try:
            value = make(cls)
        except TypeError:
            return TypeError
        except ValueError:
            return ValueError
        return tuple(value) if isinstance(value, tuple) else value

    assert outcome(Point) == outcome(TypingPoint)


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ("def _replace(self, **changes): return 0", AttributeError),
        ("_fields = ()", AttributeError),
        ("def __new__(cls): return 0", AttributeError),
        ("_a: int", ValueError),
        ("__annotations__['class'] = int", ValueError),
    ],
)
def test_records_refuse_what_typing_refuses(body: str, error: type[Exception]) -> None:
    for base in (_startup.NamedTuple, NamedTuple):
        with pytest.raises(error):
            exec(f"class R(base):\n    a: int\n    {body}\n", {"base": base, "int": int})


def test_records_pickle_and_match() -> None:
    point = Point(3, 4)
    assert pickle.loads(pickle.dumps(point)) == point
    assert type(pickle.loads(pickle.dumps(point))) is Point
    match point:
        case Point(x, y):
            assert (x, y) == (3, 4)
        case _:
            pytest.fail("no match")


def test_the_generator_starts_without_what_startup_stands_in_for() -> None:
    # -S: without site, so without the editable install's finder (it imports pathlib and
    # re itself); an installed generator has none either.
    root = str(Path(_startup.__file__).parent.parent)
    code = (
        f"import sys; sys.path.insert(0, {root!r}); import qboot_systemd.generator; "
        "print(sorted(m for m in ('typing', 'pathlib', 'json', 're', 'hashlib') "
        "if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "[]"


def test_a_generator_run_with_addresses_and_rblsmtpd_stays_light(tmp_path: Path) -> None:
    """IP= and PRESMTPD=rblsmtpd are read without ipaddress or the decision's enums: both
    are in most bootctrls, so their cost is every boot's cost."""
    root = str(Path(_startup.__file__).parent.parent)
    directory = copy_shipped(tmp_path)
    (directory / "qmail-smtp.env").write_text(
        'IP="127.0.0.1 ::1"\nPRESMTPD="/usr/bin/rblsmtpd -r zen.example -a allow.example"\n'
    )
    out = [tmp_path / name for name in ("normal", "early", "late")]
    for path in out:
        path.mkdir()
    heavy = ("typing", "pathlib", "json", "re", "hashlib", "ipaddress", "enum", "difflib")
    code = (
        f"import sys; sys.path.insert(0, {root!r}); sys.argv[1:] = {[str(p) for p in out]!r}; "
        "from qboot_systemd.generator import main; status = main(); "
        f"print(status, sorted(m for m in {heavy!r} if m in sys.modules))"
    )
    environment = {"QBOOT_BOOTCTRL": str(directory), "QBOOT_QMAIL_HOME": "/q", "PATH": "/bin"}
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env=environment,
    )
    assert done.stdout.strip() == "0 []", done.stderr
    unit = (out[0] / "qmail-tcpd@smtp.socket.d" / "qboot.conf").read_text()
    assert "ListenStream=[::1]:25" in unit and "ListenStream=127.0.0.1:25" in unit
