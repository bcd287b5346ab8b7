"""Admin usage reports, CSV export, monitor and retention, after real requests via the SDK."""

import csv
import io
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

# The contract's CSV columns, in order (more may follow or sit between them).
CONTRACT_CSV_COLUMNS = [
    "timestamp",
    "request_id",
    "user",
    "key",
    "model",
    "endpoint",
    "status",
    "stream",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "reasoning_tokens",
    "total_tokens",
    "cost_usd",
    "latency_ms",
    "estimated",
    "source",
]
TOKEN_FIELDS = (
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "reasoning_tokens",
    "total_tokens",
)
T_FIELDS = ("requests", *TOKEN_FIELDS, "cost_usd")
UNPRICED_MODEL = "house-model-without-a-price"


@dataclass(frozen=True)
class Call:
    """One request made through the gateway, as its response reported it."""

    request_id: str
    user: str
    key_id: int
    key: str
    display: str
    model: str
    endpoint: str
    end_user: str | None
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    reasoning_tokens: int
    total_tokens: int
    cost_usd: Decimal | None

    def group_value(self, field):
        """The value `/admin/usage?group_by=field` shows for this request."""
        derived = {"key": self.display, "day": today().isoformat(), "upstream": "default"}
        derived["source"] = "proxy"
        return derived[field] if field in derived else getattr(self, field)


def today():
    return datetime.now(UTC).date()


def exact_json(response):
    assert response.status_code == 200, response.text
    return json.loads(response.text, parse_float=Decimal)


def expected_totals(calls):
    totals = {field: sum(getattr(call, field) for call in calls) for field in TOKEN_FIELDS}
    totals["requests"] = len(calls)
    totals["cost_usd"] = sum((call.cost_usd or Decimal(0) for call in calls), Decimal(0))
    return totals


def assert_totals(actual, calls):
    assert {field: actual[field] for field in T_FIELDS} == expected_totals(calls)


async def create_key(admin, user):
    response = await admin.post("/admin/keys", json={"user": user})
    assert response.status_code == 201, response.text
    return response.json()


async def drive(gateway):
    """Requests by two users, three keys, four models and several end users; their calls."""
    async with gateway.admin() as admin:
        alice_1 = await create_key(admin, "alice")
        alice_2 = await create_key(admin, "alice")
        bob = await create_key(admin, "bob")
    calls = []

    def record(raw, created, model, endpoint, end_user, usage):
        details = getattr(usage, "prompt_tokens_details", None)
        reasoning = getattr(usage, "completion_tokens_details", None)
        cost = raw.headers.get("x-spendgate-cost-usd")
        calls.append(
            Call(
                request_id=raw.headers["x-spendgate-request-id"],
                user=created["user"],
                key_id=created["id"],
                key=created["key"],
                display=created["display"],
                model=model,
                endpoint=endpoint,
                end_user=end_user,
                prompt_tokens=usage.prompt_tokens,
                completion_tokens=getattr(usage, "completion_tokens", 0),
                cached_tokens=details.cached_tokens if details else 0,
                reasoning_tokens=reasoning.reasoning_tokens if reasoning else 0,
                total_tokens=usage.total_tokens,
                cost_usd=None if cost is None else Decimal(cost),
            )
        )

    async def chat(created, model, end_user=None, words="hello there", **kwargs):
        raw = await gateway.client(created["key"]).chat.completions.with_raw_response.create(
            model=model, messages=[{"role": "user", "content": words}], **kwargs
        )
        record(raw, created, model, "chat/completions", end_user, raw.parse().usage)

    await chat(alice_1, "gpt-4o-mini", "eu-1", extra_headers={"X-User-ID": "eu-1"}, max_tokens=7)
    await chat(alice_1, "gpt-4o-mini", "eu-1", "one two three", extra_headers={"X-User-ID": "eu-1"})
    await chat(
        alice_2,
        "gpt-4o-mini",
        None,
        "a b c d e f",
        max_tokens=3,
        extra_headers={"x-fake-cached-tokens": "4", "x-fake-reasoning-tokens": "2"},
    )
    await chat(bob, "gpt-4o", "eu-3", "why is the sky blue", user="eu-3", max_tokens=11)
    await chat(bob, UNPRICED_MODEL, "eu-2", extra_headers={"X-User-ID": "eu-2"}, max_tokens=5)
    client = gateway.client(alice_1["key"])
    raw = await client.embeddings.with_raw_response.create(
        model="text-embedding-3-small",
        input=["one two", "three"],
        extra_headers={"X-User-ID": "eu-2"},
    )
    record(raw, alice_1, "text-embedding-3-small", "embeddings", "eu-2", raw.parse().usage)
    await gateway.flush()
    assert len({call.request_id for call in calls}) == len(calls) == 6
    assert calls[-2].cost_usd is None and all(
        call.cost_usd for call in calls if call is not calls[-2]
    )
    return calls


