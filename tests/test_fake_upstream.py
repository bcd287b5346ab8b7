"""The fake upstream: a real aiohttp server driven by the official openai SDK."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from typing import Any

import aiohttp
import openai
import pydantic
import pytest
from openai.types import Completion, CreateEmbeddingResponse
from openai.types.chat import ChatCompletion, ChatCompletionChunk, ChatCompletionStreamOptionsParam
from openai.types.responses import Response, ResponseStreamEvent

from spendgate.fake_upstream import (
    COST_PER_COMPLETION_TOKEN,
    COST_PER_PROMPT_TOKEN,
    FakeStats,
    FakeUpstream,
    ModelStats,
)

MESSAGES: Any = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": "hello there fake world"},
]
MESSAGES_PROMPT_TOKENS = (2 + 1) + (4 + 1)


@pytest.fixture
async def fake() -> AsyncIterator[FakeUpstream]:
    server = FakeUpstream()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def client(fake: FakeUpstream) -> AsyncIterator[openai.AsyncOpenAI]:
    sdk = openai.AsyncOpenAI(base_url=fake.base_url, api_key="x", max_retries=0)
    yield sdk
    await sdk.close()


async def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll a condition the server reaches asynchronously (e.g. noticing a client left)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


def words(n: int) -> str:
    return " ".join(f"tok{i}" for i in range(n))


def sse_events(raw: str) -> list[tuple[str | None, str]]:
    """(event name, data) of each server-sent event of a raw body."""
    events = []
    for block in raw.split("\n\n"):
        if not block:
            continue
        event = re.search(r"^event: (.*)$", block, re.MULTILINE)
        data = re.search(r"^data: (.*)$", block, re.MULTILINE)
        assert data is not None, block
        events.append((event.group(1) if event else None, data.group(1)))
    return events


async def test_base_url_requires_a_started_server() -> None:
    server = FakeUpstream()
    with pytest.raises(RuntimeError):
        _ = server.base_url
    url = await server.start()
    try:
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/v1", url)
        assert server.base_url == url
        with pytest.raises(RuntimeError):
            await server.start()
    finally:
        await server.stop()
    with pytest.raises(RuntimeError):
        _ = server.base_url


async def test_chat_completion_bills_what_the_sdk_sees(
    fake: FakeUpstream, client: openai.AsyncOpenAI
) -> None:
    result = await client.chat.completions.create(model="fake-gpt", messages=MESSAGES)
    assert result.model == "fake-gpt"
    assert result.choices[0].message.content == words(16)
    assert result.choices[0].finish_reason == "stop"
    usage = result.usage
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (
        MESSAGES_PROMPT_TOKENS,
        16,
        MESSAGES_PROMPT_TOKENS + 16,
    )
    stats = fake.stats
    assert (stats.requests, stats.received, stats.errors, stats.unbilled) == (1, 1, 0, 0)
    assert (stats.prompt_tokens, stats.completion_tokens, stats.total_tokens) == (
        usage.prompt_tokens,
        usage.completion_tokens,
        usage.total_tokens,
    )
    assert stats.by_model == {
        "fake-gpt": ModelStats(1, usage.prompt_tokens, 16, 0, 0, usage.total_tokens)
    }


@pytest.mark.parametrize("param", ["max_tokens", "max_completion_tokens"])
async def test_chat_max_tokens_sets_completion_length(
    client: openai.AsyncOpenAI, param: str
) -> None:
    limit: Any = {param: 5}
    result = await client.chat.completions.create(model="fake-gpt", messages=MESSAGES, **limit)
    assert result.choices[0].message.content == words(5)
    assert result.choices[0].finish_reason == "length"
    assert result.usage is not None and result.usage.completion_tokens == 5


async def test_same_request_twice_gives_the_same_usage(
    fake: FakeUpstream, client: openai.AsyncOpenAI
) -> None:
    first = await client.chat.completions.create(model="fake-gpt", messages=MESSAGES)
    second = await client.chat.completions.create(model="fake-gpt", messages=MESSAGES)
    assert first.usage == second.usage
    assert first.choices[0].message.content == second.choices[0].message.content
    assert first.usage is not None
    assert fake.stats.total_tokens == 2 * first.usage.total_tokens


async def test_chat_stream_with_include_usage_bills_the_final_chunk(
    fake: FakeUpstream, client: openai.AsyncOpenAI
) -> None:
    stream = await client.chat.completions.create(
        model="fake-gpt",
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    content = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(content) == 16
    assert content[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in content) == words(16)
    assert all(c.usage is None for c in chunks[:-1])
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (MESSAGES_PROMPT_TOKENS, 16)
    assert fake.stats.requests == 1 and fake.stats.unbilled == 0
    assert fake.stats.total_tokens == last.usage.total_tokens


async def test_chat_stream_without_include_usage_is_unbilled(
    fake: FakeUpstream, client: openai.AsyncOpenAI
) -> None:
    stream = await client.chat.completions.create(
        model="fake-gpt", messages=MESSAGES, stream=True, max_tokens=4
    )
    chunks = [chunk async for chunk in stream]
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) == 4
    assert all(c.usage is None and c.choices for c in chunks)
    assert (fake.stats.requests, fake.stats.total_tokens, fake.stats.unbilled) == (0, 0, 1)


async def test_no_usage_knob_suppresses_usage_even_if_asked(
    fake: FakeUpstream, client: openai.AsyncOpenAI
) -> None:
    stream = await client.chat.completions.create(
        model="fake-gpt",
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
        extra_headers={"x-fake-no-usage": "1"},
    )
    chunks = [chunk async for chunk in stream]
    assert all(c.usage is None and c.choices for c in chunks)
    assert (fake.stats.requests, fake.stats.unbilled) == (0, 1)


async def test_zero_max_tokens_stream_still_sends_the_role(client: openai.AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model="fake-gpt", messages=MESSAGES, stream=True, max_tokens=0
    )
    chunks = [chunk async for chunk in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == ""


async def test_completions_count_prompt_words_and_token_ids(
    fake: FakeUpstream, client: openai.AsyncOpenAI
) -> None:
    text = await client.completions.create(model="fake-gpt", prompt="one two three", max_tokens=3)
    assert text.choices[0].text == words(3)
    assert text.usage is not None
    assert (text.usage.prompt_tokens, text.usage.completion_tokens) == (3, 3)
    ids = await client.completions.create(model="fake-gpt", prompt=[[1, 2, 3, 4], [5, 6]])
    assert ids.usage is not None and ids.usage.prompt_tokens == 6
    assert ids.usage.completion_tokens == 16
    assert fake.stats.prompt_tokens == 9 and fake.stats.requests == 2


async def test_completions_stream_with_usage(
    fake: FakeUpstream, client: openai.AsyncOpenAI
) -> None:
    stream = await client.completions.create(
        model="fake-gpt",
        prompt="a b",
        stream=True,
        max_tokens=5,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].text for c in chunks if c.choices) == words(5)
    assert sum(1 for c in chunks if c.choices and c.choices[0].text) == 5
    usage = chunks[-1].usage
    assert usage is not None and chunks[-1].choices == []
    assert (usage.prompt_tokens, usage.completion_tokens) == (2, 5)
    assert fake.stats.total_tokens == 7


async def test_embeddings_bill_prompt_tokens_per_item(
    fake: FakeUpstream, client: openai.AsyncOpenAI
) -> None:
    result = await client.embeddings.create(model="fake-embedding", input=["a b", "c d e"])
    assert [d.index for d in result.data] == [0, 1]
    assert len(result.data[0].embedding) == 8
    assert all(isinstance(x, float) for x in result.data[0].embedding)
    assert (result.usage.prompt_tokens, result.usage.total_tokens) == (5, 5)
    floats = await client.embeddings.create(
        model="fake-embedding", input=[[1, 2, 3]], encoding_format="float", dimensions=3
    )
    assert floats.data[0].embedding == [0.125, 0.25, 0.375]
    assert floats.usage.prompt_tokens == 3
    assert (fake.stats.requests, fake.stats.prompt_tokens, fake.stats.completion_tokens) == (
        2,
        8,
        0,
    )


async def test_responses_non_streamed(fake: FakeUpstream, client: openai.AsyncOpenAI) -> None:
    result = await client.responses.create(
        model="fake-gpt", input="hello world", instructions="be brief", max_output_tokens=3
    )
    assert result.output_text == words(3)
    assert result.status == "completed"
    assert result.usage is not None
    assert (result.usage.input_tokens, result.usage.output_tokens) == (3 + 3, 3)
    assert result.usage.total_tokens == 9
    assert fake.stats.total_tokens == 9 and fake.stats.requests == 1


async def test_responses_stream_sends_typed_events_and_usage_on_completed(
    fake: FakeUpstream, client: openai.AsyncOpenAI
) -> None:
    input_items: Any = [{"role": "user", "content": [{"type": "input_text", "text": "x y z"}]}]
    stream = await client.responses.create(model="fake-gpt", input=input_items, stream=True)
    events = [event async for event in stream]
    kinds = [e.type for e in events]
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * 16,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == words(16)
    completed = events[-1]
    assert completed.type == "response.completed"
    usage = completed.response.usage
    assert usage is not None and (usage.input_tokens, usage.output_tokens) == (4, 16)
    assert fake.stats.requests == 1 and fake.stats.total_tokens == 20


async def test_responses_stream_helper_assembles_the_final_response(
    client: openai.AsyncOpenAI,
) -> None:
    async with client.responses.stream(model="fake-gpt", input="hi", max_output_tokens=4) as s:
        final = await s.get_final_response()
    assert final.output_text == words(4)
    assert final.usage is not None and final.usage.output_tokens == 4


async def test_responses_stream_no_usage_knob_is_unbilled(
    fake: FakeUpstream, client: openai.AsyncOpenAI
) -> None:
    stream = await client.responses.create(
        model="fake-gpt", input="hi", stream=True, extra_headers={"x-fake-no-usage": "true"}
    )
    events = [event async for event in stream]
    assert events[-1].type == "response.completed"
    assert events[-1].response.usage is None
    assert (fake.stats.requests, fake.stats.unbilled) == (0, 1)


async def test_cached_and_reasoning_knobs_shape_the_usage(
    fake: FakeUpstream, client: openai.AsyncOpenAI
) -> None:
    knobs = {"x-fake-cached-tokens": "3", "x-fake-reasoning-tokens": "7"}
    chat = await client.chat.completions.create(
        model="fake-gpt", messages=MESSAGES, max_tokens=2, extra_headers=knobs
    )
    usage = chat.usage
    assert usage is not None and usage.prompt_tokens_details is not None
    assert usage.completion_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == 3
    assert usage.completion_tokens_details.reasoning_tokens == 7
    assert usage.completion_tokens == 2 + 7
    assert chat.choices[0].message.content == words(2)
    resp = await client.responses.create(model="fake-gpt", input="a", extra_headers=knobs)
    assert resp.usage is not None
    assert resp.usage.input_tokens_details.cached_tokens == 2  # clamped to the prompt
    assert resp.usage.output_tokens_details.reasoning_tokens == 7
    assert resp.usage.output_tokens == 16 + 7
    assert (fake.stats.cached_tokens, fake.stats.reasoning_tokens) == (5, 14)
    assert fake.stats.completion_tokens == 9 + 23


async def test_served_model_knob_renames_the_model_and_its_stats(
    fake: FakeUpstream, client: openai.AsyncOpenAI
) -> None:
    headers = {"x-fake-served-model": "fake-gpt-2025-01-01"}
    result = await client.chat.completions.create(
        model="fake-gpt", messages=MESSAGES, extra_headers=headers
    )
    assert result.model == "fake-gpt-2025-01-01"
    stream = await client.chat.completions.create(
        model="fake-gpt", messages=MESSAGES, stream=True, extra_headers=headers
    )
    assert {chunk.model async for chunk in stream} == {"fake-gpt-2025-01-01"}
    assert list(fake.stats.by_model) == ["fake-gpt-2025-01-01"]


async def test_seed_model_suffix_is_appended_to_the_served_model() -> None:
    server = FakeUpstream(seed_model_suffix="-0613")
    await server.start()
    sdk = openai.AsyncOpenAI(base_url=server.base_url, api_key="x", max_retries=0)
    try:
        result = await sdk.embeddings.create(model="fake-embedding", input="a")
        assert result.model == "fake-embedding-0613"
        assert list(server.stats.by_model) == ["fake-embedding-0613"]
    finally:
        await sdk.close()
        await server.stop()


@pytest.mark.parametrize(
    ("status", "exc_type", "error_type"),
    [
        (400, openai.BadRequestError, "invalid_request_error"),
        (401, openai.AuthenticationError, "authentication_error"),
        (404, openai.NotFoundError, "not_found_error"),
        (429, openai.RateLimitError, "requests"),
        (500, openai.InternalServerError, "server_error"),
        (503, openai.InternalServerError, "server_error"),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
async def test_status_knob_answers_an_openai_error(
    fake: FakeUpstream,
    client: openai.AsyncOpenAI,
    status: int,
    exc_type: type[openai.APIStatusError],
    error_type: str,
    stream: bool,
) -> None:
    with pytest.raises(exc_type) as caught:
        await client.chat.completions.create(
            model="fake-gpt",
            messages=MESSAGES,
            stream=stream,
            extra_headers={"x-fake-status": str(status)},
        )
    err = caught.value
    assert err.status_code == status
    assert isinstance(err.body, dict)
    assert err.body["type"] == error_type and err.body["message"]
    assert {"code", "param"} <= err.body.keys()
    assert err.response.headers.get("retry-after") == ("1" if status == 429 else None)
    assert err.response.headers["content-type"] == "application/json"
    assert (fake.stats.errors, fake.stats.requests, fake.stats.received) == (1, 0, 1)


async def test_retry_after_knob_sets_the_429_header(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.RateLimitError) as caught:
        await client.models.list(extra_headers={"x-fake-status": "429", "x-fake-retry-after": "7"})
    assert caught.value.response.headers["retry-after"] == "7"


async def test_reset_after_breaks_the_stream_mid_way(
    fake: FakeUpstream, client: openai.AsyncOpenAI
) -> None:
    stream = await client.chat.completions.create(
        model="fake-gpt",
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
        extra_headers={"x-fake-reset-after": "3"},
    )
    received: list[str] = []
    with pytest.raises(openai.APIConnectionError):
        async for chunk in stream:
            received.append(chunk.choices[0].delta.content or "")
    assert "".join(received) == words(3)
    assert (fake.stats.requests, fake.stats.total_tokens, fake.stats.unbilled) == (0, 0, 1)


async def test_reset_after_breaks_a_responses_stream(
    fake: FakeUpstream, client: openai.AsyncOpenAI
) -> None:
    stream = await client.responses.create(
        model="fake-gpt", input="hi", stream=True, extra_headers={"x-fake-reset-after": "2"}
    )
    deltas: list[str] = []
    with pytest.raises(openai.APIConnectionError):
        async for event in stream:
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
    assert deltas == ["tok0", " tok1"]
    assert (fake.stats.requests, fake.stats.unbilled) == (0, 1)


async def test_reset_after_on_a_plain_request_drops_the_connection(
    fake: FakeUpstream, client: openai.AsyncOpenAI
) -> None:
    with pytest.raises(openai.APIConnectionError):
        await client.chat.completions.create(
            model="fake-gpt", messages=MESSAGES, extra_headers={"x-fake-reset-after": "0"}
        )
    assert (fake.stats.requests, fake.stats.unbilled) == (0, 1)


async def test_endless_stream_is_unbilled_when_the_client_goes_away(
    fake: FakeUpstream, client: openai.AsyncOpenAI
) -> None:
    stream = await client.chat.completions.create(
        model="fake-gpt",
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
        max_tokens=2,
        extra_headers={"x-fake-endless": "1", "x-fake-chunk-delay-ms": "1"},
    )
    seen = 0
    async for _chunk in stream:
        seen += 1
        if seen == 10:  # well past max_tokens: the stream does not end by itself
            break
    await stream.close()
    await wait_until(lambda: fake.stats.unbilled == 1)
    assert (fake.stats.requests, fake.stats.total_tokens) == (0, 0)


async def test_plain_answer_is_unbilled_when_the_client_left_before_it(
    fake: FakeUpstream, client: openai.AsyncOpenAI
) -> None:
    call = asyncio.create_task(
        client.chat.completions.create(
            model="fake-gpt", messages=MESSAGES, extra_headers={"x-fake-latency-ms": "300"}
        )
    )
    await wait_until(lambda: fake.stats.received == 1)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    await wait_until(lambda: fake.stats.unbilled == 1)
    assert (fake.stats.requests, fake.stats.total_tokens, fake.stats.by_model) == (0, 0, {})


async def test_latency_knobs_delay_the_answer(client: openai.AsyncOpenAI) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    await client.models.list(extra_headers={"x-fake-latency-ms": "150"})
    assert loop.time() - started >= 0.14
    # From the request's start, the three 50 ms gaps before the last content chunk must have
    # passed, however the chunks bunch up on arrival (a lower bound that load cannot break).
    started = loop.time()
    stream = await client.chat.completions.create(
        model="fake-gpt",
        messages=MESSAGES,
        stream=True,
        max_tokens=4,
        extra_headers={"x-fake-chunk-delay-ms": "50"},
    )
    arrivals = [loop.time() async for c in stream if c.choices and c.choices[0].delta.content]
    assert len(arrivals) == 4
    assert arrivals[-1] - started >= 0.14


async def test_constructor_latency_applies_to_every_request() -> None:
    server = FakeUpstream(latency_ms=120)
    await server.start()
    sdk = openai.AsyncOpenAI(base_url=server.base_url, api_key="x", max_retries=0)
    loop = asyncio.get_running_loop()
    try:
        started = loop.time()
        await sdk.models.list()
        assert loop.time() - started >= 0.11
    finally:
        await sdk.close()
        await server.stop()


async def test_requests_are_recorded_with_lowercased_headers(
    fake: FakeUpstream, client: openai.AsyncOpenAI
) -> None:
    await client.chat.completions.create(
        model="fake-gpt",
        messages=MESSAGES,
        extra_headers={"Api-Key": "azure-key", "X-Custom": "yes"},
        extra_query={"api-version": "2024-10-21"},
    )
    (seen,) = fake.requests
    assert (seen.method, seen.path, seen.query_string) == (
        "POST",
        "/v1/chat/completions",
        "api-version=2024-10-21",
    )
    assert seen.headers["authorization"] == "Bearer x"
    assert seen.headers["api-key"] == "azure-key"
    assert seen.headers["x-custom"] == "yes"
    assert seen.json == {"model": "fake-gpt", "messages": MESSAGES}


async def test_only_the_last_200_requests_are_kept(fake: FakeUpstream) -> None:
    async with aiohttp.ClientSession() as http:
        for i in range(205):
            async with http.get(f"{fake.base_url}/files/{i}") as resp:
                assert resp.status == 200
    assert len(fake.requests) == 200
    assert fake.requests[0].path == "/v1/files/5"
    assert fake.stats.received == 205


async def test_other_paths_echo_and_are_not_metered(fake: FakeUpstream) -> None:
    async with aiohttp.ClientSession() as http:
        for method, path in [
            ("GET", "/files"),
            ("DELETE", "/files/x"),
            ("POST", "/fine_tuning/jobs"),
            ("GET", "/chat/completions"),
        ]:
            async with http.request(method, fake.base_url + path, json={"a": 1}) as resp:
                assert resp.status == 200
                assert resp.content_type == "application/json"
                assert await resp.json() == {
                    "object": "fake",
                    "path": "/v1" + path,
                    "method": method,
                }
        async with http.post(fake.base_url + "/files", data=b"--multipart, not json") as resp:
            assert resp.status == 200
    assert fake.requests[0].json == {"a": 1}
    assert fake.requests[-1].json is None
    assert (fake.stats.received, fake.stats.requests, fake.stats.errors) == (5, 0, 0)


async def test_models_are_listed(client: openai.AsyncOpenAI) -> None:
    models = [m.id async for m in client.models.list()]
    assert "fake-gpt" in models and len(models) == len(set(models))


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        (b"{not json", {}),
        (b"[1, 2]", {}),
        (b'{"messages": []}', {}),
        (b'{"model": "fake-gpt", "messages": [], "max_tokens": "many"}', {}),
        (b'{"model": "fake-gpt", "messages": []}', {"x-fake-cached-tokens": "lots"}),
    ],
)
async def test_bad_requests_get_an_openai_400(
    fake: FakeUpstream, body: bytes, headers: dict[str, str]
) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{fake.base_url}/chat/completions", data=body, headers=headers) as resp,
    ):
        assert resp.status == 400
        assert resp.content_type == "application/json"
        error = (await resp.json())["error"]
    assert error["type"] == "invalid_request_error" and error["message"]
    assert {"code", "param"} <= error.keys()
    assert (fake.stats.errors, fake.stats.requests) == (1, 0)


async def test_stats_and_reset_endpoints(fake: FakeUpstream, client: openai.AsyncOpenAI) -> None:
    await client.chat.completions.create(model="fake-gpt", messages=MESSAGES)
    with pytest.raises(openai.InternalServerError):
        await client.models.list(extra_headers={"x-fake-status": "500"})
    stats = fake.stats
    async with aiohttp.ClientSession() as http:
        async with http.get(fake.base_url.removesuffix("/v1") + "/__fake__/stats") as resp:
            assert resp.content_type == "application/json"
            shown = dataclasses.asdict(stats) | {"cost_reported": str(stats.cost_reported)}
            assert await resp.json() == shown
        assert stats.requests == 1 and stats.errors == 1 and stats.received == 2
        assert stats.by_model["fake-gpt"].requests == 1
        async with http.post(fake.base_url.removesuffix("/v1") + "/__fake__/reset") as resp:
            assert resp.status == 200
    assert fake.stats is stats and stats == FakeStats()
    assert len(fake.requests) == 0


async def test_reset_zeroes_stats_in_place(fake: FakeUpstream, client: openai.AsyncOpenAI) -> None:
    stats = fake.stats
    await client.chat.completions.create(model="fake-gpt", messages=MESSAGES)
    fake.reset()
    assert fake.stats is stats and stats == FakeStats() and not fake.requests


async def _raw(fake: FakeUpstream, path: str, body: dict[str, Any]) -> tuple[str, str]:
    async with (
        aiohttp.ClientSession() as http,
        http.post(fake.base_url + path, json=body) as resp,
    ):
        assert resp.status == 200
        return resp.headers["content-type"], await resp.text()


@pytest.mark.parametrize(
    ("path", "body", "model"),
    [
        ("/chat/completions", {"model": "m", "messages": MESSAGES}, ChatCompletion),
        ("/completions", {"model": "m", "prompt": "a b"}, Completion),
        ("/embeddings", {"model": "m", "input": "a b"}, CreateEmbeddingResponse),
        ("/responses", {"model": "m", "input": "a b"}, Response),
    ],
)
async def test_plain_bodies_validate_strictly_against_the_sdk_types(
    fake: FakeUpstream, path: str, body: dict[str, Any], model: type[pydantic.BaseModel]
) -> None:
    content_type, text = await _raw(fake, path, body)
    assert content_type == "application/json"
    model.model_validate_json(text)


@pytest.mark.parametrize(
    ("path", "body", "event_type"),
    [
        ("/chat/completions", {"model": "m", "messages": MESSAGES}, ChatCompletionChunk),
        ("/completions", {"model": "m", "prompt": "a"}, Completion),
        ("/responses", {"model": "m", "input": "a"}, ResponseStreamEvent),
    ],
)
async def test_stream_events_validate_strictly_against_the_sdk_types(
    fake: FakeUpstream, path: str, body: dict[str, Any], event_type: Any
) -> None:
    body = {**body, "stream": True, "stream_options": {"include_usage": True}, "max_tokens": 3}
    content_type, text = await _raw(fake, path, body)
    assert content_type.startswith("text/event-stream")
    events = sse_events(text)
    chat_like = path != "/responses"
    assert (events[-1][1] == "[DONE]") is chat_like
    adapter: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(event_type)
    for name, data in events[:-1] if chat_like else events:
        if event_type is Completion:
            # Like OpenAI, completions chunks carry finish_reason null until the last one,
            # which the SDK type does not allow (the SDK parses streams without validating).
            data = data.replace('"finish_reason":null', '"finish_reason":"stop"')
        parsed = adapter.validate_json(data)
        assert name == (None if chat_like else parsed.type)


async def test_main_serves_until_sigterm() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "spendgate.fake_upstream",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        match = re.fullmatch(r"fake upstream on (http://127\.0\.0\.1:\d+/v1)\n", line)
        assert match is not None, line
        async with aiohttp.ClientSession() as http, http.get(match[1] + "/models") as resp:
            assert resp.status == 200
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


# -- playing other providers ----------------------------------------------------

AZURE_KEY = "az-key"
API_VERSION = "2024-10-21"
DEPLOYMENTS = {"gpt4o-prod": "gpt-4o", "embed-prod": "text-embedding-3-small"}


@pytest.fixture
async def azure_fake() -> AsyncIterator[FakeUpstream]:
    server = FakeUpstream(deployments=DEPLOYMENTS, require_key=AZURE_KEY)
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def azure(azure_fake: FakeUpstream) -> AsyncIterator[openai.AsyncAzureOpenAI]:
    sdk = azure_client(azure_fake)
    yield sdk
    await sdk.close()


def azure_client(fake: FakeUpstream, key: str = AZURE_KEY) -> openai.AsyncAzureOpenAI:
    """The official Azure client: it builds Azure's URLs and `api-key` header itself."""
    return openai.AsyncAzureOpenAI(
        azure_endpoint=fake.base_url.removesuffix("/v1"),
        api_key=key,
        api_version=API_VERSION,
        max_retries=0,
    )


