"""`python -m gatehouse.simulator [options]`: the `gatehouse simulate` command without the full CLI."""

from gatehouse.cli.simulate import simulate

if __name__ == "__main__":
    simulate(prog_name="python -m gatehouse.simulator")
