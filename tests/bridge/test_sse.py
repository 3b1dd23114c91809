"""The SSE parser: spec-conformant line handling, independent of how the byte stream is chunked."""

from __future__ import annotations

import random
import time

import pytest
from anthropic._streaming import SSEDecoder

from gatehouse.bridge.sse import SSEEvent, SSEParser

# Mixed line endings on purpose: real upstreams use LF, proxies rewrite to CRLF, the spec allows CR.
SAMPLE = (
    b"event: message_start\r\n"
    b'data: {"type":"message_start","message":{"id":"msg_1"}}\r\n'
    b"\r\n"
    b": keep-alive comment\n"
    b"\n"
    b"event: ping\n"
    b'data: {"type": "ping"}\n'
    b"\n"
    b"event: content_block_delta\r"
    b'data: {"type":"content_block_delta","delta":{"text":"h\xc3\xa9llo \xe2\x82\xac"}}\r'
    b"\r"
    b"data: line one\n"
    b"data:line two\n"
    b"data\n"
    b"id: 7\n"
    b"retry: 1000\n"
    b"\n"
    b"data: [DONE]\n\n"
)
EXPECTED = [
    SSEEvent("message_start", b'{"type":"message_start","message":{"id":"msg_1"}}'),
    SSEEvent("ping", b'{"type": "ping"}'),
    SSEEvent(
        "content_block_delta", b'{"type":"content_block_delta","delta":{"text":"h\xc3\xa9llo \xe2\x82\xac"}}'
    ),
    SSEEvent(None, b"line one\nline two\n"),
    SSEEvent(None, b"[DONE]"),
]


def parse_all(chunks: list[bytes]) -> list[SSEEvent]:
    parser = SSEParser()
    events: list[SSEEvent] = []
    for chunk in chunks:
        events.extend(parser.feed(chunk))
    events.extend(parser.flush())
    return events


def test_sample_in_one_chunk() -> None:
    assert parse_all([SAMPLE]) == EXPECTED


def test_every_two_way_split_gives_the_same_events() -> None:
    for cut in range(len(SAMPLE) + 1):
        assert parse_all([SAMPLE[:cut], SAMPLE[cut:]]) == EXPECTED, cut


def test_every_three_way_split_gives_the_same_events() -> None:
    n = len(SAMPLE)
    for a in range(0, n + 1, 3):
        for b in range(a, n + 1, 5):
            assert parse_all([SAMPLE[:a], SAMPLE[a:b], SAMPLE[b:]]) == EXPECTED, (a, b)


def test_byte_by_byte_gives_the_same_events() -> None:
    assert parse_all([SAMPLE[i : i + 1] for i in range(len(SAMPLE))]) == EXPECTED


def test_random_chunkings_give_the_same_events() -> None:
    rng = random.Random(1234)
    for _ in range(300):
        cuts = sorted(rng.sample(range(1, len(SAMPLE)), rng.randint(1, 25)))
        chunks = [SAMPLE[i:j] for i, j in zip([0, *cuts], [*cuts, len(SAMPLE)], strict=True)]
        assert parse_all(chunks) == EXPECTED


def test_agrees_with_the_anthropic_sdk_decoder() -> None:
    """The SDK's own decoder (a port of httpx-sse) reads the same events from the sample."""
    decoded = [(e.event, e.data.encode()) for e in SSEDecoder().iter_bytes(iter([SAMPLE]))]
    assert decoded == [(e.event, e.data) for e in EXPECTED]


def test_crlf_split_between_chunks_is_one_line_end() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: a\r") == []
    assert parser.feed(b"\n") == []  # the LF completing the CRLF, not a blank line
    assert parser.feed(b"\r\n") == [SSEEvent(None, b"a")]


def test_cr_then_blank_line_in_next_chunk() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: a\r") == []
    assert parser.feed(b"\r") == [SSEEvent(None, b"a")]


def test_events_without_data_are_not_dispatched() -> None:
    assert parse_all([b"event: lonely\n\n: comment\n\nid: 3\n\n"]) == []


def test_empty_data_line_is_dispatched_as_empty_data() -> None:
    assert parse_all([b"event: e\ndata:\n\n"]) == [SSEEvent("e", b"")]
    assert parse_all([b"data\n\n"]) == [SSEEvent(None, b"")]


def test_only_one_leading_space_is_stripped() -> None:
    assert parse_all([b"data:  two spaces\nevent:  x\n\n"]) == [SSEEvent(" x", b" two spaces")]


def test_event_name_does_not_leak_into_the_next_event() -> None:
    assert parse_all([b"event: a\ndata: 1\n\ndata: 2\n\n"]) == [SSEEvent("a", b"1"), SSEEvent(None, b"2")]


def test_empty_event_name_is_none() -> None:
    assert parse_all([b"event:\ndata: 1\n\n"]) == [SSEEvent(None, b"1")]


def test_colon_in_value_is_kept() -> None:
    assert parse_all([b'data: {"a": "b:c"}\n\n']) == [SSEEvent(None, b'{"a": "b:c"}')]


def test_leading_bom_is_dropped_even_when_split() -> None:
    stream = b"\xef\xbb\xbfdata: x\n\n"
    assert parse_all([stream]) == [SSEEvent(None, b"x")]
    assert parse_all([stream[:1], stream[1:2], stream[2:]]) == [SSEEvent(None, b"x")]


def test_flush_dispatches_an_event_missing_its_blank_line() -> None:
    parser = SSEParser()
    assert parser.feed(b'event: message_delta\ndata: {"a":1}\n') == []
    assert parser.flush() == [SSEEvent("message_delta", b'{"a":1}')]
    assert parser.flush() == []


def test_flush_dispatches_a_truncated_last_line() -> None:
    parser = SSEParser()
    assert parser.feed(b'data: {"ok":1}\n\ndata: {"trunc') == [SSEEvent(None, b'{"ok":1}')]
    assert parser.flush() == [SSEEvent(None, b'{"trunc')]


def test_flush_on_a_clean_stream_is_empty() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: 1\n\n") == [SSEEvent(None, b"1")]
    assert parser.flush() == []


def test_empty_chunks_are_harmless() -> None:
    assert parse_all([b"", b"data: 1", b"", b"\n", b"", b"\n", b""]) == [SSEEvent(None, b"1")]


@pytest.mark.parametrize("chunk_size", [1024, 16384])
def test_a_huge_line_in_many_chunks_is_linear(chunk_size: int) -> None:
    payload = b"x" * 4_000_000
    stream = b"data: " + payload + b"\n\n"
    start = time.perf_counter()
    events = parse_all([stream[i : i + chunk_size] for i in range(0, len(stream), chunk_size)])
    assert events == [SSEEvent(None, payload)]
    assert time.perf_counter() - start < 2.0  # quadratic re-buffering would take minutes


def test_many_small_events_are_fast() -> None:
    event = (
        b"event: content_block_delta\n"
        b'data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"hi"}}\n\n'
    )
    stream = event * 20_000
    parser = SSEParser()
    start = time.perf_counter()
    count = 0
    for i in range(0, len(stream), 4096):
        count += len(parser.feed(stream[i : i + 4096]))
    assert count == 20_000
    assert time.perf_counter() - start < 1.0
