"""5. Memory after a soak: RSS of the Gatehouse process (VmRSS) after a warm-up, then during N minutes of
steady load at moderate concurrency with a coding-agent mix (plain, streamed, a tool call, a tool result).
Target: growth from after warm-up to the end < 10%."""

from __future__ import annotations

import os
import sys
import time

from bench.common import (
    READ_FILE_TOOL,
    Check,
    Options,
    Outcome,
    messages_body,
    table,
)
from bench.harness import via_gatehouse
from bench.loadgen import LoadSpec, Request, closed_loop
from bench.procs import Server, background, in_process, servers

CONCURRENCY = 16
MAX_GROWTH_PCT = 10.0


def _mix(gh: Server) -> list[Request]:
    return [
        via_gatehouse(gh, messages_body()),
        via_gatehouse(gh, messages_body(stream=True), stream=True),
        # The prompt names the tool, so the simulator answers with a tool_use block (a recorded tool call).
        via_gatehouse(gh, messages_body(prompt="Please use read_file on /etc/hosts", tools=[READ_FILE_TOOL])),
        via_gatehouse(gh, messages_body(tool_result_for="toolu_bench_0001", stream=True), stream=True),
    ]


def _slope_kib_per_min(points: list[tuple[float, int]]) -> float:
    """Least-squares slope of RSS over time."""
    if len(points) < 2:
        return float("nan")
    n = len(points)
    mt = sum(t for t, _ in points) / n
    mr = sum(r for _, r in points) / n
    var = sum((t - mt) ** 2 for t, _ in points)
    cov = sum((t - mt) * (r - mr) for t, r in points)
    return cov / var * 60 if var else float("nan")


def run(opts: Options) -> Outcome:
    out = Outcome("soak")
    soak_s = opts.soak_s or (20.0 if opts.quick else 300.0)
    warmup_s = 5.0 if opts.quick else 20.0
    interval = max(1.0, soak_s / 60)
    with servers() as start:
        sim = start("simulator")
        gh = start("gatehouse", "--upstream", sim.url)
        mix = _mix(gh)
        started_rss = gh.rss_kib()
        warm = in_process(closed_loop, LoadSpec(mix, CONCURRENCY, warmup_s, 0.5, {}))
        before = gh.rss_kib()
        points: list[tuple[float, int]] = [(0.0, before)]
        spec = LoadSpec(mix, CONCURRENCY, soak_s, 0.0, {"gatehouse": gh.pid, "simulator": sim.pid})
        t0 = time.monotonic()
        with background(closed_loop, spec) as future:
            while not future.done():
                time.sleep(interval)
                points.append((time.monotonic() - t0, gh.rss_kib()))
                if len(points) % 10 == 0:
                    print(
                        f"    soak {points[-1][0]:5.0f}s rss {points[-1][1] / 1024:.1f} MiB", file=sys.stderr
                    )
            result = future.result()
        after = gh.rss_kib()
        db_path = str(gh.info["db"])
        db_bytes = sum(os.path.getsize(p) for p in (db_path, db_path + "-wal") if os.path.exists(p))
    growth = (after - before) / before * 100
    peak = max(r for _, r in points)
    second_half = [(t, r) for t, r in points if t >= soak_s / 2]
    out.data = {
        "concurrency": CONCURRENCY,
        "warmup_s": warmup_s,
        "soak_s": soak_s,
        "rss_at_start_kib": started_rss,
        "rss_after_warmup_kib": before,
        "rss_end_kib": after,
        "rss_peak_kib": peak,
        "growth_pct": growth,
        "slope_second_half_kib_per_min": _slope_kib_per_min(second_half),
        "requests": result.completed + warm.completed,
        "soak_rps": result.rps,
        "errors": result.errors + warm.errors,
        "first_error": result.first_error or warm.first_error,
        "gatehouse_cpu_cores": result.cpu.get("gatehouse"),
        "db_bytes": db_bytes,
        "samples": points,
    }
    out.checks.append(
        Check("RSS growth over the soak", growth, f"< {MAX_GROWTH_PCT:.0f} %", growth < MAX_GROWTH_PCT, " %")
    )
    out.tables.append(
        table(
            f"Memory soak: {soak_s:.0f} s at {CONCURRENCY} clients after a {warmup_s:.0f} s warm-up"
            " (plain / streamed / tool call / tool result mix)",
            [
                "RSS start MiB",
                "after warm-up",
                "end",
                "peak",
                "growth %",
                "slope 2nd half KiB/min",
                "req/s",
                "requests",
                "errors",
            ],
            [
                [
                    started_rss / 1024,
                    before / 1024,
                    after / 1024,
                    peak / 1024,
                    growth,
                    out.data["slope_second_half_kib_per_min"],
                    round(result.rps),
                    out.data["requests"],
                    out.data["errors"],
                ]
            ],
        )
    )
    return out
