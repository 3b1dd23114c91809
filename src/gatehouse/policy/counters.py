"""Counters behind budgets and rate limits: reserve a call's maximum before it is forwarded, settle on what
it really used after. Exact under concurrency: a reservation checks every limit of the call and takes them
all, or none, in one atomic step, so N parallel calls against a budget that affords k let exactly k
through.

Two backends with one contract:

* `MemoryCounters`: a dict and a lock, in the serving process. The fastest; right for one process.
* `RedisCounters`: one hash per counter (bucket id -> amount), reserve and settle as Lua scripts, so
  several replicas share the counts.

Spend counters outlive a restart: a counter that does not exist yet is first loaded from the `spend` table
(the settled cost of calls in the window), then used; the caller does the loading when `reserve` answers
`NeedsInit`.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from gatehouse.policy.budgets import LimitRule


@dataclass(slots=True)
class Charge:
    """One counter a call is charged on."""

    key: str
    amount: int
    limit: int
    bucket: int  # the current bucket id (calendar windows: the period id)
    keep: int  # past buckets that still count (sliding: the window's buckets; calendar: 0)
    bucket_s: float  # width of a bucket in seconds (0 for calendar windows)
    reset_at: float  # calendar windows: when the period ends (epoch seconds)
    start_s: float  # where the window starts (epoch seconds): what to load from the store
    ttl_s: int  # how long an idle counter is kept (Redis)
    persistent: bool  # spend: loaded from the store when the counter is new
    rule: LimitRule = field(repr=False)

    def freed_at(self, bucket: int) -> float:
        """When `bucket` stops counting."""
        if self.bucket_s == 0:
            return self.reset_at
        return (bucket + self.keep + 1) * self.bucket_s


@dataclass(frozen=True, slots=True)
class Refused:
    index: int  # which charge hit its limit
    used: int  # what the counter held (settled and reserved)
    retry_after_s: float | None  # None: the call alone costs more than the limit


@dataclass(frozen=True, slots=True)
class NeedsInit:
    indexes: list[int]


ReserveResult = Refused | NeedsInit | None


@dataclass(frozen=True, slots=True)
class Alert:
    index: int  # which charge's counter crossed a threshold
    level: int  # the threshold reached, percent of the limit
    total: int  # what the counter holds now


class Counters(Protocol):
    synchronous: bool

    async def reserve(self, charges: Sequence[Charge], now: float) -> ReserveResult: ...
    async def settle(self, charges: Sequence[Charge], actual: Sequence[int]) -> list[Alert]: ...
    async def init(self, charge: Charge, buckets: dict[int, int]) -> None: ...
    async def peek(self, charges: Sequence[Charge]) -> list[int]: ...
    async def close(self) -> None: ...


def alert_level(total: int, limit: int, thresholds: Sequence[int]) -> int:
    """The highest threshold (percent of the limit) the total has reached, 0 if none."""
    level = 0
    for t in thresholds:
        if total * 100 >= t * limit:
            level = t
    return level


class _Counter:
    __slots__ = ("alerted", "buckets", "total")

    def __init__(self, buckets: dict[int, int] | None = None) -> None:
        self.buckets: dict[int, int] = dict(sorted((buckets or {}).items()))
        self.total = sum(self.buckets.values())
        self.alerted = 0

    def expire(self, oldest: int) -> None:
        buckets = self.buckets
        while buckets:
            first = next(iter(buckets))
            if first >= oldest:
                return
            self.total -= buckets.pop(first)


class MemoryCounters:
    """In-process counters. All of a call's charges are checked and taken under one lock."""

    synchronous = True

    def __init__(self, thresholds: Sequence[int] = ()) -> None:
        self.thresholds = tuple(thresholds)
        self._counters: dict[str, _Counter] = {}
        self._lock = threading.Lock()

    # The synchronous core (the Bridge calls these directly: no await on the hot path).

    def reserve_now(self, charges: Sequence[Charge], now: float) -> ReserveResult:
        with self._lock:
            counters = self._counters
            missing = [i for i, c in enumerate(charges) if c.persistent and c.key not in counters]
            if missing:
                return NeedsInit(missing)
            found: list[_Counter | None] = []
            for i, c in enumerate(charges):
                counter = counters.get(c.key)
                if counter is not None:
                    counter.expire(c.bucket - c.keep)
                    if counter.total + c.amount > c.limit:
                        return Refused(i, counter.total, _retry_after(counter, c, now))
                elif c.amount > c.limit:
                    return Refused(i, 0, None)
                found.append(counter)
            for counter, c in zip(found, charges, strict=True):
                if counter is None:
                    counter = counters[c.key] = _Counter()
                buckets = counter.buckets
                buckets[c.bucket] = buckets.get(c.bucket, 0) + c.amount
                counter.total += c.amount
        return None

    def settle_now(self, charges: Sequence[Charge], actual: Sequence[int]) -> list[Alert]:
        alerts = []
        with self._lock:
            for i, (c, amount) in enumerate(zip(charges, actual, strict=True)):
                counter = self._counters.get(c.key)
                if counter is None:
                    continue
                delta = amount - c.amount
                if delta and c.bucket in counter.buckets:  # a bucket that left the window stays gone
                    counter.buckets[c.bucket] += delta
                    counter.total += delta
                if c.persistent and self.thresholds:
                    level = alert_level(counter.total, c.limit, self.thresholds)
                    if level > counter.alerted:
                        alerts.append(Alert(i, level, counter.total))
                    counter.alerted = level  # falls back when the window moves on: re-armed
        return alerts

    def init_now(self, charge: Charge, buckets: dict[int, int]) -> None:
        with self._lock:
            if charge.key not in self._counters:
                self._counters[charge.key] = _Counter(buckets)

    def peek_now(self, charges: Sequence[Charge]) -> list[int]:
        with self._lock:
            out = []
            for c in charges:
                counter = self._counters.get(c.key)
                if counter is not None:
                    counter.expire(c.bucket - c.keep)
                out.append(counter.total if counter is not None else -1)
            return out

    # The common async contract.

    async def reserve(self, charges: Sequence[Charge], now: float) -> ReserveResult:
        return self.reserve_now(charges, now)

    async def settle(self, charges: Sequence[Charge], actual: Sequence[int]) -> list[Alert]:
        return self.settle_now(charges, actual)

    async def init(self, charge: Charge, buckets: dict[int, int]) -> None:
        self.init_now(charge, buckets)

    async def peek(self, charges: Sequence[Charge]) -> list[int]:
        return self.peek_now(charges)

    async def close(self) -> None:
        return None


