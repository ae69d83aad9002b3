from __future__ import annotations

import re
import time
from typing import SupportsIndex

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qboot_systemd import envfile
from qboot_systemd.problems import Problem


def parse(text: str) -> envfile.EnvFile:
    return envfile.parse(text.encode(), "qmail-x.env")


def values(text: str) -> dict[str, str]:
    result = parse(text)
    assert result.problems == ()
    return {a.name: a.value for a in result.assignments}


def test_plain_assignments_and_comments() -> None:
    assert values("# c\n\nPORT=587\n  IP=127.0.0.1 # trailing\n") == {
        "PORT": "587",
        "IP": "127.0.0.1",
    }


def test_quoting_like_the_shell() -> None:
    text = 'A=\'x $B "y"\'\nB="a\\"b\\$c\\\\d\\e"\nC=one\\ two\nD=\'\'\n'
    assert values(text) == {"A": 'x $B "y"', "B": 'a"b$c\\d\\e', "C": "one two", "D": ""}


def test_expansion_of_earlier_definitions() -> None:
    text = 'RBL="rblsmtpd -r zen"\nPRESMTPD="$RBL ${X}greet $UNSET"\nX=late\nLIT=a$\n'
    assert values(text)["PRESMTPD"] == "rblsmtpd -r zen greet "
    assert values(text)["LIT"] == "a$"


def test_single_quotes_do_not_expand() -> None:
    assert values("A=1\nB='$A'\n")["B"] == "$A"


def test_setenv_and_export() -> None:
    result = parse('setenv NORESULT 1\nsetenv MSG "a b"\nexport X=2\nY=3\nexport Y\nsetenv E\n')
    assert result.problems == ()
    assert result.exported() == (
        ("NORESULT", "1"),
        ("MSG", "a b"),
        ("X", "2"),
        ("Y", "3"),
        ("E", ""),
    )


def test_exported_keeps_the_last_value() -> None:
    result = parse("setenv A 1\nsetenv A 2\n")
    assert result.exported() == (("A", "2"),)


def test_continuation_lines() -> None:
    result = parse("A=one\\\ntwo\nB=3\n")
    assert result.problems == ()
    assert [(a.name, a.value, a.line) for a in result.assignments] == [
        ("A", "onetwo", 1),
        ("B", "3", 3),
    ]


def problem_lines(text: str) -> list[tuple[int, str]]:
    return [(p.line, p.message) for p in parse(text).problems]


def test_everything_a_shell_would_run_is_refused_with_its_line() -> None:
    text = (
        "OK=1\n"
        "A=$(id)\n"
        "B=`id`\n"
        'C="`id`"\n'
        "D=1; rm -rf /\n"
        "E=1 | cat\n"
        "rm -rf /\n"
        "F=a b\n"
        "G=${H:-x}\n"
        "I=$1\n"
        "J=1 > /tmp/x\n"
        "setenv A B C\n"
        "setenv A=B\n"
        "OK2=2\n"
    )
    lines = problem_lines(text)
    assert [line for line, _ in lines] == list(range(2, 14))
    assert "command substitution" in lines[0][1]
    assert "unknown command 'rm'" in lines[5][1]
    assert "quote values with spaces" in lines[6][1]
    assert values_of_good(text) == {"OK": "1", "OK2": "2"}


def values_of_good(text: str) -> dict[str, str]:
    return {a.name: a.value for a in parse(text).assignments}


def test_unterminated_quotes_and_newlines_in_values() -> None:
    assert problem_lines("A='open\nB=2\n") == [(1, "unterminated single quote")]
    lines = problem_lines('A="open\nB=2\n')
    assert lines[0][0] == 1 and "newline" in lines[0][1]


def test_quoted_name_is_not_an_assignment() -> None:
    assert "unknown command" in problem_lines('"A=1"\n')[0][1]


