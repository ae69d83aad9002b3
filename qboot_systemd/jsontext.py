"""`json.dumps(value, sort_keys=True, separators=(",", ":"))` for plain data, without json.

The config stamps hash this text, so it must stay what json writes, byte for byte (another
text would restart every service once after an upgrade); importing json cost the generator
1.6 ms at every start. Only what the models' as_json() give: dicts with str keys, lists,
tuples, str, int, bool and None. tests/test_jsontext.py holds it against json itself.
"""

from __future__ import annotations

# json's escapes with ensure_ascii: these by name, other controls, DEL and non-ASCII as
# \uXXXX (beyond the BMP as a surrogate pair).
_NAMED = {"\\": "\\\\", '"': '\\"', "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def string(text: str) -> str:
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


def sorted_compact(value: object) -> str:
    """The text json.dumps(value, sort_keys=True, separators=(",", ":")) gives."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, str):
        return string(value)
    if isinstance(value, int):
        return int.__repr__(value)
    if isinstance(value, list | tuple):
        return "[" + ",".join(sorted_compact(item) for item in value) + "]"
    if isinstance(value, dict):
        if not all(isinstance(key, str) for key in value):
            raise TypeError("only str keys")
        items = sorted(value.items())
        return "{" + ",".join(f"{string(key)}:{sorted_compact(item)}" for key, item in items) + "}"
    raise TypeError(f"{type(value).__name__} is not plain data")
