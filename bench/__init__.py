"""Gatehouse benchmarks: `python -m bench.run [--quick] [--only NAME] [--json out.json]`.

Every figure is a ratio or a difference against a baseline measured in the same run on the same machine
(the direct-to-simulator path, or Gatehouse with auditing off), never an absolute timing threshold: the
machines this runs on are shared and noisy. Each server runs in its own process on uvloop, and the load
generator runs in yet another process, so no two of them share a GIL. See docs/benchmarks.md.
"""
