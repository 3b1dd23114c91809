"""The load generator: an aiohttp client on uvloop, meant to run in its own process (see `procs.in_process`).

* `closed_loop`: N workers, each sending its next request as soon as the previous answer is read, for a
  warm-up then a measured window; throughput, latency percentiles, and the CPU the watched processes
  (the servers) used during the window.
* `sequential`: one request at a time, cycling through several targets request by request so that drift
  in the machine's load hits every target alike; per-target latencies (and time to first token for
  streams).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass, field

import aiohttp

from bench.common import cpu_seconds, percentile, run_async

_DELTA = b"content_block_delta"


@dataclass(frozen=True)
class Request:
    url: str
    headers: dict[str, str]
    body: bytes
    stream: bool = False


@dataclass(frozen=True)
class LoadSpec:
    requests: list[Request]  # cycled through by every worker
    concurrency: int
    duration_s: float
    warmup_s: float = 1.0
    watch_pids: dict[str, int] = field(default_factory=dict)


@dataclass
class LoadResult:
    concurrency: int
    duration_s: float
    completed: int
    errors: int
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    statuses: dict[int, int]
    cpu: dict[str, float]  # share of one core each watched process (and "loadgen") used in the window
    first_error: str | None = None
    p50_ms_by_url: dict[str, float] = field(default_factory=dict)  # when several targets are cycled


def _connector(limit: int) -> aiohttp.TCPConnector:
    return aiohttp.TCPConnector(limit=limit, limit_per_host=limit, keepalive_timeout=120, ttl_dns_cache=None)


async def _closed_loop(spec: LoadSpec) -> LoadResult:
    latencies: list[float] = []
    by_url: dict[str, list[float]] = {}
    statuses: dict[int, int] = {}
    errors = 0
    first_error: str | None = None
    loop_start = time.perf_counter()
    measure_from = loop_start + spec.warmup_s
    measure_to = measure_from + spec.duration_s
    cpu_before: dict[str, float] = {}
    cpu_after: dict[str, float] = {}

    def read_cpu(into: dict[str, float]) -> None:
        for name, pid in spec.watch_pids.items():
            into[name] = cpu_seconds(pid)
        into["loadgen"] = time.process_time()

    async def marks() -> None:
        await asyncio.sleep(max(0.0, measure_from - time.perf_counter()))
        read_cpu(cpu_before)
        await asyncio.sleep(max(0.0, measure_to - time.perf_counter()))
        read_cpu(cpu_after)

    async with aiohttp.ClientSession(
        connector=_connector(spec.concurrency), skip_auto_headers=("User-Agent",), auto_decompress=False
    ) as session:

        async def worker(offset: int) -> None:
            nonlocal errors, first_error
            for req in itertools.islice(itertools.cycle(spec.requests), offset, None):
                started = time.perf_counter()
                if started >= measure_to:
                    return
                try:
                    async with session.post(req.url, data=req.body, headers=req.headers) as resp:
                        await resp.read()
                        status = resp.status
                except (aiohttp.ClientError, TimeoutError) as exc:
                    errors += 1
                    first_error = first_error or repr(exc)
                    await asyncio.sleep(0.01)
                    continue
                done = time.perf_counter()
                if measure_from <= done <= measure_to:
                    latencies.append(done - started)
                    by_url.setdefault(req.url, []).append((done - started) * 1000)
                    statuses[status] = statuses.get(status, 0) + 1
                    if status != 200:
                        errors += 1
                        first_error = first_error or f"HTTP {status}"

        await asyncio.gather(marks(), *(worker(i) for i in range(spec.concurrency)))

    window = spec.duration_s
    cpu = {name: (cpu_after[name] - cpu_before[name]) / window for name in cpu_after}
    ms = [x * 1000 for x in latencies]
    return LoadResult(
        concurrency=spec.concurrency,
        duration_s=window,
        completed=len(latencies),
        errors=errors,
        rps=len(latencies) / window,
        p50_ms=percentile(ms, 50),
        p90_ms=percentile(ms, 90),
        p99_ms=percentile(ms, 99),
        statuses=statuses,
        cpu=cpu,
        first_error=first_error,
        p50_ms_by_url={url: percentile(values, 50) for url, values in by_url.items()},
    )


def closed_loop(spec: LoadSpec) -> LoadResult:
    return run_async(_closed_loop(spec))


@dataclass
class Samples:
    """Per-target milliseconds: total latency of each request and, for streams, time to first token."""

    total_ms: dict[str, list[float]]
    ttft_ms: dict[str, list[float]]
    errors: dict[str, int]


async def _one(session: aiohttp.ClientSession, req: Request) -> tuple[float, float | None, int]:
    started = time.perf_counter()
    first: float | None = None
    async with session.post(req.url, data=req.body, headers=req.headers) as resp:
        if req.stream:
            tail = b""
            async for chunk in resp.content.iter_any():
                if first is None:
                    seen = tail + chunk
                    if _DELTA in seen:
                        first = time.perf_counter() - started
                    tail = seen[-len(_DELTA) :]
        else:
            await resp.read()
        status = resp.status
    return time.perf_counter() - started, first, status


async def _sequential(targets: dict[str, Request], count: int, warmup: int) -> Samples:
    out = Samples({n: [] for n in targets}, {n: [] for n in targets}, dict.fromkeys(targets, 0))
    sessions = {
        name: aiohttp.ClientSession(
            connector=_connector(1), skip_auto_headers=("User-Agent",), auto_decompress=False
        )
        for name in targets
    }
    try:
        for i in range(warmup + count):
            for name, req in targets.items():
                total, first, status = await _one(sessions[name], req)
                if i < warmup:
                    continue
                if status != 200:
                    out.errors[name] += 1
                    continue
                out.total_ms[name].append(total * 1000)
                if first is not None:
                    out.ttft_ms[name].append(first * 1000)
    finally:
        for session in sessions.values():
            await session.close()
    return out


def sequential(targets: dict[str, Request], count: int, warmup: int = 50) -> Samples:
    return run_async(_sequential(targets, count, warmup))
