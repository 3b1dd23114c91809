"""A fake Anthropic/OpenAI upstream for the demo, the tests and the benchmarks (see docs/simulator.md)."""

from gatehouse.simulator.app import (
    RunningSimulator,
    SimulatorThread,
    create_app,
    run_in_thread,
    running,
    serve,
)
from gatehouse.simulator.config import SimulatorConfig

__all__ = [
    "RunningSimulator",
    "SimulatorConfig",
    "SimulatorThread",
    "create_app",
    "run_in_thread",
    "running",
    "serve",
]
