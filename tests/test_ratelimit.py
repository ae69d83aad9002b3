"""The per-address connection rate (qboot-tcpsrv -N / -M): token buckets, bounded table."""

from __future__ import annotations

import pytest

from qboot_systemd.tcpsrv.ratelimit import RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_of_the_rate_then_one_per_interval() -> None:
    clock = Clock()
    limiter = RateLimiter(6, clock=clock)  # 6 a minute: one every 10 s once spent
    assert [limiter.allow("192.0.2.1") for _ in range(8)] == [True] * 6 + [False] * 2
    clock.now += 9.9
    assert not limiter.allow("192.0.2.1")
    clock.now += 0.2  # refusals take no token: 10.1 s since the burst
    assert limiter.allow("192.0.2.1")
    assert not limiter.allow("192.0.2.1")
    clock.now += 3600  # a full bucket, never more
    assert [limiter.allow("192.0.2.1") for _ in range(7)] == [True] * 6 + [False]


def test_addresses_count_apart_and_ipv6_by_64() -> None:
    limiter = RateLimiter(1, clock=Clock())
    assert limiter.allow("192.0.2.1") and limiter.allow("192.0.2.2")
    assert limiter.allow("::ffff:192.0.2.3")
    assert not limiter.allow("192.0.2.3")  # the same client, mapped or not
    assert limiter.allow("2001:db8:1:2::1")
    assert not limiter.allow("2001:db8:1:2:ffff::9")  # the same /64
    assert limiter.allow("2001:db8:1:3::1")


def test_the_table_is_bounded_and_forgets_the_least_recent() -> None:
    clock = Clock()
    limiter = RateLimiter(1, max_entries=100, clock=clock)
    assert limiter.allow("10.0.0.1")
    for number in range(1000):
        limiter.allow(f"10.1.{number // 256}.{number % 256}")
        assert len(limiter) <= 100
    assert limiter.allow("10.0.0.1")  # forgotten: a full bucket again


def test_a_rate_below_one_is_refused() -> None:
    with pytest.raises(ValueError):
        RateLimiter(0)
