"""What every benchmark shares: request bodies, headers, statistics, /proc readings, tables, uvloop."""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
from collections.abc import Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson

T = TypeVar("T")

UPSTREAM_KEY = "sk-bench-upstream-0123456789abcdef"
MODEL = "claude-sonnet-4-6"
ANTHROPIC_VERSION = "2023-06-01"
MESSAGES_PATH = "/v1/messages"

_TEXT = (
    "the quick brown fox jumps over the lazy dog while the build runs tests and the agent reads"
    " src/gatehouse/bridge/proxy.py to find where the request is recorded before it is forwarded"
)
_WORDS = _TEXT.split(" ")


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine on a fresh uvloop event loop (the servers and the load generator all use uvloop)."""
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


# -- request bodies ---------------------------------------------------------------------------------


def filler(size: int, seed: int = 0) -> str:
    """Plain ASCII prose of exactly `size` characters (no JSON escaping, so bytes == characters)."""
    out: list[str] = []
    total = 0
    i = seed
    while total < size:
        word = _WORDS[i % len(_WORDS)]
        out.append(word)
        total += len(word) + 1
        i += 7
    return " ".join(out)[:size]


def messages_body(
    *,
    size: int = 0,
    stream: bool = False,
    prompt: str = "Write a haiku about benchmarks.",
    tools: list[dict[str, Any]] | None = None,
    tool_result_for: str | None = None,
    max_tokens: int = 256,
) -> bytes:
    """An Anthropic Messages request. With `size`, earlier turns of a conversation (alternating user and
    assistant text, 8 KB each at most) pad the body to about `size` bytes, like an agent's growing context."""
    messages: list[dict[str, Any]] = []
    if tool_result_for is not None:
        messages.append({"role": "user", "content": "Read the configuration file."})
        messages.append(
            {
                "role": "assistant",
                "content": [
                    {
                        "type": "tool_use",
                        "id": tool_result_for,
                        "name": "read_file",
                        "input": {"path": "/etc/x"},
                    }
                ],
            }
        )
        messages.append(
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": tool_result_for, "content": filler(2000, 3)},
                    {"type": "text", "text": prompt},
                ],
            }
        )
    else:
        messages.append({"role": "user", "content": prompt})
    doc: dict[str, Any] = {"model": MODEL, "max_tokens": max_tokens, "messages": messages}
    if stream:
        doc["stream"] = True
    if tools:
        doc["tools"] = tools
    base = len(orjson.dumps(doc))
    missing = size - base
    history: list[dict[str, Any]] = []
    turn = 0
    while missing > 64:
        chunk = min(8192, missing - 40)  # ~40 bytes of JSON framing per message
        history.append({"role": "user" if turn % 2 == 0 else "assistant", "content": filler(chunk, turn)})
        missing -= chunk + 40
        turn += 1
    if history:
        if history[-1]["role"] == "user":  # keep the alternation: the last history turn is the assistant's
            history.append({"role": "assistant", "content": "ok"})
        doc["messages"] = history + messages
    return orjson.dumps(doc)


READ_FILE_TOOL: dict[str, Any] = {
    "name": "read_file",
    "description": "Read a file from the workspace.",
    "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]},
}


def headers(api_key: str, *, stream: bool = False) -> dict[str, str]:
    return {
        "x-api-key": api_key,
        "anthropic-version": ANTHROPIC_VERSION,
        "content-type": "application/json",
        "accept": "text/event-stream" if stream else "application/json",
        "user-agent": "gatehouse-bench/1.0",
    }


# -- statistics --------------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile, q in [0, 100]; NaN for no values."""
    if not values:
        return float("nan")
    data = sorted(values)
    if len(data) == 1:
        return data[0]
    pos = (len(data) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def median(values: Iterable[float]) -> float:
    data = list(values)
    return statistics.median(data) if data else float("nan")


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


# -- /proc ----------------------------------------------------------------------------------------------

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def family(pid: int) -> list[int]:
    """A process and its live descendants (Gatehouse's audit writer process counts as Gatehouse)."""
    pids = [pid]
    for parent in pids:
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{parent}/task"):
                with open(f"/proc/{parent}/task/{task}/children") as f:
                    pids += [int(child) for child in f.read().split()]
    return pids


def rss_kib(pid: int) -> int:
    """Resident set size of a process and its descendants, from /proc/<pid>/status (VmRSS, KiB)."""
    total = 0
    for member in family(pid):
        with contextlib.suppress(OSError), open(f"/proc/{member}/status") as f:
            total += next((int(line.split()[1]) for line in f if line.startswith("VmRSS:")), 0)
    if not total:
        raise RuntimeError(f"no VmRSS for pid {pid}")
    return total


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its descendants (all threads), from /proc/<pid>/stat."""
    total = 0
    for member in family(pid):
        with contextlib.suppress(OSError), open(f"/proc/{member}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
            # After the command name: state is field 3, utime 14, stime 15 (1-based, man proc(5)).
            total += int(fields[11]) + int(fields[12])
    return total / _CLK_TCK


def chain_links(tail: Sequence[Mapping[str, Any]]) -> bool:
    """Rows of `events` in seq order: each one's hash recomputes and names its predecessor's."""
    from gatehouse.audit.chain import row_hash

    prev = None
    for row in tail:
        if prev is not None and row["prev_hash"] != prev:
            return False
        if row_hash(row) != row["hash"]:
            return False
        prev = row["hash"]
    return True


# -- output ----------------------------------------------------------------------------------------------


def fmt(value: Any, digits: int = 2) -> str:
    if isinstance(value, float):
        if value != value:  # NaN
            return "-"
        return f"{value:,.{digits}f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[fmt(c) for c in row] for row in rows]
    widths = [
        max(len(str(col)), *(len(r[i]) for r in cells)) if cells else len(col)
        for i, col in enumerate(columns)
    ]
    sep = "  "
    lines = [title, sep.join(str(c).ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines.append(sep.join("-" * w for w in widths))
    for r in cells:
        lines.append(
            sep.join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        )
    return "\n".join(lines)


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


# -- results ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    quick: bool = False
    soak_s: float | None = None  # overrides the soak duration (300 s, or 20 s with --quick)
    profile_dir: str | None = None  # where benches that support it write cProfile stats of Gatehouse


@dataclass
class Check:
    """One of the issue's targets: what was measured against what was asked."""

    name: str
    value: float
    target: str  # e.g. ">= 0.30x"
    met: bool
    unit: str = ""

    def row(self) -> list[Any]:
        return [self.name, f"{fmt(self.value)}{self.unit}", self.target, verdict(self.met)]


@dataclass
class Outcome:
    name: str
    tables: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)
    seconds: float = 0.0

    def text(self) -> str:
        return "\n\n".join(self.tables)