def _retry_after(counter: _Counter, charge: Charge, now: float) -> float | None:
    """How long until enough of the window has passed for this charge to fit."""
    if charge.amount > charge.limit:
        return None
    freed = 0
    for bucket, amount in counter.buckets.items():
        freed += amount
        if counter.total - freed + charge.amount <= charge.limit:
            return max(0.0, charge.freed_at(bucket) - now)
    return max(0.0, charge.freed_at(charge.bucket) - now)


# -- Redis -------------------------------------------------------------------------------------------

# One hash per counter: field = bucket id, value = amount; field `a` = the alert level reached.
# ARGV: n, then per counter: amount, limit, bucket, keep, ttl, persistent.
_RESERVE = """
local n = tonumber(ARGV[1])
local missing = {}
for i = 1, n do
  local b = 2 + (i - 1) * 6
  if tonumber(ARGV[b + 5]) == 1 and redis.call('EXISTS', KEYS[i]) == 0 then
    missing[#missing + 1] = i
  end
end
if #missing > 0 then
  return {-1, missing}
end
for i = 1, n do
  local b = 2 + (i - 1) * 6
  local amount = tonumber(ARGV[b])
  local limit = tonumber(ARGV[b + 1])
  local bucket = tonumber(ARGV[b + 2])
  local oldest = bucket - tonumber(ARGV[b + 3])
  local h = redis.call('HGETALL', KEYS[i])
  local total = 0
  local live = {}
  for j = 1, #h, 2 do
    local f = h[j]
    if f ~= 'a' and f ~= 'i' then
      local id = tonumber(f)
      if id < oldest then
        redis.call('HDEL', KEYS[i], f)
      else
        local v = tonumber(h[j + 1])
        total = total + v
        live[#live + 1] = {id, v}
      end
    end
  end
  if total + amount > limit then
    local when = -1
    if amount <= limit then
      table.sort(live, function(x, y) return x[1] < y[1] end)
      local freed = 0
      for _, e in ipairs(live) do
        freed = freed + e[2]
        if total - freed + amount <= limit then
          when = e[1]
          break
        end
      end
    end
    return {0, i, tostring(total), when}
  end
end
for i = 1, n do
  local b = 2 + (i - 1) * 6
  redis.call('HINCRBY', KEYS[i], ARGV[b + 2], ARGV[b])
  redis.call('HSET', KEYS[i], 'i', 1)
  redis.call('EXPIRE', KEYS[i], ARGV[b + 4])
end
return {1}
"""

