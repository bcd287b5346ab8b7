"""The fake upstream playing Azure OpenAI and OpenRouter, and failing on demand.

Checked with the official SDK's own clients (`AsyncAzureOpenAI` builds Azure's URLs itself),
so the gateway's routing tests run against shapes the real SDKs produce.
"""

import time
from collections.abc import AsyncIterator
from decimal import Decimal

import aiohttp
import openai
import pytest

from spendgate.fake_upstream import COST_PER_COMPLETION_TOKEN, COST_PER_PROMPT_TOKEN, FakeUpstream

MESSAGES = [{"role": "user", "content": "one two three"}]  # 3 words + 1 per message


@pytest.fixture
async def azure_fake() -> AsyncIterator[FakeUpstream]:
    fake = FakeUpstream(deployments={"gpt4o-prod": "gpt-4o"}, require_key="az-key")
    await fake.start()
    yield fake
    await fake.stop()


def azure_client(fake: FakeUpstream, key: str = "az-key", **kwargs) -> openai.AsyncAzureOpenAI:
    return openai.AsyncAzureOpenAI(
        azure_endpoint=fake.base_url.removesuffix("/v1"), api_key=key,
        api_version="2024-10-21", max_retries=0, **kwargs,
    )  # fmt: skip


async def test_the_azure_sdk_reaches_a_deployment(azure_fake: FakeUpstream):
    client = azure_client(azure_fake)
    try:
        answer = await client.chat.completions.create(model="gpt4o-prod", messages=MESSAGES)
        assert answer.model == "gpt-4o" and answer.usage.prompt_tokens == 4
        stream = await client.chat.completions.create(
            model="gpt4o-prod", messages=MESSAGES, stream=True,
            stream_options={"include_usage": True},
        )  # fmt: skip
        usage = [chunk.usage async for chunk in stream if chunk.usage]
        assert usage[0].completion_tokens == 16
    finally:
        await client.close()
    sent = azure_fake.requests[-1]
    assert sent.path == "/openai/deployments/gpt4o-prod/chat/completions"
    assert sent.query_string == "api-version=2024-10-21"
    assert sent.headers["api-key"] == "az-key"
    assert azure_fake.stats.by_model["gpt-4o"].requests == 2


async def test_azure_refusals(azure_fake: FakeUpstream):
    wrong = azure_client(azure_fake, key="nope")
    unknown = azure_client(azure_fake)
    try:
        with pytest.raises(openai.AuthenticationError):
            await wrong.chat.completions.create(model="gpt4o-prod", messages=MESSAGES)
        with pytest.raises(openai.NotFoundError) as missing:
            await unknown.chat.completions.create(model="no-such", messages=MESSAGES)
        assert missing.value.body["code"] == "DeploymentNotFound"
    finally:
        await wrong.close()
        await unknown.close()
    base = azure_fake.base_url.removesuffix("/v1")
    async with aiohttp.ClientSession() as http:
        url = f"{base}/openai/deployments/gpt4o-prod/chat/completions"
        async with http.post(url, json={"messages": MESSAGES}, headers={"api-key": "az-key"}) as r:
            assert r.status == 404 and (await r.json())["error"]["code"] == "404"
    assert azure_fake.stats.requests == 0


async def test_report_cost_adds_openrouters_usage_cost():
    fake = FakeUpstream(report_cost=True)
    await fake.start()
    client = openai.AsyncOpenAI(base_url=fake.base_url, api_key="k", max_retries=0)
    try:
        answer = await client.chat.completions.create(model="openai/gpt-4o-mini", messages=MESSAGES)
        assert answer.model == "openai/gpt-4o-mini"
        expected = 4 * COST_PER_PROMPT_TOKEN + 16 * COST_PER_COMPLETION_TOKEN
        assert answer.usage.model_extra["cost"] == float(expected)
        stream = await client.chat.completions.create(
            model="m", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
        streamed = [chunk.usage async for chunk in stream if chunk.usage]
        assert streamed[0].model_extra["cost"] == float(expected)
        embedded = await client.embeddings.create(model="e", input="a b")
        assert embedded.usage.model_extra["cost"] == float(2 * COST_PER_PROMPT_TOKEN)
        response = await client.responses.create(model="m", input="one two three")
        assert response.usage.model_extra["cost"] == float(expected)
    finally:
        await client.close()
        await fake.stop()
    assert fake.stats.cost_reported == 3 * expected + 2 * COST_PER_PROMPT_TOKEN
    assert isinstance(fake.stats.cost_reported, Decimal)


async def test_fail_next_and_delay_headers():
    fake = FakeUpstream()
    await fake.start()
    client = openai.AsyncOpenAI(base_url=fake.base_url, api_key="k", max_retries=0)
    try:
        fake.fail_next(429, count=2, retry_after="7")
        for _ in range(2):
            with pytest.raises(openai.RateLimitError) as limited:
                await client.chat.completions.create(model="m", messages=MESSAGES)
            assert limited.value.response.headers["retry-after"] == "7"
        await client.chat.completions.create(model="m", messages=MESSAGES)
        fake.fail_next(503)
        with pytest.raises(openai.InternalServerError):
            await client.chat.completions.create(model="m", messages=MESSAGES)
        assert (fake.stats.requests, fake.stats.errors, fake.stats.received) == (1, 3, 4)
        fake.delay_headers(0.3)
        started = time.monotonic()
        await client.chat.completions.create(model="m", messages=MESSAGES)
        assert time.monotonic() - started >= 0.3
        fake.delay_headers(0)
        started = time.monotonic()
        await client.chat.completions.create(model="m", messages=MESSAGES)
        assert time.monotonic() - started < 0.3
    finally:
        await client.close()
        await fake.stop()
