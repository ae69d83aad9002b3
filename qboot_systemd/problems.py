"""A configuration problem, always located at file:line."""

from __future__ import annotations

from ._startup import NamedTuple


class Problem(NamedTuple):
    file: str
    line: int  # 0 when the problem concerns the file as a whole
    message: str
    service: str = ""  # the tcp service it keeps from its files; "" for none in particular

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.message}"

    def as_json(self) -> dict[str, object]:
        return {"file": self.file, "line": self.line, "message": self.message}


def quote(text: str, limit: int = 60) -> str:
    """A value quoted in a message: escaped as Python's repr does (no line breaks, no
    control characters), and cut, so a message never carries a whole file."""
    shown = repr(text[:limit])
    if len(text) > limit:
        shown += f"... ({len(text)} characters)"
    return shown