def expected_cost(prompt: int, completion: int) -> Decimal:
    return prompt * COST_PER_PROMPT_TOKEN + completion * COST_PER_COMPLETION_TOKEN


def reported_cost(usage: pydantic.BaseModel | None) -> object:
    assert usage is not None and usage.model_extra is not None
    return usage.model_extra.get("cost")


async def test_azure_sdk_reaches_a_deployment_and_bills_its_model(
    azure_fake: FakeUpstream, azure: openai.AsyncAzureOpenAI
) -> None:
    answer = await azure.chat.completions.create(model="gpt4o-prod", messages=MESSAGES)
    assert answer.model == "gpt-4o"
    assert answer.usage is not None and answer.usage.prompt_tokens == MESSAGES_PROMPT_TOKENS
    assert reported_cost(answer.usage) is None  # only with report_cost
    sent = azure_fake.requests[-1]
    assert (sent.path, sent.query_string) == (
        "/openai/deployments/gpt4o-prod/chat/completions",
        f"api-version={API_VERSION}",
    )
    assert sent.headers["api-key"] == AZURE_KEY and "authorization" not in sent.headers
    stream = await azure.chat.completions.create(
        model="gpt4o-prod",
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
        max_tokens=3,
    )
    chunks = [chunk async for chunk in stream]
    assert {c.model for c in chunks} == {"gpt-4o"}
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3
    vectors = await azure.embeddings.create(model="embed-prod", input=["a b", "c"])
    assert vectors.model == "text-embedding-3-small" and len(vectors.data) == 2
    assert vectors.usage.prompt_tokens == 3
    assert azure_fake.requests[-1].path == "/openai/deployments/embed-prod/embeddings"
    by_model = azure_fake.stats.by_model
    assert (by_model["gpt-4o"].requests, by_model["gpt-4o"].completion_tokens) == (2, 16 + 3)
    assert by_model["text-embedding-3-small"] == ModelStats(1, 3, 0, 0, 0, 3)
    assert list(by_model) == ["gpt-4o", "text-embedding-3-small"]


