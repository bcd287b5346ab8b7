"""POST /ingest: client-push usage, against a real gateway on a real socket."""

import csv
import io
import json
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from spendgate.api.ingest import MAX_EVENTS
from spendgate.metering.usage import Usage
from tests.stacks import COVERING
from tests.support import assert_openai_error

INGEST_KEY = "ingest-key-for-the-tests-0123456789"
UNPRICED = "house-model-without-a-price"
SUMS = (
    "requests",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "reasoning_tokens",
    "total_tokens",
)


def event(token, **fields):
    """A valid event for `token`, changed by `fields` (None removes a field)."""
    base = {
        "tracking_token": token,
        "model": "gpt-4o-mini",
        "prompt_tokens": 10,
        "completion_tokens": 5,
    }
    merged = base | fields
    return {name: value for name, value in merged.items() if value is not None}


async def new_token(gw, name="app", user=None):
    async with gw.admin() as admin:
        response = await admin.post(
            "/admin/tracking-tokens", json={"name": name} | ({"user": user} if user else {})
        )
    assert response.status_code == 201, response.text
    return response.json()


async def push(gw, body, key=INGEST_KEY):
    headers = {} if key is None else {"X-Ingest-Key": key}
    return await gw.http().post("/ingest", json=body, headers=headers)


async def accepted(gw, body, expected):
    response = await push(gw, body)
    assert response.status_code == 202, response.text
    assert response.json() == expected
    return response


async def report(gw, **params):
    async with gw.admin() as admin:
        response = await admin.get("/admin/usage", params=params)
    assert response.status_code == 200, response.text
    return json.loads(response.text, parse_float=Decimal)


async def csv_rows(gw, **params):
    async with gw.admin() as admin:
        response = await admin.get("/admin/usage.csv", params=params)
    assert response.status_code == 200, response.text
    return list(csv.DictReader(io.StringIO(response.text)))


def metric(text, name, **labels):
    """The value of one sample of the /metrics text, 0 if absent."""
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        sample, _, value = line.rpartition(" ")
        metric_name, _, label_text = sample.partition("{")
        given = ",".join(sorted(label_text.rstrip("}").split(","))) if label_text else ""
        if metric_name == name and given == wanted:
            return float(value)
    return 0.0


def cost_of(gw, model, prompt, completion, cached=0):
    return gw.runtime.prices.cost(Usage.of(prompt, completion, cached), model)[1]


