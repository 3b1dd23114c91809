"""What one projector pass costs per event, in CPU time or, under valgrind, in instructions.

    python -m bench.projector [--events 20000] [--repeat 5] [--valgrind] [TREE ...]

Fills a store's journal with the audit bench's `llm.request` / `llm.response` pairs (one call each, as
the Bridge records them), then runs, in a fresh process per run, the server's projector over it: the
journal chained into the log, then every derived table (`gatehouse.server.derived_tables`). Each TREE (a
checkout or a copy of one: `TREE/src` is imported; default this checkout) runs on a copy of the same
store, the trees interleaved. CPU time is the minimum of `--repeat` runs of the pass alone. With
`--valgrind` each run is counted by callgrind instead, once with the pass and once without (the
imports and the store's opening), and the difference is the pass's instructions: on a shared machine
whose speed swings by a third within minutes, the one measure that repeats to the instruction.
Instructions are not time (a cache miss costs more than an add; valgrind's CPU has no SHA extensions,
so hashing counts far more than it costs), so compare trees with it, not machines."""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.procs import ROOT

_CALLGRIND = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null"]


def fill(directory: Path, events: int) -> None:
    """A new store in `directory` whose journal holds `events` events, none chained yet."""
    from bench.audit import _pair
    from gatehouse.audit.journal import Journal
    from gatehouse.store.db import Database
    from gatehouse.store.migrations import migrate

    db = Database(f"sqlite:///{directory / 'audit.db'}")
    migrate(db)
    journal = Journal.open(db)
    assert journal is not None
    for i in range(0, events, 64):  # records of 64 events, about what a loop flush writes under load
        journal.write([e for k in range(i, min(i + 64, events), 2) for e in _pair(k)])
    journal.close()
    db.close()


def one_pass(store: Path, run: bool) -> None:
    """In the child: copy the store, open it, and (if `run`) project everything; print events and CPU s."""
    from gatehouse import gctuning
    from gatehouse.server import derived_tables
    from gatehouse.store.db import Database

    gctuning.tune_gc()
    work = Path(tempfile.mkdtemp(prefix="gatehouse-bench-projector-"))
    try:
        shutil.copytree(store, work / "store")
        db = Database(f"sqlite:///{work / 'store' / 'audit.db'}")
        projector = derived_tables("UTC")
        db.query("SELECT 1")
        t0 = time.process_time()
        done = projector.catch_up(db) if run else 0
        print(done, time.process_time() - t0)
        db.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _child(tree: Path, store: Path, run: bool, valgrind: bool) -> tuple[int, float]:
    """(events projected, CPU seconds or instructions) of one run in a fresh process."""
    env = {**os.environ, "PYTHONPATH": f"{tree / 'src'}{os.pathsep}{ROOT}"}
    command = [sys.executable, "-m", "bench.projector", "--child", str(store), "1" if run else "0"]
    out = subprocess.run(
        [*_CALLGRIND, *command] if valgrind else command, env=env, capture_output=True, text=True, check=True
    )
    events, cpu = out.stdout.split()
    if not valgrind:
        return int(events), float(cpu)
    found = re.search(r"I\s+refs:\s+([\d,]+)", out.stderr)
    if found is None:
        raise RuntimeError(f"no instruction count from valgrind:\n{out.stderr[-2000:]}")
    return int(events), float(found.group(1).replace(",", ""))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.projector", description=__doc__.split("\n")[0])
    parser.add_argument("trees", nargs="*", type=Path, default=[ROOT])
    parser.add_argument("--events", type=int, default=20_000, help="events to journal (two per call)")
    parser.add_argument("--repeat", type=int, default=5, help="runs per tree (CPU time: the minimum)")
    parser.add_argument("--valgrind", action="store_true", help="count instructions (callgrind), once")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        one_pass(Path(args.child[0]), args.child[1] == "1")
        return
    if args.valgrind and shutil.which("valgrind") is None:
        parser.error("--valgrind needs valgrind (Debian: apt-get install valgrind)")
    with tempfile.TemporaryDirectory(prefix="gatehouse-bench-projector-") as tmp:
        store = Path(tmp)
        print(f"filling a journal with {args.events:,} events ...", file=sys.stderr)
        fill(store, args.events)
        results: dict[Path, list[float]] = {tree: [] for tree in args.trees}
        for r in range(1 if args.valgrind else args.repeat):
            for tree in args.trees:
                print(f"  run {r + 1}: {tree}", file=sys.stderr)
                events, cost = _child(tree, store, True, args.valgrind)
                if args.valgrind:
                    cost -= _child(tree, store, False, True)[1]
                results[tree].append(cost / events)
        unit = "instructions per event" if args.valgrind else "CPU µs per event (minimum; all runs)"
        print(f"projector pass over {args.events:,} events: {unit}")
        for tree, costs in results.items():
            if args.valgrind:
                print(f"  {tree}: {costs[0]:,.0f}")
            else:
                runs = ", ".join(f"{c * 1e6:.1f}" for c in costs)
                print(f"  {tree}: {min(costs) * 1e6:.1f} ({runs})")


if __name__ == "__main__":
    main()