async def test_azure_responses_name_the_deployment_in_the_body(
    azure_fake: FakeUpstream, azure: openai.AsyncAzureOpenAI
) -> None:
    result = await azure.responses.create(model="gpt4o-prod", input="hi", max_output_tokens=2)
    assert (result.model, result.output_text) == ("gpt-4o", words(2))
    sent = azure_fake.requests[-1]
    assert (sent.path, sent.query_string) == ("/openai/responses", f"api-version={API_VERSION}")
    assert azure_fake.stats.by_model["gpt-4o"].requests == 1


@pytest.mark.parametrize(
    ("endpoint", "body"),
    [
        ("chat/completions", {"messages": MESSAGES}),
        ("completions", {"prompt": "a b"}),
        ("embeddings", {"input": "a b"}),
        ("responses", {"input": "a b"}),
    ],
)
async def test_every_azure_deployment_endpoint_answers_as_its_model(
    azure_fake: FakeUpstream, endpoint: str, body: dict[str, Any]
) -> None:
    url = f"{azure_fake.base_url.removesuffix('/v1')}/openai/deployments/gpt4o-prod/{endpoint}"
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            url, params={"api-version": API_VERSION}, json=body, headers={"api-key": AZURE_KEY}
        ) as resp,
    ):
        assert resp.status == 200
        assert (await resp.json())["model"] == "gpt-4o"
    assert list(azure_fake.stats.by_model) == ["gpt-4o"]


