"""The benchmark's bare pass-through proxy (bench/passthrough.py), on real sockets."""

from collections.abc import AsyncIterator

import openai
import pytest
from bench.passthrough import Passthrough, SseUsageScanner

from spendgate.fake_upstream import FakeUpstream

CLIENT_KEY = "sk-bench-client"
UPSTREAM_KEY = "sk-bench-upstream"
MESSAGES = [{"role": "user", "content": "three words here"}]  # 3 words + 1 message = 4 tokens


@pytest.fixture
async def proxy(upstream: FakeUpstream) -> AsyncIterator[Passthrough]:
    passthrough = Passthrough(upstream.base_url, UPSTREAM_KEY, {"bench": CLIENT_KEY})
    await passthrough.start()
    yield passthrough
    await passthrough.stop()


def client(proxy: Passthrough, key: str = CLIENT_KEY) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=proxy.base_url, api_key=key, max_retries=0, timeout=10)


async def test_chat_is_forwarded_with_the_upstream_key_and_metered(
    proxy: Passthrough, upstream: FakeUpstream
) -> None:
    async with client(proxy) as sdk:
        answer = await sdk.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, max_tokens=5
        )
    assert answer.usage is not None and answer.usage.prompt_tokens == 4
    assert upstream.requests[-1].headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
    totals = proxy.totals()
    assert (totals.requests, totals.prompt_tokens, totals.completion_tokens) == (1, 4, 5)


async def test_wrong_key_is_refused_before_the_upstream(
    proxy: Passthrough, upstream: FakeUpstream
) -> None:
    async with client(proxy, key="sk-wrong") as sdk:
        with pytest.raises(openai.AuthenticationError):
            await sdk.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert upstream.stats.received == 0


async def test_stream_is_relayed_chunk_by_chunk_and_its_usage_counted(
    proxy: Passthrough, upstream: FakeUpstream
) -> None:
    async with client(proxy) as sdk:
        stream = await sdk.chat.completions.create(
            model="gpt-4o-mini",
            messages=MESSAGES,
            max_tokens=7,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "tok0 tok1 tok2 tok3 tok4 tok5 tok6"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 7
    totals = proxy.totals()
    assert (totals.requests, totals.prompt_tokens, totals.completion_tokens) == (1, 4, 7)
    assert upstream.stats.requests == 1


async def test_embeddings_and_upstream_errors_pass_through(
    proxy: Passthrough, upstream: FakeUpstream
) -> None:
    async with client(proxy) as sdk:
        vectors = await sdk.embeddings.create(model="text-embedding-3-small", input="a b c")
        with pytest.raises(openai.InternalServerError):
            await sdk.chat.completions.create(
                model="gpt-4o-mini", messages=MESSAGES, extra_headers={"x-fake-status": "500"}
            )
    assert vectors.usage.prompt_tokens == 3
    totals = proxy.totals()
    assert (totals.requests, totals.prompt_tokens) == (1, 3)
    assert upstream.stats.errors == 1


def test_scanner_reads_usage_split_across_chunks_and_skips_nulls() -> None:
    scanner = SseUsageScanner()
    event = b'data: {"choices":[],"usage":{"prompt_tokens":2,"completion_tokens":3}}\n\n'
    assert scanner.feed(b'data: {"choices":[{"delta":{}}],"usage":null}\n\n') == []
    assert scanner.feed(event[:20]) == []
    assert scanner.feed(event[20:] + b"data: [DONE]\n\n") == [
        {"prompt_tokens": 2, "completion_tokens": 3}
    ]
