"""The SSE usage scanner: event-aligned relay, usage, stripping, text, robustness."""

import itertools
import json
from decimal import Decimal
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spendgate.metering.sse import SSEUsageScanner
from spendgate.metering.usage import Usage

MODEL = "gpt-4o-mini-2024-07-18"
CHAT_USAGE = {
    "prompt_tokens": 20,
    "completion_tokens": 16,
    "total_tokens": 36,
    "prompt_tokens_details": {"cached_tokens": 8},
    "completion_tokens_details": {"reasoning_tokens": 4},
}


def sse(document: Any, newline: bytes = b"\n") -> bytes:
    return b"data: " + orjson.dumps(document) + newline + newline


def chat_chunk(delta: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "model": MODEL,
        "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
        "usage": None,
        **extra,
    }


def chat_usage_chunk() -> bytes:
    return sse(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion.chunk",
            "model": MODEL,
            "choices": [],
            "usage": CHAT_USAGE,
        }
    )


WORDS = ["Hello", ",", " wor", "ld", "! ", "Ça", " va", ' "bien"', "\n", "😀", " ok"]


def chat_stream(newline: bytes = b"\n", with_usage: bool = True) -> list[bytes]:
    """A typical streamed chat completion, one event per element."""
    events = [sse(chat_chunk({"role": "assistant", "content": ""}), newline)]
    events += [sse(chat_chunk({"content": word}), newline) for word in WORDS]
    events.append(sse(chat_chunk({}, choices=[{"index": 0, "delta": {}, "finish_reason": "stop"}])))
    if with_usage:
        events.append(chat_usage_chunk())
    events.append(b"data: [DONE]" + newline + newline)
    return events


def completions_stream() -> list[bytes]:
    base = {"object": "text_completion", "model": "gpt-3.5-turbo-instruct"}
    events = [sse({**base, "choices": [{"text": word, "index": 0}]}) for word in WORDS]
    events.append(
        sse(
            {
                **base,
                "choices": [],
                "usage": {"prompt_tokens": 3, "completion_tokens": 11, "total_tokens": 14},
            }
        )
    )
    events.append(b"data: [DONE]\n\n")
    return events


def responses_event(kind: str, **fields: Any) -> bytes:
    data = orjson.dumps({"type": kind, **fields})
    return b"event: " + kind.encode() + b"\ndata: " + data + b"\n\n"


RESPONSE_USAGE = {
    "input_tokens": 30,
    "input_tokens_details": {"cached_tokens": 10},
    "output_tokens": 12,
    "output_tokens_details": {"reasoning_tokens": 6},
    "total_tokens": 42,
}


def responses_stream(terminal: str = "response.completed") -> list[bytes]:
    response = {"id": "resp_1", "object": "response", "model": "o4-mini", "usage": None}
    events = [
        responses_event("response.created", response=response),
        responses_event("response.in_progress", response=response),
    ]
    events += [responses_event("response.output_text.delta", delta=word) for word in WORDS]
    events.append(responses_event("response.output_text.done", text="".join(WORDS)))
    events.append(
        responses_event(
            terminal,
            response={**response, "model": "o4-mini-2025-04-16", "usage": RESPONSE_USAGE},
        )
    )
    return events


def mixed_terminators_stream() -> list[bytes]:
    """Events ended by every blank-line form, multi-line events and comments."""
    events = chat_stream()
    return [
        events[0].replace(b"\n\n", b"\r\n\n"),
        b": keep-alive\r\n\r\n",
        events[1].replace(b"\n\n", b"\n\r\n"),
        b"id: 7\nevent: message\n" + events[2],
        events[3].replace(b"\n\n", b"\r\n\r\n"),
        *events[4:],
    ]


STREAMS = {
    "chat": ("chat/completions", b"".join(chat_stream())),
    "chat-crlf": ("chat/completions", b"".join(chat_stream(b"\r\n"))),
    "completions": ("completions", b"".join(completions_stream())),
    "responses": ("responses", b"".join(responses_stream())),
    "mixed-terminators": ("chat/completions", b"".join(mixed_terminators_stream())),
    "garbage": ("chat/completions", b'data: {"usage": {oops\n\n\x00\xff\r\n\n: ping\ndata: [DON'),
}


