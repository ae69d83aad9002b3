"""Reader for qmail-<svc>.env files: a restricted shell file, parsed, never executed.

Accepted: comments, blank lines, `NAME=value`, `export NAME=value`, `setenv NAME value`,
shell quoting ('...', "...", backslash), backslash-newline continuation and `$NAME` /
`${NAME}` expansion of earlier definitions. Everything a shell would run (command
substitution, pipes, `;`, redirections, other commands) is reported as a problem.
"""

from __future__ import annotations

from ._startup import TYPE_CHECKING, NamedTuple
from .problems import Problem, quote

if TYPE_CHECKING:
    from collections.abc import Mapping

_NAME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_")
_SHELL_SPECIAL = frozenset(";&|<>()`")


def is_name(text: str) -> bool:
    """A shell variable name: `[A-Za-z_][A-Za-z0-9_]*` (an ASCII identifier is exactly that)."""
    return text.isascii() and text.isidentifier()


_DQUOTE_ESCAPABLE = frozenset('$`"\\')


class Assignment(NamedTuple):
    name: str
    value: str
    line: int
    exported: bool


class EnvFile(NamedTuple):
    path: str
    assignments: tuple[Assignment, ...]
    problems: tuple[Problem, ...]

    def last(self, name: str) -> Assignment | None:
        """The definition in force at the end of the file."""
        for assignment in reversed(self.assignments):
            if assignment.name == name:
                return assignment
        return None

    def exported(self) -> tuple[tuple[str, str], ...]:
        """Exported variables with their final values, in order of first export."""
        order: dict[str, None] = {}
        values: dict[str, str] = {}
        for assignment in self.assignments:
            values[assignment.name] = assignment.value
            if assignment.exported:
                order.setdefault(assignment.name)
        return tuple((name, values[name]) for name in order)

    def lines(self) -> tuple[tuple[str, int], ...]:
        """Each name with the line of its last definition."""
        return tuple({a.name: a.line for a in self.assignments}.items())


class EnvSyntaxError(Exception):
    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


# What expansion may produce: `A="$A$A"` doubles A on every line, so without caps 250
# bytes of env file ask for gigabytes. One value, and all values of a file together.
MAX_VALUE = 64 * 1024
MAX_TOTAL = 256 * 1024

# What ends a run of characters that stand for themselves, unquoted and inside double
# quotes. Scanned by hand, not by regular expressions: the generator starts
# without re (see _startup).
_PLAIN_STOPS = frozenset(" \t\n'\"\\$;&|<>()`=")
_DQUOTE_STOPS = frozenset('"\n`\\$')
_NAME_START = _NAME_CHARS - frozenset("0123456789")


def _run_end(text: str, start: int, end: int, stops: frozenset[str]) -> int:
    """Where the run of characters not in stops that starts at start ends (at most end)."""
    position = start
    while position < end and text[position] not in stops:
        position += 1
    return position


def _name_end(text: str, start: int, end: int) -> int:
    """Where the variable name at start ends (start itself: no name there)."""
    if start >= end or text[start] not in _NAME_START:
        return start
    position = start + 1
    while position < end and text[position] in _NAME_CHARS:
        position += 1
    return position


class _Word:
    __slots__ = ("assign_name", "length", "line", "literal_prefix", "parts")

    def __init__(self, line: int = 0) -> None:
        # The value in pieces, joined once at the end: building it with `+=` is quadratic.
        self.parts: list[str] = []
        # Set when the word starts with an unquoted `NAME=`: a shell assignment.
        self.assign_name: str | None = None
        # Unquoted name characters seen so far at the start of the word, if nothing else.
        self.literal_prefix: str | None = ""
        self.line = line
        self.length = 0

    @property
    def text(self) -> str:
        if len(self.parts) != 1:
            self.parts = ["".join(self.parts)]
        return self.parts[0]


