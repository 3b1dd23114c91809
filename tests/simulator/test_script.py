"""The simulator's deterministic script and fault parsing, without a server."""

from __future__ import annotations

import orjson
import pytest

from gatehouse.simulator.config import SimulatorConfig
from gatehouse.simulator.faults import Fault, FaultError, FaultQueue, from_admin_body, from_headers
from gatehouse.simulator.script import (
    Lorem,
    ToolSpec,
    Turn,
    chunk_arguments,
    chunk_words,
    make_plan,
    pick_tool,
    synthesize_arguments,
)

CONFIG = SimulatorConfig(output_words=24, thinking_words=16)
LOREM = Lorem(0)

READ_SCHEMA = {
    "type": "object",
    "properties": {
        "file_path": {"type": "string"},
        "limit": {"type": "integer"},
        "ratio": {"type": "number"},
        "recursive": {"type": "boolean"},
        "mode": {"type": "string", "enum": ["fast", "slow"]},
        "tags": {"type": "array", "items": {"type": "string"}},
        "options": {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]},
        "optional": {"type": "string"},
    },
    "required": ["file_path", "limit", "ratio", "recursive", "mode", "tags", "options"],
}


def test_arguments_follow_the_required_properties_of_the_schema() -> None:
    args = synthesize_arguments(READ_SCHEMA, "please read /tmp/notes.txt.")
    assert args == {
        "file_path": "/tmp/notes.txt",
        "limit": 1,
        "ratio": 1,
        "recursive": True,
        "mode": "fast",
        "tags": [],
        "options": {"name": "example"},
    }


def test_key_value_in_the_prompt_wins_and_is_coerced() -> None:
    prompt = 'copy /tmp/a file_path=/srv/b.txt limit=7 ratio=0.5 recursive=false mode=slow name="x y"'
    args = synthesize_arguments(READ_SCHEMA, prompt)
    assert args["file_path"] == "/srv/b.txt"
    assert args["limit"] == 7
    assert args["ratio"] == 0.5
    assert args["recursive"] is False
    assert args["mode"] == "slow"
    assert args["options"] == {"name": "x y"}


def test_path_rule_needs_a_path_like_property_name_and_an_absolute_path() -> None:
    schema = {
        "properties": {"command": {"type": "string"}, "path": {"type": "string"}},
        "required": ["command", "path"],
    }
    assert synthesize_arguments(schema, "see http://host/x and ./rel") == {
        "command": "example",
        "path": "example",
    }
    assert synthesize_arguments(schema, "run (/usr/bin/env) now") == {
        "command": "example",
        "path": "/usr/bin/env",
    }


@pytest.mark.parametrize("schema", [None, {}, {"required": "x"}, {"type": "object"}])
def test_degenerate_schemas_give_empty_arguments(schema: object) -> None:
    assert synthesize_arguments(schema, "x") == {}  # type: ignore[arg-type]


def test_longest_mentioned_tool_name_wins_case_insensitively() -> None:
    tools = [ToolSpec("read", None), ToolSpec("Read_File", None), ToolSpec("write", None)]
    assert pick_tool("Please READ_FILE now", tools) is tools[1]
    assert pick_tool("please read it", tools) is tools[0]
    assert pick_tool("nothing relevant", tools) is None


def test_chunks_concatenate_to_the_full_text() -> None:
    words = LOREM.take(10, 3)
    chunks = chunk_words(words, 3)
    assert len(chunks) == 4
    assert "".join(chunks) == " ".join(words)
    args = orjson.dumps({"path": "/a/very/long/path/that/spans/chunks", "n": 1}).decode()
    assert "".join(chunk_arguments(args)) == args


def test_lorem_is_deterministic_and_wraps() -> None:
    assert Lorem(5).take(2000, 900) == Lorem(5).take(2000, 900)
    assert len(LOREM.take(2000, 1000)) == 2000
    assert Lorem(1).take(30, 0) != Lorem(2).take(30, 0)


def test_plan_text_is_capped_by_max_output_and_thinking_counts_first() -> None:
    plan = make_plan(Turn(prompt_tokens=10, user_text="hi", tool_result=None, max_output=20), LOREM, CONFIG)
    assert len(plan.text) == 20 and plan.truncated
    plan = make_plan(
        Turn(prompt_tokens=10, user_text="hi", tool_result=None, max_output=20, thinking_budget=1000),
        LOREM,
        CONFIG,
    )
    assert len(plan.thinking) == 16 and len(plan.text) == 4 and plan.truncated
    assert plan.output_tokens == 20
    plan = make_plan(Turn(prompt_tokens=10, user_text="hi", tool_result=None), LOREM, CONFIG)
    assert len(plan.text) == 24 and not plan.truncated and plan.output_tokens == 24


def test_plan_calls_a_tool_only_for_a_user_text_turn_naming_it() -> None:
    tools = [ToolSpec("read_file", READ_SCHEMA)]
    plan = make_plan(Turn(10, "use read_file on /tmp/x", None, tools), LOREM, CONFIG)
    assert plan.tool is not None and plan.tool.name == "read_file"
    assert orjson.loads(plan.tool.arguments)["file_path"] == "/tmp/x"
    assert plan.output_tokens == plan.tool.tokens
    assert make_plan(Turn(10, "use read_file", None, tools, allow_tools=False), LOREM, CONFIG).tool is None
    reply = make_plan(Turn(10, None, "read_file says: hello world", tools), LOREM, CONFIG)
    assert reply.tool is None
    assert " ".join(reply.text) == "Tool result received: read_file says: hello world"


def test_fault_specifications() -> None:
    fault = from_headers({"x-sim-fault": "Disconnect", "x-sim-fault-after-events": "2"})
    assert fault == Fault("disconnect", after_events=2)
    assert from_headers({}) is None
    with pytest.raises(FaultError):
        from_headers({"x-sim-fault": "teapot"})
    fault, count = from_admin_body({"fault": "429", "count": 3, "retry_after": 0, "path": "/v1/messages"})
    assert (fault.kind, fault.retry_after, fault.path, count) == ("429", 0, "/v1/messages", 3)
    bad: object
    for bad in (
        {"fault": "500", "count": -1},
        {"fault": "500", "path": 3},
        [],
        {"fault": "500", "count": "x"},
    ):
        with pytest.raises(FaultError):
            from_admin_body(bad)


def test_fault_queue_consumes_in_order_and_honours_paths() -> None:
    queue = FaultQueue()
    queue.add(Fault("500", path="/v1/responses"), 1)
    queue.add(Fault("429"), 2)
    assert queue.take("/v1/messages") == Fault("429")
    assert queue.take("/v1/responses") == Fault("500", path="/v1/responses")
    assert len(queue) == 1
    queue.clear()
    assert queue.take("/v1/messages") is None
