"""The ledger database goes away under a running gateway (a real PostgreSQL behind a proxy
that is cut): cached keys keep working, events wait in the queue and are all written when
it returns; unknown keys and the admin API answer an OpenAI-shaped 503; /metrics and
/health say so."""

import asyncio
import time

import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.engine import make_url

from tests.faults import CuttableProxy
from tests.support import assert_openai_error

MESSAGES = [{"role": "user", "content": "hello"}]


def metric(text: str, name: str, **labels: str) -> float:
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


async def wait_until(condition, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def test_requests_flow_and_events_wait_while_the_database_is_away(
    make_gateway, server_databases, upstream
):
    url = make_url(await server_databases.url_for("postgresql"))
    proxy = CuttableProxy(url.host or "127.0.0.1", url.port or 5432)
    await proxy.start()
    through_proxy = url.set(host="127.0.0.1", port=proxy.port)
    try:
        async with make_gateway(
            database_url=through_proxy.render_as_string(hide_password=False)
        ) as gateway:
            key = await gateway.new_key("olga")
            client = gateway.client(key)
            await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
            await gateway.flush()
            stranger = gateway.client(await gateway.new_key("pia"))  # made, never used yet
            # olga's key is cached again by a request; pia's is not
            await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
            await gateway.flush()
            http = gateway.http()

            await proxy.cut()
            try:
                for _ in range(10):  # the cached key goes on being served
                    await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
                with pytest.raises(openai.APIStatusError) as refused:
                    await stranger.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
                assert_openai_error(refused.value.response, 503, "database_unavailable")
                async with gateway.admin() as admin:
                    listing = await admin.get("/admin/users")
                assert_openai_error(listing, 503, "database_unavailable")
                health = await http.get("/health")
                assert health.status_code == 503 and health.json()["database"] == "down"

                async def retried() -> bool:
                    text = (await http.get("/metrics")).text
                    return (
                        metric(text, "spendgate_database_errors_total", operation="ledger_write")
                        > 0
                    )

                await wait_until(retried)
                text = (await http.get("/metrics")).text
                assert metric(text, "spendgate_write_queue_depth") == 10
                assert metric(text, "spendgate_usage_events_retried_total") >= 10
                assert metric(text, "spendgate_database_errors_total", operation="key_lookup") >= 1
            finally:  # a gateway stops only once its queue is written
                proxy.restore()
            await gateway.flush()
            text = (await http.get("/metrics")).text
            assert metric(text, "spendgate_write_queue_depth") == 0
            assert metric(text, "spendgate_usage_events_written_total") == 12
            async with gateway.admin() as admin:
                report = (await admin.get("/admin/usage")).json()
            assert report["totals"]["requests"] == 12 == upstream.stats.requests
            health = await http.get("/health")
            assert health.status_code == 200, health.text
    finally:
        await proxy.stop()