async def test_azure_route_without_api_version_is_resource_not_found(
    azure_fake: FakeUpstream,
) -> None:
    url = f"{azure_fake.base_url.removesuffix('/v1')}/openai/deployments/gpt4o-prod/embeddings"
    async with (
        aiohttp.ClientSession() as http,
        http.post(url, json={"input": "a"}, headers={"api-key": AZURE_KEY}) as resp,
    ):
        assert resp.status == 404 and resp.content_type == "application/json"
        assert await resp.json() == {"error": {"code": "404", "message": "Resource not found"}}
    stats = azure_fake.stats
    assert (stats.received, stats.errors, stats.requests) == (1, 1, 0)
    assert azure_fake.requests[-1].path == "/openai/deployments/gpt4o-prod/embeddings"


async def test_unknown_azure_deployment_is_not_found(
    azure_fake: FakeUpstream, azure: openai.AsyncAzureOpenAI
) -> None:
    with pytest.raises(openai.NotFoundError) as chat:
        await azure.chat.completions.create(model="no-such", messages=MESSAGES)
    with pytest.raises(openai.NotFoundError) as responses:
        await azure.responses.create(model="no-such", input="hi")
    for caught in (chat, responses):
        assert isinstance(caught.value.body, dict)
        assert caught.value.body["code"] == "DeploymentNotFound"
        assert caught.value.body["message"]
    assert (azure_fake.stats.errors, azure_fake.stats.requests) == (2, 0)