async def get_usage(gateway, **params):
    async with gateway.admin() as admin:
        return await admin.get("/admin/usage", params=params)


async def get_csv(gateway, **params):
    async with gateway.admin() as admin:
        response = await admin.get("/admin/usage.csv", params=params)
    assert response.status_code == 200, response.text
    return response, list(csv.DictReader(io.StringIO(response.text)))


async def test_totals_reconcile_to_the_last_digit_with_per_request_costs(gateway):
    calls = await drive(gateway)
    response = await get_usage(gateway)
    report = exact_json(response)
    header_sum = sum((call.cost_usd for call in calls if call.cost_usd is not None), Decimal(0))
    assert report["totals"]["cost_usd"] == header_sum
    assert isinstance(report["totals"]["cost_usd"], Decimal)
    written = format(header_sum.normalize(), "f")
    assert f'"cost_usd":{written}' in response.text.replace(" ", "")
    assert_totals(report["totals"], calls)
    assert report["groups"] == []


@pytest.mark.parametrize(
    "group_by",
    [
        "user",
        "key",
        "model",
        "day",
        "end_user",
        "upstream",
        "source",
    ],
)
async def test_every_grouping_sums_to_the_totals(gateway, group_by):
    calls = await drive(gateway)
    response = await get_usage(gateway, group_by=group_by)
    report = exact_json(response)
    groups = report["groups"]
    for field in T_FIELDS:
        assert sum(group[field] for group in groups) == report["totals"][field], field
    expected = {}
    for call in calls:
        expected.setdefault(call.group_value(group_by), []).append(call)
    assert {group[group_by] for group in groups} == set(expected)
    assert len(groups) == len(expected)
    for group in groups:
        assert_totals(group, expected[group[group_by]])
    if group_by == "key":
        ids = {call.display: call.key_id for call in calls}
        assert all(group["key_id"] == ids[group["key"]] for group in groups)
        assert not any(call.key in response.text for call in calls)


@pytest.mark.parametrize(
    ("params", "wanted"),
    [
        ({"user": "bob"}, lambda call: call.user == "bob"),
        ({"model": "gpt-4o-mini"}, lambda call: call.model == "gpt-4o-mini"),
        ({"end_user": "eu-2"}, lambda call: call.end_user == "eu-2"),
        ({"source": "proxy"}, lambda call: True),
        ({"source": "ingest"}, lambda call: False),
        ({"upstream": "default"}, lambda call: True),
        (
            {"user": "alice", "model": "gpt-4o-mini"},
            lambda c: c.user == "alice" and c.model == "gpt-4o-mini",
        ),
        ({"user": "nobody"}, lambda call: False),
    ],
    ids=[
        "user",
        "model",
        "end-user",
        "source",
        "source-ingest",
        "upstream",
        "combined",
        "no-match",
    ],
)
async def test_filters_select_the_matching_requests(gateway, params, wanted):
    calls = await drive(gateway)
    report = exact_json(await get_usage(gateway, **params))
    assert_totals(report["totals"], [call for call in calls if wanted(call)])
    _, rows = await get_csv(gateway, **params)
    assert {row["request_id"] for row in rows} == {c.request_id for c in calls if wanted(c)}


