"""Gatehouse variants side by side, for measuring a change before making it (docs/benchmarks.md).

    python -m bench.variants [--clients 16] [--rounds 4] [--window 6] NAME=AUDIT[,tree=PATH][,VAR=VALUE]...

Each variant is a Gatehouse server (`bench.serve gatehouse --audit AUDIT`: off, on, in-process, process)
run from this checkout or, with `tree=PATH`, from `PATH/src` (a copy of the tree with the change), with
`VAR=VALUE` set in its environment. All of them and one simulator run at once; the closed-loop rounds
against them interleave, their order rotating, so that the machine's drift hits every variant alike.
The first variant is the baseline of the cost column. CPU per call is split into the serving process
and its child processes (the projector or the audit writer process)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

from bench.common import family, messages_body, ratio, table
from bench.harness import interleaved, via_gatehouse
from bench.procs import ROOT, servers


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
        rows.append([v.name, round(rps), cost, runs.p50(v.name, args.clients), total - child, child])
    title = (
        f"Gatehouse variants, {args.clients} clients, median of {args.rounds} interleaved rounds of "
        f"{args.window:g} s (cost against {variants[0].name})"
    )
    columns = ["variant", "req/s", "cost %", "p50 ms", "serving CPU us/call", "children CPU us/call"]
    print(table(title, columns, rows))


if __name__ == "__main__":
    main()
