"""6. The audit writer alone, and what auditing costs the Bridge.

Writer alone (in its own process, fresh SQLite store, WAL, synchronous=normal, the hash chain, and the
Bridge's projections unless said otherwise), with events shaped like the Bridge's `llm.request` /
`llm.response` pairs:
  * awaited: many coroutines each `await append(request)` then `await append(response)`, as the Bridge
    does, for a fixed time;
  * bursts: `append_nowait` of a burst of pairs, timed until the last one is committed;
  * bursts without projections: the chain alone.
Target: >= 20,000 events/s.

Bridge with auditing on vs off ("off" swaps in a no-op writer with the same interface; the Bridge still
builds its events). Target: auditing costs <= 15% of throughput."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.common import (
    Check,
    Options,
    Outcome,
    median,
    messages_body,
    percentile,
    ratio,
    run_async,
    table,
)
from bench.harness import interleaved, via_gatehouse
from bench.procs import in_process, servers

MIN_EVENTS_PER_S = 20_000
MAX_COST = 0.15
CONCURRENCY = [16, 64]


def _pair(i: int) -> tuple[Any, Any]:
    """An llm.request / llm.response pair with the Bridge's details at capture=last_prompt."""
    from gatehouse.audit.events import Event, new_id

    rid = new_id()
    common: dict[str, Any] = {
        "actor_user": "u-bench",
        "actor_agent": "a-bench",
        "actor_token": "t-bench",
        "session": rid,
    }
    request = Event(
        kind="llm.request",
        decision="allow",
        resource="llm:anthropic/claude-sonnet-4-6",
        details={
            "route": "messages",
            "provider": "anthropic",
            "client": "anthropic-sdk-python",
            "client_session": None,
            "model": "claude-sonnet-4-6",
            "stream": False,
            "parent_interception": None,
            "max_tokens": 256,
            "tools_offered": 0,
            "last_prompt": f"Write a haiku about benchmark number {i}.",
            "tool_results": [],
            "request_bytes": 120,
        },
        **common,
    )
    request.id = rid
    response = Event(
        kind="llm.response",
        decision="allow",
        parent=rid,
        resource="llm:anthropic/claude-sonnet-4-6",
        details={
            "status": 200,
            "error": None,
            "latency_ms": 1.234,
            "ttft_ms": None,
            "response_id": f"msg_{i:024x}",
            "model": "claude-sonnet-4-6",
            "stop_reason": "end_turn",
            "usage": {
                "input_tokens": 12,
                "output_tokens": 24,
                "cache_read_tokens": 0,
                "cache_write_tokens": 0,
                "reasoning_tokens": 0,
            },
            "tool_calls": [],
            "thinking": [],
        },
        **common,
    )
    return request, response


def writer_alone(mode: str, seconds: float, concurrency: int, projections: bool) -> dict[str, Any]:
    """Runs in its own process. Returns events/s, commits and the mean batch size."""
    from gatehouse.audit.writer import AuditWriter
    from gatehouse.bridge.projection import project_bridge_events
    from gatehouse.store.db import Database, Tx
    from gatehouse.store.migrations import migrate

    class CountingDatabase(Database):
        """Counts transactions: the writer commits each batch in one, so events / commits = batch size."""

        commits = 0

        @contextlib.contextmanager
        def transaction(self, conn: Any = None) -> Iterator[Tx]:
            self.commits += 1
            with super().transaction(conn) as tx:
                yield tx

    tmp = tempfile.mkdtemp(prefix="gatehouse-bench-audit-")
    try:
        db = CountingDatabase(f"sqlite:///{Path(tmp) / 'audit.db'}")
        migrate(db)
        writer = AuditWriter(db, projections=[project_bridge_events] if projections else [])
        writer.start()
        base_events = writer.committed_events
        db.commits = 0

        waits: list[float] = []  # seconds each awaited append took (until its batch committed)

        async def awaited() -> tuple[int, float]:
            stop = time.perf_counter() + seconds
            done = 0

            async def appender(k: int) -> None:
                nonlocal done
                i = k
                while time.perf_counter() < stop:
                    for event in _pair(i):
                        t0 = time.perf_counter()
                        await writer.append(event)
                        waits.append(time.perf_counter() - t0)
                    done += 2
                    i += concurrency

            t0 = time.perf_counter()
            await asyncio.gather(*(appender(k) for k in range(concurrency)))
            return done, time.perf_counter() - t0

        async def bursts() -> tuple[int, float]:
            spent = 0.0
            done = 0
            while spent < seconds:
                events = [e for i in range(concurrency) for e in _pair(i)]  # built outside the timed part
                t0 = time.perf_counter()
                for event in events[:-1]:
                    writer.append_nowait(event)
                await writer.append(events[-1])  # FIFO: once the last is durable, all are
                spent += time.perf_counter() - t0
                done += len(events)
            return done, spent

        events, elapsed = run_async(awaited() if mode == "awaited" else bursts())
        writer.close()
        assert writer.committed_events - base_events >= events
        chain_ok = _verify_tail(db)
        db.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "mode": mode,
        "projections": projections,
        "concurrency_or_burst": concurrency,
        "events": events,
        "seconds": elapsed,
        "events_per_s": events / elapsed,
        "commits": db.commits,
        "mean_batch": events / db.commits if db.commits else 0.0,
        "chain_verified": chain_ok,
        "append_p50_ms": percentile(waits, 50) * 1000,
        "append_p99_ms": percentile(waits, 99) * 1000,
        "append_mean_ms": sum(waits) / len(waits) * 1000 if waits else float("nan"),
    }


