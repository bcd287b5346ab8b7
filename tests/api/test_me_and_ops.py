"""Self API (`/me`) and operations (`/health`, `/ping`, `/metrics`, OpenAPI docs)."""

import json
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.stacks import COVERING
from tests.support import assert_openai_error, parse_time

# Tests whose outcome depends on the database or the limit backend run on each of them.
across_stacks = pytest.mark.matrix(COVERING)

CONTRACT_METRICS = (
    "spendgate_requests_total",
    "spendgate_tokens_total",
    "spendgate_cost_usd_total",
    "spendgate_request_duration_seconds",
    "spendgate_rate_limited_total",
    "spendgate_budget_rejected_total",
    "spendgate_usage_events_dropped_total",
)
NON_PROXY_ROUTES = {
    ("post", "/admin/users"),
    ("get", "/admin/users"),
    ("get", "/admin/users/{name}"),
    ("patch", "/admin/users/{name}"),
    ("post", "/admin/keys"),
    ("get", "/admin/keys"),
    ("post", "/admin/keys/{id_or_key}/revoke"),
    ("patch", "/admin/keys/{key_id}"),
    ("get", "/admin/usage"),
    ("delete", "/admin/usage"),
    ("get", "/admin/usage.csv"),
    ("get", "/admin/usage/{id_or_key}"),
    ("get", "/admin/monitor"),
    ("get", "/me"),
    ("get", "/me/usage"),
    ("get", "/health"),
    ("get", "/ping"),
    ("get", "/metrics"),
}


def exact_json(response):
    assert response.status_code == 200, response.text
    return json.loads(response.text, parse_float=Decimal)


async def admin_post(gateway, path, body):
    async with gateway.admin() as admin:
        response = await admin.post(path, json=body)
    assert response.status_code == 201, response.text
    return response.json()


async def priced_chat(gateway, key, model="gpt-4o-mini", words="hello there", max_tokens=6):
    """One non-streamed chat; its (model, exact cost, usage) from the response."""
    raw = await gateway.client(key).chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": words}], max_tokens=max_tokens
    )
    return model, Decimal(raw.headers["x-spendgate-cost-usd"]), raw.parse().usage


def me(gateway, key, **params):
    return gateway.http().get("/me", params=params, headers={"Authorization": f"Bearer {key}"})


