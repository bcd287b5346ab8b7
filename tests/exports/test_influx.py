"""The InfluxDB export: line protocol, and delivery to a real influxd through a real gateway."""

import asyncio
import base64
import csv
import io
import json
import logging
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from aiohttp import web

from spendgate.config import ConfigError
from spendgate.exports.influx import InfluxExport, usage_line
from spendgate.fake_upstream import FakeUpstream
from spendgate.ledger.events import UsageEvent
from spendgate.money import usd_to_pico
from tests.conftest import Gateway, gateway_settings, running_gateway
from tests.exports.conftest import Influxd, InfluxdFactory, free_port

INGEST_KEY = "ingest-key-for-the-influx-tests-0123"
WHEN = datetime(2025, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
WHEN_NS = 1735787045678901000


def usage_event(**fields: object) -> UsageEvent:
    """A priced proxied chat event, changed by `fields`."""
    base: dict[str, object] = {
        "request_id": "req-1",
        "timestamp": WHEN,
        "user": "alice",
        "key_id": 7,
        "model": "gpt-4o-mini",
        "endpoint": "chat/completions",
        "method": "POST",
        "status": 200,
        "stream": True,
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "cached_tokens": 2,
        "reasoning_tokens": 1,
        "total_tokens": 15,
        "cost_usd": Decimal("0.000012345678"),
        "latency_ms": 42,
        "key_display": "sk-...abcd",
    }
    return UsageEvent(**(base | fields))  # type: ignore[arg-type]


async def wait_for(condition: Callable[[], bool], what: str, seconds: float = 30.0) -> None:
    """Poll `condition()` until true; fail naming `what` after `seconds`."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def deliver(export: InfluxExport, events: list[UsageEvent]) -> None:
    """Start `export`, hand it `events` and stop it (which sends what is buffered)."""
    await export.start()
    export.add(events)
    await export.stop()


# --- line protocol ------------------------------------------------------------------------


def test_line_has_sorted_tags_typed_fields_and_nanosecond_time():
    line = usage_line(usage_event(upstream="azure"), sequence=3)
    assert line == (
        "spendgate_usage,endpoint=chat/completions,key=sk-...abcd,model=gpt-4o-mini,"
        "source=proxy,status=200,upstream=azure,user=alice "
        "prompt_tokens=10i,completion_tokens=5i,cached_tokens=2i,reasoning_tokens=1i,"
        "total_tokens=15i,latency_ms=42i,cost_pico=12345678i,cost_usd=1.2345678e-05,"
        f'estimated=false,stream=true,request_id="req-1" {WHEN_NS + 3}'
    )


def test_key_tag_falls_back_to_the_key_id_and_empty_tags_are_left_out():
    by_id = usage_line(usage_event(key_display=None, upstream=""), 0)
    assert ",key=7," in by_id and "upstream=" not in by_id
    keyless = usage_line(usage_event(key_display=None, key_id=None, user="", source="ingest"), 0)
    assert keyless.startswith(
        "spendgate_usage,endpoint=chat/completions,model=gpt-4o-mini,source=ingest,status=200 "
    )


def test_unpriced_event_has_no_cost_fields():
    line = usage_line(usage_event(cost_usd=None, estimated=True), 0)
    assert "cost_pico" not in line and "cost_usd" not in line
    assert "latency_ms=42i,estimated=true,stream=true," in line


@pytest.mark.parametrize(
    ("user", "written"),
    [
        ("ann smith", r"ann\ smith"),
        ("a,b", r"a\,b"),
        ("a=b", r"a\=b"),
        (r"dom\ann", r"dom\ann"),  # InfluxDB keeps a backslash before other characters as is
        (r"a\,b", r"a\\,b"),
        ('say "hi"', r'say\ "hi"'),
        ("zoë 名前 😀", r"zoë\ 名前\ 😀"),
        ("two\nlines\r", "twolines"),
        ("trailing\\", "trailing"),  # it would escape the comma after it
    ],
)
def test_awkward_tag_values_are_escaped(user, written):
    assert f",user={written} " in usage_line(usage_event(user=user), 0)


def test_string_field_escapes_quotes_and_backslashes():
    line = usage_line(usage_event(request_id='r "1" \\ 2\n'), 0)
    assert line.endswith(f',request_id="r \\"1\\" \\\\ 2" {WHEN_NS}')


async def test_same_microsecond_events_get_distinct_timestamps():
    fake = FakeV2([])
    async with fake as url:
        export = InfluxExport(url=url, bucket="b", org="o")
        await deliver(export, [usage_event(request_id=f"r{i}") for i in range(1002)])
    times = [int(line.rpartition(" ")[2]) for line in fake.requests[0][3].split("\n")]
    assert times[:1000] == [WHEN_NS + i for i in range(1000)]
    assert times[1000:] == [WHEN_NS, WHEN_NS + 1]  # the count rolls over past 999 ns


async def test_awkward_values_round_trip_through_influxdb(influxd: Influxd):
    users = ["ann smith", "a,b", "a=b", r"dom\ann", r"a\,b", 'say "hi"', "zoë 名前 😀", "x\ny"]
    events = [usage_event(user=user, request_id=f'id "{i}" \\') for i, user in enumerate(users)]
    # Three events of one series in one microsecond: all three must be kept.
    events += [usage_event(user="same", request_id=f"same-{i}") for i in range(3)]
    events.append(usage_event(user="free", cost_usd=None, request_id="unpriced"))
    export = InfluxExport(url=influxd.url, database="awkward")
    await deliver(export, events)
    assert (export.sent, export.dropped) == (len(events), 0)

    query = 'SELECT "user", request_id, cost_pico FROM spendgate_usage'
    rows = await influxd.rows(query, "awkward")
    stored = Counter(row["user"] for row in rows)
    assert stored == Counter([*users[:-1], "xy", "same", "same", "same", "free"])
    ids = {row["request_id"]: row for row in rows}
    assert set(ids) == {event.request_id for event in events}
    assert ids["unpriced"]["cost_pico"] is None and ids["same-0"]["cost_pico"] == 12345678


# --- configuration ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "given",
    [
        {},
        {"influxdb_database": "d", "influxdb_bucket": "b", "influxdb_org": "o"},
        {"influxdb_bucket": "b"},
    ],
)
def test_incomplete_influx_settings_are_refused(tmp_path: Path, given):
    settings = gateway_settings(tmp_path, influxdb_url="http://127.0.0.1:8086", **given)
    with pytest.raises(ConfigError) as refused:
        InfluxExport.from_settings(settings)
    message = str(refused.value)
    assert "\n" not in message
    for name in ("DATABASE", "BUCKET", "ORG"):
        assert f"SPENDGATE_INFLUXDB_{name}" in message


# --- a real gateway -----------------------------------------------------------------------


async def ledger_rows(gw: Gateway) -> list[dict[str, str]]:
    async with gw.admin() as admin:
        response = await admin.get("/admin/usage.csv")
    assert response.status_code == 200, response.text
    return list(csv.DictReader(io.StringIO(response.text)))


async def send_traffic(gw: Gateway) -> None:
    """Chats, streamed chats and embeddings from two users, and one ingested event."""
    alice = gw.client(await gw.new_key("alice"))
    bob = gw.client(await gw.new_key("bob"))
    hello = [{"role": "user", "content": "hello there"}]
    await alice.chat.completions.create(model="gpt-4o-mini", messages=hello)
    await bob.chat.completions.create(model="gpt-4o", messages=hello, max_tokens=7)
    for client, options in ((alice, {"include_usage": True}), (bob, None)):
        extra = {"stream_options": options} if options else {}
        stream = await client.chat.completions.create(
            model="gpt-4o-mini", messages=hello, stream=True, **extra
        )
        assert [chunk async for chunk in stream]
    await bob.embeddings.create(model="text-embedding-3-small", input=["one", "two"])
    async with gw.admin() as admin:
        made = await admin.post("/admin/tracking-tokens", json={"name": "app", "user": "tara"})
        assert made.status_code == 201, made.text
    event = {"tracking_token": made.json()["token"], "model": "gpt-4o-mini"}
    pushed = await gw.http().post(
        "/ingest",
        json=event | {"prompt_tokens": 30, "completion_tokens": 9, "request_id": "app-1"},
        headers={"X-Ingest-Key": INGEST_KEY},
    )
    assert pushed.status_code == 202, pushed.text
    await gw.flush()


async def test_every_ledger_row_reaches_influxdb_with_exact_totals(
    tmp_path: Path, upstream: FakeUpstream, influxd: Influxd
):
    settings = gateway_settings(
        tmp_path,
        upstream_base=upstream.base_url,
        ingest_key=INGEST_KEY,
        influxdb_url=influxd.url,
        influxdb_database="spendgate",  # not created yet: the export creates it
    )
    async with running_gateway(settings) as gw:
        await send_traffic(gw)
        rows = await ledger_rows(gw)
        async with gw.admin() as admin:
            report = json.loads((await admin.get("/admin/usage")).text, parse_float=Decimal)
        export = gw.runtime.exports[0]
    assert len(rows) == 6 and report["totals"]["requests"] == 6
    assert (export.sent, export.dropped, export.buffered) == (6, 0, 0)

    expected: dict[tuple[str, str], list[int]] = {}
    for row in rows:
        sums = expected.setdefault((row["model"], row["user"]), [0, 0, 0, 0])
        sums[0] += usd_to_pico(Decimal(row["cost_usd"]))
        sums[1] += int(row["prompt_tokens"])
        sums[2] += int(row["completion_tokens"])
        sums[3] += 1
    assert len(expected) == 5 and all(sums[0] > 0 for sums in expected.values())
    got = {
        (row["model"], row["user"]): [row["sum"], row["sum_1"], row["sum_2"], row["count"]]
        for row in await influxd.rows(
            "SELECT sum(cost_pico),sum(prompt_tokens),sum(completion_tokens),count(request_id)"
            ' FROM spendgate_usage GROUP BY "model","user"',
            "spendgate",
        )
    }
    assert got == expected
    points = await influxd.rows('SELECT request_id, "key" FROM spendgate_usage', "spendgate")
    keys = {point["request_id"]: point["key"] or "" for point in points}
    assert keys == {row["request_id"]: row["key"] for row in rows}  # display, or none
    by_source = 'SELECT count(request_id) FROM spendgate_usage GROUP BY "source"'
    counts = {row["source"]: row["count"] for row in await influxd.rows(by_source, "spendgate")}
    assert counts == {"proxy": 5, "ingest": 1}
    assert usd_to_pico(report["totals"]["cost_usd"]) == sum(sums[0] for sums in got.values())


async def test_events_written_while_influxdb_is_down_arrive_once_it_is_up(
    tmp_path: Path, upstream: FakeUpstream, start_influxd: InfluxdFactory
):
    port = free_port()  # nothing listens here until the server starts below
    settings = gateway_settings(
        tmp_path,
        upstream_base=upstream.base_url,
        ingest_key=INGEST_KEY,
        influxdb_url=f"http://127.0.0.1:{port}",
        influxdb_database="later",
    )
    async with running_gateway(settings) as gw:
        await send_traffic(gw)
        export = gw.runtime.exports[0]
        await wait_for(lambda: export.retries >= 2, "failed attempts")
        assert (export.sent, export.buffered) == (0, 6)
        influxd = await start_influxd(port=port)
        await wait_for(lambda: export.sent == 6, "the buffered events to be sent")
        assert (export.dropped, export.buffered) == (0, 0)
        rows = await ledger_rows(gw)
    points = await influxd.rows("SELECT request_id FROM spendgate_usage", "later")
    assert sorted(p["request_id"] for p in points) == sorted(r["request_id"] for r in rows)
    assert export.sent == 6  # stopping sent nothing twice


async def test_stop_gives_up_after_a_bounded_wait_and_counts_the_rest_dropped():
    export = InfluxExport(url=f"http://127.0.0.1:{free_port()}", database="d")
    started = time.monotonic()
    await deliver(export, [usage_event(request_id=f"r{i}") for i in range(4)])
    assert 4 <= time.monotonic() - started < 8
    assert (export.sent, export.dropped, export.buffered) == (0, 4, 0)
    assert export.retries >= 2


async def test_full_buffer_drops_new_events_and_warns_once(influxd: Influxd, caplog):
    caplog.set_level(logging.WARNING, logger="spendgate.exports.influx")
    export = InfluxExport(url=influxd.url, database="bounded", max_buffer=3)
    for i in range(5):
        export.add([usage_event(request_id=f"r{i}")])
    assert (export.buffered, export.dropped) == (3, 2)
    assert len([r for r in caplog.records if "buffer full" in r.getMessage()]) == 1
    await export.start()
    await export.stop()
    assert (export.sent, export.dropped) == (3, 2)
    points = await influxd.rows("SELECT request_id FROM spendgate_usage", "bounded")
    assert sorted(p["request_id"] for p in points) == ["r0", "r1", "r2"]


# --- authentication -----------------------------------------------------------------------


async def test_user_password_token_authenticates_and_a_wrong_one_is_refused_unlogged(
    start_influxd: InfluxdFactory, caplog
):
    caplog.set_level(logging.DEBUG, logger="spendgate.exports.influx")
    influxd = await start_influxd(auth=True)
    # InfluxDB 1.x lets anyone create the first user, an admin, when none exists yet.
    await influxd.query("CREATE USER admin WITH PASSWORD 'pw' WITH ALL PRIVILEGES", method="POST")
    influxd.auth = ("admin", "pw")

    granted = InfluxExport(url=influxd.url, database="secured", token="admin:pw")
    await deliver(granted, [usage_event(request_id="ok-1"), usage_event(request_id="ok-2")])
    assert (granted.sent, granted.dropped) == (2, 0)
    points = await influxd.rows("SELECT request_id FROM spendgate_usage", "secured")
    assert sorted(p["request_id"] for p in points) == ["ok-1", "ok-2"]

    secret = "admin:wrong-s3cret-pw"
    in_url = influxd.url.replace("http://", f"http://{secret}@")
    for refused in (
        InfluxExport(url=influxd.url, database="secured", token=secret),
        InfluxExport(url=in_url, database="secured"),
    ):
        await deliver(refused, [usage_event(request_id="no-1"), usage_event(request_id="no-2")])
        assert (refused.sent, refused.dropped, refused.retries) == (0, 2, 0)
    assert len([r for r in caplog.records if "HTTP 401" in r.getMessage()]) == 2
    assert influxd.url in caplog.text
    for leak in ("wrong-s3cret-pw", base64.b64encode(secret.encode()).decode()):
        assert leak not in caplog.text
    points = await influxd.rows("SELECT request_id FROM spendgate_usage", "secured")
    assert len(points) == 2


# --- the 2.x API --------------------------------------------------------------------------


class FakeV2:
    """A tiny /api/v2/write server on a real socket: answers with `statuses`, then 204."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = statuses
        self.requests: list[tuple[str, dict[str, str], str | None, str]] = []
        app = web.Application()
        app.router.add_post("/api/v2/write", self.write)
        self.runner = web.AppRunner(app)

    async def write(self, request: web.Request) -> web.Response:
        body = await request.text()
        self.requests.append(
            (request.path, dict(request.query), request.headers.get("Authorization"), body)
        )
        status = self.statuses.pop(0) if self.statuses else 204
        return web.json_response({"message": f"refused with {status}"}, status=status)

    async def __aenter__(self) -> str:
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        host, port = self.runner.addresses[0][:2]
        return f"http://{host}:{port}"

    async def __aexit__(self, *exc: object) -> None:
        await self.runner.cleanup()


async def test_v2_write_carries_org_bucket_precision_and_token_and_retries_429():
    fake = FakeV2([429])
    async with fake as url:
        export = InfluxExport(url=url, bucket="usage", org="acme", token="tok-123")
        events = [usage_event(request_id="a"), usage_event(request_id="b", cost_usd=None)]
        await deliver(export, events)
    assert (export.sent, export.retries, export.dropped) == (2, 1, 0)
    assert len(fake.requests) == 2
    path, query, authorization, body = fake.requests[-1]
    assert path == "/api/v2/write"
    assert query == {"org": "acme", "bucket": "usage", "precision": "ns"}
    assert authorization == "Token tok-123"
    assert body.split("\n") == [usage_line(events[0], 0), usage_line(events[1], 1)]
    assert fake.requests[0] == fake.requests[1]  # the retry resent the same batch


async def test_bad_data_is_dropped_with_influx_message_logged(caplog):
    caplog.set_level(logging.WARNING, logger="spendgate.exports.influx")
    async with FakeV2([400]) as url:
        export = InfluxExport(url=url, bucket="usage", org="acme", token="tok-123")
        await deliver(export, [usage_event()])
    assert (export.sent, export.retries, export.dropped) == (0, 0, 1)
    assert "refused with 400" in caplog.text and "tok-123" not in caplog.text
