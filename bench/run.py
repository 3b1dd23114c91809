"""Run the benchmarks: `python -m bench.run [--quick] [--only NAME[,NAME...]] [--json out.json]`.

Benchmarks (in run order): throughput, latency, ttft, bodies, audit, timeline, soak. The full run takes
about 13 minutes (5 of them the memory soak, 2 to 3 the timeline over 5 million events); --quick about
2.5. `--only profile` (never in a default run) shows where Gatehouse's time goes: cProfile of its event
loop, and py-spy of every thread if available. Progress goes to stderr, the tables to stdout.
Exit status 0 even when a target is missed: these are measurements, not tests.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from bench import audit, latency, profile, soak, streaming, throughput, timeline
from bench.common import Options, Outcome, table

BENCHES: dict[str, Callable[[Options], Outcome]] = {
    "throughput": throughput.run,
    "latency": latency.run_latency,
    "ttft": streaming.run,
    "bodies": latency.run_bodies,
    "audit": audit.run,
    "timeline": timeline.run,
    "soak": soak.run,
}
# Not part of a default run: only with --only.
EXTRA: dict[str, Callable[[Options], Outcome]] = {"profile": profile.run}


def _meta(argv: Sequence[str], opts: Options) -> dict[str, Any]:
    from importlib.metadata import version

    import aiohttp

    load = os.getloadavg()
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": "python -m bench.run " + shlex.join(argv),
        "quick": opts.quick,
        "cpus": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "python": platform.python_version(),
        "aiohttp": aiohttp.__version__,
        "uvloop": version("uvloop"),
        "platform": platform.platform(),
        "loadavg_at_start": load,
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="short windows and a 20 s soak (about 2 minutes)"
    )
    parser.add_argument(
        "--only", help=f"comma-separated subset of: {', '.join(BENCHES)}; or {', '.join(EXTRA)} (opt-in)"
    )
    parser.add_argument("--json", metavar="PATH", help="also write every figure (and each run) as JSON")
    parser.add_argument("--soak-seconds", type=float, help="override the soak duration")
    args = parser.parse_args(argv)
    names = list(BENCHES)
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in names if n not in BENCHES and n not in EXTRA]
        if unknown:
            known = ", ".join([*BENCHES, *EXTRA])
            parser.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {known}")
    opts = Options(quick=args.quick, soak_s=args.soak_seconds)
    meta = _meta(argv, opts)
    print(
        f"gatehouse benchmarks {meta['date']}  {meta['cpus']} CPUs ({meta['cpu_model']}),"
        f" Python {meta['python']}, load average {meta['loadavg_at_start'][0]:.2f}",
        flush=True,
    )
    outcomes: list[Outcome] = []
    started = time.monotonic()
    for name in names:
        print(f"== {name}", file=sys.stderr, flush=True)
        t0 = time.monotonic()
        load_before = os.getloadavg()[0]
        outcome = {**BENCHES, **EXTRA}[name](opts)
        outcome.seconds = time.monotonic() - t0
        load_after = os.getloadavg()[0]
        outcome.data["loadavg_1min"] = [load_before, load_after]
        outcomes.append(outcome)
        print(f"\n{outcome.text()}", flush=True)
        print(
            f"({name}: {outcome.seconds:.0f} s, 1-min load average {load_before:.2f} -> {load_after:.2f})\n",
            flush=True,
        )
    checks = [c for o in outcomes for c in o.checks]
    print(table("Targets", ["check", "measured", "target", "verdict"], [c.row() for c in checks]))
    total = time.monotonic() - started
    print(f"\n{len(names)} benchmark(s) in {total:.0f} s; load average now {os.getloadavg()[0]:.2f}")
    if args.json:
        doc = {
            "meta": {**meta, "seconds": total, "loadavg_at_end": os.getloadavg()},
            "results": {o.name: {"seconds": o.seconds, **o.data} for o in outcomes},
            "checks": [vars(c) for c in checks],
        }
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=2, default=str)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