def next_reset(period, today):
    if period == "daily":
        day = today + timedelta(days=1)
    elif period == "weekly":
        day = today + timedelta(days=7 - today.weekday())
    elif period == "monthly":
        day = date(today.year + today.month // 12, today.month % 12 + 1, 1)
    else:
        return None
    return datetime.combine(day, time.min, tzinfo=UTC)


# /me


@across_stacks
async def test_me_shows_the_callers_key_spend_and_budget(gateway):
    await admin_post(
        gateway, "/admin/users", {"name": "vic", "budget_usd": "1.5", "budget_period": "monthly"}
    )
    expires = "2099-05-06T07:08:09+00:00"
    created = await admin_post(
        gateway, "/admin/keys", {"user": "vic", "note": "laptop", "expires_at": expires}
    )
    costs = [(await priced_chat(gateway, created["key"], words=w))[1] for w in ("a", "b c d")]
    await priced_chat(gateway, await gateway.new_key("someone-else"), model="gpt-4o")
    await gateway.flush()
    body = exact_json(await me(gateway, created["key"]))
    assert set(body) >= {"user", "key", "spend_usd", "budget", "balance_usd", "limits"}
    assert body["user"] == "vic"
    assert body["key"]["display"] == created["display"]
    assert body["key"]["note"] == "laptop"
    assert parse_time(body["key"]["expires_at"]) == parse_time(expires)
    assert created["key"] not in json.dumps(body, default=str)
    spent = sum(costs, Decimal(0))
    assert body["spend_usd"] == {"today": spent, "month": spent, "total": spent}
    budget = body["budget"]
    assert set(budget) >= {"usd", "period", "remaining_usd", "resets_at"}
    assert budget["usd"] == Decimal("1.5")
    assert budget["period"] == "monthly"
    assert budget["remaining_usd"] == Decimal("1.5") - spent
    today = datetime.now(UTC).date()
    assert parse_time(budget["resets_at"]) == next_reset("monthly", today)
    assert body["balance_usd"] is None
    assert isinstance(body["limits"], dict)


@pytest.mark.parametrize("period", ["daily", "weekly", "monthly", "total"])
async def test_me_budget_resets_at_the_end_of_its_period(gateway, period):
    await admin_post(
        gateway, "/admin/users", {"name": "wes", "budget_usd": 2, "budget_period": period}
    )
    key = (await admin_post(gateway, "/admin/keys", {"user": "wes"}))["key"]
    _, cost, _ = await priced_chat(gateway, key)
    await gateway.flush()
    budget = exact_json(await me(gateway, key))["budget"]
    assert budget["period"] == period
    assert budget["remaining_usd"] == 2 - cost
    assert parse_time(budget["resets_at"]) == next_reset(period, datetime.now(UTC).date())


@across_stacks
async def test_me_without_a_budget_has_a_null_budget_and_zero_spend(gateway):
    key = await gateway.new_key("xena")
    body = exact_json(await me(gateway, key))
    assert body["user"] == "xena"
    assert body["budget"] is None
    assert body["spend_usd"] == {"today": 0, "month": 0, "total": 0}
    assert body["key"]["note"] is None and body["key"]["expires_at"] is None


@pytest.mark.parametrize("header", ["api-key", "x-api-key"])
async def test_me_accepts_the_other_client_key_headers(gateway, header):
    key = await gateway.new_key("yan")
    response = await gateway.http().get("/me", headers={header: key})
    assert exact_json(response)["user"] == "yan"


async def test_me_refuses_a_missing_unknown_or_revoked_key(gateway):
    key = await gateway.new_key("zoe")
    client = gateway.http()
    assert_openai_error(await client.get("/me"), 401, "invalid_api_key")
    unknown = {"Authorization": "Bearer sg-" + "u" * 43}
    assert_openai_error(await client.get("/me", headers=unknown), 401, "invalid_api_key")
    assert_openai_error(await client.get("/me/usage", headers=unknown), 401, "invalid_api_key")
    async with gateway.admin() as admin:
        assert (await admin.post(f"/admin/keys/{key}/revoke")).status_code == 200
    assert_openai_error(await me(gateway, key), 401, "invalid_api_key")


async def test_the_admin_token_is_not_a_gateway_key_for_me(gateway):
    async with gateway.admin() as admin:
        response = await admin.get("/me")
    assert_openai_error(response, 401, "invalid_api_key")


@pytest.mark.parametrize("group_by", ["day", "model"])
@across_stacks
async def test_me_usage_shows_only_the_callers_usage(gateway, group_by):
    mine = await gateway.new_key("amy")
    also_mine = await gateway.new_key("amy")
    theirs = await gateway.new_key("ben")
    calls = [
        await priced_chat(gateway, mine),
        await priced_chat(gateway, also_mine, model="gpt-4o", words="x y z"),
        await priced_chat(gateway, mine, words="one more"),
    ]
    await priced_chat(gateway, theirs, model="gpt-4.1-mini")
    await gateway.flush()
    response = await gateway.http().get(
        "/me/usage", params={"group_by": group_by}, headers={"Authorization": f"Bearer {mine}"}
    )
    report = exact_json(response)
    totals = report["totals"]
    assert totals["requests"] == 3
    assert totals["cost_usd"] == sum((cost for _, cost, _ in calls), Decimal(0))
    assert totals["prompt_tokens"] == sum(usage.prompt_tokens for _, _, usage in calls)
    assert totals["completion_tokens"] == sum(usage.completion_tokens for _, _, usage in calls)
    groups = report["groups"]
    if group_by == "model":
        per_model = {}
        for model, cost, _ in calls:
            per_model[model] = per_model.get(model, Decimal(0)) + cost
        assert {group["model"]: group["cost_usd"] for group in groups} == per_model
    else:
        today = datetime.now(UTC).date().isoformat()
        assert [(group["day"], group["requests"]) for group in groups] == [(today, 3)]
    assert "ben" not in response.text and "gpt-4.1-mini" not in response.text


@pytest.mark.parametrize(
    "params",
    [{"group_by": "user"}, {"group_by": "key"}, {"start": "nope"}, {"end": "2024-02-30"}],
)
async def test_me_usage_refuses_other_groupings_and_bad_dates(gateway, params):
    key = await gateway.new_key("cat")
    response = await gateway.http().get(
        "/me/usage", params=params, headers={"Authorization": f"Bearer {key}"}
    )
    assert_openai_error(response, 400, "invalid_request")


# operations


@across_stacks
async def test_health_reports_database_and_redis(gateway, stack):
    response = await gateway.http().get("/health")
    assert response.status_code == 200
    body = response.json()
    assert {name: body[name] for name in ("status", "database", "redis")} == {
        "status": "ok",
        "database": "ok",
        "redis": "ok" if stack.limits == "redis" else "off",
    }


async def test_ping_answers(gateway):
    response = await gateway.http().get("/ping")
    assert response.status_code == 200


@across_stacks
async def test_metrics_agree_with_the_ledger(gateway):
    key = await gateway.new_key("dan")
    client = gateway.client(key)
    await priced_chat(gateway, key)
    await priced_chat(gateway, key, model="gpt-4o", words="some more words")
    await client.embeddings.create(model="text-embedding-3-small", input="a b c")
    stream = await client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "stream it"}],
        stream=True,
        extra_headers={"x-fake-cached-tokens": "1", "x-fake-reasoning-tokens": "2"},
    )
    async for _ in stream:
        pass
    await gateway.flush()
    async with gateway.admin() as admin:
        ledger = exact_json(await admin.get("/admin/usage", params={"group_by": "model"}))
    response = await gateway.http().get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    for name in CONTRACT_METRICS:
        assert name in response.text, name
    samples = [
        sample
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    ]

    def total(name, **labels):
        return sum(
            sample.value
            for sample in samples
            if sample.name == name and labels.items() <= sample.labels.items()
        )

    totals = ledger["totals"]
    assert total("spendgate_requests_total") == totals["requests"] == 4
    assert total("spendgate_request_duration_seconds_count") == totals["requests"]
    for kind in ("prompt", "completion", "cached", "reasoning"):
        assert total("spendgate_tokens_total", kind=kind) == totals[f"{kind}_tokens"], kind
    assert total("spendgate_cost_usd_total") == pytest.approx(float(totals["cost_usd"]), rel=1e-9)
    for group in ledger["groups"]:
        model = group["model"]
        assert total("spendgate_requests_total", model=model) == group["requests"], model
        assert total("spendgate_cost_usd_total", model=model) == pytest.approx(
            float(group["cost_usd"]), rel=1e-9
        )
    assert total("spendgate_rate_limited_total") == 0
    assert total("spendgate_usage_events_dropped_total") == 0
    assert total("spendgate_budget_rejected_total") == 0


