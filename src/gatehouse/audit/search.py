"""Full-text search over the log: prompts, tool names and arguments, tool results, errors, admin details.

One index per dialect, one behaviour: SQLite uses an FTS5 table (`audit_search`, rowid = seq), PostgreSQL a
`tsvector` column with a GIN index (`audit_search`, keyed by seq) under the `simple` configuration (no
stemming, no stop words). Both index the same text, normalised here before either sees it: Unicode NFKD
with combining marks removed, case-folded, every run of characters other than letters and digits turned
into one space. Queries are normalised the same way, so `/etc/passwd`, `run_shell_command` or `DROP TABLE`
find the same events on both stores.

Query language: words must all appear (in any order); `"quoted words"` must appear next to each other in
that order; a single word with punctuation inside (`/etc/passwd`, `rm -rf` quoted) is a phrase of its
parts.

Every event is indexed but a plain LLM response (no tool calls, no error; `has_document`): searching for a
model finds the calls' requests.

The index is fed by `project_search_index`, one of the projector's projections (`gatehouse.audit.projector`,
in bulk, off the request path), and caught up by `catch_up` for events appended without it (before a search,
by stores without a projector); `audit_search_state.seq` records how far the index is known to be complete.
Pruned events leave the index with their content.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import Iterable, Sequence
from typing import Any

import orjson

from gatehouse.audit.events import Event
from gatehouse.store.db import Database, Tx

log = logging.getLogger(__name__)

MAX_INDEXED_CHARS = 200_000
_NOT_WORD = re.compile(r"[\W_]+")
# ASCII bytes to their lower case, or a space for anything but a letter or digit: `bytes.translate` is
# one table lookup per byte, ~8x faster than `str.lower().translate` with a mapping.
_ASCII_WORDS = bytes(ord(chr(c).lower()) if chr(c).isalnum() else 32 for c in range(128)) + bytes(128)
_TERMS = re.compile(r'"([^"]*)"|(\S+)')
_CATCH_UP_BATCH = 1000


def normalize(text: str) -> str:
    """Letters and digits, case-folded and without accents; everything else a space (runs of spaces are
    left alone: neither index counts them)."""
    if text.isascii():  # the common case, ~30x faster than the general one
        return text.encode().translate(_ASCII_WORDS).decode()
    text = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
    return _NOT_WORD.sub(" ", text.casefold())


def has_document(kind: str, details: dict[str, Any]) -> bool:
    """Has the event a document? All but an LLM response with neither tool calls nor an error: its words
    would be its kind, provider and model only, which its request's document holds too (and which the
    timeline's filters select exactly). Half of the Bridge's events."""
    return kind != "llm.response" or bool(details.get("tool_calls") or details.get("error"))


def searchable_text(kind: str, resource: str | None, details: dict[str, Any]) -> str:
    """What the index holds for an event: its document, normalised."""
    return normalize(document(kind, resource, details))[:MAX_INDEXED_CHARS]


def document(kind: str, resource: str | None, details: dict[str, Any]) -> str:
    """The text worth finding an event by, as written: its kind and resource; for LLM calls the model,
    the last prompt, tool results, tool call names and arguments, and errors; for every other kind (admin
    changes, auth failures, other layers) every string in its details."""
    parts: list[Any] = [kind, resource]
    if kind == "llm.request":
        parts += [details.get("model"), details.get("last_prompt"), details.get("error")]
        parts += [r.get("content") for r in details.get("tool_results") or () if isinstance(r, dict)]
    elif kind == "llm.response":
        parts += [details.get("model"), details.get("error")]
        for call in details.get("tool_calls") or ():
            if isinstance(call, dict):
                parts += [call.get("name"), call.get("arguments")]
    elif kind.startswith("llm."):
        parts.append(details.get("error"))
    else:
        parts += list(_strings(details))
    return " ".join(_text(p) for p in parts if p)[: MAX_INDEXED_CHARS * 2]


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return " ".join(_strings(value))


def _strings(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _strings(v)


# -- maintaining the index --------------------------------------------------------------------------------


def project_search_index(tx: Tx, events: Sequence[Event]) -> None:
    """A projection (the projector's, or the writer's in its transaction): index `events`, skipping any a
    search's own catch-up indexed first."""
    if not events:
        return
    docs = [
        (e.seq, searchable_text(e.kind, e.resource, e.details))
        for e in events
        if has_document(e.kind, e.details)
    ]
    if tx.db.dialect == "sqlite":  # PostgreSQL's insert skips duplicates itself
        have = {
            int(r["rowid"])
            for r in tx.all(
                "SELECT rowid FROM audit_search WHERE rowid BETWEEN ? AND ?", (events[0].seq, events[-1].seq)
            )
        }
        docs = [d for d in docs if d[0] not in have]
    _insert(tx, docs)
    # Contiguous with what is known to be indexed: move the mark, so catch_up has nothing to re-read.
    tx.execute(
        "UPDATE audit_search_state SET seq = ? WHERE id = 1 AND seq >= ? AND seq < ?",
        (events[-1].seq, events[0].seq - 1, events[-1].seq),
    )


