"""Fuzzing the SSE usage scanner: any chunking, any line ends, malformed and huge events.

The reference for "what is an event" is the SSE spec (a line ends with CRLF, LF or CR; an
empty line ends an event), implemented independently here as `spec_events`.
"""

import itertools
import json
import re
import time
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spendgate.metering.extract import MAX_TOKENS
from spendgate.metering.sse import SSEUsageScanner
from spendgate.metering.usage import Usage

FUZZ = settings(
    max_examples=150,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
NEWLINES = [b"\n", b"\r\n", b"\r"]
_LINE_END = re.compile(rb"\r\n|\r|\n")


def spec_events(stream: bytes) -> list[tuple[int, int]]:
    """The (start, end) byte spans of the stream's events, each with its blank line.

    A blank line with no field before it is a span of its own (an empty event).
    """
    spans = []
    start = line_start = 0
    for match in _LINE_END.finditer(stream):
        if match.start() == line_start:
            spans.append((start, match.end()))
            start = match.end()
        line_start = match.end()
    return spans


def run(endpoint: str, chunks: list[bytes], *, strip: bool) -> tuple[bytes, SSEUsageScanner]:
    scanner = SSEUsageScanner(endpoint, strip_usage_chunk=strip)
    out = b"".join(scanner.feed(chunk) for chunk in chunks) + scanner.finish()
    return out, scanner


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({cut % (len(data) + 1) for cut in cuts})
    return [data[a:b] for a, b in itertools.pairwise([0, *points, len(data)])]


def assert_sane(usage: Usage | None) -> None:
    if usage is None:
        return
    counts = (
        usage.prompt_tokens,
        usage.completion_tokens,
        usage.cached_tokens,
        usage.reasoning_tokens,
        usage.total_tokens,
    )
    for count in counts:
        assert type(count) is int
        assert 0 <= count <= MAX_TOKENS or count is usage.total_tokens
    assert usage.total_tokens <= 2 * MAX_TOKENS


# --- Valid streams -------------------------------------------------------------------------


@dataclass
class Stream:
    endpoint: str
    events: list[bytes]
    usage_only: int | None  # index of the usage-only event (stripped for chat/completions)
    usage: Usage | None

    @property
    def data(self) -> bytes:
        return b"".join(self.events)

    def stripped(self) -> bytes:
        if self.usage_only is None or self.endpoint == "responses":
            return self.data
        return b"".join(e for i, e in enumerate(self.events) if i != self.usage_only)


TEXT = st.text(
    st.characters(codec="utf-8", exclude_categories=["Cs"]) | st.sampled_from('"\\\n\r\x00'),
    max_size=12,
)
COUNT = st.integers(min_value=0, max_value=10**7)


@st.composite
def event_bytes(draw: st.DrawFn, document: Any, kind: str | None) -> bytes:
    """One event carrying `document`, written in one of the many ways SSE allows."""
    newline = draw(st.sampled_from(NEWLINES))
    lines: list[bytes] = []
    if draw(st.booleans()):
        lines.append(b": ping")
    if kind is not None and draw(st.booleans()):
        lines.append(b"event: " + kind.encode())
    if draw(st.booleans()):
        lines.append(b"id: " + str(draw(st.integers(0, 999))).encode())
    payload = document if isinstance(document, bytes) else None
    if payload is None:
        indent = draw(st.booleans())  # multi-line `data:` (JSON whitespace between tokens)
        payload = orjson.dumps(document, option=orjson.OPT_INDENT_2 if indent else 0)
    prefix = draw(st.sampled_from([b"data: ", b"data:"]))
    lines += [prefix + line for line in payload.split(b"\n")]
    return b"".join(line + newline for line in lines) + newline


def usage_dict(draw: st.DrawFn, responses: bool) -> tuple[dict[str, Any], Usage]:
    prompt, completion, cached, reasoning = (draw(COUNT) for _ in range(4))
    if responses:
        usage = {
            "input_tokens": prompt,
            "input_tokens_details": {"cached_tokens": cached},
            "output_tokens": completion,
            "output_tokens_details": {"reasoning_tokens": reasoning},
            "total_tokens": prompt + completion,
        }
    else:
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached},
            "completion_tokens_details": {"reasoning_tokens": reasoning},
        }
    return usage, Usage(prompt, completion, cached, reasoning, prompt + completion)


