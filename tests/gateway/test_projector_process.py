"""Without the writer process, the derived tables are kept up to date by a projector process of their own
(`audit.projector_process`, the default): nothing in the serving process catches them up."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import anthropic

from gatehouse.config import AuditSettings
from tests.gateway.conftest import Stack
from tests.stack import StackFactory

MODEL = "claude-sonnet-5"
PROMPTS = ("before", "after", "first", "second")  # in the order _projected lists them


def _ask(stack: Stack, prompt: str) -> None:
    client = anthropic.Anthropic(base_url=stack.anthropic_url, api_key=stack.token, max_retries=0)
    client.messages.create(model=MODEL, max_tokens=50, messages=[{"role": "user", "content": prompt}])


def _projected(stack: Stack, n: int = 2, timeout: float = 10.0) -> list[str]:
    """The prompts the full-text index holds as they stand, read without catching up, once `n` have."""
    deadline = time.monotonic() + timeout
    while True:
        found = [
            p
            for p in PROMPTS
            if stack.db.query("SELECT 1 FROM audit_search WHERE audit_search MATCH ?", (p,))
        ]
        if len(found) >= n or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def _children() -> list[str]:
    """The command lines of this process's children."""
    pids = " ".join(p.read_text() for p in Path(f"/proc/{os.getpid()}/task").glob("*/children")).split()
    return [Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ") for pid in pids]


def test_a_projector_process_builds_the_derived_tables(make_stack: StackFactory) -> None:
    stack = make_stack(audit=AuditSettings(writer_process=False))
    assert any("gatehouse.audit.worker" in c for c in _children())
    _ask(stack, "first")
    _ask(stack, "second")
    assert _projected(stack) == ["first", "second"]


def test_if_the_projector_process_dies_a_thread_takes_over(make_stack: StackFactory) -> None:
    stack = make_stack(audit=AuditSettings(writer_process=False))
    [pid] = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _is_projector(p)]
    _ask(stack, "before")
    assert _projected(stack, 1) == ["before"]
    os.kill(pid, signal.SIGKILL)
    _ask(stack, "after")
    assert _projected(stack) == ["before", "after"]


def _is_projector(proc: Path) -> bool:
    try:
        parent = (proc / "stat").read_text().rsplit(")", 1)[1].split()[1]
        return int(parent) == os.getpid() and b"gatehouse.audit.worker" in (proc / "cmdline").read_bytes()
    except OSError:
        return False


def test_without_it_a_thread_does(make_stack: StackFactory) -> None:
    stack = make_stack(audit=AuditSettings(writer_process=False, projector_process=False))
    assert not any("gatehouse.audit.worker" in c for c in _children())
    _ask(stack, "first")
    _ask(stack, "second")
    assert _projected(stack) == ["first", "second"]
