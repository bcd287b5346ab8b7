"""Redis goes away under load and comes back (a real Redis behind a proxy that is cut).

The documented behaviour holds while it is away (`fail_open` rate limits: served;
`fail_closed` budgets: 503 `limits_unavailable`), requests admitted before the cut settle
after it, and once Redis is back no reservation is left open: not in the process, not in
Redis, and Redis's spend counter equals the ledger's to the picodollar.
"""

import asyncio
import json
import secrets
import time
from decimal import Decimal

from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.engine import make_url

from spendgate.limits.policy import user_scope
from spendgate.money import usd_to_pico
from tests.faults import CuttableProxy

CUT_SECONDS = 5.0
WORKERS_PER_KEY = 6


def metric(text: str, name: str) -> float:
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    )


async def wait_until(condition, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def worker(http, key: str, seen: dict, phase: list[str], running: list[bool], n: int):
    headers = {"Authorization": f"Bearer {key}", "x-fake-chunk-delay-ms": "10"}
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    i = n
    while running[0]:
        i += 1
        at = phase[0]
        if i % 2:  # streams take ~0.2 s: some are always open when Redis goes
            async with http.stream(
                "POST", "/v1/chat/completions", json={**body, "stream": True}, headers=headers
            ) as response:
                await response.aread()
        else:
            response = await http.post(
                "/v1/chat/completions", json={**body, "max_tokens": 8}, headers=headers
            )
        code = response.json()["error"]["code"] if response.status_code >= 400 else "ok"
        seen[(at, code)] = seen.get((at, code), 0) + 1


async def test_redis_cut_and_restored_under_load_leaves_no_reservation(
    make_gateway, redis_server, upstream
):
    client = await redis_server.client()  # skips (fails on CI) without Redis
    url = make_url(redis_server.url)
    proxy = CuttableProxy(url.host or "127.0.0.1", url.port or 6379)
    await proxy.start()
    prefix = f"sgtest-{secrets.token_hex(4)}"
    settings = {
        "redis_url": f"redis://127.0.0.1:{proxy.port}/0",
        "redis_prefix": prefix,
        "redis_timeout_seconds": 0.5,
    }
    try:
        async with make_gateway(**settings) as gw:
            budgeted = await gw.new_key("bea", budget_usd=Decimal(1000), budget_period="monthly")
            limited = await gw.new_key("rae", limits={"requests_per_minute": 1_000_000})
            http = gw.http()
            by_key: dict[str, dict] = {"budgeted": {}, "limited": {}}
            phase, running = ["before"], [True]
            tasks = [
                asyncio.create_task(worker(http, key, by_key[name], phase, running, n))
                for name, key in (("budgeted", budgeted), ("limited", limited))
                for n in range(WORKERS_PER_KEY)
            ]
            try:
                await asyncio.sleep(1.5)
                phase[0] = "cut"
                await proxy.cut()
                await asyncio.sleep(CUT_SECONDS)
                health = await http.get("/health")
                during = (await http.get("/metrics")).text
                proxy.restore()
                await asyncio.sleep(0.5)  # the outage guard notices on its next call
                phase[0] = "after"
                await asyncio.sleep(2)
            finally:
                proxy.restore()
                running[0] = False
                await asyncio.gather(*tasks)

            async def settled() -> bool:
                text = (await http.get("/metrics")).text
                return (
                    metric(text, "spendgate_settlements_pending") == 0
                    and metric(text, "spendgate_reservations_open") == 0
                    and metric(text, "spendgate_write_queue_depth") == 0
                )

            await wait_until(settled)
            after = (await http.get("/metrics")).text
            guard = gw.runtime.guard
            scope = user_scope("bea")
            left_reserved = await guard.reserved(scope)
            redis_spent = await guard.spent(scope, None)
            async with gw.admin() as admin:
                answer = await admin.get("/admin/usage", params={"group_by": "user"})
            usage = json.loads(answer.text, parse_float=Decimal)  # every digit of the sums
            ledger_cost = {row["user"]: row["cost_usd"] for row in usage["groups"]}
            print(f"\nRedis cut {CUT_SECONDS:.0f} s under load: {by_key}")
    finally:
        await proxy.stop()
        keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=1000)]
        if keys:
            await client.delete(*keys)

    assert health.status_code == 503 and health.json()["redis"] == "down"
    assert metric(during, "spendgate_redis_errors_total") > 0
    # The documented defaults: rate limits fail open, budgets fail closed.
    limited_seen, budget_seen = by_key["limited"], by_key["budgeted"]
    assert {code for _, code in limited_seen} == {"ok"}, limited_seen
    assert {code for _, code in budget_seen} <= {"ok", "limits_unavailable"}, budget_seen
    assert budget_seen.get(("cut", "limits_unavailable"), 0) > 0
    assert budget_seen.get(("before", "ok"), 0) > 0 and budget_seen.get(("after", "ok"), 0) > 0
    assert limited_seen.get(("cut", "ok"), 0) > 0
    # Nothing stuck: no open reservation anywhere, and Redis counts what the ledger holds.
    assert metric(after, "spendgate_reservations_open") == 0
    assert metric(after, "spendgate_reserved_usd") == 0
    assert left_reserved == 0
    # A settlement whose reply was lost in the cut, though Redis applied it, is replayed
    # and found applied: counted once (every one of these settlements holds a reservation).
    ledger_pico = usd_to_pico(ledger_cost["bea"])
    assert ledger_pico > 0
    assert redis_spent == ledger_pico
    served = sum(n for (_, code), n in budget_seen.items() if code == "ok")
    served += sum(limited_seen.values())
    # The ledger records refusals too; one may come in any phase (a request sent just before
    # the cut is refused during it).
    refused = sum(n for (_, code), n in budget_seen.items() if code == "limits_unavailable")
    assert usage["totals"]["requests"] - refused == served
    assert upstream.stats.requests == served
