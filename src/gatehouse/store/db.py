"""The database engine: SQLite (embedded, WAL) or PostgreSQL, behind one small DB-API facade.

Queries are written once with `?` placeholders; for PostgreSQL they are rewritten to `%s` (so SQL text in
this project never contains a literal `%`). Rows come back as dicts. Each thread gets its own connection;
writes that must be atomic with their audit events go through `transaction()`.

SQLite is reached through APSW, which bundles a current SQLite, rather than the standard library's
`sqlite3` module, which uses whatever the system has (3.40 on Debian 12). It binds parameters and builds
rows at about half the CPU (a `None` parameter goes through `sqlite3`'s adapter lookup): the log's
insert took 5.7 µs per row with `sqlite3`, 2.9 with APSW (docs/benchmarks.md, session 21). One
process must not open a store through both: two copies of SQLite in a process do not see each other's
POSIX locks, and closing one's file handle drops the other's (sqlite.org/howtocorrupt.html, 2.2).

SQLite keeps the derived tables (what the projector builds from the log: sessions, tool calls,
spend, the full-text index, the time map) in a second file beside the store, attached to every
connection as the schema `derived`, so that queries name them as if they were in one database. SQLite
has one write lock per file: with both in one file, every batch the projector wrote held up the log's
commits, and with them every request waiting for its event to be durable. `transaction(derived=True)`
takes the derived file's lock alone; `connect(attach=False)` gives the log's writer a connection whose
transactions take the log's lock alone. PostgreSQL has no such lock; there the derived tables are
ordinary tables of the same database.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, Protocol

import apsw
import psycopg
from psycopg.rows import dict_row, tuple_row

Dialect = Literal["sqlite", "postgresql"]

# SQLite's WAL: restart it once it holds this many frames (~64 MiB of 4 KiB pages), and truncate the file
# back to this size when it starts over.
WAL_RESTART_FRAMES = 16_384
WAL_SIZE_LIMIT = 64 * 1024 * 1024
_RESTART_WAIT_MS = 2000
_SCHEMAS = ("main", "derived")
Row = dict[str, Any]
Params = Sequence[Any]


class StoreError(Exception):
    """The store could not be read or written (translated from the driver's own errors)."""


class StoreBusy(StoreError):
    """SQLite: another connection holds the write lock, and this one was not to wait for it."""


class Cursor(Protocol):
    """The part of a DB-API cursor this project uses (psycopg's, and `_SqliteCursor`), rows as dicts."""

    @property
    def rowcount(self) -> int: ...

    def execute(self, query: Any, params: Any = ...) -> Any: ...
    def executemany(self, query: Any, params_seq: Any) -> Any: ...
    def fetchone(self) -> Row | None: ...
    def fetchall(self) -> list[Row]: ...


class Tx:
    """A transaction in progress: run statements, read rows. Placeholders are `?` for both dialects."""

    def __init__(self, db: Database, cursor: Cursor) -> None:
        self.db = db
        self.cursor = cursor

    def execute(self, query: str, params: Params = ()) -> int:
        self.cursor.execute(self.db.sql(query), params)
        return self.cursor.rowcount

    def executemany(self, query: str, rows: Sequence[Params]) -> None:
        if rows:
            self.cursor.executemany(self.db.sql(query), rows)

    def one(self, query: str, params: Params = ()) -> Row | None:
        self.cursor.execute(self.db.sql(query), params)
        return self.cursor.fetchone()

    def all(self, query: str, params: Params = ()) -> list[Row]:
        self.cursor.execute(self.db.sql(query), params)
        return self.cursor.fetchall()


class _SqliteCursor:
    """An APSW cursor as a DB-API one: rows as dicts, `rowcount`."""

    __slots__ = ("_conn", "_cursor")

    def __init__(self, conn: apsw.Connection) -> None:
        self._conn = conn
        self._cursor = conn.cursor()

    @property
    def rowcount(self) -> int:
        return self._conn.changes()

    def execute(self, query: str, params: Params = ()) -> _SqliteCursor:
        self._cursor.execute(query, params)
        return self

    def executemany(self, query: str, params_seq: Sequence[Params]) -> None:
        """A long `INSERT ... VALUES (...)` runs as statements of `_ROWS_PER_STATEMENT` rows each. APSW
        looks a statement up in its cache, hashing and comparing all of its text, for every row it runs:
        the 975 characters of the sessions' upsert were 43 % of its instructions per row. A statement of
        many rows has costs of its own (its values are copied once more), so a short statement with long
        rows (the log's insert) runs a row at a time (docs/benchmarks.md, session 22)."""
        many = None
        if len(query) >= _MULTIROW_MIN_CHARS and len(params_seq) >= _ROWS_PER_STATEMENT:
            many = _multirow(query)
        if many is None:
            self._cursor.executemany(query, params_seq)
            return
        whole = len(params_seq) - len(params_seq) % _ROWS_PER_STATEMENT
        chain = itertools.chain.from_iterable
        for start in range(0, whole, _ROWS_PER_STATEMENT):
            self._cursor.execute(many, tuple(chain(params_seq[start : start + _ROWS_PER_STATEMENT])))
        if whole < len(params_seq):
            self._cursor.executemany(query, params_seq[whole:])

    def fetchone(self) -> Row | None:
        rows = _dict_rows(self._cursor, limit=1)
        return rows[0] if rows else None

    def fetchall(self) -> list[Row]:
        return _dict_rows(self._cursor)


_ROWS_PER_STATEMENT = 32
# Instructions per row, one row at a time against 32: sessions' upsert (975 characters) 24,600 against
# 14,000; spend's insert (330) 20,200 against 19,900; the log's insert (220, rows of ~700 bytes) 17,450
# against 19,100.
_MULTIROW_MIN_CHARS = 512


@lru_cache(maxsize=256)
def _multirow(query: str) -> str | None:
    """`query`, an INSERT of one row of values, as an INSERT of `_ROWS_PER_STATEMENT` rows; None for any other
    statement (or one whose row of values this does not take apart: nested parentheses, quotes)."""
    head, found, tail = query.partition(" VALUES (")
    if not found or not head.lstrip().upper().startswith("INSERT"):
        return None
    values, closed, rest = tail.partition(")")
    if not closed or any(c in values for c in "('\"") or " VALUES (" in rest:
        return None
    return f"{head} VALUES " + ", ".join([f"({values})"] * _ROWS_PER_STATEMENT) + rest


def _dict_rows(cursor: apsw.Cursor, limit: int | None = None) -> list[Row]:
    """The rows of an executed APSW cursor as dicts (at most `limit`)."""
    try:
        names = [d[0] for d in cursor.get_description()]
    except apsw.ExecutionCompleteError:  # no rows
        return []
    rows = cursor if limit is None else itertools.islice(cursor, limit)
    return [dict(zip(names, r, strict=True)) for r in rows]


class Database:
    def __init__(self, url: str, *, synchronous: str = "normal", busy_timeout_ms: int = 5000) -> None:
        self.url = url
        self.dialect: Dialect = "sqlite" if url.startswith("sqlite:") else "postgresql"
        self.synchronous = synchronous
        self.busy_timeout_ms = busy_timeout_ms
        self._local = threading.local()
        self._all: list[Any] = []
        self._all_lock = threading.Lock()
        self._checkpointer: threading.Thread | None = None
        self._checkpointer_stop = threading.Event()
        self._checkpoints_elsewhere = False
        if self.dialect == "sqlite":
            self.path = Path(url.removeprefix("sqlite:///"))
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.derived_path = derived_path(self.path)

    # -- connections -------------------------------------------------------------------------------

    def connect(self, *, attach: bool = True) -> Any:
        """A new connection, configured; the caller owns it. SQLite: `attach=False` leaves the derived
        tables' file out (see the module's docstring)."""
        try:
            if self.dialect == "sqlite":
                conn = apsw.Connection(str(self.path))
                conn.set_busy_timeout(int(self.busy_timeout_ms))
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA foreign_keys=ON")
                if attach:
                    conn.execute("ATTACH DATABASE ? AS derived", (str(self.derived_path),))
                    conn.execute("PRAGMA derived.journal_mode=WAL")
                for schema in _SCHEMAS if attach else _SCHEMAS[:1]:
                    conn.execute(f"PRAGMA {schema}.synchronous={self.synchronous.upper()}")
                    conn.execute(f"PRAGMA {schema}.journal_size_limit={WAL_SIZE_LIMIT}")
                if self._checkpointer is not None or self._checkpoints_elsewhere:
                    # The background checkpointer does it; a commit must not stall on a checkpoint's fsync.
                    conn.execute("PRAGMA wal_autocheckpoint=0")
                return conn
            return psycopg.connect(self.url, row_factory=dict_row, autocommit=True)
        except (apsw.Error, psycopg.Error) as exc:
            raise StoreError(f"cannot open the store: {exc}") from exc

    def _conn(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self.connect()
            self._local.conn = conn
            with self._all_lock:
                self._all.append(conn)
        return conn

    def checkpoint_in_background(self, interval_s: float = 0.25) -> None:
        """SQLite: move WAL checkpoints off the commit path. By default the commit that crosses the WAL
        threshold runs the checkpoint (and its fsync) itself, which shows as multi-millisecond commits; a
        PASSIVE checkpoint from its own thread and connection never blocks writers. Connections opened
        from now on leave checkpointing to it.

        A PASSIVE checkpoint alone never lets the WAL start over under sustained writes: SQLite rewinds
        the WAL only when a write begins while every frame is copied back and no reader uses the WAL,
        and with commits arriving while a checkpoint runs, that moment never comes (measured: 2.3 GB of
        WAL after a minute at ~1,800 calls/s, and every page lookup searching a wal-index that grows
        with it). So once the WAL holds more than WAL_RESTART_FRAMES, the thread runs a RESTART
        checkpoint: it waits for readers and holds writers off for the few frames the last PASSIVE pass
        left (the audit writer's loop commits retry meanwhile), and the next
        commit starts the WAL over, truncated to `journal_size_limit`. Both files, the log's and the
        derived tables', are checkpointed so."""
        if self.dialect != "sqlite" or self._checkpointer is not None:
            return
        self._checkpointer_stop.clear()

        def run() -> None:
            conn = apsw.Connection(str(self.path))
            conn.set_busy_timeout(_RESTART_WAIT_MS)
            conn.execute("ATTACH DATABASE ? AS derived", (str(self.derived_path),))
            try:
                while not self._checkpointer_stop.wait(interval_s):
                    for schema in _SCHEMAS:
                        with contextlib.suppress(apsw.Error):
                            frames, _ = conn.wal_checkpoint(schema, apsw.SQLITE_CHECKPOINT_PASSIVE)
                            if frames > WAL_RESTART_FRAMES:
                                conn.wal_checkpoint(schema, apsw.SQLITE_CHECKPOINT_RESTART)
                with contextlib.suppress(apsw.Error):
                    conn.wal_checkpoint("main", apsw.SQLITE_CHECKPOINT_PASSIVE)
            finally:
                conn.close()

        self._checkpointer = threading.Thread(target=run, name="gatehouse-wal-checkpoint", daemon=True)
        self._checkpointer.start()

    def leave_checkpoints_to_others(self) -> None:
        """Another process checkpoints (the audit writer process): connections opened from now on never
        checkpoint in their commits."""
        self._checkpoints_elsewhere = True

    def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer_stop.set()
            self._checkpointer.join(10)
            self._checkpointer = None
        with self._all_lock:
            for conn in self._all:
                with contextlib.suppress(Exception):  # closing a broken connection is best effort
                    conn.close()
            self._all.clear()
        self._local = threading.local()

    # -- SQL ---------------------------------------------------------------------------------------

    def sql(self, query: str) -> str:
        return _to_pyformat(query) if self.dialect == "postgresql" else query

    @contextmanager
    def transaction(self, conn: Any = None, *, derived: bool = False) -> Iterator[Tx]:
        """One atomic unit of work, on this thread's connection unless `conn` is given. SQLite takes the
        write lock up front (BEGIN IMMEDIATE), so a transaction that reads the chain head and appends
        after it cannot interleave with another; with `derived`, for work that writes derived tables
        only, the derived file's lock alone (a no-op write takes it before anything is read). Either
        way, a transaction over both files is atomic in each of them, not across them (WAL mode)."""
        conn = conn or self._conn()
        try:
            if self.dialect == "sqlite":
                conn.execute("BEGIN" if derived else "BEGIN IMMEDIATE")
                try:
                    if derived:
                        conn.execute("UPDATE derived.projection_state SET seq = seq WHERE 0")
                    yield Tx(self, _SqliteCursor(conn))
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
            else:
                with conn.transaction(), conn.cursor() as cur:
                    yield Tx(self, cur)
        except (apsw.Error, psycopg.Error) as exc:
            raise self._store_error(conn, exc) from exc

    def _store_error(self, conn: Any, exc: Exception) -> StoreError:
        """The driver's error as ours; a connection it broke is not reused."""
        if isinstance(exc, apsw.BusyError):  # and its extended codes
            return StoreBusy(str(exc))
        if isinstance(exc, psycopg.OperationalError) or getattr(conn, "closed", False):
            self._local.conn = None
        return StoreError(str(exc))

    def query(self, query: str, params: Params = ()) -> list[Row]:
        conn = self._conn()
        try:
            if self.dialect == "sqlite":
                return _dict_rows(conn.execute(query, params))
            return conn.execute(self.sql(query), params).fetchall()  # type: ignore[no-any-return]
        except (apsw.Error, psycopg.Error) as exc:
            raise self._store_error(conn, exc) from exc

    def query_tuples(self, query: str, params: Params = ()) -> list[tuple[Any, ...]]:
        """Like `query`, with rows as tuples in the order of the SELECT: for bulk reads, where building a
        dict per row costs more than the read itself."""
        conn = self._conn()
        try:
            if self.dialect == "sqlite":
                return conn.execute(query, params).fetchall()  # type: ignore[no-any-return]
            with conn.cursor(row_factory=tuple_row) as cur:
                return cur.execute(self.sql(query), params).fetchall()  # type: ignore[no-any-return]
        except (apsw.Error, psycopg.Error) as exc:
            raise self._store_error(conn, exc) from exc

    def query_one(self, query: str, params: Params = ()) -> Row | None:
        rows = self.query(query, params)
        return rows[0] if rows else None

    async def aquery(self, query: str, params: Params = ()) -> list[Row]:
        """Read from async code. An indexed SQLite read is a few microseconds, cheaper than a thread
        hop, so it runs inline; PostgreSQL reads go to a worker thread so the event loop never waits."""
        if self.dialect == "sqlite":
            return self.query(query, params)
        return await asyncio.to_thread(self.query, query, params)

    async def aquery_one(self, query: str, params: Params = ()) -> Row | None:
        rows = await self.aquery(query, params)
        return rows[0] if rows else None


@lru_cache(maxsize=1024)
def derived_path(path: Path) -> Path:
    """Where a SQLite store keeps its derived tables: `gatehouse.db` -> `gatehouse.derived.db`."""
    return path.with_name(f"{path.stem}.derived{path.suffix}")


def _to_pyformat(query: str) -> str:
    return query.replace("?", "%s")