async def test_require_key_refuses_a_wrong_or_misplaced_key(azure_fake: FakeUpstream) -> None:
    wrong = azure_client(azure_fake, key="nope")
    bearer_right = openai.AsyncOpenAI(base_url=azure_fake.base_url, api_key=AZURE_KEY)
    bearer_wrong = openai.AsyncOpenAI(base_url=azure_fake.base_url, api_key="nope")
    try:
        with pytest.raises(openai.AuthenticationError) as caught:
            await wrong.chat.completions.create(model="gpt4o-prod", messages=MESSAGES)
        assert isinstance(caught.value.body, dict)
        assert caught.value.body["code"] == "invalid_api_key"
        assert caught.value.body["type"] == "invalid_request_error"
        with pytest.raises(openai.AuthenticationError):
            await bearer_wrong.models.list()
        # /v1 routes read `Authorization`; an `api-key` header there does not count.
        with pytest.raises(openai.AuthenticationError):
            await bearer_wrong.models.list(extra_headers={"api-key": AZURE_KEY})
        assert (azure_fake.stats.errors, azure_fake.stats.requests) == (3, 0)
        answer = await bearer_right.chat.completions.create(model="fake-gpt", messages=MESSAGES)
        assert answer.model == "fake-gpt"
    finally:
        for sdk in (wrong, bearer_right, bearer_wrong):
            await sdk.close()
    # Azure routes read `api-key`; a right key as a bearer token does not count.
    url = f"{azure_fake.base_url.removesuffix('/v1')}/openai/deployments/gpt4o-prod/embeddings"
    headers = {"authorization": f"Bearer {AZURE_KEY}"}
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            url, params={"api-version": API_VERSION}, json={"input": "a"}, headers=headers
        ) as resp,
    ):
        assert resp.status == 401
        assert (await resp.json())["error"]["code"] == "invalid_api_key"
    assert (azure_fake.stats.errors, azure_fake.stats.requests) == (4, 1)


