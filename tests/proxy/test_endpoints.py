"""Every metered endpoint through the official SDK, streamed and not, against the ledger."""

from decimal import Decimal

import pytest

from tests.support import UPSTREAM_KEY


async def ledger_totals(gateway, **params):
    await gateway.flush()
    async with gateway.admin() as admin:
        response = await admin.get("/admin/usage", params=params)
    assert response.status_code == 200, response.text
    return response.json()["totals"]


def assert_ledger_matches_upstream(totals, stats):
    assert totals["requests"] == stats.requests
    for kind in ("prompt_tokens", "completion_tokens", "cached_tokens", "reasoning_tokens"):
        assert totals[kind] == getattr(stats, kind), kind
    assert totals["total_tokens"] == stats.total_tokens


async def test_chat_completion_carries_cost_and_request_id(gateway, upstream):
    key = await gateway.new_key()
    raw = await gateway.client(key).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hello there"}], max_tokens=5
    )
    completion = raw.parse()
    usage = completion.usage
    expected = (
        Decimal(usage.prompt_tokens) * Decimal("0.15")
        + Decimal(usage.completion_tokens) * Decimal("0.6")
    ) / 10**6
    assert Decimal(raw.headers["x-spendgate-cost-usd"]) == expected
    assert raw.headers["x-spendgate-request-id"].startswith("req_")
    totals = await ledger_totals(gateway)
    assert_ledger_matches_upstream(totals, upstream.stats)
    assert Decimal(str(totals["cost_usd"])) == expected


async def test_upstream_gets_the_shared_key_and_never_the_client_key(gateway, upstream):
    key = await gateway.new_key()
    await gateway.client(key).embeddings.create(model="text-embedding-3-small", input="hi")
    seen = upstream.requests[-1].headers
    assert seen["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert key not in " ".join(seen.values())


@pytest.mark.parametrize("header", ["api-key", "x-api-key", "authorization"])
async def test_each_client_auth_header_is_accepted(gateway, upstream, header):
    key = await gateway.new_key()
    value = f"Bearer {key}" if header == "authorization" else key
    response = await gateway.http().post(
        "/v1/embeddings",
        json={"model": "text-embedding-3-small", "input": "one two"},
        headers={header: value},
    )
    assert response.status_code == 200, response.text
    assert key not in str(upstream.requests[-1].headers)


async def test_streamed_chat_hides_the_usage_chunk_when_not_asked(gateway, upstream):
    key = await gateway.new_key()
    stream = await gateway.client(key).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "a b c"}], stream=True
    )
    chunks = [chunk async for chunk in stream]
    assert chunks and all(chunk.choices for chunk in chunks)
    assert all(chunk.usage is None for chunk in chunks)
    assert upstream.requests[-1].json["stream_options"] == {"include_usage": True}
    totals = await ledger_totals(gateway)
    assert_ledger_matches_upstream(totals, upstream.stats)
    assert upstream.stats.completion_tokens == 16


async def test_streamed_chat_keeps_the_usage_chunk_when_asked(gateway, upstream):
    key = await gateway.new_key()
    stream = await gateway.client(key).chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "a b c"}],
        stream=True,
        stream_options={"include_usage": True},
        max_tokens=12,
        extra_headers={"x-fake-cached-tokens": "2", "x-fake-reasoning-tokens": "3"},
    )
    chunks = [chunk async for chunk in stream]
    final = chunks[-1]
    assert final.choices == [] and final.usage is not None
    assert final.usage.prompt_tokens_details.cached_tokens == 2
    assert final.usage.completion_tokens_details.reasoning_tokens == 3
    totals = await ledger_totals(gateway)
    assert_ledger_matches_upstream(totals, upstream.stats)
    assert totals["cached_tokens"] == 2 and totals["reasoning_tokens"] == 3


async def test_completions_plain_and_streamed_are_metered(gateway, upstream):
    client = gateway.client(await gateway.new_key())
    await client.completions.create(model="gpt-3.5-turbo-instruct", prompt="say it", max_tokens=4)
    stream = await client.completions.create(
        model="gpt-3.5-turbo-instruct", prompt="say it", max_tokens=4, stream=True
    )
    texts = [chunk.choices[0].text async for chunk in stream if chunk.choices]
    texts = [text for text in texts if text]
    assert len(texts) == 4
    assert_ledger_matches_upstream(await ledger_totals(gateway), upstream.stats)
    assert upstream.stats.requests == 2


async def test_embeddings_are_metered(gateway, upstream):
    client = gateway.client(await gateway.new_key())
    result = await client.embeddings.create(
        model="text-embedding-3-small", input=["one two three", "four"]
    )
    assert len(result.data) == 2
    totals = await ledger_totals(gateway)
    assert_ledger_matches_upstream(totals, upstream.stats)
    assert totals["prompt_tokens"] == result.usage.prompt_tokens
    assert totals["completion_tokens"] == 0