def _verify_tail(db: Any, rows: int = 2000) -> bool:
    """Recompute the hashes of the last rows: the bench must not measure a writer that skips the chain."""
    from gatehouse.audit.chain import row_hash

    tail = db.query("SELECT * FROM events ORDER BY seq DESC LIMIT ?", (rows,))
    tail.reverse()
    prev = None
    for row in tail:
        if prev is not None and row["prev_hash"] != prev:
            return False
        if row_hash(row) != row["hash"]:
            return False
        prev = row["hash"]
    return True


def run(opts: Options) -> Outcome:
    out = Outcome("audit")
    seconds = 3.0 if opts.quick else 6.0
    cases = [
        ("awaited", 1, True),  # one appender: the commit round trip the Bridge pays twice per request
        ("awaited", 256, True),
        ("bursts", 5000, True),
        ("bursts", 5000, False),
    ]
    writer_rows = []
    writer_data = []
    for mode, n, proj in cases:
        res = in_process(writer_alone, mode, seconds, n, proj)
        writer_data.append(res)
        unit = ("appender" if n == 1 else "appenders") if mode == "awaited" else "pairs/burst"
        label = f"{mode}, {n} {unit}"
        writer_rows.append(
            [
                label,
                "yes" if proj else "no",
                round(res["events_per_s"]),
                res["mean_batch"],
                res["append_p50_ms"],
                res["append_p99_ms"],
                res["chain_verified"],
            ]
        )
    out.data["writer"] = writer_data
    out.tables.append(
        table(
            "Audit writer alone, SQLite WAL, hash chain (events/s)",
            [
                "mode",
                "projections",
                "events/s",
                "mean batch",
                "append p50 ms",
                "append p99 ms",
                "chain verified",
            ],
            writer_rows,
        )
    )
    # The target is a sustained rate under many concurrent appends, so the single appender does not count.
    worst = min(r["events_per_s"] for r in writer_data if r["projections"] and r["concurrency_or_burst"] > 1)
    out.checks.append(
        Check(
            "audit writer events/s (projections, many appenders)",
            worst,
            f">= {MIN_EVENTS_PER_S:,}",
            worst >= MIN_EVENTS_PER_S,
        )
    )

    body = messages_body()
    with servers() as start:
        sim = start("simulator")
        on = start("gatehouse", "--upstream", sim.url, "--audit", "on")
        off = start("gatehouse", "--upstream", sim.url, "--audit", "off")
        runs = interleaved(
            {"audit on": via_gatehouse(on, body), "audit off": via_gatehouse(off, body)},
            CONCURRENCY,
            rounds=1 if opts.quick else 3,
            window_s=3.0 if opts.quick else 5.0,
            warmup_s=0.5 if opts.quick else 1.0,
            watch={"audit on": on.pid, "audit off": off.pid},
        )
    rows = []
    for c in CONCURRENCY:
        r_on, r_off = runs.rps("audit on", c), runs.rps("audit off", c)
        cost = 1 - ratio(r_on, r_off)
        cpu_on = runs.cpu_us_per_request("audit on", c, "audit on")
        cpu_off = runs.cpu_us_per_request("audit off", c, "audit off")
        cpu_cost = 1 - ratio(cpu_off, cpu_on)  # the share of Gatehouse's CPU per request that is auditing
        per_round = [
            1 - ratio(a.rps, b.rps)
            for a, b in zip(runs.results[("audit on", c)], runs.results[("audit off", c)], strict=True)
        ]
        rows.append(
            [
                c,
                round(r_off),
                round(r_on),
                cost * 100,
                runs.p50("audit off", c),
                runs.p50("audit on", c),
                runs.cpu_us_per_request("audit off", c, "audit off"),
                runs.cpu_us_per_request("audit on", c, "audit on"),
                cpu_cost * 100,
            ]
        )
        out.data[f"c{c}"] = {
            "audit_off_rps": r_off,
            "audit_on_rps": r_on,
            "cost": cost,
            "cost_per_round": per_round,
            "cost_median_of_rounds": median(per_round),
            "cpu_us_per_request_on": cpu_on,
            "cpu_us_per_request_off": cpu_off,
            "cpu_cost": cpu_cost,
        }
        out.checks.append(
            Check(
                f"auditing cost at {c} clients",
                cost * 100,
                f"<= {MAX_COST * 100:.0f} %",
                cost <= MAX_COST,
                " %",
            )
        )
    out.data["runs"] = runs.as_json()
    out.tables.append(
        table(
            "Bridge throughput, auditing off (no-op writer) vs on (median of rounds)",
            [
                "clients",
                "off req/s",
                "on req/s",
                "cost %",
                "off p50 ms",
                "on p50 ms",
                "off CPU us/req",
                "on CPU us/req",
                "CPU share %",
            ],
            rows,
        )
    )
    return out
