"""Reader for qmail-<svc>.env files: a restricted shell file, parsed, never executed.

Accepted: comments, blank lines, `NAME=value`, `export NAME=value`, `setenv NAME value`,
shell quoting ('...', "...", backslash), backslash-newline continuation and `$NAME` /
`${NAME}` expansion of earlier definitions. Everything a shell would run (command
substitution, pipes, `;`, redirections, other commands) is reported as a problem.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from .problems import Problem

NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_NAME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_")
_SHELL_SPECIAL = frozenset(";&|<>()`")
_DQUOTE_ESCAPABLE = frozenset('$`"\\')


@dataclass(frozen=True)
class Assignment:
    name: str
    value: str
    line: int
    exported: bool


@dataclass(frozen=True)
class EnvFile:
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


@dataclass
class _Word:
    text: str = ""
    # Set when the word starts with an unquoted `NAME=`: a shell assignment.
    assign_name: str | None = None
    # Unquoted name characters seen so far at the start of the word, if nothing else yet.
    literal_prefix: str | None = ""
    line: int = 0


@dataclass
class _Lexer:
    text: str
    variables: dict[str, str]
    pos: int = 0
    line: int = 1
    commands: list[list[_Word]] = field(default_factory=list)

    def peek(self, offset: int = 0) -> str:
        index = self.pos + offset
        return self.text[index] if index < len(self.text) else ""

    def fail(self, message: str) -> EnvSyntaxError:
        return EnvSyntaxError(self.line, message)

    def read_command(self) -> list[_Word] | None:
        """Words of the next logical line; None at end of input."""
        if self.pos >= len(self.text):
            return None
        words: list[_Word] = []
        word: _Word | None = None
        while self.pos < len(self.text):
            char = self.text[self.pos]
            if char == "\n":
                self.pos += 1
                self.line += 1
                break
            if char in " \t":
                self.pos += 1
                word = self._finish(word, words)
                continue
            if char == "#" and word is None:
                while self.pos < len(self.text) and self.text[self.pos] != "\n":
                    self.pos += 1
                continue
            if char == "\\" and self.peek(1) == "\n":
                self.pos += 2
                self.line += 1
                continue
            if word is None:
                word = _Word(line=self.line)
            self._read_into(word)
        self._finish(word, words)
        return words

    @staticmethod
    def _finish(word: _Word | None, words: list[_Word]) -> None:
        if word is not None:
            words.append(word)

    def _read_into(self, word: _Word) -> None:
        char = self.text[self.pos]
        if char in _SHELL_SPECIAL:
            what = "command substitution" if char == "`" else f"shell operator {char!r}"
            raise self.fail(f"{what} is not allowed in an env file")
        if char == "'":
            word.literal_prefix = None
            end = self.text.find("'", self.pos + 1)
            if end == -1:
                raise self.fail("unterminated single quote")
            value = self.text[self.pos + 1 : end]
            if "\n" in value:
                raise self.fail("newline inside a quoted value")
            word.text += value
            self.pos = end + 1
            return
        if char == '"':
            word.literal_prefix = None
            self._read_double_quoted(word)
            return
        if char == "\\":
            word.literal_prefix = None
            following = self.peek(1)
            if following == "":
                raise self.fail("backslash at end of file")
            word.text += following
            self.pos += 2
            return
        if char == "$":
            word.literal_prefix = None
            word.text += self._expand()
            return
        prefix = word.literal_prefix
        if char == "=" and word.assign_name is None and prefix and NAME_RE.match(prefix):
            word.assign_name = prefix
            word.text = ""
            word.literal_prefix = None
            self.pos += 1
            return
        if word.literal_prefix is not None:
            word.literal_prefix = word.literal_prefix + char if char in _NAME_CHARS else None
        word.text += char
        self.pos += 1

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
                following = self.peek(1)
                if following == "\n":
                    raise self.fail("newline inside a quoted value")
                if following in _DQUOTE_ESCAPABLE and following:
                    word.text += following
                    self.pos += 2
                    continue
                word.text += "\\"
                self.pos += 1
                continue
            if char == "$":
                word.text += self._expand()
                continue
            word.text += char
            self.pos += 1

    def _expand(self) -> str:
        following = self.peek(1)
        if following == "{":
            end = self.text.find("}", self.pos + 2)
            if end == -1 or "\n" in self.text[self.pos : end]:
                raise self.fail("unterminated ${...}")
            name = self.text[self.pos + 2 : end]
            if not NAME_RE.match(name):
                raise self.fail(f"unsupported expansion ${{{name}}}: only ${{NAME}} is allowed")
            self.pos = end + 1
            return self.variables.get(name, "")
        if following == "(":
            raise self.fail("command substitution is not allowed in an env file")
        if following and (following.isdigit() or following in "$?#@*!-"):
            raise self.fail(f"special parameter ${following} is not allowed in an env file")
        if following and (following.isalpha() or following == "_"):
            end = self.pos + 1
            while end < len(self.text) and self.text[end] in _NAME_CHARS:
                end += 1
            name = self.text[self.pos + 1 : end]
            self.pos = end
            return self.variables.get(name, "")
        self.pos += 1
        return "$"


def _decode(data: bytes, path: str) -> tuple[str | None, Problem | None]:
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
    end = lexer.text.find("\n", lexer.pos)
    if end == -1:
        lexer.pos = len(lexer.text)
    else:
        lexer.line += lexer.text.count("\n", lexer.pos, end + 1)
        lexer.pos = end + 1


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
        if words[1].assign_name is not None or not NAME_RE.match(name):
            raise EnvSyntaxError(line, f"setenv: invalid variable name {name!r} (no '=')")
        value = words[2].text if len(words) == 3 else ""
        return [Assignment(name, value, line, True)]
    if command == "export":
        result: list[Assignment] = []
        for word in words[1:]:
            if word.assign_name is not None:
                result.append(Assignment(word.assign_name, word.text, line, True))
            elif NAME_RE.match(word.text) and word.literal_prefix is not None:
                result.append(Assignment(word.text, variables.get(word.text, ""), line, True))
            else:
                raise EnvSyntaxError(line, f"export: invalid argument {word.text!r}")
        return result
    raise EnvSyntaxError(
        line, f"unknown command {first.text!r}: only NAME=value, export and setenv are allowed"
    )