@pytest.mark.matrix(COVERING)
async def test_pushed_events_are_recorded_once_priced_and_counted(make_gateway):
    async with make_gateway(ingest_key=INGEST_KEY) as gw:
        token = (await new_token(gw, "mobile", user="tara"))["token"]
        first = event(
            token,
            request_id="r1",
            cached_tokens=4,
            reasoning_tokens=2,
            total_tokens=15,
            end_user="eu-1",
        )
        await accepted(gw, first, {"accepted": 1, "duplicates": 0})
        batch = {
            "events": [
                event(token, request_id="r2", prompt_tokens=100, completion_tokens=20),
                event(token, request_id="r2", prompt_tokens=100, completion_tokens=20),
                first,  # already recorded by the first request
                event(token, model="gpt-4o", prompt_tokens=7, completion_tokens=3),
                event(token, model=UNPRICED, request_id="u1", prompt_tokens=9),
            ]
        }
        await accepted(gw, batch, {"accepted": 3, "duplicates": 2})
        # The same batch again: only its event without a request id is new.
        await accepted(gw, batch, {"accepted": 1, "duplicates": 4})
        await gw.flush()

        rows = await csv_rows(gw, source="ingest")
        assert len(rows) == 5
        assert {row["source"] for row in rows} == {"ingest"}
        assert {row["user"] for row in rows} == {"tara"}
        assert all(re.fullmatch(r"ing_\d+_\w+", row["request_id"]) for row in rows)
        assert await csv_rows(gw, source="proxy") == []
        by_model = {}
        for row in rows:
            by_model.setdefault(row["model"], []).append(row)
        unpriced = by_model[UNPRICED]
        assert len(unpriced) == 1 and unpriced[0]["cost_usd"] == ""
        assert len(by_model["gpt-4o"]) == 2

        expected_cost = (
            cost_of(gw, "gpt-4o-mini", 10, 5, cached=4)
            + cost_of(gw, "gpt-4o-mini", 100, 20)
            + 2 * cost_of(gw, "gpt-4o", 7, 3)
        )
        totals = (await report(gw, source="ingest"))["totals"]
        assert totals["requests"] == 5
        assert totals["prompt_tokens"] == 10 + 100 + 7 + 7 + 9
        assert totals["completion_tokens"] == 5 + 20 + 3 + 3 + 5
        assert totals["cached_tokens"] == 4 and totals["reasoning_tokens"] == 2
        assert totals["cost_usd"] == expected_cost
        assert (await report(gw, source="proxy"))["totals"]["requests"] == 0
        ends = {g["end_user"]: g for g in (await report(gw, group_by="end_user"))["groups"]}
        assert ends["eu-1"]["requests"] == 1

        metrics = (await gw.http().get("/metrics")).text
        requests = {
            model: metric(
                metrics, "spendgate_requests_total", endpoint="ingest", model=model, status="200"
            )
            for model in by_model
        }
        assert requests == {"gpt-4o-mini": 2, "gpt-4o": 2, UNPRICED: 1}
        assert metric(metrics, "spendgate_unpriced_requests_total", model=UNPRICED) == 1
        assert metric(metrics, "spendgate_tokens_total", model="gpt-4o", kind="prompt") == 14
        assert metric(metrics, "spendgate_usage_events_written_total") == 5
        cost = sum(metric(metrics, "spendgate_cost_usd_total", model=m) for m in by_model)
        assert cost == pytest.approx(float(expected_cost))


async def test_a_back_dated_event_lands_on_its_day_in_reports_and_rollups(make_gateway):
    async with make_gateway(ingest_key=INGEST_KEY) as gw:
        token = (await new_token(gw, "batch", user="bo"))["token"]
        day = (datetime.now(UTC) - timedelta(days=40)).date()
        stamp = f"{day.isoformat()}T23:59:30+00:00"
        late = f"{day.isoformat()}T22:00:00-03:00"  # the next day in UTC
        events = [
            event(token, timestamp=stamp, request_id="a", end_user="x"),
            event(token, timestamp=stamp, request_id="b", prompt_tokens=30),
            event(token, timestamp=late, request_id="c", completion_tokens=8),
            event(token, request_id="today"),
        ]
        await accepted(gw, {"events": events}, {"accepted": 4, "duplicates": 0})
        await gw.flush()
        window = {
            "start": (day - timedelta(days=1)).isoformat(),
            "end": datetime.now(UTC).date().isoformat(),
        }
        days = {g["day"]: g for g in (await report(gw, group_by="day", **window))["groups"]}
        next_day = (day + timedelta(days=1)).isoformat()
        assert days[day.isoformat()]["requests"] == 2
        assert days[day.isoformat()]["prompt_tokens"] == 40
        assert days[next_day]["requests"] == 1 and days[next_day]["completion_tokens"] == 8
        assert days[datetime.now(UTC).date().isoformat()]["requests"] == 1

        # Every report reads the rollups: they agree with the events themselves.
        rows = await csv_rows(gw, **window)
        for group_by in ("day", "end_user", "user", "model"):
            groups = (await report(gw, group_by=group_by, **window))["groups"]
            for name in SUMS[1:]:
                assert sum(g[name] for g in groups) == sum(int(r[name]) for r in rows)
        for when, group in days.items():
            on_day = [r for r in rows if r["timestamp"].startswith(when)]
            assert group["requests"] == len(on_day)
            assert group["cost_usd"] == sum(Decimal(r["cost_usd"]) for r in on_day)