async def test_openapi_describes_every_non_proxy_route_and_no_proxy_route(gateway):
    response = await gateway.http().get("/openapi.json")
    assert response.status_code == 200
    paths = response.json()["paths"]
    described = {(method, path) for path, methods in paths.items() for method in methods}
    assert described >= NON_PROXY_ROUTES, NON_PROXY_ROUTES - described
    assert not [path for path in paths if path.startswith("/v1") or "/v1/" in path]
    assert all(
        operation.get("summary") or operation.get("description")
        for methods in paths.values()
        for operation in methods.values()
    )


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
async def test_api_docs_pages_answer(gateway, path):
    response = await gateway.http().get(path)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "/openapi.json" in response.text


@pytest.mark.parametrize("path", ["/nope", "/admin/nothing-here", "/v2/chat/completions", "/me/x"])
async def test_an_unknown_path_is_an_openai_shaped_404(gateway, path):
    response = await gateway.http().get(path)
    assert_openai_error(response, 404, "not_found")
    assert response.headers["content-type"].startswith("application/json")


async def test_a_wrong_method_is_an_openai_shaped_405_with_allow(gateway):
    async with gateway.admin() as admin:
        response = await admin.put("/admin/users")
    assert_openai_error(response, 405, "invalid_request")
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert response.headers["allow"]


async def test_every_api_response_carries_a_request_id(gateway):
    """Not only the proxy's: admin, self, operations, console, errors and 404s too."""
    key = await gateway.new_key()
    http = gateway.http()
    responses = [
        await http.get("/health"),
        await http.get("/metrics"),
        await http.get("/me", headers={"Authorization": f"Bearer {key}"}),
        await http.get("/me"),  # 401
        await http.get("/admin/users"),  # 401
        await http.get("/no/such/route"),  # 404
        await http.get("/ui/login"),
        await http.get("/openapi.json"),
    ]
    async with gateway.admin() as admin:
        responses.append(await admin.get("/admin/users"))
    missing = [r.url.path for r in responses if not r.headers.get("x-spendgate-request-id")]
    assert missing == []
    ids = [r.headers["x-spendgate-request-id"] for r in responses]
    assert len(set(ids)) == len(ids)