async def test_report_cost_puts_the_cost_on_every_usage_object() -> None:
    server = FakeUpstream(report_cost=True)
    await server.start()
    sdk = openai.AsyncOpenAI(base_url=server.base_url, api_key="x", max_retries=0)
    # A model routed the OpenRouter way: the answer and the stats keep the slash.
    model, with_usage = "openai/gpt-4o-mini", ChatCompletionStreamOptionsParam(include_usage=True)
    try:
        chat = await sdk.chat.completions.create(model=model, messages=MESSAGES, max_tokens=7)
        assert chat.model == model
        assert reported_cost(chat.usage) == float(expected_cost(MESSAGES_PROMPT_TOKENS, 7))
        stream = await sdk.chat.completions.create(
            model=model, messages=MESSAGES, stream=True, stream_options=with_usage
        )
        last = [chunk async for chunk in stream][-1]
        assert reported_cost(last.usage) == float(expected_cost(MESSAGES_PROMPT_TOKENS, 16))
        text = await sdk.completions.create(
            model=model, prompt="a b c", max_tokens=1, stream=True, stream_options=with_usage
        )
        assert reported_cost([chunk async for chunk in text][-1].usage) == float(
            expected_cost(3, 1)
        )
        vectors = await sdk.embeddings.create(model="e", input=["a b", "c d e"])
        assert reported_cost(vectors.usage) == float(expected_cost(5, 0))
        response = await sdk.responses.create(model=model, input="one two three")
        assert reported_cost(response.usage) == float(expected_cost(4, 16))
        events = await sdk.responses.create(
            model=model, input="one", stream=True, max_output_tokens=5
        )
        completed = [event async for event in events][-1]
        assert completed.type == "response.completed"
        assert reported_cost(completed.response.usage) == float(expected_cost(2, 5))
        unbilled = await sdk.chat.completions.create(model=model, messages=MESSAGES, stream=True)
        assert all([chunk.usage is None async for chunk in unbilled])
    finally:
        await sdk.close()
        await server.stop()
    total = sum(
        (
            expected_cost(MESSAGES_PROMPT_TOKENS, 7),
            expected_cost(MESSAGES_PROMPT_TOKENS, 16),
            expected_cost(3, 1),
            expected_cost(5, 0),
            expected_cost(4, 16),
            expected_cost(2, 5),
        ),
        Decimal(0),
    )
    assert isinstance(server.stats.cost_reported, Decimal)
    assert server.stats.cost_reported == total
    assert server.stats.by_model[model].requests == 5


