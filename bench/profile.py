"""Where Gatehouse's time goes under load (opt-in: `python -m bench.run --only profile`).

Two views of the Gatehouse process while 16 clients send small non-streaming requests:
  * cProfile of the event loop thread (the server runs with `--profile`), top functions by own time;
  * if py-spy is available (on PATH, or the PY_SPY environment variable names it), a sampling profile of
    every thread, including the audit writer thread that cProfile does not see, in two modes: all
    samples where the thread was running or waiting on the GIL, and only samples where it held the GIL.
Profiling slows the server, so this bench reports where time goes, never throughput.
"""

from __future__ import annotations

import collections
import os
import pstats
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from bench.common import Options, Outcome, messages_body, table
from bench.harness import via_gatehouse
from bench.loadgen import LoadSpec, closed_loop
from bench.procs import background, in_process, servers

CONCURRENCY = 16
TOP = 20


def _short(path: str) -> str:
    for marker in ("/site-packages/", "/src/", "/lib/python3"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


def _cprofile(path: str) -> list[list[object]]:
    stats = pstats.Stats(path)
    total = sum(v[2] for v in stats.stats.values())  # type: ignore[attr-defined]
    rows: list[list[object]] = []
    entries = sorted(stats.stats.items(), key=lambda kv: kv[1][2], reverse=True)  # type: ignore[attr-defined]
    for (file, line, func), (_cc, calls, tottime, cumtime, _callers) in entries[:TOP]:
        where = f"{_short(file)}:{line}" if line else file
        own_us = tottime / calls * 1e6 if calls else float("nan")
        rows.append(
            [f"{func} ({where})", calls, tottime * 1000, own_us, cumtime * 1000, tottime / total * 100]
        )
    return rows


def _frame(frame: str) -> str:
    """`func (path:line)` -> `func (short path)`: lines merged, so a function counts once."""
    func, _, where = frame.partition(" (")
    return f"{func} ({_short(where.rsplit(':', 1)[0])})"


def _py_spy() -> str | None:
    return os.environ.get("PY_SPY") or shutil.which("py-spy")


def _aggregate(raw: Path, thread: str) -> tuple[int, list[tuple[str, float, float]]]:
    """From py-spy's raw (collapsed) output: per function, inclusive and own share of the thread's samples."""
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        if thread not in frames[0]:
            continue
        n = int(count)
        total += n
        names = [
            f.split(" (")[0] + " (" + _short(f.split(" (")[1].rsplit(":", 1)[0]) + ")"
            for f in frames[1:]
            if " (" in f
        ]
        for name in set(names):
            inclusive[name] += n
        if names:
            own[names[-1]] += n
    rows = [(name, count / total * 100, own[name] / total * 100) for name, count in inclusive.most_common()]
    return total, rows


def run(opts: Options) -> Outcome:
    out = Outcome("profile")
    seconds = 5.0 if opts.quick else 15.0
    body = messages_body()
    work = Path(tempfile.mkdtemp(prefix="gatehouse-bench-profile-"))
    stats_path = work / "gatehouse.pstats"
    try:
        with servers() as start:
            sim = start("simulator")
            gh = start("gatehouse", "--upstream", sim.url, "--profile", str(stats_path))
            in_process(closed_loop, LoadSpec([via_gatehouse(gh, body)], CONCURRENCY, seconds, 1.0, {}))
            gh.stop()
        rows = _cprofile(str(stats_path))
        out.data["cprofile_top"] = rows
        out.tables.append(
            table(
                f"cProfile, event loop thread, {CONCURRENCY} clients for {seconds:.0f} s"
                f" (top {TOP} by own time; wall time, so waits for the GIL count)",
                ["function", "calls", "own ms", "own us/call", "cumulative ms", "own %"],
                rows,
            )
        )
        spy = _py_spy()
        if spy is None:
            out.tables.append("(py-spy not found: set PY_SPY or put it on PATH for the all-threads view)")
            return out
        for mode, flags in (("all", ["--threads"]), ("gil", ["--threads", "--gil"])):
            raw = work / f"py-spy-{mode}.txt"
            with servers() as start:
                sim = start("simulator")
                gh = start("gatehouse", "--upstream", sim.url)
                spec = LoadSpec([via_gatehouse(gh, body)], CONCURRENCY, seconds + 3, 1.0, {})
                with background(closed_loop, spec) as done:
                    time.sleep(2)
                    cmd = [spy, "record", "-d", str(int(seconds)), "-r", "200", "-f", "raw", "-o", str(raw)]
                    subprocess.run([*cmd, *flags, "--pid", str(gh.pid)], check=True, capture_output=True)
                    done.result()
            for thread in ("MainThread", "gatehouse-audit-writer"):
                total, agg = _aggregate(raw, thread)
                out.data[f"py_spy_{mode}_{thread}"] = {"samples": total, "top": agg[:40]}
                out.tables.append(
                    table(
                        f"py-spy ({'samples holding the GIL' if mode == 'gil' else 'running or waiting'}),"
                        f" thread {thread}: {total} samples",
                        ["function", "inclusive %", "own %"],
                        # Frames in every sample are the thread's entry points: skip them.
                        [list(r) for r in agg if r[1] < 99.5][:TOP],
                    )
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out