async def test_the_ingest_key_is_required(make_gateway, upstream):
    async with make_gateway() as gw:  # no ingest key configured: every push is refused
        token = (await new_token(gw))["token"]
        assert_openai_error(await push(gw, event(token)), 401, "invalid_api_key")
        assert_openai_error(await push(gw, event(token), key=""), 401, "invalid_api_key")
    async with make_gateway(ingest_key=INGEST_KEY) as gw:
        token = (await new_token(gw))["token"]
        assert_openai_error(await push(gw, event(token), key=None), 401, "invalid_api_key")
        wrong = await push(gw, event(token), key=INGEST_KEY + "x")
        assert_openai_error(wrong, 401, "invalid_api_key")
        assert INGEST_KEY not in wrong.text
        both = await gw.http().post(  # a right copy does not excuse a wrong one
            "/ingest",
            json=event(token),
            headers=[("X-Ingest-Key", INGEST_KEY), ("X-Ingest-Key", INGEST_KEY + "x")],
        )
        assert_openai_error(both, 401, "invalid_api_key")
        await gw.flush()
        assert (await report(gw, source="ingest"))["totals"]["requests"] == 0


def _invalid_bodies():
    t = "TOKEN"
    past = (datetime.now(UTC) - timedelta(days=500)).isoformat()
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    ok = event(t)
    return [
        (event(t, prompt_tokens=-1), "prompt_tokens"),
        ({"events": [ok, event(t, prompt_tokens=10**9 + 1)]}, "events[1].prompt_tokens"),
        (event(t, completion_tokens="5"), "completion_tokens"),
        (event(t, completion_tokens=5.0), "completion_tokens"),
        (event(t, completion_tokens=True), "completion_tokens"),
        ({"events": [ok, ok, ok, event(t, total_tokens=99)]}, "events[3].total_tokens"),
        (event(t, cached_tokens=11), "cached_tokens"),
        (event(t, reasoning_tokens=6), "reasoning_tokens"),
        ({"events": [ok, ok, event(t, colour="red")]}, "events[2].colour"),
        (event(t, model=None), "model"),
        (event(t, model=""), "model"),
        (event(t, tracking_token=None), "tracking_token"),
        (event(t, timestamp=future), "timestamp"),
        ({"events": [event(t, timestamp=past)]}, "events[0].timestamp"),
        (event(t, timestamp="yesterday"), "timestamp"),
        ({"events": []}, "events"),
        ({"events": ok}, "events"),
        ({"events": [ok], "extra": 1}, "extra"),
        ({"events": [ok, "not an event"]}, "events[1]"),
        ([ok], None),
    ]


@pytest.mark.parametrize(("body", "param"), _invalid_bodies())
async def test_invalid_events_are_refused_with_the_field_named(make_gateway, body, param):
    async with make_gateway(ingest_key=INGEST_KEY) as gw:
        token = (await new_token(gw))["token"]
        text = json.dumps(body).replace("TOKEN", token)
        response = await gw.http().post(
            "/ingest",
            content=text,
            headers={"X-Ingest-Key": INGEST_KEY, "Content-Type": "application/json"},
        )
        error = assert_openai_error(response, 400, "invalid_request", param)
        assert error["param"] == param
        if param:
            assert param in error["message"]
        await gw.flush()
        # All or nothing: the valid events of a refused batch are not recorded either.
        assert (await report(gw, source="ingest"))["totals"]["requests"] == 0


async def test_a_body_that_is_not_json_is_refused(make_gateway):
    async with make_gateway(ingest_key=INGEST_KEY) as gw:
        response = await gw.http().post(
            "/ingest", content=b"{not json", headers={"X-Ingest-Key": INGEST_KEY}
        )
        assert_openai_error(response, 400, "invalid_request")


