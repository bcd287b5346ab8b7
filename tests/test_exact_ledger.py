"""The ledger equals the upstream's own count, exactly, after a mixed concurrent load."""

import asyncio
import json
import random
from decimal import Decimal

import pytest
from prometheus_client.parser import text_string_to_metric_families

from spendgate.metering.pricing import PriceBook

pytestmark = pytest.mark.matrix


def exact(text: str):
    """Parse JSON keeping numbers with a fraction as exact decimals."""
    return json.loads(text, parse_float=Decimal)


MODELS = ("gpt-4o-mini", "gpt-4o", "text-embedding-3-small")


async def one_request(client, rng: random.Random) -> str:
    """One random request; returns its kind."""
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
    return kind


async def test_thousand_mixed_requests_reconcile_exactly(make_gateway, upstream):
    async with make_gateway(metrics_user_labels=True) as gateway:
        await reconcile_thousand_requests(gateway, upstream)


async def reconcile_thousand_requests(gateway, upstream) -> None:
    keys = [await gateway.new_key(user) for user in ("ann", "bob", "cy")]
    clients = [gateway.client(key) for key in keys]
    rng = random.Random(20261122)
    plan = [(clients[i % 3], random.Random(rng.random())) for i in range(1000)]
    semaphore = asyncio.Semaphore(25)

    async def run(client, local_rng):
        async with semaphore:
            return await one_request(client, local_rng)

    kinds = await asyncio.gather(*(run(client, local_rng) for client, local_rng in plan))
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
    streams = sum(1 for kind in kinds if "_stream" in kind)
    await metrics_agree(gateway, report, by_user, streams)


async def metrics_agree(gateway, by_model: dict, by_user: dict, streams: int) -> None:
    """A scrape of /metrics after the load agrees with the ledger's totals."""
    text = (await gateway.http().get("/metrics")).text
    samples = [s for family in text_string_to_metric_families(text) for s in family.samples]

    def total(name, **labels):
        return sum(
            s.value for s in samples if s.name == name and labels.items() <= s.labels.items()
        )

    totals = by_model["totals"]
    assert total("spendgate_requests_total") == totals["requests"]
    assert total("spendgate_usage_events_written_total") == totals["requests"]
    assert total("spendgate_request_duration_seconds_count") == totals["requests"]
    # every request reached the upstream; the streamed ones relayed a first token
    assert total("spendgate_upstream_latency_seconds_count") == totals["requests"]
    assert total("spendgate_time_to_first_token_seconds_count") == streams
    for kind in ("prompt", "completion", "cached", "reasoning"):
        assert total("spendgate_tokens_total", kind=kind) == totals[f"{kind}_tokens"], kind
    for group in by_model["groups"]:
        model = group["model"]
        assert total("spendgate_requests_total", model=model) == group["requests"]
        cost = total("spendgate_cost_usd_total", model=model)
        assert cost == pytest.approx(float(group["cost_usd"]), rel=1e-12), model
    for group in by_user["groups"]:
        user = group["user"]
        assert total("spendgate_user_requests_total", user=user) == group["requests"]
        cost = total("spendgate_user_cost_usd_total", user=user)
        assert cost == pytest.approx(float(Decimal(str(group["cost_usd"]))), rel=1e-12), user
    # nothing left over once the load has drained
    for gauge in ("spendgate_requests_in_flight", "spendgate_reservations_open",
                  "spendgate_write_queue_depth", "spendgate_stream_drains_active"):  # fmt: skip
        assert total(gauge) == 0, gauge
    assert total("spendgate_usage_events_dropped_total") == 0
    assert total("spendgate_database_errors_total") == 0