def test_nul_and_invalid_utf8_name_the_line() -> None:
    result = envfile.parse(b"A=1\nB=\0\n", "f.env")
    assert [(p.line, p.message) for p in result.problems] == [(2, "NUL byte in env file")]
    result = envfile.parse(b"A=1\n\nB=\xff\n", "f.env")
    assert [(p.line, p.message) for p in result.problems] == [(3, "env file is not valid UTF-8")]


def test_predefined_variables() -> None:
    result = envfile.parse(b'SMTPD="$QMAILHOME/bin/qmail-smtpd"\n', "f", {"QMAILHOME": "/q"})
    assert result.last("SMTPD") is not None
    assert result.last("SMTPD").value == "/q/bin/qmail-smtpd"  # type: ignore[union-attr]


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_reader_never_crashes_on_arbitrary_bytes(data: bytes) -> None:
    result = envfile.parse(data, "fuzz.env")
    lines = data.count(b"\n") + 1
    for problem in result.problems:
        assert problem.file == "fuzz.env"
        assert 1 <= problem.line <= lines
    for assignment in result.assignments:
        assert "\n" not in assignment.value and "\0" not in assignment.value


shellish = st.text(alphabet="AB=$'\"\\ \t\n#;`(){}x1", max_size=80)


@settings(max_examples=400, deadline=None)
@given(shellish)
def test_reader_never_crashes_on_shell_like_text(text: str) -> None:
    result = parse(text)
    for problem in result.problems:
        assert problem.line >= 1
    for assignment in result.assignments:
        assert "\n" not in assignment.value


# Sizes an attacker (or a slip of the keyboard) reaches: the reader is linear in its
# input and caps what expansion produces, so each parse has a deadline.
PARSE_DEADLINE = 5.0


def timed_parse(text: str) -> tuple[envfile.EnvFile, float]:
    started = time.monotonic()
    result = parse(text)
    return result, time.monotonic() - started


def check_bounded(text: str) -> envfile.EnvFile:
    result, elapsed = timed_parse(text)
    assert elapsed < PARSE_DEADLINE, f"{len(text)} characters took {elapsed:.1f} s"
    total = 0
    for assignment in result.assignments:
        assert len(assignment.value) <= envfile.MAX_VALUE
        total += len(assignment.value)
    assert total <= envfile.MAX_TOTAL
    for problem in result.problems:
        assert len(problem.message) < 300  # a message never carries a whole line
    return result


def test_doubling_is_capped_at_its_line() -> None:
    # 251 bytes of this took 20 s and 1.8 GB before the caps
    text = "A=x\n" + 'A="$A$A"\n' * 24  # 16 MiB without the cap: safe to run on old code
    result = check_bounded(text)
    assert result.problems[0].line == 18  # 2**17 > 64 KiB
    assert "value longer than 64 KiB" in result.problems[0].message


def test_many_expansions_in_one_value() -> None:
    result = check_bounded("A=" + "x" * 100 + "\nB=" + "$A" * 1000 + "\n")
    assert [(p.line, p.message) for p in result.problems] == [(2, "value longer than 64 KiB")]


def test_total_of_all_values_is_capped() -> None:
    text = "A=" + "x" * 60_000 + "\n" + "".join(f"B{i}=$A\n" for i in range(10))
    result = check_bounded(text)
    assert result.problems[0].line == 5
    assert "256 KiB in all" in result.problems[0].message


def test_long_lines_and_deep_nesting_are_bounded() -> None:
    for text in (
        "A=" + "x" * 100_000 + "\n",
        "A=" + "${" * 50_000 + "\n",
        'A="' + "'\"'\"" * 25_000 + '"\n',
        "A=" + "a\\ " * 40_000 + "\n",
        "X" * 100_000 + "=1\n",
    ):
        check_bounded(text)


