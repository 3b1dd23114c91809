"""1. Bridge throughput: small non-streaming /v1/messages at 16 and 64 concurrent clients, direct to the
simulator vs through a bare aiohttp pass-through proxy vs through Gatehouse (SQLite, auth on, durable
recording on, capture=last_prompt). Target: Gatehouse >= 0.3x direct."""

from __future__ import annotations

from bench.common import Check, Options, Outcome, messages_body, ratio, table
from bench.harness import direct, interleaved, via_gatehouse, via_passthrough
from bench.procs import servers

TARGET_RATIO = 0.3
CONCURRENCY = [16, 64]


def run(opts: Options) -> Outcome:
    out = Outcome("throughput")
    body = messages_body()
    with servers() as start:
        sim = start("simulator")
        proxy = start("passthrough", "--upstream", sim.url)
        gh = start("gatehouse", "--upstream", sim.url)
        targets = {
            "direct": direct(sim, body),
            "passthrough": via_passthrough(proxy, body),
            "gatehouse": via_gatehouse(gh, body),
        }
        runs = interleaved(
            targets,
            CONCURRENCY,
            rounds=1 if opts.quick else 3,
            window_s=3.0 if opts.quick else 5.0,
            warmup_s=0.5 if opts.quick else 1.0,
            watch={"simulator": sim.pid, "passthrough": proxy.pid, "gatehouse": gh.pid},
        )
    rows = []
    for c in CONCURRENCY:
        d, p, g = (runs.rps(t, c) for t in targets)
        rows.append(
            [
                c,
                round(d),
                round(p),
                ratio(p, d),
                round(g),
                ratio(g, d),
                runs.p50("gatehouse", c),
                runs.p99("gatehouse", c),
                runs.cpu("gatehouse", c, "gatehouse"),
                runs.cpu_us_per_request("gatehouse", c, "gatehouse"),
                runs.cpu_us_per_request("passthrough", c, "passthrough"),
            ]
        )
        out.checks.append(
            Check(
                f"throughput ratio at {c} clients",
                ratio(g, d),
                f">= {TARGET_RATIO}x",
                ratio(g, d) >= TARGET_RATIO,
                "x",
            )
        )
        out.data[f"c{c}"] = {
            "direct_rps": d,
            "passthrough_rps": p,
            "gatehouse_rps": g,
            "passthrough_ratio": ratio(p, d),
            "gatehouse_ratio": ratio(g, d),
            "gatehouse_p50_ms": runs.p50("gatehouse", c),
            "gatehouse_p99_ms": runs.p99("gatehouse", c),
            "direct_p50_ms": runs.p50("direct", c),
            "gatehouse_cpu_cores": runs.cpu("gatehouse", c, "gatehouse"),
            "gatehouse_cpu_us_per_request": runs.cpu_us_per_request("gatehouse", c, "gatehouse"),
            "passthrough_cpu_us_per_request": runs.cpu_us_per_request("passthrough", c, "passthrough"),
            "simulator_cpu_us_per_request": runs.cpu_us_per_request("direct", c, "simulator"),
        }
    out.data["errors"] = {t: runs.errors(t) for t in targets}
    out.data["runs"] = runs.as_json()
    out.tables.append(
        table(
            "Throughput, small non-streaming /v1/messages (median of rounds)",
            [
                "clients",
                "direct req/s",
                "passthrough req/s",
                "ratio",
                "gatehouse req/s",
                "ratio",
                "gh p50 ms",
                "gh p99 ms",
                "gh CPU cores",
                "gh CPU us/req",
                "pt CPU us/req",
            ],
            rows,
        )
    )
    return out
