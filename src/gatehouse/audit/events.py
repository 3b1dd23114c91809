"""The event envelope: one shape for everything that happens, in every layer.

An event is created by the layer that saw the action; the writer gives it its place in the log (sequence
number, previous hash, hash). Kinds are dotted names, `layer.noun[.verb]`: docs/audit-events.md lists them.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from gatehouse.audit.chain import CHAINED_COLUMNS

Decision = Literal["allow", "deny", "pending", "error"]


def now_us() -> int:
    return time.time_ns() // 1000


# Ids must be unique, not secret: a per-process generator seeded from the OS is enough, and costs a
# fraction of an `os.urandom` system call per id. Reseeded in a forked child so siblings never collide.
_random = random.Random(os.urandom(32))
os.register_at_fork(after_in_child=lambda: _random.seed(os.urandom(32)))


def new_id() -> str:
    """A UUIDv7 (RFC 9562) as text: unique, and sorting by id sorts by creation time."""
    ms = time.time_ns() // 1_000_000
    rand = _random.getrandbits(74)
    value = (ms << 80) | (0x7 << 76) | ((rand >> 62) & 0xFFF) << 64 | (0b10 << 62) | (rand & ((1 << 62) - 1))
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def llm_provider(resource: str | None) -> str | None:
    """The provider named by an LLM event's resource, `llm:<provider>[/<model>]`."""
    if resource and resource.startswith("llm:"):
        return resource[4:].split("/", 1)[0]
    return None


def llm_model(resource: str | None) -> str | None:
    """The model named by an LLM event's resource; None where it is absent or unknown (`?`)."""
    if resource and resource.startswith("llm:") and "/" in resource:
        model = resource.split("/", 1)[1]
        return None if model == "?" else model
    return None


@dataclass(slots=True)
class Event:
    kind: str
    decision: Decision = "allow"
    details: dict[str, Any] = field(default_factory=dict)
    actor_user: str | None = None
    actor_agent: str | None = None
    actor_token: str | None = None
    on_behalf_of: str | None = None
    workspace: str | None = None
    session: str | None = None
    parent: str | None = None
    resource: str | None = None
    id: str = field(default_factory=new_id)
    ts: int = field(default_factory=now_us)
    # Given by the writer when the event takes its place in the chain.
    seq: int = 0
    prev_hash: str = ""
    hash: str = ""

    def details_json(self) -> str:
        """The canonical text of `details`: sorted keys, so the same details always hash the same."""
        return orjson.dumps(self.details, option=orjson.OPT_SORT_KEYS).decode()

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "id": self.id,
            "ts": self.ts,
            "kind": self.kind,
            "actor": {
                "user": self.actor_user,
                "agent": self.actor_agent,
                "token": self.actor_token,
                "on_behalf_of": self.on_behalf_of,
            },
            "workspace": self.workspace,
            "session": self.session,
            "parent": self.parent,
            "decision": self.decision,
            "resource": self.resource,
            "details": self.details,
            "prev_hash": self.prev_hash,
            "hash": self.hash,
        }


# -- reading events back -----------------------------------------------------------------------------

_ROW_NAMES = (*CHAINED_COLUMNS, "hash")
ROW_COLUMNS = ", ".join(_ROW_NAMES)
# Without the chain's two hashes, which derived tables never use: what a projector reads.
CONTENT_COLUMNS = ", ".join(_ROW_NAMES[:-2])


def event_from_row(row: Mapping[str, Any]) -> Event:
    """An event as stored (a row with ROW_COLUMNS)."""
    return event_from_tuple([row[name] for name in _ROW_NAMES])


def event_from_tuple(row: Sequence[Any]) -> Event:
    """An event as stored, from a tuple of ROW_COLUMNS or CONTENT_COLUMNS (see `Database.query_tuples`)."""
    seq, id_, ts, kind, user, agent, token, on_behalf_of, workspace, session, parent = row[:11]
    decision, resource, details = row[11:14]
    prev_hash, hash_ = row[14:16] if len(row) > 14 else ("", "")
    # Positional, in field order: a bulk read builds thousands of these.
    return Event(
        kind,
        decision,
        _stored_details(details),
        user,
        agent,
        token,
        on_behalf_of,
        workspace,
        session,
        parent,
        resource,
        id_,
        int(ts),
        int(seq),
        prev_hash,
        hash_,
    )


def _stored_details(stored: Any) -> dict[str, Any]:
    if not isinstance(stored, str | bytes):
        return dict(stored or {})
    try:
        value = orjson.loads(stored)
    except orjson.JSONDecodeError:
        value = None
    if isinstance(value, dict):
        return value
    # Not what the writer stores (`audit verify` will say so): pass the text on rather than stop a reader.
    text = stored.decode("utf-8", "replace") if isinstance(stored, bytes) else stored
    return {"unparsed_details": text}