class CountingText(str):
    """The text as the lexer reads it, counting the characters its searches and slices
    go over: a deterministic measure of its work, whatever the machine's speed."""

    covered = 0

    def find(
        self, sub: str, start: SupportsIndex | None = None, end: SupportsIndex | None = None
    ) -> int:
        begin = 0 if start is None else int(start)
        stop = len(self) if end is None else min(int(end), len(self))
        found = super().find(sub, begin, stop)
        CountingText.covered += max(0, (found + len(sub) if found >= 0 else stop) - begin)
        return found

    def __getitem__(self, key: SupportsIndex | slice) -> str:
        piece = super().__getitem__(key)
        CountingText.covered += len(piece)
        return piece


@pytest.mark.parametrize(
    "unit",
    [
        "A=${x\n",  # an unterminated ${ on every line: no search for } past the line
        "A='x\n",  # an unterminated quote on every line
        "A=x' '\n",  # a quote on every line, closed on it
        "A=\\\n",  # one logical line continued for ever
        'A="x\n',  # an unterminated double quote on every line
        "#" + "x" * 60 + "\n",  # comments
        "A=" + "'x'" * 300 + "\n",  # many quotes on long lines
    ],
)
def test_the_reader_is_linear_in_its_input(unit: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A reader that searched past the end of a line is quadratic, and fast at it (memchr):
    no deadline catches it at the sizes of an env file, a count of its work does."""
    real = envfile._decode

    def counting(data: bytes, path: str) -> tuple[str | None, Problem | None]:
        text, problem = real(data, path)
        return (None if text is None else CountingText(text)), problem

    monkeypatch.setattr(envfile, "_decode", counting)
    text = unit * (128 * 1024 // len(unit))  # twice what bootctrl reads of an env file
    CountingText.covered = 0
    parse(text)
    assert CountingText.covered <= 4 * len(text), f"{CountingText.covered} for {len(text)}"


def test_messages_quote_little_and_escape_it() -> None:
    result = parse("\x1b[31m" + "y" * 10_000 + "\n")
    (problem,) = result.problems
    assert "\x1b" not in problem.message and "\\x1b" in problem.message
    assert "(10005 characters)" in problem.message and len(problem.message) < 200


pieces = st.sampled_from(
    ["$A", "${A}", "$A$A", '"$A"', "'x'", "\\", "\\\n", "\n", "A=", "=", " ", '"', "'", "#", "${"]
)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(pieces, st.integers(1, 3000)), min_size=1, max_size=12),
    st.text(alphabet="Ax$", max_size=50),
)
def test_big_generated_inputs_are_bounded(runs: list[tuple[str, int]], seed: str) -> None:
    text = "A=" + seed + "\n" + "".join(piece * count for piece, count in runs)
    check_bounded(text)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 200), st.integers(2, 6), st.integers(0, 2000))
def test_growth_by_repetition_is_bounded(lines: int, copies: int, width: int) -> None:
    text = f"A={'z' * width}\n" + ('A="' + "$A" * copies + '"\n') * lines
    check_bounded(text)


@given(st.text(st.sampled_from("aZ_09 =-é٣\n")) | st.text())
def test_is_name_is_the_shell_name_expression(text: str) -> None:
    assert envfile.is_name(text) == bool(re.match(r"[A-Za-z_][A-Za-z0-9_]*\Z", text))


# The runs were regular expressions; these are the expressions, as a reference.
_RUN_TEXT = st.text(st.sampled_from(" \t\n'\"\\$;&|<>()`=#aZ_09é{}"), max_size=30)


@given(_RUN_TEXT, st.integers(0, 30), st.integers(0, 30))
def test_runs_end_where_their_expressions_ended(text: str, start: int, end: int) -> None:
    for stops, pattern in (
        (envfile._PLAIN_STOPS, r"[^ \t\n'\"\\$;&|<>()`=]+"),
        (envfile._DQUOTE_STOPS, r'[^"\n`\\$]+'),
    ):
        match = re.compile(pattern).match(text, start, end)
        found = envfile._run_end(text, start, min(end, len(text)), stops)
        assert found == (match.end() if match else start)
    match = re.compile(r"[A-Za-z_][A-Za-z0-9_]*").match(text, start, end)
    assert envfile._name_end(text, start, min(end, len(text))) == (match.end() if match else start)
