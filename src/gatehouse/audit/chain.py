"""The hash chain: each event's hash covers its own content and its predecessor's hash, so an edited,
deleted, inserted or reordered event breaks every link after it.

hash(n) = SHA-256 over the canonical encoding of (seq, id, ts, kind, actor..., decision, resource,
details text, prev_hash). The encoding is a JSON array (fixed field order, no key sorting needed) of
values exactly as stored, so `audit verify` can recompute it from a database row or an exported line.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import orjson

from gatehouse.store.db import StoreError, Tx

if TYPE_CHECKING:
    from gatehouse.audit.events import Event

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


_INSERT = (
    "INSERT INTO events (seq, id, ts, kind, actor_user, actor_agent, actor_token, on_behalf_of, workspace,"
    " session, parent, decision, resource, details, prev_hash, hash)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def append_to_chain(tx: Tx, events: Sequence[Event]) -> None:
    """Give `events` the next places in the chain (seq, prev_hash, hash) and insert them, inside a
    transaction that holds the log's write lock (`gatehouse.audit.writer.append_events` is the way in)."""
    if not events:
        return
    lock = " FOR UPDATE" if tx.db.dialect == "postgresql" else ""
    head = tx.one(f"SELECT seq, hash FROM chain_head WHERE id = 1{lock}")
    if head is None:
        raise StoreError("the event log has no chain head: run `gatehouse migrate`")
    seq, prev = int(head["seq"]), str(head["hash"])
    rows = []
    for event in events:
        seq += 1
        values = (
            seq,
            event.id,
            event.ts,
            event.kind,
            event.actor_user,
            event.actor_agent,
            event.actor_token,
            event.on_behalf_of,
            event.workspace,
            event.session,
            event.parent,
            event.decision,
            event.resource,
            event.details_json(),
            prev,
        )
        digest = event_hash(values)
        event.seq, event.prev_hash, event.hash = seq, prev, digest
        rows.append((*values, digest))
        prev = digest
    tx.executemany(_INSERT, rows)
    tx.execute("UPDATE chain_head SET seq = ?, hash = ? WHERE id = 1", (seq, prev))
