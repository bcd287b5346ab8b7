"""Budgets, credits, allow-lists and rate limits through the official SDK over real sockets."""

import asyncio
import json
from decimal import Decimal
from typing import Any

import openai
import pytest

pytestmark = pytest.mark.matrix

# 1 µ$ per prompt token, 2 µ$ per completion token
PRICING = json.dumps({"fake-gpt": {"input": 0.001, "output": 0.002}})
MESSAGES = [{"role": "user", "content": "hello world"}]  # the fake bills 3 prompt tokens
# 3 prompt + 10 completion tokens
ONE_REQUEST = 3 * Decimal("0.000001") + 10 * Decimal("0.000002")


def exact(text: str) -> Any:
    return json.loads(text, parse_float=Decimal)


async def chat(client: openai.AsyncOpenAI, **extra: Any) -> Any:
    return await client.chat.completions.create(
        model="fake-gpt", messages=MESSAGES, max_tokens=10, **extra
    )


async def outcome(client: openai.AsyncOpenAI) -> str:
    """'ok', or the error code the gateway answered with."""
    try:
        await chat(client)
    except openai.APIStatusError as exc:
        return str(exc.code)
    return "ok"


async def ledger_cost(gateway: Any, user: str) -> Decimal:
    await gateway.flush()
    async with gateway.admin() as admin:
        response = await admin.get("/admin/usage", params={"user": user})
    return exact(response.text)["totals"]["cost_usd"]


async def spend_until_refused(gateway: Any, key: str, code: str) -> tuple[int, Decimal]:
    """Waves of 200 concurrent requests until a whole wave is refused with `code`."""
    client = gateway.client(key)
    served = 0
    while True:
        results = await asyncio.gather(*(outcome(client) for _ in range(200)))
        assert set(results) <= {"ok", code}
        served += results.count("ok")
        if "ok" not in results:
            return served, await ledger_cost(gateway, "ann")


async def test_200_concurrent_requests_never_overspend_a_budget(make_gateway, upstream):
    async with make_gateway(model_pricing_json=PRICING) as gateway:
        budget = Decimal("0.001")  # about 43 requests
        async with gateway.admin() as admin:
            created = await admin.post(
                "/admin/keys", json={"user": "ann", "budget_usd": "0.001", "budget_period": "daily"}
            )
        served, spent = await spend_until_refused(gateway, created.json()["key"], "budget_exceeded")
        assert budget <= spent <= budget + ONE_REQUEST
        assert spent == served * ONE_REQUEST
        # the ledger equals the upstream's own count
        assert upstream.stats.requests == served
        assert upstream.stats.total_tokens == served * 13


async def test_200_concurrent_requests_never_overdraw_prepaid_credits(make_gateway, upstream):
    async with make_gateway(model_pricing_json=PRICING) as gateway:
        key = await gateway.new_key("ann")
        async with gateway.admin() as admin:
            topped = await admin.post(
                "/admin/users/ann/credits", json={"amount_usd": "0.0005", "note": "trial"}
            )
            assert topped.status_code == 200
            assert exact(topped.text) == {"name": "ann", "balance_usd": Decimal("0.0005")}
        served, spent = await spend_until_refused(gateway, key, "insufficient_credits")
        assert Decimal("0.0005") <= spent <= Decimal("0.0005") + ONE_REQUEST
        assert upstream.stats.requests == served
        async with gateway.admin() as admin:
            user = exact((await admin.get("/admin/users/ann")).text)
        assert user["balance_usd"] == Decimal("0.0005") - spent


async def test_budget_and_credit_refusals_are_openai_shaped_402s(make_gateway, upstream):
    async with make_gateway(model_pricing_json=PRICING) as gateway:
        budget_key = await gateway.new_key("bea", budget_usd=Decimal(0))
        credit_key = await gateway.new_key("cy")
        async with gateway.admin() as admin:
            await admin.post("/admin/users/cy/credits", json={"amount_usd": "1"})
            await admin.post("/admin/users/cy/credits", json={"amount_usd": "-1", "note": "oops"})
        for key, code in ((budget_key, "budget_exceeded"), (credit_key, "insufficient_credits")):
            with pytest.raises(openai.APIStatusError) as caught:
                await chat(gateway.client(key))
            assert caught.value.status_code == 402
            assert caught.value.code == code
            assert caught.value.body["type"]  # OpenAI-shaped: message, type, code, param
            assert "param" in caught.value.body
        assert upstream.stats.received == 0  # refused before the upstream


async def test_a_model_outside_the_keys_allow_list_is_a_403(gateway, upstream):
    key = await gateway.new_key("ann", models=["fake-gpt-*"])
    client = gateway.client(key)
    with pytest.raises(openai.PermissionDeniedError) as caught:
        await chat(client)
    assert caught.value.code == "model_not_allowed"
    reply = await client.chat.completions.create(
        model="fake-gpt-mini", messages=MESSAGES, max_tokens=2
    )
    assert reply.usage is not None


async def test_an_expired_key_is_a_401(gateway):
    from datetime import UTC, datetime, timedelta

    key = await gateway.new_key("ann", expires_at=datetime.now(UTC) - timedelta(seconds=1))
    with pytest.raises(openai.AuthenticationError) as caught:
        await chat(gateway.client(key))
    assert caught.value.code == "invalid_api_key"
    assert "expired" in caught.value.message


