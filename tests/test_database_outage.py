"""The ledger database goes away under a running gateway (a real PostgreSQL behind a proxy
that is cut): cached keys keep working, events wait in the queue and are all written when
it returns; unknown keys and the admin API answer an OpenAI-shaped 503; /metrics and
/health say so."""

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.engine import make_url

from tests.faults import CuttableProxy
from tests.services import wipe_database
from tests.support import assert_openai_error

MESSAGES = [{"role": "user", "content": "hello"}]


def metric(text: str, name: str, **labels: str) -> float:
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


@dataclass
class CutDatabase:
    """The session's PostgreSQL scratch database (emptied), reached through a cuttable proxy."""

    proxy: CuttableProxy
    url: str


@pytest.fixture
async def db(server_databases) -> AsyncIterator[CutDatabase]:
    database_url = await server_databases.url_for("postgresql")
    await wipe_database(database_url)
    url = make_url(database_url)
    proxy = CuttableProxy(url.host or "127.0.0.1", url.port or 5432)
    await proxy.start()
    through = url.set(host="127.0.0.1", port=proxy.port)
    yield CutDatabase(proxy, through.render_as_string(hide_password=False))
    await proxy.stop()


async def wait_until(condition, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def test_requests_flow_and_events_wait_while_the_database_is_away(make_gateway, db, upstream):
    async with make_gateway(database_url=db.url) as gateway:
        key = await gateway.new_key("olga")
        client = gateway.client(key)
        await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        await gateway.flush()
        stranger = gateway.client(await gateway.new_key("pia"))  # made, never used yet
        # olga's key is cached again by a request; pia's is not
        await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        await gateway.flush()
        http = gateway.http()

        await db.proxy.cut()
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
                return metric(text, "spendgate_database_errors_total", operation="ledger_write") > 0

            await wait_until(retried)
            text = (await http.get("/metrics")).text
            assert metric(text, "spendgate_write_queue_depth") == 10
            assert metric(text, "spendgate_usage_events_retried_total") >= 10
            assert metric(text, "spendgate_database_errors_total", operation="key_lookup") >= 1
        finally:  # a gateway stops only once its queue is written
            db.proxy.restore()
        await gateway.flush()
        text = (await http.get("/metrics")).text
        assert metric(text, "spendgate_write_queue_depth") == 0
        assert metric(text, "spendgate_usage_events_written_total") == 12
        async with gateway.admin() as admin:
            report = (await admin.get("/admin/usage")).json()
        assert report["totals"]["requests"] == 12 == upstream.stats.requests
        health = await http.get("/health")
        assert health.status_code == 200, health.text


async def test_past_the_queue_bound_events_go_to_the_journal_and_come_back(
    make_gateway, db, upstream, tmp_path
):
    journal = tmp_path / "journal"
    async with make_gateway(database_url=db.url, write_queue_max=5, journal_dir=journal) as gateway:
        client = gateway.client(await gateway.new_key("quinn"))
        await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        await gateway.flush()
        http = gateway.http()
        await db.proxy.cut()
        try:
            for _ in range(12):
                await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
            text = (await http.get("/metrics")).text
            # in memory: 5 queued plus the batch being retried; the rest in the journal
            in_memory = metric(text, "spendgate_write_queue_depth")
            journaled = metric(text, "spendgate_usage_events_journaled_total")
            assert in_memory >= 5 and journaled >= 1 and in_memory + journaled == 12
            assert metric(text, "spendgate_journal_events") == journaled
            assert metric(text, "spendgate_usage_events_dropped_total") == 0
            assert (await http.get("/health")).json()["journal"] == journaled
        finally:
            db.proxy.restore()
        await gateway.flush()

        async def replayed() -> bool:
            return (await http.get("/health")).json()["journal"] == 0

        await wait_until(replayed)
        async with gateway.admin() as admin:
            csv_rows = (await admin.get("/admin/usage.csv")).text.strip().splitlines()
            assert len(csv_rows) == 14  # header + one row per request
            assert (await admin.get("/admin/usage")).json()["totals"]["requests"] == 13
        assert not list(journal.iterdir())
    assert upstream.stats.requests == 13


async def test_stopping_while_the_database_is_away_keeps_the_queue_in_the_journal(
    make_gateway, db, upstream, tmp_path
):
    journal = tmp_path / "journal"
    settings = {"database_url": db.url, "journal_dir": journal, "shutdown_write_seconds": 0.5}
    async with make_gateway(**settings) as gateway:
        client = gateway.client(await gateway.new_key("rosa"))
        await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        await gateway.flush()
        await db.proxy.cut()
        for _ in range(4):
            await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        started = time.monotonic()
    assert time.monotonic() - started < 15  # stopped without waiting for the database
    (kept,) = journal.iterdir()
    assert len(kept.read_bytes().splitlines()) == 4
    db.proxy.restore()
    async with make_gateway(**settings) as gateway:  # the next start replays it
        await gateway.flush()

        async def replayed() -> bool:
            async with gateway.admin() as admin:
                report = (await admin.get("/admin/usage")).json()
            return report["totals"]["requests"] == 5

        await wait_until(replayed)
        assert not list(journal.iterdir())
    assert upstream.stats.requests == 5
