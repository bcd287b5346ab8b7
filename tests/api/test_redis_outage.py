"""A gateway whose Redis does not answer: `/health` says so, requests follow the settings.

Nothing listens on port 1, so every Redis call fails at once: the defaults admit a request
under rate limits only (`fail_open`) and refuse one under a budget (`fail_closed`, 503
`limits_unavailable`); both settings can be turned around. Every answered request is still
in the ledger.
"""

from decimal import Decimal

import openai
import pytest

DOWN = {"redis_url": "redis://127.0.0.1:1/0", "redis_timeout_seconds": 0.5}
MESSAGES = [{"role": "user", "content": "hello"}]


async def chat(client: openai.AsyncOpenAI) -> str:
    """'ok' or the gateway's error code."""
    try:
        await client.chat.completions.create(
            model="fake-gpt",
            messages=MESSAGES,  # type: ignore[arg-type]
            max_tokens=5,
        )
    except openai.APIStatusError as exc:
        assert exc.status_code in (402, 429, 503), exc
        return str(exc.code)
    return "ok"


async def test_health_reports_redis_down(make_gateway):
    async with make_gateway(**DOWN) as gw:
        response = await gw.http().get("/health")
    assert response.status_code == 503
    body = response.json()
    assert body["database"] == "ok"
    assert body["redis"] == "down"
    assert "127.0.0.1:1" not in response.text  # no connection details to the public


@pytest.mark.parametrize(
    ("settings", "rate_limited", "budgeted"),
    [
        ({}, "ok", "limits_unavailable"),  # the defaults
        (
            {"redis_limits_on_error": "fail_closed", "redis_budgets_on_error": "fail_open"},
            "limits_unavailable",
            "ok",
        ),
    ],
    ids=["defaults", "reversed"],
)
async def test_requests_follow_the_outage_settings(make_gateway, settings, rate_limited, budgeted):
    async with make_gateway(**DOWN, **settings) as gw:
        limited_key = await gw.new_key("rita", limits={"requests_per_minute": 100})
        budget_key = await gw.new_key("bob", budget_usd=Decimal(5), budget_period="monthly")
        free_key = await gw.new_key("frank")

        assert await chat(gw.client(limited_key)) == rate_limited
        assert await chat(gw.client(budget_key)) == budgeted
        assert await chat(gw.client(free_key)) == "ok"  # nothing to check, nothing refused

        await gw.flush()
        async with gw.admin() as admin:
            report = (await admin.get("/admin/usage", params={"group_by": "user"})).json()
    by_user = {group["user"]: group["requests"] for group in report["groups"]}
    assert by_user == {"rita": 1, "bob": 1, "frank": 1}  # the refusals are recorded too