async def test_rate_limit_429_carries_retry_after_and_the_six_headers(gateway):
    key = await gateway.new_key("ann", limits={"requests_per_minute": 2, "tokens_per_day": 100000})
    http = gateway.http()
    auth = {"Authorization": f"Bearer {key}"}
    body = {"model": "fake-gpt", "messages": MESSAGES, "max_tokens": 10}
    first = await http.post("/v1/chat/completions", json=body, headers=auth)
    assert first.status_code == 200
    assert first.headers["x-ratelimit-limit-requests"] == "2"
    assert first.headers["x-ratelimit-remaining-requests"] == "1"
    assert first.headers["x-ratelimit-reset-requests"] == "30s"
    assert first.headers["x-ratelimit-limit-tokens"] == "100000"
    assert first.headers["x-ratelimit-remaining-tokens"] == "100000"  # charged at settlement
    await http.post("/v1/chat/completions", json=body, headers=auth)
    refused = await http.post("/v1/chat/completions", json=body, headers=auth)
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert 1 <= int(refused.headers["retry-after"]) <= 30
    for name in ("limit", "remaining", "reset"):
        assert f"x-ratelimit-{name}-requests" in refused.headers
        assert f"x-ratelimit-{name}-tokens" in refused.headers
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert refused.headers["x-ratelimit-remaining-tokens"] == str(100000 - 2 * 13)
    assert "x-spendgate-request-id" in refused.headers


async def test_the_sdk_sees_a_rate_limit_error(gateway, upstream):
    key = await gateway.new_key("ann", limits={"requests_per_minute": 1})
    client = gateway.client(key)
    await chat(client)
    with pytest.raises(openai.RateLimitError) as caught:
        await chat(client)
    assert caught.value.code == "rate_limit_exceeded"
    assert upstream.stats.received == 1


async def test_token_limits_are_charged_with_the_real_count(gateway, upstream):
    key = await gateway.new_key("ann", limits={"tokens_per_minute": 20})
    client = gateway.client(key)
    await chat(client)  # 13 tokens
    await chat(client)  # room for one more token when admitted: 26 of 20
    with pytest.raises(openai.RateLimitError):
        await chat(client)
    assert upstream.stats.total_tokens == 26


async def test_user_limits_cover_all_of_a_users_keys_and_refusals_charge_nothing(gateway):
    async with gateway.admin() as admin:
        made = await admin.post(
            "/admin/users", json={"name": "ann", "limits": {"requests_per_minute": 3}}
        )
        assert made.status_code == 201
    one = await gateway.new_key("ann", limits={"requests_per_minute": 1})
    two = await gateway.new_key("ann")
    assert await outcome(gateway.client(one)) == "ok"
    for _ in range(3):
        assert await outcome(gateway.client(one)) == "rate_limit_exceeded"
    # key one's refusals took nothing from the user's limit: two more fit through key two
    assert await outcome(gateway.client(two)) == "ok"
    assert await outcome(gateway.client(two)) == "ok"
    assert await outcome(gateway.client(two)) == "rate_limit_exceeded"


async def test_refusals_are_recorded_and_counted_in_metrics(make_gateway):
    async with make_gateway(model_pricing_json=PRICING) as gateway:
        limited = await gateway.new_key("ann", limits={"requests_per_day": 0})
        broke = await gateway.new_key("bob", budget_usd=Decimal(0))
        assert await outcome(gateway.client(limited)) == "rate_limit_exceeded"
        assert await outcome(gateway.client(broke)) == "budget_exceeded"
        await gateway.flush()
        http = gateway.http()
        metrics = (await http.get("/metrics")).text
        async with gateway.admin() as admin:
            csv_text = (await admin.get("/admin/usage.csv")).text
    assert "spendgate_rate_limited_total 1.0" in metrics
    assert 'spendgate_budget_rejected_total{code="budget_exceeded"} 1.0' in metrics
    rows = csv_text.strip().splitlines()[1:]
    assert len(rows) == 2
    assert {row.split(",")[6] for row in rows} == {"429", "402"}


async def test_patching_a_budget_takes_effect_at_once(make_gateway):
    async with make_gateway(model_pricing_json=PRICING) as gateway:
        key = await gateway.new_key("ann")
        client = gateway.client(key)
        assert await outcome(client) == "ok"
        async with gateway.admin() as admin:
            patched = await admin.patch("/admin/users/ann", json={"budget_usd": "0.00001"})
            assert patched.status_code == 200
            # the request before the budget counts toward it: it is already spent
            assert exact(patched.text)["spend_usd"] == ONE_REQUEST
        assert await outcome(client) == "budget_exceeded"
        async with gateway.admin() as admin:
            await admin.patch("/admin/users/ann", json={"budget_usd": None})
        assert await outcome(client) == "ok"


async def test_defaults_from_settings_apply_to_new_users_and_keys(make_gateway):
    async with make_gateway(
        default_user_budget_usd="5",
        default_user_budget_period="weekly",
        default_key_limits={"requests_per_minute": 7},
    ) as gateway:
        async with gateway.admin() as admin:
            created = await admin.post("/admin/keys", json={"user": "newbie"})
            assert created.status_code == 201
            assert created.json()["limits"] == {"requests_per_minute": 7}
            user = exact((await admin.get("/admin/users/newbie")).text)
            own = await admin.post(
                "/admin/keys", json={"user": "newbie", "limits": {"requests_per_day": 9}}
            )
        assert user["budget_usd"] == 5
        assert user["budget_period"] == "weekly"
        assert own.json()["limits"] == {"requests_per_day": 9}  # given limits win
