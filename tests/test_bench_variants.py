"""`python -m bench.variants`: how a variant is named on the command line and what it runs with."""

from __future__ import annotations

import argparse
import os

import pytest

from bench.procs import ROOT
from bench.variants import Variant


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