class _Lexer:
    """Reads one physical line at a time: every search stops at the end of the line,
    so the work is linear in the input whatever it holds."""

    def __init__(self, text: str, variables: dict[str, str]) -> None:
        self.text = text
        self.variables = variables
        self.pos = 0
        self.line = 1
        self.produced = 0  # characters put into values so far, for MAX_TOTAL
        self.line_end = self._end_of_line(0)  # the current line's newline, or len(text)

    def _end_of_line(self, start: int) -> int:
        end = self.text.find("\n", start)
        return len(self.text) if end == -1 else end

    def next_line(self) -> None:
        """Move past the current line's newline."""
        self.pos = self.line_end + 1
        self.line += 1
        self.line_end = self._end_of_line(self.pos)

    def fail(self, message: str) -> EnvSyntaxError:
        return EnvSyntaxError(self.line, message)

    def append(self, word: _Word, piece: str) -> None:
        word.length += len(piece)
        self.produced += len(piece)
        if word.length > MAX_VALUE:
            raise self.fail(f"value longer than {MAX_VALUE // 1024} KiB")
        if self.produced > MAX_TOTAL:
            raise self.fail(f"values of this file longer than {MAX_TOTAL // 1024} KiB in all")
        word.parts.append(piece)

    def read_command(self) -> list[_Word] | None:
        """Words of the next logical line; None at end of input."""
        if self.pos >= len(self.text):
            return None
        words: list[_Word] = []
        word: _Word | None = None
        while self.pos < len(self.text):
            char = self.text[self.pos]
            if char == "\n":
                self.next_line()
                break
            if char in " \t":
                self.pos += 1
                if word is not None:
                    words.append(word)
                    word = None
                continue
            if char == "#" and word is None:
                self.pos = self.line_end
                continue
            if char == "\\" and self.pos + 1 == self.line_end and self.line_end < len(self.text):
                self.next_line()  # backslash-newline: the logical line goes on
                continue
            if word is None:
                word = _Word(line=self.line)
            self._read_into(word)
        if word is not None:
            words.append(word)
        return words

    def _read_into(self, word: _Word) -> None:
        char = self.text[self.pos]
        if char in _SHELL_SPECIAL:
            what = "command substitution" if char == "`" else f"shell operator {char!r}"
            raise self.fail(f"{what} is not allowed in an env file")
        if char == "'":
            word.literal_prefix = None
            end = self.text.find("'", self.pos + 1, self.line_end)
            if end == -1:
                raise self.fail("unterminated single quote")
            self.append(word, self.text[self.pos + 1 : end])
            self.pos = end + 1
            return
        if char == '"':
            word.literal_prefix = None
            self._read_double_quoted(word)
            return
        if char == "\\":
            word.literal_prefix = None
            if self.pos + 1 >= len(self.text):
                raise self.fail("backslash at end of file")
            self.append(word, self.text[self.pos + 1])
            self.pos += 2
            return
        if char == "$":
            word.literal_prefix = None
            self.append(word, self._expand())
            return
        prefix = word.literal_prefix
        if char == "=":
            if word.assign_name is None and prefix and is_name(prefix):
                word.assign_name = prefix
                word.parts, word.length = [], 0
                word.literal_prefix = None
            else:
                word.literal_prefix = None
                self.append(word, "=")
            self.pos += 1
            return
        end = _run_end(self.text, self.pos, self.line_end, _PLAIN_STOPS)
        assert end > self.pos  # every other character starts a run
        run = self.text[self.pos : end]
        if prefix is not None:
            word.literal_prefix = prefix + run if _NAME_CHARS.issuperset(run) else None
        self.append(word, run)
        self.pos = end

    def _read_double_quoted(self, word: _Word) -> None:
        self.pos += 1
        while True:
            if self.pos >= len(self.text):
                raise self.fail("unterminated double quote")
            char = self.text[self.pos]
            if char == '"':
                self.pos += 1
                return
            if char == "\n":
                raise self.fail("newline inside a quoted value (unterminated double quote?)")
            if char == "`":
                raise self.fail("command substitution is not allowed in an env file")
            if char == "\\":
                following = self.text[self.pos + 1 : self.pos + 2]
                if following == "\n":
                    raise self.fail("newline inside a quoted value")
                if following in _DQUOTE_ESCAPABLE and following:
                    self.append(word, following)
                    self.pos += 2
                    continue
                self.append(word, "\\")
                self.pos += 1
                continue
            if char == "$":
                self.append(word, self._expand())
                continue
            end = _run_end(self.text, self.pos, self.line_end, _DQUOTE_STOPS)
            assert end > self.pos
            self.append(word, self.text[self.pos : end])
            self.pos = end

    def _expand(self) -> str:
        following = self.text[self.pos + 1 : self.pos + 2]
        if following == "{":
            end = self.text.find("}", self.pos + 2, self.line_end)
            if end == -1:
                raise self.fail("unterminated ${...}")
            name = self.text[self.pos + 2 : end]
            if not is_name(name):
                raise self.fail(
                    f"unsupported expansion ${{{quote(name)[1:-1]}}}: only ${{NAME}} is allowed"
                )
            self.pos = end + 1
            return self.variables.get(name, "")
        if following == "(":
            raise self.fail("command substitution is not allowed in an env file")
        if following and (following.isdigit() or following in "$?#@*!-"):
            raise self.fail(f"special parameter ${following} is not allowed in an env file")
        end = _name_end(self.text, self.pos + 1, self.line_end)
        if end > self.pos + 1:
            name = self.text[self.pos + 1 : end]
            self.pos = end
            return self.variables.get(name, "")
        self.pos += 1
        return "$"


