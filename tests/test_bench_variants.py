"""`python -m bench.variants`: how a variant is named on the command line and what it runs with."""

from __future__ import annotations

import argparse
import os

import pytest

from bench.loadgen import LoadResult
from bench.procs import ROOT
from bench.variants import Variant, added_cpu_rows, cpu_per_call, spread


def test_a_variant_names_its_audit_mode_tree_and_environment() -> None:
    variant = Variant.parse("changed=in-process,tree=/tmp/copy,GH_KNOB=1,OTHER=a=b")
    assert (variant.name, variant.audit, variant.tree) == ("changed", "in-process", "/tmp/copy")
    assert variant.env == {"GH_KNOB": "1", "OTHER": "a=b"}
    env = variant.environment()
    assert env["PYTHONPATH"].split(os.pathsep)[:2] == ["/tmp/copy/src", str(ROOT)]
    assert env["GH_KNOB"] == "1"


def test_without_a_tree_a_variant_runs_this_checkout() -> None:
    variant = Variant.parse("off=off")
    assert (variant.audit, variant.tree, variant.env) == ("off", None, {})
    assert variant.environment()["PYTHONPATH"].split(os.pathsep)[0] == str(ROOT)


@pytest.mark.parametrize("text", ["off", "=off", "x=", "x=on,notakeyvalue"])
def test_a_malformed_variant_is_refused_with_the_expected_form(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        Variant.parse(text)


def _mixed_run(cpu: dict[str, float], completed: int, duration_s: float = 2.0) -> LoadResult:
    return LoadResult(
        concurrency=32,
        duration_s=duration_s,
        completed=completed,
        errors=0,
        rps=completed / duration_s,
        p50_ms=1.0,
        p90_ms=1.0,
        p99_ms=1.0,
        statuses={200: completed},
        cpu=cpu,
    )


def test_a_mixed_run_splits_the_calls_evenly_and_charges_each_variant_its_own_processes() -> None:
    # 300 calls over two variants: 150 each in 2 s; a share of 0.3 of a core is 0.6 s, 4,000 us per call.
    # A server's own share includes its children's (0.45 serving + 0.225 children): not counted twice.
    result = _mixed_run({"off": 0.3, "on": 0.675, "on/12": 0.15, "on/13": 0.075, "loadgen": 0.9}, 300)
    per_call = cpu_per_call(result, {"off": [], "on": ["on/12", "on/13"]})
    assert per_call["off"] == pytest.approx((4000.0, 0.0))
    assert per_call["on"] == pytest.approx((6000.0, 3000.0))


def test_added_cpu_is_paired_round_by_round_against_the_first_variant() -> None:
    # The machine is slower in the second round: every variant spends more there. Each round is
    # compared with the baseline's figure of the same round: 100 and 120 added.
    rows = added_cpu_rows({"off": [(200.0, 0.0), (400.0, 0.0)], "on": [(250.0, 50.0), (480.0, 40.0)]})
    assert rows[0] == ["off", 300.0, 0.0, "0.0 (0.0 to 0.0)"]
    assert rows[1] == ["on", 365.0, 45.0, "110.0 (100.0 to 120.0)"]


def test_spread_is_the_median_and_the_range() -> None:
    assert spread([3.0, -1.25, 10.0]) == "3.0 (-1.2 to 10.0)"
