from tests.stack import make_stack, simulator, slow_simulator, stack  # noqa: F401 - shared fixtures
