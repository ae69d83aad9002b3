"""Differential tests against Debian's ucspi-tcp-ipv6 tcprules and tcprulescheck."""

from __future__ import annotations

import os
import random
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qboot_systemd import rules
from qboot_systemd.cdb import CdbReader

from .conftest import require_tool, venv_script


def debian_tcprules(text: bytes, directory: Path) -> tuple[int, bytes | None]:
    tool = require_tool("tcprules")
    cdb = directory / "theirs.cdb"
    cdb.unlink(missing_ok=True)
    # Debian's tcprules loops forever on a line without :allow/:deny: never feed it one.
    done = subprocess.run(
        [tool, str(cdb), str(directory / "theirs.tmp")],
        input=text,
        capture_output=True,
        timeout=20,
        check=False,
    )
    return done.returncode, cdb.read_bytes() if done.returncode == 0 else None


def our_tcprules(text: bytes, directory: Path) -> tuple[int, bytes | None]:
    cdb = directory / "ours.cdb"
    cdb.unlink(missing_ok=True)
    done = subprocess.run(
        [venv_script("qboot-tcprules"), str(cdb), str(directory / "ours.tmp")],
        input=text,
        capture_output=True,
        timeout=20,
        check=False,
    )
    return done.returncode, cdb.read_bytes() if done.returncode == 0 else None


def run_check(program: str, cdb: Path, ip: str | None, host: str | None, info: str | None) -> bytes:
    """What a tcprulescheck program prints for one client."""
    env = {"PATH": os.environ.get("PATH", "")}
    for name, value in (("TCPREMOTEIP", ip), ("TCPREMOTEHOST", host), ("TCPREMOTEINFO", info)):
        if value is not None:
            env[name] = value
    done = subprocess.run(
        [program, str(cdb)],
        env=env,
        capture_output=True,
        timeout=10,
        check=True,
    )
    return done.stdout


def debian_check(cdb: Path, ip: str | None, host: str | None, info: str | None) -> bytes:
    return run_check(require_tool("tcprulescheck"), cdb, ip, host, info)


def large_rules_text(seed: int = 7) -> bytes:
    rng = random.Random(seed)
    quotes = ['"', "'", "/", "%", "x", ":", ",", "="]
    lines = ["# a large rules file", ""]
    for index in range(1500):
        form = rng.randrange(12)
        a, b, c = rng.randrange(256), rng.randrange(256), rng.randrange(256)
        address = [
            f"{a}.{b}.{c}.{rng.randrange(256)}",
            f"{a}.{b}.",
            f"{a}.{b}.{c}.{rng.randrange(200)}-{rng.randrange(150, 300)}",
            f"{a}.{b}-{b + rng.randrange(4)}.",
            f"2001:db8:{index:x}::{rng.randrange(99)}",
            f"2001:db8:{index % 7:x}:",
            f"=host{index % 50}.example.org",
            f"=.dom{index % 9}.example",
            f"user{index % 5}@{a}.{b}.{c}.1",
            f"user{index % 5}@=host{index % 50}.example.org",
            "=",
            "",
        ][form]
        verdict = "deny" if rng.random() < 0.3 else "allow"
        env = "".join(
            f",V{n}={q}val {index} {n}{q}"
            for n, q in enumerate(rng.sample(quotes, rng.randrange(4)))
        )
        trailing = rng.choice(["", " ", "\t ", ""])
        lines.append(f"{address}:{verdict}{env}{trailing}")
        if index % 100 == 0:
            lines.append(f"# duplicate of line {len(lines)}")
            lines.append(lines[-2])
    lines += ['127.:allow,RELAYCLIENT=""', '::1:allow,RELAYCLIENT=""', ':allow,DEFAULT="1"']
    return ("\n".join(lines) + "\n").encode()


