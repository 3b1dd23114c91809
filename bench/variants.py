"""Gatehouse variants side by side, for measuring a change before making it (docs/benchmarks.md).

    python -m bench.variants [--mixed] [--clients 16] [--rounds 4] [--window 6] \
        NAME=AUDIT[,tree=PATH][,VAR=VALUE]...

Each variant is a Gatehouse server (`bench.serve gatehouse --audit AUDIT`: off, on, journal, in-process,
process) run from this checkout or, with `tree=PATH`, from `PATH/src` (a copy of the tree with the
change), with `VAR=VALUE` set in its environment. All of them and one simulator run at once; the
closed-loop rounds against them interleave, their order rotating, so that the machine's drift hits every
variant alike.
The first variant is the baseline of the cost columns: the cost of the medians, and the median and range
of each round's own cost against the baseline's run of the same round (steadier when the machine drifts
within a run). CPU per call is split into the serving process and its child processes (the projector or
the audit writer process). `--mixed` loads them all at once instead and compares CPU per call (`mixed`)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from statistics import median
from typing import Any

from bench.common import family, messages_body, ratio, table
from bench.harness import interleaved, via_gatehouse
from bench.loadgen import LoadResult, LoadSpec, Request, closed_loop
from bench.procs import ROOT, in_process, servers


@dataclass
class Variant:
    name: str
    audit: str
    tree: str | None = None
    env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> Variant:
        name, _, spec = text.partition("=")
        audit, *options = spec.split(",")
        if not name or not audit:
            raise argparse.ArgumentTypeError(f"expected NAME=AUDIT[,tree=PATH][,VAR=VALUE]..., got {text!r}")
        variant = cls(name, audit)
        for option in options:
            key, sep, value = option.partition("=")
            if not sep:
                raise argparse.ArgumentTypeError(f"{text!r}: {option!r} is not KEY=VALUE")
            if key == "tree":
                variant.tree = value
            else:
                variant.env[key] = value
        return variant

    def environment(self) -> dict[str, str]:
        paths = [f"{self.tree}/src"] if self.tree else []
        paths += [str(ROOT), os.environ.get("PYTHONPATH", "")]
        return {**os.environ, **self.env, "PYTHONPATH": os.pathsep.join(filter(None, paths))}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.variants", description=__doc__.split("\n\n")[0])
    parser.add_argument("variants", nargs="+", type=Variant.parse, metavar="NAME=AUDIT[,...]")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--window", type=float, default=6.0, help="measured seconds per run")
    parser.add_argument(
        "--mixed",
        action="store_true",
        help="load every variant at once, each client cycling through them: CPU per call, not req/s",
    )
    args = parser.parse_args(argv)
    variants: list[Variant] = args.variants
    if len({v.name for v in variants}) != len(variants):
        parser.error("variant names must differ")

    with servers() as start:
        sim = start("simulator")
        targets, watch, children = {}, {}, {}
        for v in variants:
            server = start("gatehouse", "--upstream", sim.url, "--audit", v.audit, env=v.environment())
            targets[v.name] = via_gatehouse(server, messages_body())
            watch[v.name] = server.pid
            children[v.name] = [f"{v.name}/{pid}" for pid in family(server.pid)[1:]]
            watch.update({key: int(key.rsplit("/", 1)[1]) for key in children[v.name]})
        if args.mixed:
            print(mixed(variants, targets, watch, children, args))
            return
        runs = interleaved(
            targets, [args.clients], rounds=args.rounds, window_s=args.window, warmup_s=1.0, watch=watch
        )

    base = runs.rps(variants[0].name, args.clients)
    rows = []
    for v in variants:
        rps = runs.rps(v.name, args.clients)
        total = runs.cpu_us_per_request(v.name, args.clients, v.name)
        child = sum((runs.cpu_us_per_request(v.name, args.clients, key) for key in children[v.name]), 0.0)
        cost = (1 - ratio(rps, base)) * 100
        mine, theirs = runs.results[(v.name, args.clients)], runs.results[(variants[0].name, args.clients)]
        paired = spread([(1 - ratio(r.rps, b.rps)) * 100 for r, b in zip(mine, theirs, strict=True)])
        rows.append([v.name, round(rps), cost, paired, runs.p50(v.name, args.clients), total - child, child])
    title = (
        f"Gatehouse variants, {args.clients} clients, median of {args.rounds} interleaved rounds of "
        f"{args.window:g} s (cost against {variants[0].name})"
    )
    columns = [
        "variant",
        "req/s",
        "cost %",
        "per round, median (range)",
        "p50 ms",
        "serving CPU us/call",
        "children CPU us/call",
    ]
    print(table(title, columns, rows))


def mixed(
    variants: list[Variant],
    targets: dict[str, Request],
    watch: dict[str, int],
    children: dict[str, list[str]],
    args: argparse.Namespace,
) -> str:
    """Every variant under load at the same moments: each of `clients` x variants workers sends its
    requests to the variants in turn, so all of them see the same machine, however its speed drifts,
    and serve the same number of calls. What differs is the CPU each spends per call: the work a
    change adds or saves, measured without the drift between runs that throughput comparisons suffer
    from (throughput itself is shared, so it says nothing here); and each one's median latency under
    the same load, where waiting longer for a commit shows."""
    per_round: dict[str, list[tuple[float, float]]] = {v.name: [] for v in variants}
    p50s: dict[str, list[float]] = {v.name: [] for v in variants}
    names = list(targets)
    for rnd in range(args.rounds):
        shift = rnd % len(names)  # which variant each worker starts with rotates too
        order = names[shift:] + names[:shift]
        clients = args.clients * len(names)
        spec = LoadSpec([targets[n] for n in order], clients, args.window, warmup_s=1.0, watch_pids=watch)
        result = in_process(closed_loop, spec)
        note = f" errors={result.errors} ({result.first_error})" if result.errors else ""
        print(f"    round {rnd + 1}/{args.rounds}: {result.rps:8.0f} req/s in all{note}", file=sys.stderr)
        for name, cpu in cpu_per_call(result, children).items():
            per_round[name].append(cpu)
            p50s[name].append(result.p50_ms_by_url.get(targets[name].url, float("nan")))
    title = (
        f"Gatehouse variants under load together, {args.clients} clients each, median of {args.rounds}"
        f" rounds of {args.window:g} s (CPU against {variants[0].name})"
    )
    columns = [
        "variant",
        "serving CPU us/call",
        "children CPU us/call",
        "added us/call, median (range)",
        "p50 ms",
    ]
    rows = added_cpu_rows(per_round)
    for row in rows:
        row.append(median(p50s[row[0]]))
    return table(title, columns, rows)


def cpu_per_call(result: LoadResult, children: dict[str, list[str]]) -> dict[str, tuple[float, float]]:
    """From one mixed run, each variant's CPU per call in µs, (serving process, its children): every
    variant served an equal share of the calls (`children` maps a variant to its children's keys in
    `result.cpu`)."""
    calls = result.completed / len(children)
    per_call = result.duration_s / calls * 1e6 if calls else float("nan")
    shares = {
        name: (result.cpu[name], sum(result.cpu[key] for key in keys)) for name, keys in children.items()
    }
    # A watched process's CPU includes its descendants' (`cpu_seconds`): the serving share is the rest.
    return {name: ((whole - kids) * per_call, kids * per_call) for name, (whole, kids) in shares.items()}


def added_cpu_rows(per_round: dict[str, list[tuple[float, float]]]) -> list[list[Any]]:
    """Per variant: median serving and children CPU per call, and what it added over the first
    variant's total, round by round (each round's variants ran at the same moments)."""
    base = [s + c for s, c in next(iter(per_round.values()))]
    return [
        [
            name,
            median(s for s, _ in rounds),
            median(c for _, c in rounds),
            spread([s + c - b for (s, c), b in zip(rounds, base, strict=True)]),
        ]
        for name, rounds in per_round.items()
    ]


def spread(values: Sequence[float]) -> str:
    """`median (lowest to highest)`, one decimal."""
    return f"{median(values):.1f} ({min(values):.1f} to {max(values):.1f})"


if __name__ == "__main__":
    main()
