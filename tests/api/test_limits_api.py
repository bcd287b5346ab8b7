"""The admin and self API of budgets, credits and limits: /me, credits, PATCH, validation."""

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from tests.stacks import COVERING

pytestmark = pytest.mark.matrix(COVERING)

PRICING = json.dumps({"fake-gpt": {"input": 0.001, "output": 0.002}})  # 1 and 2 µ$ per token
ONE_REQUEST = Decimal("0.000023")  # 3 prompt + 10 completion tokens


def exact(text: str) -> Any:
    return json.loads(text, parse_float=Decimal)


async def chat(gateway: Any, key: str) -> None:
    await gateway.client(key).chat.completions.create(
        model="fake-gpt", messages=[{"role": "user", "content": "hello world"}], max_tokens=10
    )


async def me(gateway: Any, key: str) -> Any:
    response = await gateway.http().get("/me", headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 200
    return exact(response.text)


async def test_me_shows_budget_balance_and_every_limit_with_what_is_left(make_gateway):
    async with make_gateway(model_pricing_json=PRICING) as gateway:
        async with gateway.admin() as admin:
            await admin.post(
                "/admin/users",
                json={"name": "ann", "budget_usd": "0.01", "budget_period": "daily",
                      "limits": {"requests_per_minute": 10, "tokens_per_day": 1000}},
            )  # fmt: skip
            await admin.post("/admin/users/ann/credits", json={"amount_usd": "1"})
            created = await admin.post(
                "/admin/keys",
                json={"user": "ann", "note": "laptop", "budget_usd": "0.5",
                      "limits": {"requests_per_minute": 4}, "models": ["fake-*"]},
            )  # fmt: skip
        key = created.json()["key"]
        await chat(gateway, key)
        await chat(gateway, key)
        body = await me(gateway, key)
    today = datetime.now(UTC).date()
    assert body["user"] == "ann"
    assert body["key"]["note"] == "laptop"
    assert body["key"]["models"] == ["fake-*"]
    assert body["key"]["budget"]["usd"] == Decimal("0.5")
    assert body["key"]["budget"]["period"] == "monthly"
    assert body["spend_usd"] == {
        "today": 2 * ONE_REQUEST, "month": 2 * ONE_REQUEST, "total": 2 * ONE_REQUEST
    }  # fmt: skip
    assert body["budget"] == {
        "usd": Decimal("0.01"),
        "period": "daily",
        "spent_usd": 2 * ONE_REQUEST,
        "remaining_usd": Decimal("0.01") - 2 * ONE_REQUEST,
        "resets_at": f"{today + timedelta(days=1)}T00:00:00+00:00",
    }
    assert body["balance_usd"] == 1 - 2 * ONE_REQUEST
    limits = body["limits"]
    # the key's 4 per minute is tighter than the user's 10: /me shows the tighter
    assert limits["requests_per_minute"]["limit"] == 4
    assert limits["requests_per_minute"]["remaining"] == 2
    assert limits["requests_per_minute"]["scope"] == "key"
    assert limits["tokens_per_day"]["limit"] == 1000
    assert limits["tokens_per_day"]["remaining"] == 1000 - 26
    resets = datetime.fromisoformat(limits["tokens_per_day"]["resets_at"])
    assert timedelta(0) < resets - datetime.now(UTC) <= timedelta(days=1)


async def test_credits_are_a_ledger_of_changes_with_note_and_actor(gateway):
    async with gateway.admin() as admin:
        await admin.post("/admin/users", json={"name": "ann"})
        first = await admin.post(
            "/admin/users/ann/credits", json={"amount_usd": "10", "note": "Q3 top-up"}
        )
        second = await admin.post(
            "/admin/users/ann/credits",
            json={"amount_usd": "-0.000000000001", "note": "rounding", "actor": "carol"},
        )
        history = await admin.get("/admin/users/ann/credits")
        user = await admin.get("/admin/users/ann")
    assert exact(first.text) == {"name": "ann", "balance_usd": 10}
    assert exact(second.text) == {"name": "ann", "balance_usd": Decimal("9.999999999999")}
    rows = exact(history.text)["transactions"]
    assert [(r["amount_usd"], r["note"], r["actor"]) for r in rows] == [
        (10, "Q3 top-up", "admin-api"),
        (Decimal("-0.000000000001"), "rounding", "carol"),
    ]
    assert exact(user.text)["balance_usd"] == Decimal("9.999999999999")


async def test_a_user_without_credits_has_a_null_balance(gateway):
    async with gateway.admin() as admin:
        await admin.post("/admin/users", json={"name": "ann"})
        user = await admin.get("/admin/users/ann")
        history = await admin.get("/admin/users/ann/credits")
    assert user.json()["balance_usd"] is None
    assert history.json() == {"name": "ann", "balance_usd": None, "transactions": []}


@pytest.mark.parametrize(
    "body",
    [
        {"amount_usd": 0},
        {"amount_usd": "abc"},
        {"amount_usd": "0.0000000000001"},  # past the picodollar
        {"amount_usd": 10**9},  # beyond what the ledger holds
        {"amount_usd": 1, "extra": True},
        {},
    ],
)
async def test_bad_credit_changes_are_400s(gateway, body):
    async with gateway.admin() as admin:
        await admin.post("/admin/users", json={"name": "ann"})
        response = await admin.post("/admin/users/ann/credits", json=body)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_request"


async def test_credits_for_an_unknown_user_are_a_404(gateway):
    async with gateway.admin() as admin:
        response = await admin.post("/admin/users/nobody/credits", json={"amount_usd": 1})
    assert response.status_code == 404


async def test_credit_routes_need_the_admin_token(gateway):
    response = await gateway.http().post("/admin/users/ann/credits", json={"amount_usd": 1})
    assert response.status_code == 401


@pytest.mark.parametrize(
    "body",
    [
        {"limits": {"requests_per_minute": -1}},
        {"limits": {"rpm": 5}},
        {"budget_usd": -1},
        {"budget_usd": 10**8},
        {"budget_period": "yearly"},
        {"models": [""]},
    ],
)
async def test_bad_budgets_and_limits_are_refused_on_keys(gateway, body):
    async with gateway.admin() as admin:
        response = await admin.post("/admin/keys", json={"user": "ann", **body})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_request"


async def test_patching_a_keys_limits_and_models_takes_effect_at_once(gateway, upstream):
    async with gateway.admin() as admin:
        created = (await admin.post("/admin/keys", json={"user": "ann"})).json()
    key = created["key"]
    await chat(gateway, key)
    async with gateway.admin() as admin:
        patched = await admin.patch(
            f"/admin/keys/{created['id']}",
            json={"limits": {"requests_per_day": 1}, "models": ["other-*"]},
        )
    assert patched.json()["limits"] == {"requests_per_day": 1}
    assert patched.json()["models"] == ["other-*"]
    response = await gateway.http().post(
        "/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={"model": "fake-gpt", "messages": [{"role": "user", "content": "x"}]},
    )
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "model_not_allowed"
    async with gateway.admin() as admin:
        await admin.patch(f"/admin/keys/{created['id']}", json={"models": None})
    await chat(gateway, key)  # the new day limit: the first request since the patch
    response = await gateway.http().post(
        "/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={"model": "fake-gpt", "messages": [{"role": "user", "content": "x"}]},
    )
    assert response.status_code == 429
    assert upstream.stats.received == 2
