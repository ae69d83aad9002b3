"""jsontext writes what json.dumps(sort_keys=True, separators=(",", ":")) writes: the
config stamps hash it, and a stamp that changed with the encoder would restart every
service after an upgrade."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qboot_systemd import jsontext


def reference(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


plain = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
    max_leaves=20,
)


@given(plain)
def test_same_text_as_json(value: object) -> None:
    assert jsontext.sorted_compact(value) == reference(value)


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
    assert jsontext.string(text) == json.dumps(text)


def test_tuples_are_lists_and_nested_keys_sorted() -> None:
    value = {"b": (1, True, None), "a": {"z": [], "y": {}}}
    assert jsontext.sorted_compact(value) == reference(value)


@pytest.mark.parametrize("value", [1.5, {1: "x"}, {"x"}, b"x"])
def test_anything_else_refused(value: object) -> None:
    with pytest.raises(TypeError):
        jsontext.sorted_compact(value)