# ARGV: n, thresholds (comma-separated), then per counter: bucket, delta, limit, keep, alert.
_SETTLE = """
local n = tonumber(ARGV[1])
local thresholds = {}
for t in string.gmatch(ARGV[2], '[^,]+') do thresholds[#thresholds + 1] = tonumber(t) end
local out = {}
for i = 1, n do
  local b = 3 + (i - 1) * 5
  local level_out = 0
  local total_out = 0
  if redis.call('EXISTS', KEYS[i]) == 1 then
    local bucket = ARGV[b]
    local delta = tonumber(ARGV[b + 1])
    if delta ~= 0 and redis.call('HEXISTS', KEYS[i], bucket) == 1 then
      redis.call('HINCRBY', KEYS[i], bucket, delta)
    end
    if tonumber(ARGV[b + 4]) == 1 and #thresholds > 0 then
      local limit = tonumber(ARGV[b + 2])
      local oldest = tonumber(bucket) - tonumber(ARGV[b + 3])
      local h = redis.call('HGETALL', KEYS[i])
      local total = 0
      for j = 1, #h, 2 do
        local f = h[j]
        if f ~= 'a' and f ~= 'i' and tonumber(f) >= oldest then total = total + tonumber(h[j + 1]) end
      end
      local level = 0
      for _, t in ipairs(thresholds) do
        if total * 100 >= t * limit then level = t end
      end
      local was = tonumber(redis.call('HGET', KEYS[i], 'a') or '0')
      if level > was then level_out = level end
      if level ~= was then redis.call('HSET', KEYS[i], 'a', level) end
      total_out = total
    end
  end
  out[#out + 1] = {level_out, tostring(total_out)}
end
return out
"""

# ARGV: ttl, then bucket/amount pairs. Loads a counter only if no replica did first.
_INIT = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'i', 1)
for j = 2, #ARGV, 2 do
  redis.call('HINCRBY', KEYS[1], ARGV[j], ARGV[j + 1])
end
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 1
"""

_PEEK = """
local out = {}
for i = 1, #KEYS do
  local oldest = tonumber(ARGV[i])
  if redis.call('EXISTS', KEYS[i]) == 0 then
    out[#out + 1] = '-1'
  else
    local h = redis.call('HGETALL', KEYS[i])
    local total = 0
    for j = 1, #h, 2 do
      local f = h[j]
      if f ~= 'a' and f ~= 'i' and tonumber(f) >= oldest then total = total + tonumber(h[j + 1]) end
    end
    out[#out + 1] = tostring(total)
  end
end
return out
"""


class RedisCounters:
    """Counters shared by replicas: each reserve and settle is one Lua script, atomic in Redis."""

    synchronous = False

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "gatehouse:",
        thresholds: Sequence[int] = (),
        max_connections: int = 64,
    ) -> None:
        import redis.asyncio as aioredis

        self.url = url
        self.prefix = prefix
        self.thresholds = tuple(thresholds)
        # A blocking pool: a burst of calls waits for a free connection rather than failing.
        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=10, decode_responses=True
        )
        self._client: Any = aioredis.Redis(connection_pool=pool)
        self._reserve = self._client.register_script(_RESERVE)
        self._settle = self._client.register_script(_SETTLE)
        self._init = self._client.register_script(_INIT)
        self._peek = self._client.register_script(_PEEK)

    def _key(self, charge: Charge) -> str:
        return f"{self.prefix}c:{charge.key}"

    async def reserve(self, charges: Sequence[Charge], now: float) -> ReserveResult:
        args: list[Any] = [len(charges)]
        for c in charges:
            args += [c.amount, c.limit, c.bucket, c.keep, c.ttl_s, 1 if c.persistent else 0]
        result = await self._reserve(keys=[self._key(c) for c in charges], args=args)
        code = int(result[0])
        if code == 1:
            return None
        if code == -1:
            return NeedsInit([int(i) - 1 for i in result[1]])
        index = int(result[1]) - 1
        charge = charges[index]
        when = int(result[3])
        if when < 0:
            retry = None if charge.amount > charge.limit else max(0.0, charge.freed_at(charge.bucket) - now)
        else:
            retry = max(0.0, charge.freed_at(when) - now)
        return Refused(index, int(float(result[2])), retry)

    async def settle(self, charges: Sequence[Charge], actual: Sequence[int]) -> list[Alert]:
        if not charges:
            return []
        args: list[Any] = [len(charges), ",".join(str(t) for t in self.thresholds)]
        for c, amount in zip(charges, actual, strict=True):
            args += [c.bucket, amount - c.amount, c.limit, c.keep, 1 if c.persistent else 0]
        result = await self._settle(keys=[self._key(c) for c in charges], args=args)
        return [
            Alert(i, int(level), int(float(total)))
            for i, (level, total) in enumerate(result)
            if int(level) > 0
        ]

    async def init(self, charge: Charge, buckets: dict[int, int]) -> None:
        args: list[Any] = [charge.ttl_s]
        for bucket, amount in buckets.items():
            args += [bucket, amount]
        await self._init(keys=[self._key(charge)], args=args)

    async def peek(self, charges: Sequence[Charge]) -> list[int]:
        if not charges:
            return []
        result = await self._peek(
            keys=[self._key(c) for c in charges], args=[c.bucket - c.keep for c in charges]
        )
        return [int(float(v)) for v in result]

    async def close(self) -> None:
        await self._client.aclose()