async def test_unknown_and_paused_tokens_are_refused(make_gateway):
    async with make_gateway(ingest_key=INGEST_KEY) as gw:
        created = await new_token(gw)
        token = created["token"]
        unknown = await push(gw, event("sgt-" + "x" * 43))
        assert_openai_error(unknown, 404, "not_found", "tracking_token")
        mixed = await push(gw, {"events": [event(token), event(token + "x")]})
        assert_openai_error(mixed, 404, "not_found", "events[1].tracking_token")
        async with gw.admin() as admin:
            paused = await admin.patch(
                f"/admin/tracking-tokens/{created['id']}", json={"active": False}
            )
            assert paused.status_code == 200
        assert_openai_error(await push(gw, event(token)), 403, "forbidden", "tracking_token")
        await gw.flush()
        assert (await report(gw, source="ingest"))["totals"]["requests"] == 0


async def test_a_batch_over_the_limit_is_refused(make_gateway):
    async with make_gateway(ingest_key=INGEST_KEY) as gw:
        token = (await new_token(gw))["token"]
        events = [event(token, request_id=str(i)) for i in range(MAX_EVENTS + 1)]
        response = await push(gw, {"events": events})
        error = assert_openai_error(response, 413, "request_too_large", "events")
        assert str(MAX_EVENTS) in error["message"]
        await accepted(
            gw, {"events": events[:MAX_EVENTS]}, {"accepted": MAX_EVENTS, "duplicates": 0}
        )


async def test_each_token_has_its_own_rate_limit(make_gateway):
    per_minute = 3 * MAX_EVENTS
    async with make_gateway(ingest_key=INGEST_KEY, ingest_events_per_minute=per_minute) as gw:
        token = (await new_token(gw, "busy"))["token"]
        other = (await new_token(gw, "quiet"))["token"]
        events = [event(token, request_id=str(i)) for i in range(MAX_EVENTS)]
        for sent in range(0, per_minute, MAX_EVENTS):
            expected = {
                "accepted": 0 if sent else MAX_EVENTS,
                "duplicates": MAX_EVENTS if sent else 0,
            }
            await accepted(gw, {"events": events}, expected)
        # The bucket refills at per_minute / 60 a second: a whole batch more is over.
        more = [event(token, request_id=f"more-{i}") for i in range(MAX_EVENTS)]
        refused = await push(gw, {"events": more})
        assert_openai_error(refused, 429, "rate_limit_exceeded")
        assert int(refused.headers["retry-after"]) >= 1
        await accepted(gw, event(other), {"accepted": 1, "duplicates": 0})
        await gw.flush()
        assert (await report(gw, source="ingest"))["totals"]["requests"] == MAX_EVENTS + 1


async def test_a_token_without_a_user_records_under_its_name(make_gateway):
    async with make_gateway(ingest_key=INGEST_KEY) as gw:
        token = (await new_token(gw, "kiosk"))["token"]
        await accepted(gw, event(token), {"accepted": 1, "duplicates": 0})
        await gw.flush()
        assert [row["user"] for row in await csv_rows(gw, source="ingest")] == ["token:kiosk"]


async def test_ingested_spend_counts_towards_the_users_budget(make_gateway):
    async with make_gateway(ingest_key=INGEST_KEY) as gw:
        token = (await new_token(gw, "app", user="cleo"))["token"]
        async with gw.admin() as admin:
            before = await admin.get("/admin/users/cleo")  # the counters start counting
            assert json.loads(before.text, parse_float=Decimal)["spend_usd"] == 0
            body = event(token, prompt_tokens=1000, completion_tokens=1000)
            await accepted(gw, body, {"accepted": 1, "duplicates": 0})
            after = await admin.get("/admin/users/cleo")
        spend = json.loads(after.text, parse_float=Decimal)["spend_usd"]
        assert spend == cost_of(gw, "gpt-4o-mini", 1000, 1000) > 0
