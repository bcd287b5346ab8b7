"""Budget and credit alerts: crossings recorded once, posted to a real webhook, retried."""

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from spendgate.alerts import AlertMonitor, budget_crossings, budget_period_key
from spendgate.ledger.alerts import AlertStore
from spendgate.ledger.engine import create_engine, sqlite_url_for_path, upgrade
from spendgate.ledger.store import Store
from spendgate.limits.memory import MemoryBackend
from spendgate.limits.policy import BudgetView, LimitPolicy
from spendgate.metering.pricing import PriceBook
from spendgate.periods import DAY_NS, day_number, day_of
from tests.web.test_console_http import admin_session, html, rows

# $0.001 a token: "hello world" is 3 prompt tokens, so a request costs (3 + max_tokens) / 1000
PRICING = json.dumps({"fake-gpt": {"input": 1, "output": 1}})
MESSAGES = [{"role": "user", "content": "hello world"}]
TICK = 0.05


class Webhook:
    """A webhook receiver on a loopback port recording every post; it can fail the first few."""

    def __init__(self) -> None:
        self.posts: list[dict[str, Any]] = []
        self.answered: list[int] = []
        self.fail_first = 0
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._receive)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/hook?token=s3cret-token"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _receive(self, request: web.Request) -> web.Response:
        body = json.loads(await request.read(), parse_float=Decimal)
        status = 500 if len(self.answered) < self.fail_first else 200
        self.answered.append(status)
        if status == 200:
            self.posts.append(body)
        return web.Response(status=status)

    def delivered(self, alert: str, kind: str | None = None) -> list[dict[str, Any]]:
        return [
            post
            for post in self.posts
            if post["alert"] == alert and (kind is None or post["subject"]["kind"] == kind)
        ]


@pytest.fixture
async def webhook() -> AsyncIterator[Webhook]:
    hook = Webhook()
    await hook.start()
    yield hook
    await hook.stop()


async def wait_for(condition: Callable[[], bool], timeout: float = 10) -> None:
    """Wait until `condition()` holds; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def ticks(gw: Any, count: int = 5) -> None:
    """Wait until the gateway's alert check has run `count` more times."""
    target = gw.runtime.alerts.passes + count
    await wait_for(lambda: gw.runtime.alerts.passes >= target)


async def spend(gw: Any, key: str, tokens: int) -> None:
    """One request costing (3 + tokens) / 1000 USD, written to the ledger."""
    await gw.client(key).chat.completions.create(
        model="fake-gpt", messages=MESSAGES, max_tokens=tokens
    )
    await gw.flush()


# the period key, with an injected clock


def test_the_period_key_is_the_first_day_of_the_budget_period() -> None:
    assert budget_period_key("daily", date(2026, 11, 22)) == "daily:2026-11-22"
    assert budget_period_key("weekly", date(2026, 11, 22)) == "weekly:2026-11-16"
    assert budget_period_key("monthly", date(2026, 11, 30)) == "monthly:2026-11-01"
    assert budget_period_key("monthly", date(2026, 12, 1)) == "monthly:2026-12-01"
    assert budget_period_key("total", date(2026, 12, 1)) == "total:1970-01-01"


def test_budget_crossings_at_80_and_100_percent() -> None:
    def reached(spent: str, budget: str = "10") -> list[str]:
        view = BudgetView(Decimal(budget), "monthly", Decimal(spent), Decimal(0), None)
        return [c.threshold for c in budget_crossings("user", 1, "u", None, view, date.today())]

    assert reached("7.999999") == []
    assert reached("8") == ["budget_80"]
    assert reached("10") == ["budget_80", "budget_100"]
    assert reached("0", budget="0") == []  # a zero budget blocks; it is no news