@pytest.mark.parametrize("by", ["id", "key"])
async def test_key_filter_accepts_the_id_or_the_full_key(gateway, by):
    calls = await drive(gateway)
    target = calls[0]
    value = str(target.key_id) if by == "id" else target.key
    report = exact_json(await get_usage(gateway, key=value, group_by="model"))
    mine = [call for call in calls if call.key_id == target.key_id]
    assert_totals(report["totals"], mine)
    assert {group["model"] for group in report["groups"]} == {call.model for call in mine}
    _, rows = await get_csv(gateway, key=value)
    assert {row["request_id"] for row in rows} == {call.request_id for call in mine}


async def test_date_range_filters_and_default_range(gateway):
    calls = await drive(gateway)
    day = today()
    default = exact_json(await get_usage(gateway))
    assert default["end"] == day.isoformat()
    assert default["start"] == (day - timedelta(days=29)).isoformat()
    same_day = exact_json(await get_usage(gateway, start=day.isoformat(), end=day.isoformat()))
    assert same_day["start"] == same_day["end"] == day.isoformat()
    assert_totals(same_day["totals"], calls)
    start_only = exact_json(await get_usage(gateway, start=(day - timedelta(days=3)).isoformat()))
    assert_totals(start_only["totals"], calls)
    past = exact_json(
        await get_usage(
            gateway,
            start=(day - timedelta(days=60)).isoformat(),
            end=(day - timedelta(days=1)).isoformat(),
            group_by="user",
        )
    )
    assert_totals(past["totals"], [])
    assert past["groups"] == []
    _, rows = await get_csv(gateway, end=(day - timedelta(days=1)).isoformat())
    assert rows == []


async def test_the_earliest_dates_are_an_empty_report(gateway):
    await drive(gateway)
    for params in ({"end": "0001-01-05"}, {"start": "0001-01-01", "end": "0001-12-31"}):
        report = exact_json(await get_usage(gateway, **params))
        assert_totals(report["totals"], [])
        assert report["start"] == "0001-01-01"


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"start": "2024-13-01"}, "start"),
        ({"end": "yesterday"}, "end"),
        ({"start": "2024-02-10", "end": "2024-02-01"}, "start"),
        ({"group_by": "colour"}, "group_by"),
        ({"source": "carrier-pigeon"}, "source"),
    ],
    ids=["bad-start", "bad-end", "start-after-end", "bad-group-by", "bad-source"],
)
async def test_bad_report_parameters_are_400s(gateway, params, param):
    async with gateway.admin() as admin:
        for path in ("/admin/usage", "/admin/usage.csv"):
            if path.endswith(".csv") and "group_by" in params:
                continue
            response = await admin.get(path, params=params)
            assert response.status_code == 400, (path, response.text)
            error = response.json()["error"]
            assert error["code"] == "invalid_request" and error["param"] == param


async def test_an_unknown_key_filter_is_not_found(gateway):
    async with gateway.admin() as admin:
        for key in ("424242", "sg-" + "q" * 43):
            response = await admin.get("/admin/usage", params={"key": key})
            assert response.status_code == 404, response.text
            assert response.json()["error"]["code"] == "not_found"


@pytest.mark.parametrize("by", ["id", "key"])
async def test_usage_of_one_key(gateway, by):
    calls = await drive(gateway)
    target = next(call for call in calls if call.user == "bob")
    value = str(target.key_id) if by == "id" else target.key
    async with gateway.admin() as admin:
        response = await admin.get(f"/admin/usage/{value}")
        unknown = await admin.get("/admin/usage/987654")
    body = exact_json(response)
    assert set(body) >= {"key", "user", "totals"}
    assert body["key"] == target.display and body["user"] == "bob"
    assert_totals(body["totals"], [call for call in calls if call.key_id == target.key_id])
    assert target.key not in response.text
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "not_found"