async def test_responses_api_plain_and_streamed_are_metered(gateway, upstream):
    client = gateway.client(await gateway.new_key())
    response = await client.responses.create(
        model="gpt-4o-mini",
        input="write one line",
        max_output_tokens=6,
        extra_headers={"x-fake-cached-tokens": "1", "x-fake-reasoning-tokens": "2"},
    )
    assert response.usage.output_tokens == 8
    stream = await client.responses.create(
        model="gpt-4o-mini", input="write one line", max_output_tokens=6, stream=True
    )
    kinds = [event.type async for event in stream]
    assert kinds[-1] == "response.completed"
    totals = await ledger_totals(gateway)
    assert_ledger_matches_upstream(totals, upstream.stats)
    assert totals["cached_tokens"] == 1 and totals["reasoning_tokens"] == 2


async def test_served_model_is_priced_and_recorded(gateway, upstream):
    client = gateway.client(await gateway.new_key())
    await client.chat.completions.create(
        model="my-alias",
        messages=[{"role": "user", "content": "x"}],
        extra_headers={"x-fake-served-model": "gpt-4o-mini"},
    )
    await gateway.flush()
    async with gateway.admin() as admin:
        groups = (await admin.get("/admin/usage", params={"group_by": "model"})).json()["groups"]
    assert [group["model"] for group in groups] == ["gpt-4o-mini"]
    assert groups[0]["cost_usd"] > 0


async def test_unpriced_model_is_metered_with_null_cost(gateway, upstream):
    client = gateway.client(await gateway.new_key())
    raw = await client.chat.completions.with_raw_response.create(
        model="no-such-model-anywhere", messages=[{"role": "user", "content": "x"}]
    )
    assert "x-spendgate-cost-usd" not in raw.headers
    await gateway.flush()
    async with gateway.admin() as admin:
        csv_text = (await admin.get("/admin/usage.csv")).text
    header, row = csv_text.strip().splitlines()
    values = dict(zip(header.split(","), row.split(","), strict=True))
    assert values["cost_usd"] == "" and int(values["total_tokens"]) > 0
    metrics = (await gateway.http().get("/metrics")).text
    assert 'spendgate_unpriced_requests_total{model="no-such-model-anywhere"} 1.0' in metrics


async def test_default_model_is_filled_in(make_gateway, upstream):
    async with make_gateway(default_model="gpt-4o-mini") as gateway:
        response = await gateway.http().post(
            "/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "hi"}]},
            headers={"Authorization": f"Bearer {await gateway.new_key()}"},
        )
        assert response.status_code == 200
        assert upstream.requests[-1].json["model"] == "gpt-4o-mini"


async def test_api_version_is_added_unless_the_client_sent_one(make_gateway, upstream):
    async with make_gateway(upstream_api_version="2024-10-21") as gateway:
        http = gateway.http()
        headers = {"Authorization": f"Bearer {await gateway.new_key()}"}
        await http.get("/v1/files", headers=headers)
        assert upstream.requests[-1].query_string == "api-version=2024-10-21"
        await http.get("/v1/files?api-version=2025-01-01&x=1", headers=headers)
        assert upstream.requests[-1].query_string == "api-version=2025-01-01&x=1"


async def test_other_methods_and_paths_pass_through_and_count_as_requests(gateway, upstream):
    http = gateway.http()
    headers = {"Authorization": f"Bearer {await gateway.new_key()}"}
    deleted = await http.delete("/v1/files/file-abc", headers=headers)
    assert deleted.status_code == 200
    assert deleted.json() == {"object": "fake", "path": "/v1/files/file-abc", "method": "DELETE"}
    assert deleted.headers["x-spendgate-cost-usd"] == "0"
    totals = await ledger_totals(gateway)
    assert totals["requests"] == 1 and totals["total_tokens"] == 0


async def test_end_user_is_recorded_from_header_or_body(gateway, upstream):
    client = gateway.client(await gateway.new_key())
    await client.embeddings.create(
        model="text-embedding-3-small", input="x", extra_headers={"X-User-ID": "cust-1"}
    )
    await client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}], user="cust-2"
    )
    await gateway.flush()
    async with gateway.admin() as admin:
        report = (await admin.get("/admin/usage", params={"group_by": "end_user"})).json()
        only = (await admin.get("/admin/usage", params={"end_user": "cust-1"})).json()
    assert sorted(group["end_user"] for group in report["groups"]) == ["cust-1", "cust-2"]
    assert only["totals"]["requests"] == 1
