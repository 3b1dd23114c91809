"""2. Added latency at one client: many sequential small non-streaming requests, direct and through
Gatehouse (and the pass-through proxy), alternating request by request. Target: added p50 <= 1 ms.

4. Request body size: the same at 1 KB and 400 KB bodies. Target: added p50 at 400 KB <= 10 ms."""

from __future__ import annotations

from collections.abc import Callable

from bench.common import Check, Options, Outcome, messages_body, percentile, table
from bench.harness import direct, via_gatehouse, via_passthrough
from bench.loadgen import Request, Samples, sequential
from bench.procs import Server, in_process, servers

ADDED_P50_MS = 1.0
ADDED_P50_400K_MS = 10.0


def _stats(samples: Samples, name: str) -> dict[str, float]:
    ms = samples.total_ms[name]
    return {
        "n": len(ms),
        "p50_ms": percentile(ms, 50),
        "p90_ms": percentile(ms, 90),
        "p99_ms": percentile(ms, 99),
    }


def _start_three(start: Callable[..., Server]) -> tuple[Server, Server, Server]:
    sim = start("simulator")
    proxy = start("passthrough", "--upstream", sim.url)
    gh = start("gatehouse", "--upstream", sim.url)
    return sim, proxy, gh


def run_latency(opts: Options) -> Outcome:
    out = Outcome("latency")
    body = messages_body()
    count = 400 if opts.quick else 2000
    with servers() as start:
        sim, proxy, gh = _start_three(start)
        targets = {
            "direct": direct(sim, body),
            "passthrough": via_passthrough(proxy, body),
            "gatehouse": via_gatehouse(gh, body),
        }
        samples = in_process(sequential, targets, count, 100)
    stats = {name: _stats(samples, name) for name in targets}
    base = stats["direct"]
    rows = []
    for name, s in stats.items():
        rows.append(
            [
                name,
                s["n"],
                s["p50_ms"],
                s["p90_ms"],
                s["p99_ms"],
                s["p50_ms"] - base["p50_ms"],
                s["p99_ms"] - base["p99_ms"],
            ]
        )
    added50 = stats["gatehouse"]["p50_ms"] - base["p50_ms"]
    added99 = stats["gatehouse"]["p99_ms"] - base["p99_ms"]
    out.data = {
        "requests_per_target": count,
        "targets": stats,
        "added_p50_ms": added50,
        "added_p99_ms": added99,
        "errors": samples.errors,
    }
    out.checks.append(
        Check("added p50 latency, 1 client", added50, f"<= {ADDED_P50_MS} ms", added50 <= ADDED_P50_MS, " ms")
    )
    out.tables.append(
        table(
            f"Latency at 1 client, {count} sequential small requests per target (ms)",
            ["target", "n", "p50", "p90", "p99", "added p50", "added p99"],
            rows,
        )
    )
    return out


def run_bodies(opts: Options) -> Outcome:
    out = Outcome("bodies")
    count = 100 if opts.quick else 400
    sizes = {"1KB": 1024, "400KB": 400 * 1024}
    with servers() as start:
        sim, proxy, gh = _start_three(start)
        targets: dict[str, Request] = {}
        for label, size in sizes.items():
            body = messages_body(size=size)
            targets[f"direct {label}"] = direct(sim, body)
            targets[f"passthrough {label}"] = via_passthrough(proxy, body)
            targets[f"gatehouse {label}"] = via_gatehouse(gh, body)
        actual = {label: len(targets[f"direct {label}"].body) for label in sizes}
        samples = in_process(sequential, targets, count, 20)
    rows = []
    for label in sizes:
        base = _stats(samples, f"direct {label}")
        pt = _stats(samples, f"passthrough {label}")
        g = _stats(samples, f"gatehouse {label}")
        added50 = g["p50_ms"] - base["p50_ms"]
        added99 = g["p99_ms"] - base["p99_ms"]
        rows.append(
            [
                f"{label} ({actual[label]:,} B)",
                base["p50_ms"],
                pt["p50_ms"] - base["p50_ms"],
                g["p50_ms"],
                added50,
                added99,
            ]
        )
        out.data[label] = {
            "body_bytes": actual[label],
            "direct": base,
            "passthrough": pt,
            "gatehouse": g,
            "added_p50_ms": added50,
            "added_p99_ms": added99,
            "passthrough_added_p50_ms": pt["p50_ms"] - base["p50_ms"],
        }
    out.data["requests_per_target"] = count
    out.data["errors"] = samples.errors
    added = out.data["400KB"]["added_p50_ms"]
    out.checks.append(
        Check(
            "added p50 latency, 400 KB body",
            added,
            f"<= {ADDED_P50_400K_MS} ms",
            added <= ADDED_P50_400K_MS,
            " ms",
        )
    )
    out.tables.append(
        table(
            f"Request body size, 1 client, {count} sequential requests per target (ms)",
            ["body", "direct p50", "passthrough added p50", "gatehouse p50", "gh added p50", "gh added p99"],
            rows,
        )
    )
    return out
