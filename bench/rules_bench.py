"""Per-connection rules cost: RuleSet.match (stat + cdb lookups) for 1k and 100k rules.

Prints lookups per second and microseconds per connection, next to a plain dict lookup
of the same keys measured in the same run (the floor) and next to opening the cdb on
every connection (what tcpserver does). Run: .venv/bin/python bench/rules_bench.py
"""

from __future__ import annotations

import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from qboot_systemd import rules
from qboot_systemd.cdb import CdbReader


def make_rules(count: int, rng: random.Random) -> bytes:
    lines = []
    for index in range(count):
        a, b, c, d = (rng.randrange(1, 255) for _ in range(4))
        if index % 3 == 0:
            lines.append(f'{a}.{b}.{c}.{d}:allow,RELAYCLIENT=""')
        elif index % 3 == 1:
            lines.append(f"{a}.{b}.{c}.:deny")
        else:
            lines.append(f'2001:db8:{index:x}::{d:x}:allow,X="{index}"')
    lines.append(":allow")
    return ("\n".join(lines) + "\n").encode()


def clients(count: int, rng: random.Random) -> list[str]:
    return [".".join(str(rng.randrange(1, 255)) for _ in range(4)) for _ in range(count)]


def per_call(function: object, items: list[str], repeat: int = 5) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for item in items:
            function(item)  # type: ignore[operator]
        best = min(best, (time.perf_counter() - start) / len(items))
    return best


def main() -> None:
    rng = random.Random(1)
    print(
        f"{'rules':>7} {'match/s':>10} {'us/conn':>8} {'dict us':>8} {'ratio':>6} {'reopen us':>9}"
    )
    for count in (1_000, 100_000):
        with tempfile.TemporaryDirectory() as directory:
            path = Path(directory) / "rules.cdb"
            text = make_rules(count, rng)
            rules.compile_file(text, path, path.with_suffix(".tmp"))
            ruleset = rules.RuleSet(path)
            addresses = clients(20_000, rng)
            table = dict(rules.records(rules.parse(text)))

            def dict_match(ip: str, table: dict[bytes, bytes] = table) -> object:
                key = ip.encode()
                for candidate in rules.candidate_keys(key, None, None):
                    if candidate in table:
                        return table[candidate]
                return None

            def reopen_match(ip: str, path: Path = path) -> object:
                reader = CdbReader.open(path)
                try:
                    return rules.find(reader, ip.encode(), None, None)
                finally:
                    reader.close()

            ours = per_call(ruleset.match, addresses)
            floor = per_call(dict_match, addresses)
            reopen = per_call(reopen_match, addresses[:5000], repeat=3)
            print(
                f"{count:>7} {1 / ours:>10,.0f} {ours * 1e6:>8.2f} {floor * 1e6:>8.2f} "
                f"{ours / floor:>6.1f} {reopen * 1e6:>9.2f}"
            )
    print(
        "us/conn: staleness stat() + tcpserver-order lookup of an IPv4 client (mostly the "
        "default rule, the longest path); dict: the same key order in a Python dict; "
        "reopen: open+mmap the cdb per connection like tcpserver."
    )


if __name__ == "__main__":
    main()