async def test_reported_cost_is_the_exact_value_on_the_wire() -> None:
    """The JSON number parses back to float(exact Decimal), not to a float computation."""
    server = FakeUpstream(report_cost=True)
    await server.start()
    try:
        prompt = 3 + 1  # "a b c" plus one message
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                server.base_url + "/chat/completions",
                json={"model": "m", "messages": [{"role": "user", "content": "a b c"}],
                      "max_tokens": 3},
            ) as resp,
        ):  # fmt: skip
            cost = (await resp.json())["usage"]["cost"]
    finally:
        await server.stop()
    exact = expected_cost(prompt, 3)
    assert exact == Decimal("0.00001")
    assert prompt * 1e-6 + 3 * 2e-6 != float(exact)  # float arithmetic would be off
    assert cost == float(exact) and server.stats.cost_reported == exact


async def test_fail_next_fails_one_fake_among_several(
    fake: FakeUpstream, client: openai.AsyncOpenAI
) -> None:
    other = FakeUpstream()
    await other.start()
    other_sdk = openai.AsyncOpenAI(base_url=other.base_url, api_key="x", max_retries=0)
    try:
        fake.fail_next(429, 2, retry_after="7")
        for _ in range(2):
            with pytest.raises(openai.RateLimitError) as caught:
                await client.chat.completions.create(model="fake-gpt", messages=MESSAGES)
            assert caught.value.response.headers["retry-after"] == "7"
            assert isinstance(caught.value.body, dict)
            assert caught.value.body["type"] == "requests" and caught.value.body["message"]
            assert caught.value.body["code"] == "rate_limit_exceeded"
            await other_sdk.chat.completions.create(model="fake-gpt", messages=MESSAGES)
        await client.chat.completions.create(model="fake-gpt", messages=MESSAGES)
        fake.fail_next(503)
        with pytest.raises(openai.InternalServerError) as unavailable:
            await client.chat.completions.create(model="fake-gpt", messages=MESSAGES, stream=True)
        assert unavailable.value.status_code == 503
        await client.chat.completions.create(model="fake-gpt", messages=MESSAGES)
    finally:
        await other_sdk.close()
        await other.stop()
    stats = fake.stats
    assert (stats.received, stats.errors, stats.requests, stats.unbilled) == (5, 3, 2, 0)
    assert (other.stats.received, other.stats.errors, other.stats.requests) == (2, 0, 2)


