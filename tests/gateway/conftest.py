from tests.stack import (  # noqa: F401 - fixtures and types shared with the agent CLI tests
    UPSTREAM_KEY,
    Simulator,
    Stack,
    StackFactory,
    make_stack,
    simulator,
    slow_simulator,
    stack,
)