@st.composite
def streams(draw: st.DrawFn) -> Stream:
    endpoint = draw(st.sampled_from(["chat/completions", "completions", "responses"]))
    model = draw(st.sampled_from(["gpt-4o-mini", "o4-mini", 'm\u00e9\u00e9 "x"']))
    words = draw(st.lists(TEXT, max_size=6))
    events: list[bytes] = []
    usage_only = None
    expected = None
    with_usage = draw(st.booleans())
    if draw(st.booleans()):
        events.append(b": ping" + draw(st.sampled_from(NEWLINES)) * 2)
    if endpoint == "responses":
        response = {"id": "resp_1", "object": "response", "model": model, "usage": None}
        events.append(draw(event_bytes({"type": "response.created", "response": response}, "x")))
        for word in words:
            kind = "response.output_text.delta"
            events.append(draw(event_bytes({"type": kind, "delta": word}, kind)))
        kind = draw(st.sampled_from(["response.completed", "response.incomplete"]))
        final = {**response}
        if with_usage:
            final["usage"], expected = usage_dict(draw, responses=True)
            expected.model = model
        events.append(draw(event_bytes({"type": kind, "response": final}, kind)))
    else:
        for word in words:
            if endpoint == "chat/completions":
                choice: dict[str, Any] = {"index": 0, "delta": {"content": word}}
            else:
                choice = {"index": 0, "text": word}
            chunk = {"object": "chunk", "model": model, "choices": [choice], "usage": None}
            events.append(draw(event_bytes(chunk, None)))
            if draw(st.integers(0, 4)) == 0:
                events.append(b": keep-alive" + draw(st.sampled_from(NEWLINES)) * 2)
        if with_usage:
            usage, expected = usage_dict(draw, responses=False)
            expected.model = model
            usage_only = len(events)
            chunk = {"object": "chunk", "model": model, "choices": [], "usage": usage}
            events.append(draw(event_bytes(chunk, None)))
        if draw(st.booleans()):
            newline = draw(st.sampled_from(NEWLINES))
            events.append(b"data: [DONE]" + newline + newline)
    return Stream(endpoint, events, usage_only, expected)


@FUZZ
@given(stream=streams(), cuts=st.lists(st.integers(0, 100_000), max_size=30), strip=st.booleans())
def test_any_split_of_a_valid_stream_reads_and_relays_like_the_whole(
    stream: Stream, cuts: list[int], strip: bool
) -> None:
    data = stream.data
    # The test's own SSE reading agrees with how the stream was built.
    assert [data[a:b] for a, b in spec_events(data)] == stream.events
    whole_out, whole = run(stream.endpoint, [data], strip=strip)
    parts_out, parts = run(stream.endpoint, split(data, cuts), strip=strip)
    assert whole.usage == stream.usage
    assert parts.usage == whole.usage
    assert parts.saw_done == whole.saw_done
    assert parts_out == whole_out
    assert whole_out == (stream.stripped() if strip else data)
    assert parts.completion_text() == whole.completion_text()


@FUZZ
@given(stream=streams(), strip=st.booleans())
def test_one_byte_chunks_read_and_relay_like_the_whole(stream: Stream, strip: bool) -> None:
    data = stream.data
    whole_out, whole = run(stream.endpoint, [data], strip=strip)
    scanner = SSEUsageScanner(stream.endpoint, strip_usage_chunk=strip)
    forwarded = []
    for i in range(len(data)):
        forwarded.append(scanner.feed(data[i : i + 1]))
    forwarded.append(scanner.finish())
    assert b"".join(forwarded) == whole_out == (stream.stripped() if strip else data)
    assert scanner.usage == whole.usage == stream.usage


@FUZZ
@given(stream=streams())
def test_events_are_relayed_as_soon_as_they_are_complete(stream: Stream) -> None:
    # Relaying is event-aligned and prompt: once an event's blank line is in (and, for a
    # blank line ended by CR, the byte after it shows it is not CRLF), the event is out.
    scanner = SSEUsageScanner(stream.endpoint, strip_usage_chunk=False)
    out = b""
    sent = 0  # bytes of the current event already fed
    for event, following in itertools.zip_longest(stream.events, stream.events[1:]):
        out += scanner.feed(event[sent:])
        sent = 0
        if event.endswith(b"\r") and following is not None:
            out += scanner.feed(following[:1])
            sent = 1
        if following is not None or not event.endswith(b"\r"):
            assert out.endswith(event)
    out += scanner.finish()
    assert out == stream.data