def test_fail_next_and_delay_headers_refuse_nonsense() -> None:
    server = FakeUpstream()
    with pytest.raises(ValueError):
        server.fail_next(200)
    with pytest.raises(ValueError):
        server.fail_next(500, count=-1)
    with pytest.raises(ValueError):
        server.delay_headers(-1)


async def seconds_to_headers(url: str) -> float:
    """Time from sending a streamed chat request until its response headers arrived."""
    body = {"model": "fake-gpt", "messages": MESSAGES, "stream": True}
    async with aiohttp.ClientSession() as http:
        started = time.monotonic()
        async with http.post(url + "/chat/completions", json=body) as resp:
            elapsed = time.monotonic() - started
            assert resp.status == 200
            await resp.read()
    return elapsed


async def test_delay_headers_holds_back_the_first_byte(fake: FakeUpstream) -> None:
    fake.delay_headers(0.3)
    assert await seconds_to_headers(fake.base_url) >= 0.3
    fake.delay_headers(0)
    assert await seconds_to_headers(fake.base_url) < 0.25
    assert (fake.stats.received, fake.stats.unbilled) == (2, 2)  # streams without usage


async def test_reset_forgets_pending_failures_and_delay(
    fake: FakeUpstream, client: openai.AsyncOpenAI
) -> None:
    fake.fail_next(500, count=3)
    fake.delay_headers(5)
    fake.reset()
    started = time.monotonic()
    await client.chat.completions.create(model="fake-gpt", messages=MESSAGES)
    assert time.monotonic() - started < 2
    assert (fake.stats.requests, fake.stats.errors) == (1, 0)
