"""Orchestration shared by the benchmarks: the targets (direct, passthrough, Gatehouse) and interleaved rounds
of closed-loop load, so that a burst of noise on the shared machine hits every target alike."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from bench.common import MESSAGES_PATH, UPSTREAM_KEY, headers, median
from bench.loadgen import LoadResult, LoadSpec, Request, closed_loop
from bench.procs import Server, in_process


def direct(sim: Server, body: bytes, *, stream: bool = False) -> Request:
    return Request(sim.url + MESSAGES_PATH, headers(UPSTREAM_KEY, stream=stream), body, stream)


def via_passthrough(proxy: Server, body: bytes, *, stream: bool = False) -> Request:
    return Request(proxy.url + MESSAGES_PATH, headers(UPSTREAM_KEY, stream=stream), body, stream)


def via_gatehouse(gh: Server, body: bytes, *, stream: bool = False) -> Request:
    url = gh.url + "/bridge/anthropic" + MESSAGES_PATH
    return Request(url, headers(gh.token, stream=stream), body, stream)


@dataclass
class Runs:
    """Every closed-loop run, by (target, concurrency)."""

    results: dict[tuple[str, int], list[LoadResult]] = field(default_factory=dict)

    def rps(self, target: str, concurrency: int) -> float:
        return median(r.rps for r in self.results[(target, concurrency)])

    def p50(self, target: str, concurrency: int) -> float:
        return median(r.p50_ms for r in self.results[(target, concurrency)])

    def p99(self, target: str, concurrency: int) -> float:
        return median(r.p99_ms for r in self.results[(target, concurrency)])

    def cpu(self, target: str, concurrency: int, process: str) -> float:
        return median(r.cpu.get(process, float("nan")) for r in self.results[(target, concurrency)])

    def cpu_us_per_request(self, target: str, concurrency: int, process: str) -> float:
        """CPU time the process spent per request (both its threads): steadier than req/s on a busy box."""
        return median(
            r.cpu.get(process, float("nan")) / r.rps * 1e6
            for r in self.results[(target, concurrency)]
            if r.rps
        )

    def errors(self, target: str) -> int:
        return sum(r.errors for (t, _), rs in self.results.items() if t == target for r in rs)

    def as_json(self) -> list[dict[str, object]]:
        return [
            {"target": t, "concurrency": c, "round": i, **vars(r)}
            for (t, c), rs in self.results.items()
            for i, r in enumerate(rs)
        ]


def interleaved(
    targets: dict[str, Request],
    concurrencies: list[int],
    *,
    rounds: int,
    window_s: float,
    warmup_s: float,
    watch: dict[str, int],
) -> Runs:
    """For each round and concurrency, one closed-loop run per target, the target order rotating by round."""
    runs = Runs()
    names = list(targets)
    for rnd in range(rounds):
        for c in concurrencies:
            shift = rnd % len(names)
            for name in names[shift:] + names[:shift]:
                spec = LoadSpec([targets[name]], c, window_s, warmup_s, watch)
                result = in_process(closed_loop, spec)
                runs.results.setdefault((name, c), []).append(result)
                note = f" errors={result.errors} ({result.first_error})" if result.errors else ""
                print(
                    f"    round {rnd + 1}/{rounds} c={c:<3} {name:<14} {result.rps:8.0f} req/s{note}",
                    file=sys.stderr,
                )
    return runs
