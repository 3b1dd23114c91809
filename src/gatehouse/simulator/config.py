"""Knobs of the fake upstream. Everything is fixed at start-up so the hot path only reads attributes."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_ANTHROPIC_MODELS: tuple[str, ...] = (
    "claude-opus-4-7",
    "claude-sonnet-4-6",
    "claude-haiku-4-5",
)
DEFAULT_OPENAI_MODELS: tuple[str, ...] = ("gpt-5", "gpt-5-mini", "gpt-4.1", "o4-mini")


@dataclass(frozen=True, slots=True)
class SimulatorConfig:
    """How the simulated model behaves.

    `latency_ms` is paid once per model request before the first byte (errors included), so a benchmark
    can model time-to-first-token; `chunk_delay_ms` is paid between streamed deltas only, so it models
    decode speed without slowing the framing events.
    """

    api_key: str | None = None
    latency_ms: float = 0.0
    chunk_delay_ms: float = 0.0
    words_per_chunk: int = 3
    output_words: int = 24
    thinking_words: int = 16  # length of thinking blocks / reasoning summaries, counted as output tokens
    seed: int = 0
    anthropic_models: tuple[str, ...] = DEFAULT_ANTHROPIC_MODELS  # what GET /v1/models lists
    openai_models: tuple[str, ...] = DEFAULT_OPENAI_MODELS

    def __post_init__(self) -> None:
        if self.words_per_chunk < 1:
            raise ValueError("words_per_chunk must be >= 1")
        if self.output_words < 0 or self.thinking_words < 0:
            raise ValueError("output_words and thinking_words must be >= 0")
        if self.latency_ms < 0 or self.chunk_delay_ms < 0:
            raise ValueError("delays must be >= 0")
