"""The hash chain: each event's hash covers its own content and its predecessor's hash, so an edited,
deleted, inserted or reordered event breaks every link after it.

hash(n) = SHA-256 over the canonical encoding of (seq, id, ts, kind, actor..., decision, resource,
details text, prev_hash). The encoding is a JSON array (fixed field order, no key sorting needed) of
values exactly as stored, so `audit verify` can recompute it from a database row or an exported line.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import orjson

GENESIS_HASH = "0" * 64

CHAINED_COLUMNS = (
    "seq",
    "id",
    "ts",
    "kind",
    "actor_user",
    "actor_agent",
    "actor_token",
    "on_behalf_of",
    "workspace",
    "session",
    "parent",
    "decision",
    "resource",
    "details",
    "prev_hash",
)


def event_hash(values: tuple[Any, ...]) -> str:
    """`values` in CHAINED_COLUMNS order, with `details` as its stored JSON text."""
    return hashlib.sha256(orjson.dumps(values)).hexdigest()


def row_hash(row: Mapping[str, Any]) -> str:
    return event_hash(tuple(row[c] for c in CHAINED_COLUMNS))
