"""`make demo`: a recorded agent session, end to end, on this machine alone.

Starts the simulated upstream (`gatehouse simulate`) and Gatehouse (`gatehouse serve`, SQLite store) as
real processes, creates a user, an agent and a token with the CLI, runs a short tool-using agent loop
through the Bridge with the official Anthropic SDK, and prints the session as Gatehouse recorded it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx

WORKDIR = Path(".gatehouse/demo")
UPSTREAM_KEY = "sk-demo-upstream-key"  # what the simulator expects; agents never see it
TOOLS: list[Any] = [
    {
        "name": "read_file",
        "description": "Read a file from the repository",
        "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]},
    },
    {
        "name": "run_tests",
        "description": "Run the test suite",
        "input_schema": {
            "type": "object",
            "properties": {"target": {"type": "string"}},
            "required": ["target"],
        },
    },
]


def main() -> None:
    if WORKDIR.exists():
        shutil.rmtree(WORKDIR)
    WORKDIR.mkdir(parents=True)
    sim_port, gh_port = _free_port(), _free_port()
    config = WORKDIR / "gatehouse.toml"
    config.write_text(
        f"""# Written by `make demo`.
[server]
port = {gh_port}

[store]
url = "sqlite:///{WORKDIR / "gatehouse.db"}"

[bridge]
capture = "last_prompt"

[providers.anthropic]
type = "anthropic"
base_url = "http://127.0.0.1:{sim_port}"
api_key = "env:DEMO_UPSTREAM_KEY"
"""
    )
    env = {**os.environ, "GATEHOUSE_CONFIG": str(config), "DEMO_UPSTREAM_KEY": UPSTREAM_KEY}
    gatehouse = [sys.executable, "-m", "gatehouse"]

    with ExitStack() as stack:
        _step("starting the simulated Anthropic upstream and Gatehouse")
        for args, port, log in (
            (
                ["simulate", "--port", str(sim_port), "--api-key", UPSTREAM_KEY, "--chunk-delay-ms", "5"],
                sim_port,
                "sim",
            ),
            (["serve"], gh_port, "gatehouse"),
        ):
            out = (WORKDIR / f"{log}.log").open("w")
            proc = subprocess.Popen([*gatehouse, *args], env=env, stdout=out, stderr=subprocess.STDOUT)
            stack.callback(_stop, proc)
            _wait_for_port(port, proc, WORKDIR / f"{log}.log")

        _step("creating a user, an agent and a token (gatehouse users/agents/tokens create)")
        _run([*gatehouse, "users", "create", "dana", "--role", "admin"], env)
        _run(
            [
                *gatehouse,
                "agents",
                "create",
                "refactor-bot",
                "--owner",
                "dana",
                "--description",
                "demo agent",
            ],
            env,
        )
        token = _run(
            [
                *gatehouse,
                "tokens",
                "create",
                "--user",
                "dana",
                "--agent",
                "refactor-bot",
                "--ttl",
                "1h",
                "--json",
            ],
            env,
            show=False,
        )
        secret = _json(token)["token"]
        print(f"  token {secret[:12]}… (shown once, stored only as a hash)")

        base_url = f"http://127.0.0.1:{gh_port}/bridge/anthropic"
        _step(f"running an agent through the Bridge: ANTHROPIC_BASE_URL={base_url}")
        session = _agent_loop(base_url, secret)

        _step(f"what Gatehouse recorded: gatehouse sessions show {session}")
        print(_run([*gatehouse, "sessions", "show", session], env, show=False))
        _step("and the audit trail behind it: gatehouse sessions list")
        print(_run([*gatehouse, "sessions", "list"], env, show=False))
        print(f"Files of this demo are in {WORKDIR}/ (config, SQLite store, server logs).")


def _agent_loop(base_url: str, token: str) -> str:
    """A tiny coding agent: for each task, ask, run the tools the model asks for, send back the results,
    until the model stops asking. It names its session as Claude Code does, with a session header."""
    import uuid

    import anthropic

    session = f"demo-{uuid.uuid4().hex[:8]}"
    client = anthropic.Anthropic(
        base_url=base_url, api_key=token, max_retries=0, default_headers={"X-Gatehouse-Session": session}
    )
    tool_output = {
        "read_file": "def add(a, b):\n    return a - b\n",
        "run_tests": "1 failed: test_add (2 != 0)",
    }
    messages: list[dict[str, Any]] = []
    for task in ("Use read_file on /src/calc.py and tell me what it does.", "Now run_tests target=calc."):
        print(f"  user: {task}")
        messages.append({"role": "user", "content": task})
        while True:
            with client.messages.stream(
                model="claude-sonnet-5",
                max_tokens=512,
                tools=TOOLS,
                messages=messages,  # type: ignore[arg-type]
            ) as stream:
                reply = stream.get_final_message()
            messages.append({"role": "assistant", "content": [b.model_dump() for b in reply.content]})
            calls = [b for b in reply.content if b.type == "tool_use"]
            if not calls:
                text = " ".join(b.text for b in reply.content if b.type == "text")
                print(f"  model: {text[:90]}…")
                break
            for call in calls:
                print(f"  model calls {call.name}({call.input}) -> agent runs it")
            messages.append(
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": c.id, "content": tool_output[c.name]}
                        for c in calls
                    ],
                }
            )
    return session


def _step(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def _run(args: list[str], env: dict[str, str], *, show: bool = True) -> str:
    done = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"command failed: {' '.join(args[2:])}\n{done.stdout}{done.stderr}")
    if show:
        print("  " + done.stdout.strip().replace("\n", "\n  "))
    return done.stdout


def _json(text: str) -> dict[str, Any]:
    import orjson

    value = orjson.loads(text)
    assert isinstance(value, dict)
    return value


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for_port(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"a server exited at start:\n{log.read_text()}")
        try:
            httpx.get(f"http://127.0.0.1:{port}/", timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise SystemExit(f"a server did not start in time:\n{log.read_text()}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


if __name__ == "__main__":
    main()