_BOM = b"\xef\xbb\xbf"


def _decode(data: bytes, path: str) -> tuple[str | None, Problem | None]:
    # Editors on other systems add these; a shell would choke on them too, and the
    # service keeps its last good settings: say exactly what to change.
    if data.startswith(_BOM):
        return None, Problem(
            path, 1, "starts with a UTF-8 byte order mark (BOM): save it without one"
        )
    if b"\r" in data:
        line = data[: data.index(b"\r")].count(b"\n") + 1
        return None, Problem(
            path, line, "carriage return (a DOS/Windows line end): convert it with dos2unix"
        )
    if b"\0" in data:
        line = data[: data.index(b"\0")].count(b"\n") + 1
        return None, Problem(path, line, "NUL byte in env file")
    try:
        return data.decode("utf-8"), None
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        return None, Problem(path, line, "env file is not valid UTF-8")


def parse(data: bytes, path: str, predefined: Mapping[str, str] | None = None) -> EnvFile:
    """Parse an env file. Never raises: whatever it cannot take becomes a Problem."""
    text, problem = _decode(data, path)
    if text is None:
        assert problem is not None
        return EnvFile(path, (), (problem,))
    lexer = _Lexer(text, dict(predefined or {}))
    assignments: list[Assignment] = []
    problems: list[Problem] = []
    while True:
        try:
            words = lexer.read_command()
        except EnvSyntaxError as error:
            problems.append(Problem(path, error.line, error.message))
            _skip_line(lexer)
            continue
        if words is None:
            break
        if not words:
            continue
        try:
            for assignment in _interpret(words, lexer.variables):
                lexer.variables[assignment.name] = assignment.value
                assignments.append(assignment)
        except EnvSyntaxError as error:
            problems.append(Problem(path, error.line, error.message))
    return EnvFile(path, tuple(assignments), tuple(problems))


def _skip_line(lexer: _Lexer) -> None:
    if lexer.line_end >= len(lexer.text):
        lexer.pos = len(lexer.text)
    else:
        lexer.next_line()


def _interpret(words: list[_Word], variables: Mapping[str, str]) -> list[Assignment]:
    first = words[0]
    line = first.line
    if first.assign_name is not None:
        for extra in words[1:]:
            if extra.assign_name is None:
                raise EnvSyntaxError(
                    line,
                    f"unquoted space in the value of {first.assign_name}: quote values with spaces",
                )
        return [Assignment(w.assign_name or "", w.text, line, False) for w in words]
    command = first.text if first.literal_prefix is not None else None
    if command == "setenv":
        if len(words) < 2 or len(words) > 3:
            raise EnvSyntaxError(line, "setenv takes NAME and one VALUE: quote values with spaces")
        name = words[1].text
        if words[1].assign_name is not None or not is_name(name):
            raise EnvSyntaxError(line, f"setenv: invalid variable name {quote(name)} (no '=')")
        value = words[2].text if len(words) == 3 else ""
        return [Assignment(name, value, line, True)]
    if command == "export":
        result: list[Assignment] = []
        for word in words[1:]:
            if word.assign_name is not None:
                result.append(Assignment(word.assign_name, word.text, line, True))
            elif is_name(word.text) and word.literal_prefix is not None:
                result.append(Assignment(word.text, variables.get(word.text, ""), line, True))
            else:
                raise EnvSyntaxError(line, f"export: invalid argument {quote(word.text)}")
        return result
    raise EnvSyntaxError(
        line,
        f"unknown command {quote(first.text)}: only NAME=value, export and setenv are allowed",
    )
