"""The ledger equals the upstream's own count, exactly, after a mixed concurrent load."""

import asyncio
import json
import random
from decimal import Decimal

import pytest

from spendgate.metering.pricing import PriceBook

pytestmark = pytest.mark.matrix


def exact(text: str):
    """Parse JSON keeping numbers with a fraction as exact decimals."""
    return json.loads(text, parse_float=Decimal)


MODELS = ("gpt-4o-mini", "gpt-4o", "text-embedding-3-small")


async def one_request(client, rng: random.Random) -> None:
    kind = rng.choice(("chat", "chat_stream", "chat_stream_usage", "completion", "embedding",
                       "responses", "responses_stream"))  # fmt: skip
    model = rng.choice(MODELS[:2])
    words = " ".join("w" for _ in range(rng.randint(1, 30)))
    cached = str(rng.randint(0, 3))
    reasoning = str(rng.randint(0, 4))
    headers = {"x-fake-cached-tokens": cached, "x-fake-reasoning-tokens": reasoning}
    max_tokens = rng.randint(1, 24)
    messages = [{"role": "user", "content": words}]
    if kind == "chat":
        await client.chat.completions.create(
            model=model, messages=messages, max_tokens=max_tokens, extra_headers=headers
        )
    elif kind.startswith("chat_stream"):
        options = {"include_usage": True} if kind.endswith("usage") else None
        stream = await client.chat.completions.create(
            model=model, messages=messages, max_tokens=max_tokens, stream=True,
            stream_options=options, extra_headers=headers,
        )  # fmt: skip
        async for _ in stream:
            pass
    elif kind == "completion":
        await client.completions.create(model=model, prompt=words, max_tokens=max_tokens)
    elif kind == "embedding":
        await client.embeddings.create(model="text-embedding-3-small", input=[words, "x y"])
    elif kind == "responses":
        await client.responses.create(
            model=model, input=words, max_output_tokens=max_tokens, extra_headers=headers
        )
    else:
        stream = await client.responses.create(
            model=model, input=words, max_output_tokens=max_tokens, stream=True,
            extra_headers=headers,
        )  # fmt: skip
        async for _ in stream:
            pass


async def test_thousand_mixed_requests_reconcile_exactly(gateway, upstream):
    keys = [await gateway.new_key(user) for user in ("ann", "bob", "cy")]
    clients = [gateway.client(key) for key in keys]
    rng = random.Random(20261122)
    plan = [(clients[i % 3], random.Random(rng.random())) for i in range(1000)]
    semaphore = asyncio.Semaphore(25)

    async def run(client, local_rng):
        async with semaphore:
            await one_request(client, local_rng)

    await asyncio.gather(*(run(client, local_rng) for client, local_rng in plan))
    await gateway.flush()
    async with gateway.admin() as admin:
        report = exact((await admin.get("/admin/usage", params={"group_by": "model"})).text)
        by_user = (await admin.get("/admin/usage", params={"group_by": "user"})).json()
    stats = upstream.stats
    totals = report["totals"]
    assert totals["requests"] == stats.requests == 1000
    for kind in ("prompt_tokens", "completion_tokens", "cached_tokens", "reasoning_tokens",
                 "total_tokens"):  # fmt: skip
        assert totals[kind] == getattr(stats, kind), kind

    book = PriceBook({})
    expected_total = Decimal(0)
    for group in report["groups"]:
        model_stats = stats.by_model[group["model"]]
        assert group["requests"] == model_stats.requests
        price = book.price_of(group["model"])
        expected = (
            (model_stats.prompt_tokens - model_stats.cached_tokens) * price.input_per_token
            + model_stats.cached_tokens * price.cached_input_per_token
            + model_stats.completion_tokens * price.output_per_token
        )
        assert group["cost_usd"] == expected, (group, model_stats, price)
        expected_total += expected
    assert totals["cost_usd"] == expected_total
    assert sum(group["requests"] for group in by_user["groups"]) == 1000
