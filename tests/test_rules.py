from __future__ import annotations

import io
import os
from itertools import count
from pathlib import Path

import cdblib
import pytest

from qboot_systemd import rules
from qboot_systemd.cdb import CdbFormatError, CdbReader, SafeCdbWriter, djb_hash, write_cdb
from qboot_systemd.rules import Decision, RulesError, RuleSet


def test_parse_forms_and_quotes() -> None:
    text = (
        b"# comment\n"
        b"\n"
        b'1.2.3.4:allow,RELAYCLIENT="",X=/a b/,Y=\'say "hi"\'\n'
        b"10.:deny\n"
        b"2001:db8::deny\n"
        b"::1:allow\n"
        b"joe@=h.example.com:allow   \t\n"
        b"=.example.com:allow,A=::\n"
        b":allow"
    )
    parsed = rules.parse(text)
    assert [(r.address, r.deny, r.line) for r in parsed] == [
        (b"1.2.3.4", False, 3),
        (b"10.", True, 4),
        (b"2001:db8:", True, 5),
        (b"::1", False, 6),
        (b"joe@=h.example.com", False, 7),
        (b"=.example.com", False, 8),
        (b"", False, 9),
    ]
    assert parsed[0].env == ((b"RELAYCLIENT", b""), (b"X", b"a b"), (b"Y", b'say "hi"'))
    assert parsed[0].value() == b'+RELAYCLIENT=\0+X=a b\0+Y=say "hi"\0'
    assert parsed[1].value() == b"D\0"
    assert parsed[5].env == ((b"A", b""),)


@pytest.mark.parametrize(
    "line",
    [
        b"foo",
        b"   ",
        b"\t",
        b"1.2.3.4:allowx",
        b"1.2.3.4:allow,X",
        b"1.2.3.4:allow,X=",
        b"1.2.3.4:allow,X=/ab",
        b"1.2.3.4:deny:allow",
        b"1.2.3.4:allow\r",
        b"1.2.3.a-b:allow",
        b"1.2.3.4-5-6:allow",
        b"1.2.3.4:foo",
    ],
)
def test_bad_lines_are_errors_with_line_number(line: bytes) -> None:
    with pytest.raises(rules.RulesSyntaxError) as caught:
        rules.parse(b"1.2.3.4:allow\n" + line + b"\n")
    assert caught.value.line == 2
    assert "line 2" in str(caught.value)


@pytest.mark.parametrize(
    ("address", "keys"),
    [
        (b"1.2.3.37-40", [b"1.2.3.37", b"1.2.3.38", b"1.2.3.39", b"1.2.3.40"]),
        (b"10.2-3.", [b"10.2.", b"10.3."]),
        (b"1.2.3.254-999", [b"1.2.3.254", b"1.2.3.255"]),
        (b"1.2.3.5-4", []),
        (b"1.2.3.-1", [b"1.2.3.0", b"1.2.3.1"]),
        (b"=a-b.example", [b"=a-b.example"]),
        (b"x-y@1.2.3.4-5", [b"x-y@1.2.3.4-5"]),
    ],
)
def test_range_expansion(address: bytes, keys: list[bytes]) -> None:
    assert rules.expand_address(address) == keys


def test_candidate_keys_follow_tcpserver_order() -> None:
    keys = list(rules.candidate_keys(b"1.2.3.4", b"mx.example.com", b"joe"))
    assert keys == [
        b"joe@1.2.3.4",
        b"joe@=mx.example.com",
        b"1.2.3.4",
        b"=mx.example.com",
        b"1.2.3.",
        b"1.2.",
        b"1.",
        b"=.example.com",
        b"=.com",
        b"=",
        b"",
    ]
    assert list(rules.candidate_keys(b"::1", None, None)) == [b"::1", b"::", b":", b""]


def key_with_hash_zero_partner() -> tuple[bytes, bytes]:
    zero = b"\x97\xc2\x01\x13\x02"
    assert djb_hash(zero) == 0
    partner = next(b"k%d" % i for i in count() if djb_hash(b"k%d" % i) & 0xFF == 0)
    return zero, partner


def test_pure_cdb_loses_a_hash_zero_key_and_ours_does_not() -> None:
    zero, partner = key_with_hash_zero_partner()
    for writer_class, zero_found in ((cdblib.Writer, False), (SafeCdbWriter, True)):
        buffer = io.BytesIO()
        writer = writer_class(buffer, strict=True)
        writer.put(zero, b"zero")
        writer.put(partner, b"partner")
        writer.finalize()
        reader = CdbReader(buffer.getvalue())
        assert (reader.get(zero) == b"zero") is zero_found
        assert reader.get(partner) == b"partner"
        assert cdblib.Reader(buffer.getvalue()).get(partner) == b"partner"


def test_duplicate_keys_first_wins() -> None:
    buffer = io.BytesIO()
    write_cdb(buffer, [(b"k", b"1"), (b"k", b"2")])
    assert CdbReader(buffer.getvalue()).get(b"k") == b"1"


