"""purepath writes paths as pathlib does: generated units and messages name files by
this text."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qboot_systemd import purepath

path_text = st.lists(st.sampled_from(["/", ".", "..", "a", "b c", "é", "\n"]), max_size=12).map(
    "".join
)


@given(path_text)
def test_pure_is_pathlib_text(text: str) -> None:
    assert purepath.pure(text) == str(PurePosixPath(text))


@given(path_text)
def test_absolute_is_pathlib_absolute(text: str) -> None:
    assert purepath.absolute(text) == str(Path(text).absolute())


@given(path_text, st.lists(path_text, max_size=3))
def test_join_is_pathlib_join(base: str, names: list[str]) -> None:
    start = purepath.pure(base)
    assert purepath.join(start, *names) == str(Path(start).joinpath(*names))


@pytest.mark.parametrize("text", ["", ".", "/", "//", "///", "//a//b/", "a/./../b", "/var/qmail/"])
def test_edges(text: str) -> None:
    assert purepath.pure(text) == str(PurePosixPath(text))
    assert purepath.pure(Path(text)) == str(Path(text))


def test_absolute_from_elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert purepath.absolute("x/../y") == str(Path("x/../y").absolute()) == f"{tmp_path}/x/../y"
    assert os.getcwd() == str(tmp_path)