def test_a_stream_with_cr_line_ends_is_read_event_by_event() -> None:
    usage = b'{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2},"model":"m"}'
    events = [
        b'data: {"choices":[{"delta":{"content":"hi"}}],"usage":null}\r\r',
        b"data: " + usage + b"\r\r",
        b"data: [DONE]\r\r",
    ]
    scanner = SSEUsageScanner("chat/completions", strip_usage_chunk=True)
    assert scanner.feed(events[0] + events[1][:5]) == events[0]
    assert scanner.feed(events[1][5:]) == b""  # complete, but the last CR could start a CRLF
    assert scanner.feed(events[2]) == b""  # the usage-only chunk, dropped; [DONE] held
    assert scanner.usage == Usage(3, 2, 0, 0, 5, "m")
    assert scanner.finish() == events[2]
    assert scanner.saw_done


# --- Malformed events ----------------------------------------------------------------------

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=12,
)
ODD_COUNT = (
    st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from([True, False, None, "12", [], {}, 2**63 - 1, 2**64 - 1, -1, 1e300])
)
USAGE_KEYS = st.sampled_from(
    [
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
        "input_tokens",
        "output_tokens",
        "cost",
        "prompt_tokens_details",
        "completion_tokens_details",
        "input_tokens_details",
        "output_tokens_details",
    ]
)
ODD_USAGE = st.dictionaries(
    USAGE_KEYS,
    ODD_COUNT
    | JSON
    | st.dictionaries(st.sampled_from(["cached_tokens", "reasoning_tokens"]), ODD_COUNT),
    max_size=6,
)


def big_number_json(value: Any) -> bytes:
    """JSON text for values orjson refuses to write (ints beyond 64 bits) too."""
    try:
        return orjson.dumps(value)
    except TypeError:
        return json.dumps(value).encode()


@st.composite
def malformed_payloads(draw: st.DrawFn) -> bytes:
    choice = draw(st.integers(0, 6))
    usage = draw(ODD_USAGE)
    document: Any = {"choices": draw(st.sampled_from([[], [{"delta": {}}]])), "usage": usage}
    if choice == 0:  # usage with wrong types, odd or huge numbers
        return big_number_json(document)
    if choice == 1:  # truncated JSON
        text = big_number_json(document)
        return text[: draw(st.integers(0, max(0, len(text) - 1)))]
    if choice == 2:  # not an object
        return orjson.dumps(draw(JSON.filter(lambda v: not isinstance(v, dict))))
    if choice == 3:  # an object whose usage is anything
        return orjson.dumps({"choices": [], "usage": draw(JSON), "model": draw(JSON)})
    if choice == 4:  # random bytes after a usage-looking prefix
        return b'{"choices":[],"usage":{' + draw(st.binary(max_size=40))
    if choice == 5:  # the Responses API's terminal event with an odd usage
        return big_number_json(
            {"type": "response.completed", "response": {"usage": usage, "model": draw(JSON)}}
        )
    return draw(st.binary(max_size=60))  # bytes, NUL and invalid UTF-8 included


@FUZZ
@given(
    payloads=st.lists(malformed_payloads(), min_size=1, max_size=4),
    newline=st.sampled_from(NEWLINES),
    endpoint=st.sampled_from(["chat/completions", "completions", "responses", "embeddings"]),
    cuts=st.lists(st.integers(0, 2_000), max_size=8),
)
def test_malformed_events_never_raise_and_relay_unchanged(
    payloads: list[bytes], newline: bytes, endpoint: str, cuts: list[int]
) -> None:
    data = b"".join(b"data: " + p + newline + newline for p in payloads)
    out, scanner = run(endpoint, split(data, cuts), strip=False)
    assert out == data
    assert_sane(scanner.usage)
    assert isinstance(scanner.completion_text(), str)
    stripped, strip_scanner = run(endpoint, split(data, cuts), strip=True)
    assert_sane(strip_scanner.usage)
    # Stripping drops whole events only, and only usage-only chunks.
    kept = split_events(stripped)
    at = 0
    for event in split_events(data):
        if at < len(kept) and kept[at] == event:
            at += 1
            continue
        document = orjson.loads(spec_data(event))
        assert document["choices"] == [] and isinstance(document["usage"], dict)
    assert at == len(kept)


def split_events(data: bytes) -> list[bytes]:
    """The stream cut into its events, an unterminated tail included."""
    spans = spec_events(data)
    events = [data[a:b] for a, b in spans]
    tail = data[spans[-1][1] :] if spans else data
    return events + ([tail] if tail else [])