def run(
    endpoint: str, chunks: list[bytes], *, strip: bool = False
) -> tuple[bytes, SSEUsageScanner]:
    scanner = SSEUsageScanner(endpoint, strip_usage_chunk=strip)
    out = b"".join(scanner.feed(chunk) for chunk in chunks) + scanner.finish()
    return out, scanner


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({cut % (len(data) + 1) for cut in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


@settings(deadline=None, max_examples=60)
@given(
    name=st.sampled_from(sorted(STREAMS)),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=40),
    strip=st.booleans(),
)
def test_any_split_forwards_and_reads_the_same_as_whole(
    name: str, cuts: list[int], strip: bool
) -> None:
    endpoint, data = STREAMS[name]
    whole_out, whole = run(endpoint, [data], strip=strip)
    parts_out, parts = run(endpoint, split(data, cuts), strip=strip)
    assert parts_out == whole_out
    assert (parts.usage, parts.saw_done, parts.events) == (
        whole.usage,
        whole.saw_done,
        whole.events,
    )
    assert parts.completion_text() == whole.completion_text()
    if not strip:
        assert whole_out == data


@pytest.mark.parametrize(
    ("endpoint", "events"),
    [
        pytest.param("chat/completions", chat_stream(b"\r\n"), id="chat-crlf"),
        pytest.param("chat/completions", mixed_terminators_stream(), id="mixed-terminators"),
        pytest.param("responses", responses_stream(), id="responses"),
    ],
)
@pytest.mark.parametrize("strip", [False, True], ids=["keep", "strip"])
def test_one_event_per_chunk_reads_like_the_whole_stream(
    endpoint: str, events: list[bytes], strip: bool
) -> None:
    whole_out, whole = run(endpoint, [b"".join(events)], strip=strip)
    scanner = SSEUsageScanner(endpoint, strip_usage_chunk=strip)
    forwarded = []
    for event in events:
        forwarded.append(scanner.feed(event))
        assert forwarded[-1] in (event, b"")
    assert scanner.finish() == b""
    assert b"".join(forwarded) == whole_out
    assert (scanner.usage, scanner.saw_done, scanner.events) == (
        whole.usage,
        whole.saw_done,
        whole.events,
    )
    assert scanner.completion_text() == whole.completion_text()
    assert scanner.usage is not None and scanner.saw_done


@settings(deadline=None, max_examples=200)
@given(
    data=st.binary(max_size=400)
    | st.lists(
        st.sampled_from([b"data: ", b"{", b"}", b'"usage":', b"\n", b"\r\n", b"[DONE]"])
    ).map(b"".join),
    cuts=st.lists(st.integers(min_value=0, max_value=500), max_size=10),
    endpoint=st.sampled_from(["chat/completions", "completions", "responses", "models"]),
)
def test_arbitrary_bytes_are_forwarded_unchanged_and_never_raise(
    data: bytes, cuts: list[int], endpoint: str
) -> None:
    out, scanner = run(endpoint, split(data, cuts))
    assert out == data
    out_strip, _ = run(endpoint, split(data, cuts), strip=True)
    assert isinstance(scanner.completion_text(), str)
    assert len(out_strip) <= len(data)


@pytest.mark.parametrize(
    ("endpoint", "events", "usage", "saw_done"),
    [
        pytest.param(
            "chat/completions",
            chat_stream(),
            Usage(20, 16, 8, 4, 36, MODEL),
            True,
            id="chat",
        ),
        pytest.param(
            "chat/completions",
            chat_stream(with_usage=False),
            None,
            True,
            id="chat-usage-null-on-every-chunk",
        ),
        pytest.param(
            "chat/completions",
            [
                sse(chat_chunk({"content": "x"})),
                sse(chat_chunk({}, usage={"prompt_tokens": 2, "completion_tokens": 1})),
            ],
            Usage(2, 1, 0, 0, 3, MODEL),
            False,
            id="chat-usage-on-a-choice-chunk-no-done",
        ),
        pytest.param(
            "completions",
            completions_stream(),
            Usage(3, 11, 0, 0, 14, "gpt-3.5-turbo-instruct"),
            True,
            id="completions",
        ),
        pytest.param(
            "responses",
            responses_stream(),
            Usage(30, 12, 10, 6, 42, "o4-mini-2025-04-16"),
            True,
            id="responses-completed",
        ),
        pytest.param(
            "responses",
            responses_stream("response.incomplete"),
            Usage(30, 12, 10, 6, 42, "o4-mini-2025-04-16"),
            True,
            id="responses-incomplete",
        ),
        pytest.param(
            "responses",
            responses_stream()[:-1],
            None,
            False,
            id="responses-cut-before-completion",
        ),
        pytest.param("models", chat_stream(), None, False, id="unmetered-endpoint"),
    ],
)
def test_streamed_usage(
    endpoint: str, events: list[bytes], usage: Usage | None, saw_done: bool
) -> None:
    out, scanner = run(endpoint, events)
    assert out == b"".join(events)
    assert scanner.usage == usage
    assert scanner.saw_done is saw_done
    assert scanner.events == len(events)


@pytest.mark.parametrize("newline", [b"\n", b"\r\n"], ids=["lf", "crlf"])
def test_stripping_drops_exactly_the_usage_only_chunk(newline: bytes) -> None:
    events = chat_stream(newline)
    usage_chunk = chat_usage_chunk()
    out, scanner = run("chat/completions", events, strip=True)
    assert out == b"".join(event for event in events if event != usage_chunk)
    assert out.endswith(b"data: [DONE]" + newline + newline)
    assert scanner.usage == Usage(20, 16, 8, 4, 36, MODEL)


def test_stripping_keeps_a_usage_chunk_that_has_choices() -> None:
    event = sse(chat_chunk({"content": "x"}, usage={"prompt_tokens": 2, "completion_tokens": 1}))
    out, scanner = run("chat/completions", [event], strip=True)
    assert out == event
    assert scanner.usage is not None


def test_stripping_never_applies_to_responses() -> None:
    events = responses_stream()
    out, _ = run("responses", events, strip=True)
    assert out == b"".join(events)


def test_feed_returns_only_complete_events() -> None:
    scanner = SSEUsageScanner("chat/completions", strip_usage_chunk=False)
    first, second = chat_stream()[:2]
    assert scanner.feed(first + second[:10]) == first
    assert scanner.feed(second[10:-1]) == b""
    assert scanner.feed(second[-1:]) == second
    assert scanner.finish() == b""


def test_finish_returns_and_reads_an_unterminated_tail() -> None:
    scanner = SSEUsageScanner("chat/completions", strip_usage_chunk=True)
    assert scanner.feed(chat_usage_chunk()[:-2]) == b""
    tail = scanner.finish()
    assert tail == chat_usage_chunk()[:-2]
    assert scanner.usage == Usage(20, 16, 8, 4, 36, MODEL)


def test_usage_word_inside_generated_text_is_not_a_usage_object() -> None:
    event = sse(chat_chunk({"content": 'say "usage": {"prompt_tokens": 9}'}))
    out, scanner = run("chat/completions", [event], strip=True)
    assert out == event
    assert scanner.usage is None
    assert scanner.completion_text() == 'say "usage": {"prompt_tokens": 9}'


@pytest.mark.parametrize(
    ("endpoint", "events", "text"),
    [
        pytest.param("chat/completions", chat_stream(), "".join(WORDS), id="chat"),
        pytest.param("completions", completions_stream(), "".join(WORDS), id="completions"),
        pytest.param("responses", responses_stream(), "".join(WORDS), id="responses"),
        pytest.param(
            "chat/completions",
            [
                sse(chat_chunk({"reasoning_content": "think "})),
                sse(chat_chunk({"content": "answer"})),
            ],
            "think answer",
            id="chat-reasoning-content",
        ),
        pytest.param(
            "chat/completions",
            [
                b'data: {"choices":[{"delta":{"content":"\\ud83d"}}]}\n\n',
                b'data: {"choices":[{"delta":{"content":"\\ude00!"}}]}\n\n',
            ],
            "😀!",
            id="surrogate-pair-split-across-events",
        ),
    ],
)
def test_completion_text(endpoint: str, events: list[bytes], text: str) -> None:
    _, scanner = run(endpoint, events)
    assert scanner.completion_text() == text


def test_text_beyond_the_limit_is_only_counted() -> None:
    scanner = SSEUsageScanner("chat/completions", strip_usage_chunk=False, text_limit=10)
    for word in ["abcd", "efgh", "ijkl", "mn"]:
        scanner.feed(sse(chat_chunk({"content": word})))
    assert scanner.completion_text() == "abcdefgh"
    assert scanner.text_bytes == 14


def test_invalid_escapes_in_text_are_skipped() -> None:
    events = [
        b'data: {"choices":[{"delta":{"content":"ok "}}]}\n\n',
        b'data: {"choices":[{"delta":{"content":"bad \\x"}}]}\n\n',
        b'data: {"choices":[{"delta":{"content":"fine"}}]}\n\n',
    ]
    _, scanner = run("chat/completions", events)
    assert scanner.completion_text() == "ok fine"


@pytest.mark.parametrize(
    "event",
    [
        pytest.param(b'data: {"choices": [], "usage": {"prompt_tokens": \n\n', id="truncated-json"),
        pytest.param(b'data: {"choices": [], "usage": {}} trailing\n\n', id="trailing-garbage"),
        pytest.param(b'data: ["usage": {]\n\n', id="array"),
        pytest.param(b"data: \xff\xfe\x00\n\n", id="binary"),
        pytest.param(b'event: x\ndata: {"usage": {"prompt_tokens": 1}\n\n', id="unclosed"),
    ],
)
def test_malformed_events_are_forwarded_without_usage(event: bytes) -> None:
    out, scanner = run("chat/completions", [event], strip=True)
    assert out == event
    assert scanner.usage is None


def test_multiline_data_is_joined() -> None:
    event = b'data: {"choices": [],\ndata: "usage": {"prompt_tokens": 4}}\n\n'
    out, scanner = run("chat/completions", [event], strip=False)
    assert out == event
    assert scanner.usage == Usage(4, 0, 0, 0, 4, None)


def test_oversized_event_is_forwarded_as_it_arrives_and_reading_resumes() -> None:
    scanner = SSEUsageScanner("chat/completions", strip_usage_chunk=True, max_event_bytes=64)
    huge = b"data: " + b"x" * 200
    forwarded = scanner.feed(huge[:100])
    forwarded += scanner.feed(huge[100:] + b"\n")
    forwarded += scanner.feed(b"\n" + chat_usage_chunk())
    forwarded += scanner.feed(b"data: [DONE]\n\n") + scanner.finish()
    assert forwarded == huge + b"\n\ndata: [DONE]\n\n"
    assert scanner.usage == Usage(20, 16, 8, 4, 36, MODEL)
    assert scanner.saw_done
    assert scanner.events == 3


def test_text_of_a_long_stream_is_read_in_bulk_and_in_order() -> None:
    # Text is read lazily: past 64 KiB of held events, and when asked for. Both paths must
    # give every piece, in order, exactly once.
    pieces = [f"w{i} " for i in range(2000)]  # ~2000 events, well over 64 KiB
    scanner = SSEUsageScanner("chat/completions", strip_usage_chunk=False)
    for piece in pieces:
        delta = json.dumps({"choices": [{"index": 0, "delta": {"content": piece}}]})
        assert scanner.feed(f"data: {delta}\n\n".encode()) != b""
    assert scanner.completion_text() == "".join(pieces)
    assert scanner.text_bytes == len("".join(pieces))
    assert scanner.completion_text() == "".join(pieces)  # asking twice changes nothing


def openrouter_usage_chunk(cost: bytes) -> bytes:
    """OpenRouter's last chunk: usage with `cost`, written as OpenRouter writes numbers."""
    return (
        b'data: {"id":"gen-1","provider":"OpenAI","model":"openai/gpt-4o-mini",'
        b'"object":"chat.completion.chunk","choices":[],"usage":{"prompt_tokens":20,'
        b'"completion_tokens":16,"total_tokens":36,"cost":' + cost + b',"is_byok":false}}\n\n'
    )


@pytest.mark.parametrize(
    ("cost", "expected"),
    [
        pytest.param(b"0.0000126", Decimal("0.0000126"), id="plain"),
        pytest.param(b"1.26e-05", Decimal("0.0000126"), id="exponent"),
        pytest.param(b"-1", None, id="negative"),
        pytest.param(b"null", None, id="null"),
    ],
)
def test_streamed_usage_keeps_the_reported_cost(cost: bytes, expected: Decimal | None) -> None:
    events = [
        *chat_stream(with_usage=False)[:-1],
        openrouter_usage_chunk(cost),
        b"data: [DONE]\n\n",
    ]
    data = b"".join(events)
    for chunks in (events, [data], split(data, [7, 300, len(data) - 40])):
        out, scanner = run("chat/completions", chunks, strip=True)
        assert scanner.usage is not None and scanner.usage.provider_cost == expected
        assert scanner.usage.model == "openai/gpt-4o-mini"
        assert out == data.replace(openrouter_usage_chunk(cost), b"")


def test_streamed_usage_without_a_cost_has_none() -> None:
    _, scanner = run("chat/completions", chat_stream())
    assert scanner.usage is not None and scanner.usage.provider_cost is None


def test_a_responses_stream_keeps_the_reported_cost() -> None:
    events = responses_stream()
    events[-1] = events[-1].replace(b'"total_tokens":42', b'"total_tokens":42,"cost":0.00042')
    _, scanner = run("responses", events)
    assert scanner.usage == Usage(30, 12, 10, 6, 42, "o4-mini-2025-04-16", Decimal("0.00042"))