@pytest.fixture(scope="module")
def large_cdb(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    directory = tmp_path_factory.mktemp("large")
    text = large_rules_text()
    status, theirs = debian_tcprules(text, directory)
    assert status == 0 and theirs is not None
    (directory / "rules.cdb").write_bytes(theirs)
    return directory / "rules.cdb", text


def test_large_rules_file_compiles_byte_identical(
    large_cdb: tuple[Path, bytes], tmp_path: Path
) -> None:
    cdb, text = large_cdb
    status, ours = our_tcprules(text, tmp_path)
    assert status == 0
    assert ours == cdb.read_bytes()


def client_tuples(text: bytes, count: int, seed: int = 11) -> list[tuple[str | None, ...]]:
    rng = random.Random(seed)
    addresses = [
        line.split(b":allow")[0].split(b":deny")[0].decode()
        for line in text.splitlines()
        if line and not line.startswith(b"#")
    ]
    ips = [a for a in addresses if a and "=" not in a and "@" not in a and "-" not in a]
    tuples: list[tuple[str | None, ...]] = []
    for _ in range(count):
        base = rng.choice(ips)
        if base.endswith(".") or base.endswith(":"):
            base += "1" if base.endswith(":") else ".".join(["9"] * (4 - base.count(".")))
        ip = rng.choice(
            [
                base,
                base,
                f"::ffff:{base}" if ":" not in base else base,
                f"{rng.randrange(256)}.1.2.3",
                "127.0.0.1",
                "::1",
                "2001:db8:3::7",
            ]
        )
        host = rng.choice(
            [
                None,
                None,
                f"host{rng.randrange(60)}.example.org",
                f"mx.dom{rng.randrange(12)}.example",
                "",
                "other.net",
            ]
        )
        info = rng.choice([None, None, None, f"user{rng.randrange(7)}"])
        tuples.append((ip, host, info))
    tuples += [(None, None, None), ("0.0.0.0", None, None)]
    return tuples


def test_check_matches_tcprulescheck_for_many_clients(large_cdb: tuple[Path, bytes]) -> None:
    cdb, text = large_cdb
    reader = CdbReader.open(cdb)
    for ip, host, info in client_tuples(text, 400):
        theirs = debian_check(cdb, ip, host, info)
        ours = rules.check_report(
            reader,
            (ip if ip is not None else "0.0.0.0").encode(),
            host.encode() if host is not None else None,
            info.encode() if info is not None else None,
        )
        assert ours == theirs, (ip, host, info)


def test_our_tcprulescheck_command_matches(large_cdb: tuple[Path, bytes]) -> None:
    cdb, text = large_cdb
    ours_program = venv_script("qboot-tcprulescheck")
    for ip, host, info in client_tuples(text, 25, seed=3):
        ours = run_check(ours_program, cdb, ip, host, info)
        assert ours == debian_check(cdb, ip, host, info)


def test_tcprulescheck_exit_codes(tmp_path: Path) -> None:
    theirs = require_tool("tcprulescheck")
    ours = venv_script("qboot-tcprulescheck")
    (tmp_path / "empty.cdb").write_bytes(b"")
    for args in ([], [str(tmp_path / "missing.cdb")], [str(tmp_path / "empty.cdb")]):
        a = subprocess.run([theirs, *args], capture_output=True, check=False)
        b = subprocess.run([ours, *args], capture_output=True, check=False)
        assert a.returncode == b.returncode, args
        expected = a.stderr.replace(b"tcprulescheck: ", b"qboot-tcprulescheck: ", 1)
        expected = expected.replace(b"usage: tcprulescheck", b"usage: qboot-tcprulescheck")
        assert expected == b.stderr


def test_tcprules_exit_codes_and_messages(tmp_path: Path) -> None:
    for text in (b"1.2.3.4:allowx\n", b'1.2.3.4:allow,X="a\n', b"1.2.3.a-9:allow\n"):
        status, _ = debian_tcprules(text, tmp_path)
        ours = subprocess.run(
            [venv_script("qboot-tcprules"), str(tmp_path / "o.cdb"), str(tmp_path / "o.tmp")],
            input=text,
            capture_output=True,
            check=False,
        )
        assert status == ours.returncode == 100
        assert b"unable to parse line 1: " + text.rstrip(b"\n") in ours.stderr
    status, _ = debian_tcprules(b":allow\n", tmp_path / "nonexistent")
    ours = subprocess.run(
        [
            venv_script("qboot-tcprules"),
            str(tmp_path / "x" / "o.cdb"),
            str(tmp_path / "x" / "o.tmp"),
        ],
        input=b":allow\n",
        capture_output=True,
        check=False,
    )
    assert status == ours.returncode == 111


# Property tests: generated rule lines and clients, compared both ways.
octet = st.integers(0, 300).map(str)
ipv4 = st.lists(octet, min_size=1, max_size=4).map(".".join)
ipv4_prefix = st.lists(octet, min_size=1, max_size=3).map(lambda p: ".".join(p) + ".")
ipv4_range = st.tuples(ipv4_prefix, st.integers(0, 300), st.integers(0, 300)).map(
    lambda t: f"{t[0]}{t[1]}-{t[2]}"
)
ipv6 = st.ip_addresses(v=6).map(str)
hostname = st.from_regex(r"[a-c]{1,3}(\.[a-c]{1,3}){0,2}", fullmatch=True)
address = st.one_of(
    ipv4,
    ipv4_prefix,
    ipv4_range,
    ipv6,
    hostname.map(lambda h: "=" + h),
    hostname.map(lambda h: "=." + h),
    st.just("="),
    st.just(""),
    st.tuples(hostname, ipv4).map(lambda t: f"{t[0]}@{t[1]}"),
)
value = st.text(alphabet="ab :,=\"'/x", max_size=6)
quote = st.sampled_from(['"', "'", "/", "x", ":", ","])
env_entry = (
    st.tuples(st.from_regex(r"[A-Z]{1,3}", fullmatch=True), quote, value)
    .filter(lambda t: t[1] not in t[2])
    .map(lambda t: f",{t[0]}={t[1]}{t[2]}{t[1]}")
)
rule_line = st.tuples(
    address, st.sampled_from(["allow", "deny"]), st.lists(env_entry, max_size=3)
).map(lambda t: f"{t[0]}:{t[1]}{''.join(t[2])}")


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    st.lists(rule_line, min_size=1, max_size=25),
    st.lists(
        st.tuples(
            st.one_of(ipv4, ipv6, ipv4.map(lambda i: "::ffff:" + i)),
            st.one_of(st.none(), hostname),
            st.one_of(st.none(), st.just("u")),
        ),
        min_size=1,
        max_size=5,
    ),
)
def test_property_compiler_and_lookup_agree_with_debian(
    tmp_path_factory: pytest.TempPathFactory,
    lines: list[str],
    clients: list[tuple[str, str | None, str | None]],
) -> None:
    directory = tmp_path_factory.mktemp("prop")
    text = ("\n".join(lines) + "\n").encode()
    status, theirs = debian_tcprules(text, directory)
    try:
        items = rules.records(rules.parse(text))
        ours_status = 0
    except rules.RulesSyntaxError:
        ours_status = 100
    assert ours_status == status
    if theirs is None:
        return
    import io

    from qboot_systemd.cdb import write_cdb

    buffer = io.BytesIO()
    write_cdb(buffer, items)
    assert buffer.getvalue() == theirs
    reader = CdbReader(theirs)
    cdb = directory / "theirs.cdb"
    for ip, host, info in clients:
        expected = debian_check(cdb, ip, host, info)
        actual = rules.check_report(
            reader,
            ip.encode(),
            None if host is None else host.encode(),
            None if info is None else info.encode(),
        )
        assert actual == expected
