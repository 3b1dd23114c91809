"""Counters: reserve all-or-nothing, settle on real usage, windows slide or reset, alerts fire once.
The same contract on both backends (in-process memory, and Redis on 127.0.0.1:6379)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator

import pytest

from gatehouse.policy.budgets import MINUTE, Calendar, LimitRule, Rule, budget_window
from gatehouse.policy.counters import Charge, Counters, MemoryCounters, NeedsInit, RedisCounters, Refused
from tests.policy.conftest import REDIS_URL

RULE = LimitRule("template:t", "agent", "requests", 10, MINUTE, Rule("t.yaml", 3, "rate limit"))
SPEND = LimitRule(
    "template:t", "agent", "spend", 10, budget_window("day", "calendar"), Rule("t.yaml", 5, "budget")
)


def rolling(key: str, amount: int, limit: int, now: float, *, persistent: bool = False) -> Charge:
    return Charge(
        key=key,
        amount=amount,
        limit=limit,
        bucket=int(now),
        keep=60,
        bucket_s=1.0,
        reset_at=0.0,
        start_s=now - 60,
        ttl_s=120,
        persistent=persistent,
        rule=SPEND if persistent else RULE,
    )


def calendar(
    key: str, amount: int, limit: int, period: int, end: float, *, persistent: bool = False
) -> Charge:
    return Charge(key, amount, limit, period, 0, 0.0, end, end - 86400, 3600, persistent, SPEND)


@pytest.fixture(params=["memory", "redis"])
async def counters(request: pytest.FixtureRequest, redis_prefix: str) -> AsyncIterator[Counters]:
    backend: Counters
    if request.param == "memory":
        backend = MemoryCounters(thresholds=[50, 100])
    else:
        backend = RedisCounters(REDIS_URL, prefix=redis_prefix, thresholds=[50, 100])
    yield backend
    await backend.close()


async def test_parallel_reservations_are_exact(counters: Counters) -> None:
    results = await asyncio.gather(
        *(counters.reserve([rolling("k", 3, 30, 1000.0)], 1000.0) for _ in range(200))
    )
    assert sum(r is None for r in results) == 10
    assert all(isinstance(r, Refused) for r in results if r is not None)
    assert await counters.peek([rolling("k", 0, 30, 1000.0)]) == [30]


def test_threads_reserving_in_memory_are_exact() -> None:
    counters = MemoryCounters()
    passed = []
    barrier = threading.Barrier(16)

    def worker() -> None:
        barrier.wait()
        for _ in range(100):
            if counters.reserve_now([rolling("k", 1, 250, 5.0)], 5.0) is None:
                passed.append(1)

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(passed) == 250


async def test_all_or_nothing(counters: Counters) -> None:
    ok = rolling("a", 5, 10, 100.0)
    full = rolling("b", 5, 4, 100.0)
    result = await counters.reserve([ok, full], 100.0)
    assert isinstance(result, Refused) and result.index == 1
    assert await counters.peek([ok]) == [-1]  # nothing was taken on the first counter either


async def test_sliding_window_frees_its_oldest_buckets(counters: Counters) -> None:
    assert await counters.reserve([rolling("w", 6, 10, 1000.2)], 1000.2) is None
    assert await counters.reserve([rolling("w", 4, 10, 1010.5)], 1010.5) is None
    refused = await counters.reserve([rolling("w", 5, 10, 1030.0)], 1030.0)
    # The first 6 leave the window when bucket 1000 is more than 60 buckets old: at 1061.
    assert (
        isinstance(refused, Refused) and refused.used == 10 and refused.retry_after_s == pytest.approx(31.0)
    )
    assert isinstance(await counters.reserve([rolling("w", 5, 10, 1060.9)], 1060.9), Refused)
    assert await counters.reserve([rolling("w", 5, 10, 1061.0)], 1061.0) is None
    alone = await counters.reserve([rolling("w", 11, 10, 1062.0)], 1062.0)
    assert isinstance(alone, Refused) and alone.retry_after_s is None


async def test_calendar_window_resets_with_the_period(counters: Counters) -> None:
    assert await counters.reserve([calendar("c", 8, 10, 20000, 5000.0)], 4000.0) is None
    refused = await counters.reserve([calendar("c", 8, 10, 20000, 5000.0)], 4000.0)
    assert isinstance(refused, Refused) and refused.retry_after_s == pytest.approx(1000.0)
    assert await counters.reserve([calendar("c", 8, 10, 20001, 90000.0)], 6000.0) is None


async def test_settle_replaces_the_reservation_by_the_real_amount(counters: Counters) -> None:
    charge = rolling("s", 8, 10, 50.0)
    assert await counters.reserve([charge], 50.0) is None
    await counters.settle([charge], [2])
    assert await counters.peek([charge]) == [2]
    assert await counters.reserve([rolling("s", 8, 10, 51.0)], 51.0) is None
    # A reservation whose bucket has left the window settles into nothing.
    await counters.settle([charge], [0])
    late = rolling("s", 0, 10, 200.0)
    assert await counters.peek([late]) == [0]


async def test_spend_counters_load_from_the_store_first_and_alert_once(counters: Counters) -> None:
    charge = calendar("p", 3, 10, 7, 1e12, persistent=True)
    need = await counters.reserve([charge], 1.0)
    assert isinstance(need, NeedsInit) and need.indexes == [0]
    await counters.init(charge, {7: 2, 6: 100})  # an old period's amount does not count
    await counters.init(charge, {7: 999})  # another replica was second: ignored
    assert await counters.reserve([charge], 1.0) is None
    assert await counters.peek([charge]) == [5]
    alerts = await counters.settle([charge], [4])  # 2 + 4 = 6 of 10
    assert [(a.index, a.level, a.total) for a in alerts] == [(0, 50, 6)]
    more = calendar("p", 1, 10, 7, 1e12, persistent=True)
    assert await counters.reserve([more], 1.0) is None
    assert await counters.settle([more], [1]) == []  # 7 of 10: the 50% alert is not repeated
    last = calendar("p", 3, 10, 7, 1e12, persistent=True)
    assert await counters.reserve([last], 1.0) is None
    assert [a.level for a in await counters.settle([last], [3])] == [100]


def test_calendar_periods_follow_the_time_zone() -> None:
    cal = Calendar("Europe/Paris")
    # 2026-03-29 is the day clocks go forward in Paris: 23 hours long.
    ident, start, end = cal.period("day", 1774771200.0)  # 2026-03-29T08:00Z
    assert end - start == 23 * 3600
    week, wstart, _ = cal.period("week", 1774771200.0)
    assert wstart <= start and week <= ident
    month, mstart, mend = cal.period("month", 1774771200.0)
    assert month == 2026 * 12 + 2 and mstart < start < mend