async def test_a_new_period_alerts_again(tmp_path: Path) -> None:
    day_one = date(2026, 11, 22)
    now = [day_number(day_one) * DAY_NS + 3600 * 10**9]
    ledger = {day_one: 90_000_000_000, date(2026, 11, 23): 85_000_000_000}  # picodollars

    async def baseline(scope: str, since: date | None) -> int:
        today = day_of(now[0] // DAY_NS)  # the ledger holds nothing after today
        return sum(pico for day, pico in ledger.items() if (since or day) <= day <= today)

    engine = create_engine(sqlite_url_for_path(str(tmp_path / "ledger.db")))
    try:
        await upgrade(engine)
        store = Store(engine)
        await store.create_user("dee", budget_usd=Decimal("0.1"), budget_period="daily")
        backend = MemoryBackend(baseline, reservation_ttl_ns=10**9, clock=lambda: now[0])
        policy = LimitPolicy(backend, PriceBook({}), default_max_tokens=16, clock=lambda: now[0])
        alerts = AlertStore(engine)
        monitor = AlertMonitor(
            store, policy, alerts, webhook_url=None, interval=1, low_balance_usd=Decimal(0)
        )
        await monitor.check()
        await monitor.check()
        first = await alerts.recent()
        now[0] += DAY_NS  # the next day: a new daily period, the same share of the budget
        await monitor.check()
        await monitor.check()
        both = await alerts.recent()
    finally:
        await engine.dispose()
    assert [(a.crossing.threshold, a.crossing.period_start) for a in first] == [
        ("budget_80", day_one)
    ]
    assert sorted((a.crossing.threshold, str(a.crossing.period_start)) for a in both) == [
        ("budget_80", "2026-11-22"),
        ("budget_80", "2026-11-23"),
    ]


# through a running gateway


async def test_key_and_user_budgets_post_one_webhook_per_threshold(make_gateway, webhook) -> None:
    async with make_gateway(
        alert_webhook_url=webhook.url, alert_check_seconds=TICK, model_pricing_json=PRICING
    ) as gw:
        key = await gw.new_key("kim", budget_usd=Decimal("0.1"), budget_period="monthly")
        other = await gw.new_key("ula")
        async with gw.admin() as admin:
            patched = await admin.patch("/admin/users/ula", json={"budget_usd": "0.2"})
            assert patched.status_code == 200, patched.text
        gw.runtime.principals.invalidate()

        await spend(gw, key, 60)  # $0.063 of $0.1: nothing yet
        await ticks(gw)
        assert webhook.posts == []
        await spend(gw, key, 20)  # $0.086: 80%
        await wait_for(lambda: webhook.delivered("budget_80", "key") != [])
        await spend(gw, key, 20)  # $0.109: past 100%
        await wait_for(lambda: webhook.delivered("budget_100", "key") != [])

        await spend(gw, other, 160)  # $0.163 of $0.2: 81.5%
        await wait_for(lambda: webhook.delivered("budget_80", "user") != [])
        await spend(gw, other, 40)  # $0.206
        await wait_for(lambda: webhook.delivered("budget_100", "user") != [])
        await ticks(gw, 10)  # later passes repeat nothing

    assert sorted((p["alert"], p["subject"]["kind"]) for p in webhook.posts) == [
        ("budget_100", "key"),
        ("budget_100", "user"),
        ("budget_80", "key"),
        ("budget_80", "user"),
    ]
    key_80 = webhook.delivered("budget_80", "key")[0]
    assert key_80["subject"]["user"] == "kim" and key_80["subject"]["key"].startswith("sg-")
    assert key_80["subject"]["key"][:7] == key[:7]
    assert key not in json.dumps(webhook.posts, default=str)
    assert key_80["budget_usd"] == Decimal("0.1")
    assert key_80["spend_usd"] == Decimal("0.086")
    assert key_80["balance_usd"] is None
    assert key_80["period"] == "monthly"
    assert key_80["period_start"] == datetime.now(UTC).date().replace(day=1).isoformat()
    user_100 = webhook.delivered("budget_100", "user")[0]
    assert user_100["subject"] == {"kind": "user", "user": "ula"}
    assert user_100["spend_usd"] == Decimal("0.206")


async def test_low_and_zero_balance_alert_once_each(make_gateway, webhook) -> None:
    async with make_gateway(
        alert_webhook_url=webhook.url,
        alert_check_seconds=TICK,
        alert_low_balance_usd="0.05",
        model_pricing_json=PRICING,
    ) as gw:
        key = await gw.new_key("cam")
        async with gw.admin() as admin:
            added = await admin.post("/admin/users/cam/credits", json={"amount_usd": "0.1"})
            assert added.status_code == 200, added.text
        gw.runtime.principals.invalidate()
        await ticks(gw)
        assert webhook.posts == []  # $0.1 is not low
        await spend(gw, key, 57)  # balance $0.04
        await wait_for(lambda: webhook.delivered("balance_low") != [])
        await ticks(gw)
        assert webhook.delivered("balance_zero") == []
        await spend(gw, key, 57)  # balance -$0.02
        await wait_for(lambda: webhook.delivered("balance_zero") != [])
        await ticks(gw, 10)

    assert [p["alert"] for p in webhook.posts] == ["balance_low", "balance_zero"]
    low, zero = webhook.posts
    assert low["balance_usd"] == Decimal("0.04") and zero["balance_usd"] == Decimal("-0.02")
    assert low["subject"] == {"kind": "user", "user": "cam"}
    assert low["period"] is None and low["budget_usd"] is None


async def test_a_failing_webhook_is_retried_until_delivered_once(make_gateway, webhook) -> None:
    webhook.fail_first = 2
    async with make_gateway(
        alert_webhook_url=webhook.url, alert_check_seconds=TICK, model_pricing_json=PRICING
    ) as gw:
        key = await gw.new_key("rey", budget_usd=Decimal("0.01"), budget_period="daily")
        await spend(gw, key, 7)  # $0.01: 80% and 100% at once
        await wait_for(lambda: len(webhook.posts) == 2)
        await ticks(gw, 10)
        async with gw.admin() as admin:
            listed = (await admin.get("/admin/alerts")).json()["alerts"]

    assert webhook.answered == [500, 500, 200, 200]
    assert sorted(p["alert"] for p in webhook.posts) == ["budget_100", "budget_80"]
    attempts = sorted(alert["attempts"] for alert in listed)
    assert sum(attempts) == 4 and attempts[-1] >= 2
    failed_once = [a for a in listed if a["attempts"] > 1]
    assert failed_once and all(a["last_error"] == "HTTP 500" for a in failed_once)
    assert all(a["delivered_at"] is not None for a in listed)
    assert "s3cret" not in json.dumps(listed)


async def test_without_a_url_alerts_are_recorded_and_shown_not_sent(make_gateway, webhook) -> None:
    async with make_gateway(alert_check_seconds=TICK, model_pricing_json=PRICING) as gw:
        key = await gw.new_key("nia", budget_usd=Decimal("0.01"), budget_period="weekly")
        await spend(gw, key, 9)  # $0.012
        async with gw.admin() as admin:

            async def listed() -> list[dict[str, Any]]:
                return (await admin.get("/admin/alerts")).json()["alerts"]

            deadline = time.monotonic() + 10
            while len(await listed()) < 2:
                assert time.monotonic() < deadline, "alerts not recorded in time"
                await asyncio.sleep(0.02)
            await ticks(gw)
            alerts = await listed()
            monitor = (await admin.get("/admin/monitor")).json()
            refused = await gw.http().get("/admin/alerts")
        console = await admin_session(gw)
        overview = await console.get("/ui/")

    assert webhook.answered == []
    assert sorted(a["alert"] for a in alerts) == ["budget_100", "budget_80"]
    assert all(a["attempts"] == 0 and a["delivered_at"] is None for a in alerts)
    assert all(a["subject"]["user"] == "nia" and a["period"] == "weekly" for a in alerts)
    assert monitor["alerts"] == alerts
    assert refused.status_code == 401
    shown = rows(html(overview), "alerts")
    assert len(shown) == 2 and "budget_80" in overview.text and "nia" in overview.text


async def test_two_gateways_on_one_database_send_one_webhook_per_crossing(
    make_gateway, webhook, redis_server
) -> None:
    await redis_server.client()  # skips (fails on CI) without Redis
    prefix = f"sgtest-{secrets.token_hex(4)}"
    shared = {
        "alert_webhook_url": webhook.url,
        "alert_check_seconds": 0.02,
        "model_pricing_json": PRICING,
        "redis_url": redis_server.url,
        "redis_prefix": prefix,
    }
    try:
        async with make_gateway(**shared) as one, make_gateway(**shared) as two:
            assert one.settings.database_url == two.settings.database_url
            key = await one.new_key("two", budget_usd=Decimal("0.01"), budget_period="monthly")
            await spend(one, key, 9)  # $0.012: 80% and 100%
            await wait_for(lambda: len(webhook.posts) >= 2)
            # both instances saw both crossings (Redis shares the spend) ...
            for gw in (one, two):
                await wait_for(lambda gw=gw: len(gw.runtime.alerts.known) == 2)
            await ticks(one, 10)
            await ticks(two, 10)
    finally:
        await redis_server.delete_keys(prefix)
    # ... and the ledger let only one of them record and send each
    assert sorted(p["alert"] for p in webhook.posts) == ["budget_100", "budget_80"]
