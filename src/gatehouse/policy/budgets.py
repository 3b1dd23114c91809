"""Budgets and rate limits: what is counted, per whom, over which window.

Every limit is a counter over a window of time buckets:

* rate limits (`requests_per_minute`, `tokens_per_minute`) slide over the last minute in 1-second buckets;
* rolling budgets slide over the last 24 hours, 7 or 30 days in 1/60th buckets;
* calendar budgets count the current day, ISO week (from Monday) or month in `policy.timezone`.

A sliding window counts one bucket more than its length (61 one-second buckets for a minute), so it never
admits more than the limit in any window of that length: the error is always on the safe side.
Amounts are integers: requests, tokens, or nano-dollars (10^-9 USD) for spend.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

Scope = Literal["agent", "user", "team", "template"]
Metric = Literal["requests", "tokens", "spend"]
NANO_PER_USD = 1_000_000_000
ROLLING_BUCKETS = 60


@dataclass(frozen=True, slots=True)
class Window:
    name: str  # minute, day, week, month
    calendar: bool
    seconds: int  # the length of a rolling window (nominal for calendar ones)

    @property
    def bucket_s(self) -> float:
        return self.seconds / ROLLING_BUCKETS

    @property
    def label(self) -> str:
        if self.name == "minute":
            return "per minute"
        return f"per {self.name}" + (" (rolling)" if not self.calendar else "")


MINUTE = Window("minute", calendar=False, seconds=60)
_ROLLING_SECONDS = {"day": 86_400, "week": 7 * 86_400, "month": 30 * 86_400}


def budget_window(period: str, window: str) -> Window:
    return Window(period, calendar=window != "rolling", seconds=_ROLLING_SECONDS[period])


@dataclass(frozen=True, slots=True)
class Rule:
    """Where a decision comes from: a line of a template, a team's limits, or a setting."""

    source: str  # `templates/ci-bot.yaml`, `team:platform`, `settings`
    line: int | None
    text: str  # `deny models "claude-opus-*"`

    def __str__(self) -> str:
        where = f"{self.source}:{self.line}" if self.line is not None else self.source
        return f"{where} {self.text}"


@dataclass(frozen=True, slots=True)
class LimitRule:
    owner: str  # `template:ci-bot` or `team:<id>`: part of the counter's identity
    scope: Scope
    metric: Metric
    limit: int  # requests, tokens or nano-USD
    window: Window
    rule: Rule
    # The counter's key is `key_prefix + <scope id> + key_suffix`: built once, not per request.
    key_prefix: str = field(init=False, default="")
    key_suffix: str = field(init=False, default="")

    def __post_init__(self) -> None:
        rolling = "" if self.window.calendar else ":rolling"
        object.__setattr__(self, "key_prefix", f"{self.owner}|{self.scope}=")
        object.__setattr__(self, "key_suffix", f"|{self.metric}|{self.window.name}{rolling}")

    @property
    def is_rate(self) -> bool:
        return self.metric != "spend"

    def describe_limit(self) -> str:
        if self.metric == "spend":
            return f"{self.limit / NANO_PER_USD:g} USD {self.window.label}"
        return f"{self.limit} {self.metric} {self.window.label}"


class Calendar:
    """Boundaries of the current day, week and month in one time zone, cached until they pass."""

    def __init__(self, timezone: str) -> None:
        self.zone = ZoneInfo(timezone)
        self._cache: dict[str, tuple[float, float, int]] = {}

    def period(self, name: str, now: float) -> tuple[int, float, float]:
        """(period id, start, end) in epoch seconds for the period holding `now`."""
        cached = self._cache.get(name)
        if cached is not None and cached[0] <= now < cached[1]:
            return cached[2], cached[0], cached[1]
        local = datetime.fromtimestamp(now, self.zone)
        day = local.date()
        if name == "day":
            first, nxt = day, day + timedelta(days=1)
            ident = day.toordinal()
        elif name == "week":
            first = day - timedelta(days=day.weekday())
            nxt = first + timedelta(days=7)
            ident = first.toordinal()
        else:
            first = day.replace(day=1)
            nxt = (first + timedelta(days=32)).replace(day=1)
            ident = first.year * 12 + first.month - 1
        start = datetime(first.year, first.month, first.day, tzinfo=self.zone).timestamp()
        end = datetime(nxt.year, nxt.month, nxt.day, tzinfo=self.zone).timestamp()
        self._cache[name] = (start, end, ident)
        return ident, start, end