async def test_csv_has_one_row_per_request_matching_the_json(gateway):
    calls = await drive(gateway)
    day = today().isoformat()
    response, rows = await get_csv(gateway, start=day, end=day)
    assert response.headers["content-type"].startswith("text/csv")
    header = next(csv.reader(io.StringIO(response.text)))
    positions = [header.index(column) for column in CONTRACT_CSV_COLUMNS]
    assert positions == sorted(positions), header
    assert len(rows) == len(calls)
    by_id = {row["request_id"]: row for row in rows}
    assert set(by_id) == {call.request_id for call in calls}
    for call in calls:
        row = by_id[call.request_id]
        assert row["user"] == call.user
        assert row["key"] == call.display
        assert row["model"] == call.model
        assert row["endpoint"] == call.endpoint
        assert row["status"] == "200"
        assert row["stream"] == "false" and row["estimated"] == "false"
        assert row["source"] == "proxy"
        for field in TOKEN_FIELDS:
            assert int(row[field]) == getattr(call, field), field
        written = "" if call.cost_usd is None else format(call.cost_usd.normalize(), "f")
        assert row["cost_usd"] == written
        assert int(row["latency_ms"]) >= 0
        stamp = datetime.fromisoformat(row["timestamp"].replace("Z", "+00:00"))
        assert abs(stamp - datetime.now(UTC)) < timedelta(minutes=5)
    for call in calls:
        assert call.key not in response.text
    totals = exact_json(await get_usage(gateway, start=day, end=day))["totals"]
    assert sum(Decimal(row["cost_usd"] or 0) for row in rows) == totals["cost_usd"]
    for field in TOKEN_FIELDS:
        assert sum(int(row[field]) for row in rows) == totals[field]
    assert len(rows) == totals["requests"]


async def test_monitor_shows_today_active_and_top_users_and_recent_requests(gateway):
    calls = await drive(gateway)
    async with gateway.admin() as admin:
        response = await admin.get("/admin/monitor")
    monitor = exact_json(response)
    assert_totals(monitor["today"], calls)
    assert monitor["active_users_today"] == 2
    spend = {
        user: expected_totals([c for c in calls if c.user == user]) for user in ("alice", "bob")
    }
    top = monitor["top_users"]
    assert [entry["user"] for entry in top] == sorted(spend, key=lambda u: -spend[u]["cost_usd"])
    for entry in top:
        assert entry["cost_usd"] == spend[entry["user"]]["cost_usd"]
        assert entry["requests"] == spend[entry["user"]]["requests"]
    recent = monitor["recent"]
    assert [event["request_id"] for event in recent] == [c.request_id for c in reversed(calls)]
    assert all(call.key not in response.text for call in calls)


async def test_monitor_of_an_empty_ledger(gateway):
    async with gateway.admin() as admin:
        monitor = exact_json(await admin.get("/admin/monitor"))
    assert_totals(monitor["today"], [])
    assert monitor["active_users_today"] == 0
    assert monitor["top_users"] == [] and monitor["recent"] == []


async def test_purging_events_keeps_the_report_totals(gateway):
    calls = await drive(gateway)
    day = today()
    tomorrow = (day + timedelta(days=1)).isoformat()
    before = exact_json(await get_usage(gateway, group_by="model"))
    async with gateway.admin() as admin:
        nothing = await admin.delete("/admin/usage", params={"before": day.isoformat()})
        purged = await admin.delete("/admin/usage", params={"before": tomorrow})
        again = await admin.delete("/admin/usage", params={"before": tomorrow})
    assert exact_json(nothing) == {"deleted": 0}
    assert exact_json(purged) == {"deleted": len(calls)}
    assert exact_json(again) == {"deleted": 0}
    response, rows = await get_csv(gateway, start=day.isoformat(), end=day.isoformat())
    assert rows == []
    assert response.text.splitlines()[0].startswith("timestamp,request_id,")
    after = exact_json(await get_usage(gateway, group_by="model"))
    assert after == before
    assert_totals(after["totals"], calls)


@pytest.mark.parametrize("params", [{}, {"before": "01/02/2024"}, {"before": ""}])
async def test_purging_needs_a_valid_before_date(gateway, params):
    calls = await drive(gateway)
    async with gateway.admin() as admin:
        response = await admin.delete("/admin/usage", params=params)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_request" and error["param"] == "before"
    _, rows = await get_csv(gateway)
    assert len(rows) == len(calls)