def spec_data(event: bytes) -> bytes:
    """The event's `data` field values joined with LF, as the SSE spec reads them."""
    values = []
    for line in _LINE_END.split(event):
        name, colon, value = line.partition(b":")
        if name == b"data":
            values.append(value.removeprefix(b" ") if colon else b"")
    return b"\n".join(values)


# --- Huge lines ----------------------------------------------------------------------------

PIECE = 64 * 1024
USAGE_CHUNK = (
    b'data: {"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":5},"model":"m"}\n\n'
)


def feed_in_pieces(
    scanner: SSEUsageScanner, data: bytes, piece: int, *, held_at_most: int
) -> bytes:
    """Feed `data` in pieces, checking the bytes held back never exceed `held_at_most`."""
    out = []
    fed = forwarded = 0
    for at in range(0, len(data), piece):
        chunk = data[at : at + piece]
        out.append(scanner.feed(chunk))
        fed += len(chunk)
        forwarded += len(out[-1])
        assert fed - forwarded <= held_at_most
    return b"".join(out)


@pytest.mark.timeout(20)
@pytest.mark.parametrize("endpoint", ["chat/completions", "responses"])
def test_a_5mb_line_without_newline_is_held_whole_then_read(endpoint: str) -> None:
    line = b'data: {"choices":[{"delta":{"content":"' + b"x" * (5 * 1024 * 1024) + b'"}}]}'
    data = line + b"\n\n" + USAGE_CHUNK
    scanner = SSEUsageScanner(endpoint, strip_usage_chunk=True)
    out = feed_in_pieces(scanner, data, PIECE, held_at_most=len(line) + 2)
    out += scanner.finish()
    if endpoint == "chat/completions":
        assert out == line + b"\n\n"
        assert scanner.usage == Usage(7, 5, 0, 0, 12, "m")
        assert scanner.text_bytes == 5 * 1024 * 1024
    else:
        assert out == data


@pytest.mark.timeout(20)
@pytest.mark.parametrize("newline", NEWLINES, ids=["lf", "crlf", "cr"])
def test_an_event_over_the_cap_is_forwarded_as_it_comes_and_reading_resumes(
    newline: bytes,
) -> None:
    cap = 256 * 1024
    huge = b"data: " + b"y" * (5 * 1024 * 1024)
    usage_chunk = USAGE_CHUNK.replace(b"\n", newline)
    data = huge + newline * 2 + usage_chunk + b"data: [DONE]" + newline * 2
    scanner = SSEUsageScanner("chat/completions", strip_usage_chunk=True, max_event_bytes=cap)
    out = feed_in_pieces(scanner, data, PIECE, held_at_most=cap + PIECE)
    out += scanner.finish()
    assert out == huge + newline * 2 + b"data: [DONE]" + newline * 2
    assert scanner.usage == Usage(7, 5, 0, 0, 12, "m")
    assert scanner.saw_done


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "line",
    [
        pytest.param(b"data: x\n", id="many-lf-lines"),
        pytest.param(b"data: x\r", id="many-cr-lines"),
        pytest.param(b'"usage":"u", ', id="usage-as-string-value"),
        pytest.param(b'"content":"\\"', id="unterminated-escapes"),
        pytest.param(b"\r", id="lone-cr-ends-then-blank"),
    ],
)
def test_a_5mb_event_takes_linear_time(line: bytes) -> None:
    body = line * (5 * 1024 * 1024 // len(line))
    data = b'data: {"choices":[' + body + b'"usage":{"prompt_tokens":1}}\n\n'
    for piece in (PIECE, 4096):
        scanner = SSEUsageScanner("chat/completions", strip_usage_chunk=False)
        started = time.perf_counter()
        out = feed_in_pieces(scanner, data, piece, held_at_most=len(data)) + scanner.finish()
        assert isinstance(scanner.completion_text(), str)
        assert time.perf_counter() - started < 10
        assert out == data


@pytest.mark.timeout(20)
def test_a_long_line_fed_byte_by_byte_takes_linear_time() -> None:
    data = b'data: {"choices":[],"usage":{"prompt_tokens":2,"x":"' + b"z" * 200_000 + b'"}}\n\n'
    scanner = SSEUsageScanner("completions", strip_usage_chunk=False)
    out = b"".join(scanner.feed(data[i : i + 1]) for i in range(len(data))) + scanner.finish()
    assert out == data
    assert scanner.usage == Usage(2, 0, 0, 0, 2, None)
