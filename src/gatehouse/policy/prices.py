"""The price book: USD per million tokens for input, output, cache read and cache write, per model.

Shipped defaults cover current Anthropic and OpenAI models; they are plausible list prices, not a
contract: check them against the providers' pricing pages and override with `gatehouse prices set`.
Entries in the store are effective-dated (`--from`): a call is priced with the entry in effect when it
was made, and its cost is stored with it, so a later change never re-prices past spend.

Which entry prices a model: entries set in the store win over shipped defaults; then an exact name wins
over a glob pattern, a longer pattern over a shorter one; then the latest entry already in effect.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from fnmatch import fnmatchcase
from typing import Any

from gatehouse.audit.events import Event, now_us
from gatehouse.audit.writer import append_events
from gatehouse.identity.service import Actor
from gatehouse.policy.templates import PolicyError, bump_policy_version, lock_policy
from gatehouse.store.db import Database, Row, Tx

# model (exact or glob) -> (input, output, cache read, cache write) in USD per million tokens.
# Anthropic: cache write = 1.25 x input (5-minute cache), cache read = 0.1 x input.
# OpenAI: cached input is billed at the cache read price; there is no cache write charge.
DEFAULT_PRICES: dict[str, tuple[float, float, float, float]] = {
    # Anthropic
    "claude-mythos-*": (25.0, 125.0, 2.5, 31.25),
    "claude-opus-5*": (5.0, 25.0, 0.5, 6.25),
    "claude-opus-4-8*": (5.0, 25.0, 0.5, 6.25),
    "claude-opus-4-7*": (5.0, 25.0, 0.5, 6.25),
    "claude-opus-4-6*": (5.0, 25.0, 0.5, 6.25),
    "claude-opus-4-5*": (5.0, 25.0, 0.5, 6.25),
    "claude-opus-4-1*": (15.0, 75.0, 1.5, 18.75),
    "claude-opus-4-0*": (15.0, 75.0, 1.5, 18.75),
    "claude-opus-4-2025*": (15.0, 75.0, 1.5, 18.75),
    "claude-fable-*": (0.8, 4.0, 0.08, 1.0),
    "claude-sonnet-5*": (3.0, 15.0, 0.3, 3.75),
    "claude-sonnet-4*": (3.0, 15.0, 0.3, 3.75),
    "claude-3-7-sonnet*": (3.0, 15.0, 0.3, 3.75),
    "claude-haiku-5*": (1.0, 5.0, 0.1, 1.25),
    "claude-haiku-4-5*": (1.0, 5.0, 0.1, 1.25),
    "claude-3-5-haiku*": (0.8, 4.0, 0.08, 1.0),
    "claude-3-haiku*": (0.25, 1.25, 0.03, 0.3),
    # OpenAI
    "gpt-6-astra*": (10.0, 60.0, 1.0, 0.0),
    "gpt-6-sol*": (5.0, 30.0, 0.5, 0.0),
    "gpt-6.1-sol*": (5.0, 30.0, 0.5, 0.0),
    "gpt-6.1-terra*": (2.5, 15.0, 0.25, 0.0),
    "gpt-6-luna*": (0.5, 3.0, 0.05, 0.0),
    "gpt-5.6-sol*": (5.0, 30.0, 0.5, 0.0),
    "gpt-5.6-terra*": (2.5, 15.0, 0.25, 0.0),
    "gpt-5.6-luna*": (0.5, 3.0, 0.05, 0.0),
    "gpt-5.5*": (5.0, 30.0, 0.5, 0.0),
    "gpt-5.4": (2.5, 15.0, 0.25, 0.0),
    "gpt-5.4-mini*": (0.75, 4.5, 0.075, 0.0),
    "gpt-5.4-nano*": (0.2, 1.25, 0.02, 0.0),
    "gpt-5.3-chat-latest": (1.75, 14.0, 0.175, 0.0),
    "gpt-5.2": (1.75, 14.0, 0.175, 0.0),
    "gpt-5.2-2025-*": (1.75, 14.0, 0.175, 0.0),
    "gpt-5.2-chat-latest": (1.75, 14.0, 0.175, 0.0),
    "gpt-5.2-pro*": (21.0, 168.0, 21.0, 0.0),
    "gpt-5.1*": (1.25, 10.0, 0.125, 0.0),
    "gpt-5.1-mini": (0.25, 2.0, 0.025, 0.0),
    "gpt-5": (1.25, 10.0, 0.125, 0.0),
    "gpt-5-2025-*": (1.25, 10.0, 0.125, 0.0),
    "gpt-5-chat-latest": (1.25, 10.0, 0.125, 0.0),
    "gpt-5-mini*": (0.25, 2.0, 0.025, 0.0),
    "gpt-5-nano*": (0.05, 0.4, 0.005, 0.0),
    "gpt-4.1": (2.0, 8.0, 0.5, 0.0),
    "gpt-4.1-2025-*": (2.0, 8.0, 0.5, 0.0),
    "gpt-4.1-mini*": (0.4, 1.6, 0.1, 0.0),
    "gpt-4.1-nano*": (0.1, 0.4, 0.025, 0.0),
    "gpt-4o": (2.5, 10.0, 1.25, 0.0),
    "gpt-4o-2024-*": (2.5, 10.0, 1.25, 0.0),
    "gpt-4o-mini": (0.15, 0.6, 0.075, 0.0),
    "gpt-4o-mini-2024-*": (0.15, 0.6, 0.075, 0.0),
    "o4-mini*": (1.1, 4.4, 0.275, 0.0),
    "o3": (2.0, 8.0, 0.5, 0.0),
    "o3-2025-*": (2.0, 8.0, 0.5, 0.0),
    "o3-mini*": (1.1, 4.4, 0.55, 0.0),
    "o1": (15.0, 60.0, 7.5, 0.0),
    "o1-2024-*": (15.0, 60.0, 7.5, 0.0),
    "o1-mini*": (1.1, 4.4, 0.55, 0.0),
    "codex-mini-latest": (1.5, 6.0, 0.375, 0.0),
    "gpt-4-turbo*": (10.0, 30.0, 10.0, 0.0),
    "gpt-4": (30.0, 60.0, 30.0, 0.0),
    "gpt-3.5-turbo*": (0.5, 1.5, 0.5, 0.0),
}


@dataclass(frozen=True, slots=True)
class Price:
    model: str  # exact name or glob pattern
    input: float  # USD per million tokens
    output: float
    cache_read: float
    cache_write: float
    effective_from: int  # microseconds since the epoch; 0 for shipped defaults
    source: str  # "store" or "default"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def cost_nano(
        self, input_tokens: int, output_tokens: int, cache_read: int, cache_write: int, *, openai: bool
    ) -> int:
        """Cost in nano-dollars. OpenAI's input count includes the cached part; Anthropic's does not."""
        if openai:
            input_tokens = max(0, input_tokens - cache_read - cache_write)
        # USD per million tokens x 1000 = nano-dollars per token.
        return round(
            1000
            * (
                input_tokens * self.input
                + output_tokens * self.output
                + cache_read * self.cache_read
                + cache_write * self.cache_write
            )
        )

    def max_cost_nano(self, input_tokens: int, output_tokens: int) -> int:
        """An upper bound before the call: every input token at the dearest input rate."""
        dearest = max(self.input, self.cache_write, self.cache_read)
        return math.ceil(1000 * (input_tokens * dearest + output_tokens * self.output))


def _specificity(pattern: str) -> int:
    if not any(ch in pattern for ch in "*?["):
        return 1_000_000
    return sum(1 for ch in pattern if ch not in "*?[]")


class PriceBook:
    def __init__(self, entries: list[Price]) -> None:
        self.entries = entries
        self._memo: dict[str, list[Price]] = {}

    @classmethod
    def defaults(cls) -> PriceBook:
        return cls(_default_entries())

    @classmethod
    def load(cls, db: Database | Tx) -> PriceBook:
        rows = db.all(_SELECT) if isinstance(db, Tx) else db.query(_SELECT)
        return cls([*(_stored(r) for r in rows), *_default_entries()])

    def lookup(self, model: str, at_us: int) -> Price | None:
        candidates = self._memo.get(model)
        if candidates is None:
            candidates = sorted(
                (p for p in self.entries if p.model == model or fnmatchcase(model, p.model)),
                key=lambda p: (p.source == "store", _specificity(p.model), p.effective_from),
                reverse=True,
            )
            if len(self._memo) > 10_000:
                self._memo.clear()
            self._memo[model] = candidates
        for price in candidates:
            if price.effective_from <= at_us:
                return price
        return None


_SELECT = (
    "SELECT model, effective_from, input_usd, output_usd, cache_read_usd, cache_write_usd FROM prices"
    " ORDER BY model, effective_from"
)


def _stored(row: Row) -> Price:
    return Price(
        model=row["model"],
        input=float(row["input_usd"]),
        output=float(row["output_usd"]),
        cache_read=float(row["cache_read_usd"]),
        cache_write=float(row["cache_write_usd"]),
        effective_from=int(row["effective_from"]),
        source="store",
    )


def _default_entries() -> list[Price]:
    return [Price(m, *p, effective_from=0, source="default") for m, p in DEFAULT_PRICES.items()]


def _check(name: str, value: float | None) -> None:
    if value is not None and (not math.isfinite(value) or value < 0):
        raise PolicyError(f"{name} must be a non-negative number of USD per million tokens")


class PriceService:
    def __init__(self, db: Database) -> None:
        self.db = db

    def set(
        self,
        model: str,
        *,
        input: float,
        output: float,
        cache_read: float | None = None,
        cache_write: float | None = None,
        effective_from: int | None = None,
        actor: Actor,
    ) -> Price:
        """Add an entry, effective from `effective_from` (default: now). Cache prices default to the
        input price (no discount): set them for accurate figures."""
        if not model or len(model) > 200:
            raise PolicyError("the model name or pattern must have 1-200 characters")
        for name, value in (
            ("input", input),
            ("output", output),
            ("cache_read", cache_read),
            ("cache_write", cache_write),
        ):
            _check(name, value)
        now = now_us()
        price = Price(
            model=model,
            input=float(input),
            output=float(output),
            cache_read=float(input if cache_read is None else cache_read),
            cache_write=float(input if cache_write is None else cache_write),
            effective_from=now if effective_from is None else effective_from,
            source="store",
        )
        with self.db.transaction() as tx:
            lock_policy(tx)
            tx.execute(
                "INSERT INTO prices (model, effective_from, input_usd, output_usd, cache_read_usd,"
                " cache_write_usd, created_at, created_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (model, effective_from) DO UPDATE SET input_usd = excluded.input_usd,"
                " output_usd = excluded.output_usd, cache_read_usd = excluded.cache_read_usd,"
                " cache_write_usd = excluded.cache_write_usd, created_at = excluded.created_at,"
                " created_by = excluded.created_by",
                (
                    price.model,
                    price.effective_from,
                    price.input,
                    price.output,
                    price.cache_read,
                    price.cache_write,
                    now,
                    actor.name,
                ),
            )
            bump_policy_version(tx)
            append_events(
                tx,
                [
                    Event(
                        kind="admin.price.set",
                        actor_user=actor.user_id,
                        resource=f"price:{model}",
                        details={"by": actor.name, **price.as_dict()},
                        ts=now,
                    )
                ],
            )
        return price

    def list(self, *, include_defaults: bool = True) -> list[Price]:
        book = PriceBook.load(self.db)
        stored = [p for p in book.entries if p.source == "store"]
        if not include_defaults:
            return stored
        return stored + [p for p in book.entries if p.source == "default"]