def test_reader_reports_truncated_files() -> None:
    buffer = io.BytesIO()
    write_cdb(buffer, [(b"1.2.3.4", b"D\0")])
    data = buffer.getvalue()
    with pytest.raises(CdbFormatError):
        CdbReader(data[:100]).get(b"1.2.3.4")
    with pytest.raises(CdbFormatError):
        CdbReader(data[:-10]).get(b"1.2.3.4")
    with pytest.raises(CdbFormatError):
        CdbReader(b"").get(b"")


def compile_text(path: Path, text: bytes) -> Path:
    rules.compile_file(text, path, path.with_suffix(".tmp"))
    return path


def test_compile_is_atomic_and_keeps_the_old_cdb_on_error(tmp_path: Path) -> None:
    cdb = compile_text(tmp_path / "r.cdb", b"1.2.3.4:deny\n")
    before = cdb.read_bytes()
    with pytest.raises(rules.RulesSyntaxError):
        compile_text(cdb, b"1.2.3.4:allow\nbroken\n")
    assert cdb.read_bytes() == before
    assert not (tmp_path / "r.tmp").exists()
    with pytest.raises(OSError):
        rules.compile_file(b":allow\n", cdb, tmp_path / "no-such-dir" / "r.tmp")
    assert cdb.read_bytes() == before


def test_ruleset_decisions(tmp_path: Path) -> None:
    cdb = compile_text(
        tmp_path / "r.cdb",
        b'127.:allow,RELAYCLIENT="",TCPREMOTEHOST="local"\n10.:deny,X="1"\n'
        b'=.example.com:allow,D="1"\n:allow,DEFAULT="1"\n',
    )
    ruleset = RuleSet(cdb)
    assert ruleset.match("127.0.0.1") == Decision(
        False, (("RELAYCLIENT", ""), ("TCPREMOTEHOST", "local")), b"127."
    )
    assert ruleset.match("::ffff:127.0.0.1") == ruleset.match("127.0.0.1")
    assert ruleset.match("10.9.9.9") == Decision(True, (), b"10.")
    assert ruleset.match("9.9.9.9", host="mx.example.com") == Decision(
        False, (("D", "1"),), b"=.example.com"
    )
    assert ruleset.match("9.9.9.9").key == b""


def test_ruleset_sees_a_replaced_cdb_at_once(tmp_path: Path) -> None:
    cdb = compile_text(tmp_path / "r.cdb", b"1.2.3.4:allow\n")
    ruleset = RuleSet(cdb)
    assert isinstance(ruleset.match("1.2.3.4"), Decision)
    assert not ruleset.match("1.2.3.4").deny  # type: ignore[union-attr]
    compile_text(cdb, b"1.2.3.4:deny\n")
    assert ruleset.match("1.2.3.4").deny  # type: ignore[union-attr]


def test_ruleset_missing_empty_and_garbage_are_error_values(tmp_path: Path) -> None:
    cdb = tmp_path / "r.cdb"
    ruleset = RuleSet(cdb)
    missing = ruleset.match("1.2.3.4")
    assert isinstance(missing, RulesError) and missing.missing
    cdb.write_bytes(b"")
    assert isinstance(ruleset.match("1.2.3.4"), RulesError)
    cdb.write_bytes(os.urandom(3000))
    result = ruleset.match("1.2.3.4")
    assert isinstance(result, (RulesError, Decision))
    compile_text(cdb, b":allow\n")
    assert ruleset.match("1.2.3.4") == Decision(False, (), b"")
    cdb.chmod(0)
    if os.geteuid() != 0:
        assert isinstance(RuleSet(cdb).match("1.2.3.4"), RulesError)


def test_check_report_format(tmp_path: Path) -> None:
    cdb = compile_text(tmp_path / "r.cdb", b'1.2.3.4:allow,A="1",B=""\n5.:deny,C="x"\n')
    reader = CdbReader.open(cdb)
    assert rules.check_report(reader, b"1.2.3.4", None, None) == (
        b"rule 1.2.3.4:\nset environment variable A=1\nset environment variable B=\n"
        b"allow connection\n"
    )
    assert rules.check_report(reader, b"5.6.7.8", None, None) == b"rule 5.:\ndeny connection\n"
    assert rules.check_report(reader, b"9.9.9.9", None, None) == (b"default:\nallow connection\n")


def test_hash_and_writer_match_pure_cdb() -> None:
    """Our djb hash (extension and Python) and cdb_make layout are pure-cdb's, byte for
    byte, wherever pure-cdb has no hash-0 bug."""
    from qboot_systemd import cdb

    keys = [b"", b"a", b"127.0.0.1", b"=\0\xff" * 40, *(b"k%d" % i for i in range(600))]
    for our_hash in (cdb.djb_hash, cdb.python_djb_hash):
        assert [our_hash(key) for key in keys] == [cdblib.djb_hash(key) for key in keys]
    ours, theirs = io.BytesIO(), io.BytesIO()
    for buffer, writer_class in ((ours, SafeCdbWriter), (theirs, cdblib.Writer)):
        writer = writer_class(buffer, strict=True)
        for key in keys:
            writer.put(key, key[::-1])
        writer.finalize()
    assert ours.getvalue() == theirs.getvalue()
