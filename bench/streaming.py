"""3. Streaming time to first token: one client, sequential streaming /v1/messages; the time from sending
the request to the first byte of the first `content_block_delta` event reaching the client, direct vs
through Gatehouse (and the pass-through proxy). The simulator pauses between deltas (`chunk_delay_ms`) so
the first delta travels alone, as it does from a real model, instead of in one write with the rest."""

from __future__ import annotations

from bench.common import Options, Outcome, messages_body, percentile, table
from bench.harness import direct, via_gatehouse, via_passthrough
from bench.loadgen import sequential
from bench.procs import in_process, servers

CHUNK_DELAY_MS = 2.0  # the issue sets no target for TTFT: the figures are reported, not checked


def run(opts: Options) -> Outcome:
    out = Outcome("ttft")
    body = messages_body(stream=True)
    count = 100 if opts.quick else 400
    with servers() as start:
        sim = start("simulator", "--chunk-delay-ms", str(CHUNK_DELAY_MS))
        proxy = start("passthrough", "--upstream", sim.url)
        gh = start("gatehouse", "--upstream", sim.url)
        targets = {
            "direct": direct(sim, body, stream=True),
            "passthrough": via_passthrough(proxy, body, stream=True),
            "gatehouse": via_gatehouse(gh, body, stream=True),
        }
        samples = in_process(sequential, targets, count, 30)
    stats: dict[str, dict[str, float]] = {}
    for name in targets:
        ttft, total = samples.ttft_ms[name], samples.total_ms[name]
        stats[name] = {
            "n": len(ttft),
            "ttft_p50_ms": percentile(ttft, 50),
            "ttft_p99_ms": percentile(ttft, 99),
            "stream_p50_ms": percentile(total, 50),
        }
    base = stats["direct"]
    rows = [
        [
            name,
            s["n"],
            s["ttft_p50_ms"],
            s["ttft_p99_ms"],
            s["ttft_p50_ms"] - base["ttft_p50_ms"],
            s["ttft_p99_ms"] - base["ttft_p99_ms"],
            s["stream_p50_ms"],
            s["stream_p50_ms"] - base["stream_p50_ms"],
        ]
        for name, s in stats.items()
    ]
    added = stats["gatehouse"]["ttft_p50_ms"] - base["ttft_p50_ms"]
    out.data = {
        "requests_per_target": count,
        "chunk_delay_ms": CHUNK_DELAY_MS,
        "targets": stats,
        "added_ttft_p50_ms": added,
        "added_ttft_p99_ms": stats["gatehouse"]["ttft_p99_ms"] - base["ttft_p99_ms"],
        "added_stream_p50_ms": stats["gatehouse"]["stream_p50_ms"] - base["stream_p50_ms"],
        "errors": samples.errors,
    }
    out.tables.append(
        table(
            f"Streaming time to first token, 1 client, {count} sequential streams per target (ms)",
            ["target", "n", "TTFT p50", "TTFT p99", "added p50", "added p99", "whole stream p50", "added"],
            rows,
        )
    )
    return out