def _insert(tx: Tx, docs: Sequence[tuple[int, str]]) -> None:
    if tx.db.dialect == "sqlite":
        tx.executemany("INSERT INTO audit_search (rowid, body) VALUES (?, ?)", docs)
    else:
        tx.executemany(
            "INSERT INTO audit_search (seq, tsv) VALUES (?, to_tsvector('simple', ?))"
            " ON CONFLICT (seq) DO NOTHING",
            docs,
        )


def catch_up(db: Database, *, batch: int = _CATCH_UP_BATCH, max_events: int | None = None) -> int:
    """Index the events the projection did not see; return how many were indexed."""
    indexed = 0
    seq_column = "rowid" if db.dialect == "sqlite" else "seq"
    marks = db.query_one(
        "SELECT s.seq AS indexed, h.seq AS head FROM audit_search_state s, chain_head h"
        " WHERE s.id = 1 AND h.id = 1"
    )
    if marks is not None and int(marks["indexed"]) >= int(marks["head"]):
        return 0  # the usual case: nothing to do, and no write lock taken
    while max_events is None or indexed < max_events:
        with db.transaction() as tx:
            if db.dialect == "postgresql":  # serialise with pruning, which removes index entries
                tx.execute("SELECT seq FROM chain_head WHERE id = 1 FOR UPDATE")
            state = tx.one("SELECT seq FROM audit_search_state WHERE id = 1")
            mark = int(state["seq"]) if state else 0
            rows = tx.all(
                "SELECT seq, kind, resource, details FROM events WHERE seq > ? AND pruned_by IS NULL"
                " ORDER BY seq LIMIT ?",
                (mark, batch),
            )
            if not rows:
                head = tx.one("SELECT seq FROM chain_head WHERE id = 1")
                if head is not None and int(head["seq"]) > mark:
                    tx.execute("UPDATE audit_search_state SET seq = ? WHERE id = 1", (int(head["seq"]),))
                return indexed
            seqs = [int(r["seq"]) for r in rows]
            places = ", ".join("?" * len(seqs))
            have = {
                int(r["s"])
                for r in tx.all(
                    f"SELECT {seq_column} AS s FROM audit_search WHERE {seq_column} IN ({places})", seqs
                )
            }
            docs = []
            for r in rows:
                details = _details(r["details"])
                if int(r["seq"]) not in have and has_document(r["kind"], details):
                    docs.append((int(r["seq"]), searchable_text(r["kind"], r["resource"], details)))
            _insert(tx, docs)
            tx.execute("UPDATE audit_search_state SET seq = ? WHERE id = 1", (seqs[-1],))
            indexed += len(docs)
    return indexed


def _details(text: str) -> dict[str, Any]:
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


# -- queries ------------------------------------------------------------------------------------------


def parse_query(query: str) -> list[list[str]]:
    """The query as phrases (lists of normalised words); every phrase must match."""
    phrases = []
    for quoted, bare in _TERMS.findall(query):
        words = normalize(quoted or bare).split()
        if words:
            phrases.append(words)
    if not phrases:
        raise ValueError("the search has no words to look for")
    return phrases


def match_clause(db: Database, query: str) -> tuple[str, str, str, str]:
    """(FROM clause joining the index `s` to `events e`, WHERE condition, its parameter, the index's seq
    expression) for events that match `query`. Ordering and paging on the index's seq lets SQLite's FTS5
    stream matches newest first and stop at the limit."""
    phrases = parse_query(query)
    if db.dialect == "sqlite":
        expression = " ".join('"' + " ".join(words) + '"' for words in phrases)
        return (
            "audit_search s JOIN events e ON e.seq = s.rowid",
            "s.audit_search MATCH ?",
            expression,
            "s.rowid",
        )
    expression = " & ".join("(" + " <-> ".join(words) + ")" for words in phrases)
    return (
        "audit_search s JOIN events e ON e.seq = s.seq",
        "s.tsv @@ to_tsquery('simple', ?)",
        expression,
        "s.seq",
    )


def snippet(text: str, query: str, width: int = 160) -> str:
    """The part of `text` around the first word of the query, for people."""
    words = [w for phrase in parse_query(query) for w in phrase]
    folded = text.casefold()
    at = min((i for i in (folded.find(w) for w in words) if i >= 0), default=0)
    start = max(0, at - width // 3)
    piece = text[start : start + width].replace("\n", " ")
    return ("…" if start else "") + piece + ("…" if start + width < len(text) else "")
