"""The ledger database goes away under a running gateway (a real PostgreSQL behind a proxy
that is cut): cached keys keep working, events wait in the queue and are all written when
it returns; unknown keys and the admin API answer an OpenAI-shaped 503; /metrics and
/health say so."""

import asyncio
import contextlib
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


OUTAGE_SECONDS = 30.0
LOAD_WORKERS = 16


@dataclass
class Load:
    """Clients sending requests in a loop until told to stop; what they got, by phase."""

    statuses: dict[str, dict[int, int]]
    phase: str = "before"
    running: bool = True

    def count(self, status: int) -> None:
        by_status = self.statuses.setdefault(self.phase, {})
        by_status[status] = by_status.get(status, 0) + 1

    def total(self, phase: str | None = None) -> int:
        phases = [phase] if phase else list(self.statuses)
        return sum(sum(self.statuses.get(p, {}).values()) for p in phases)


async def load_worker(http, key: str, load: Load, worker: int) -> None:
    headers = {"Authorization": f"Bearer {key}"}
    body = {"model": "gpt-4o-mini", "messages": MESSAGES, "max_tokens": 4}
    streamed = {**body, "stream": True}
    i = 0
    while load.running:
        i += 1
        if (i + worker) % 2:
            response = await http.post("/v1/chat/completions", json=body, headers=headers)
        else:
            async with http.stream(
                "POST", "/v1/chat/completions", json=streamed, headers=headers
            ) as response:
                await response.aread()
        load.count(response.status_code)


async def test_a_30_second_outage_under_load_loses_nothing(make_gateway, db, upstream, tmp_path):
    """The issue's figure: 30 s without the database while clients keep sending; events
    queue, spill to the journal past the memory bound, and are all written once it is back."""
    journal = tmp_path / "journal"
    settings = {"database_url": db.url, "journal_dir": journal, "write_queue_max": 500}
    async with make_gateway(**settings) as gateway:
        key = await gateway.new_key("tess")
        http = gateway.http()
        load = Load({})
        workers = [
            asyncio.create_task(load_worker(http, key, load, n)) for n in range(LOAD_WORKERS)
        ]
        try:
            await asyncio.sleep(2)  # the load runs with the database up...
            load.phase = "outage"
            await db.proxy.cut()
            cut_at = time.monotonic()
            polls: list[bool] = []  # /health said the database is down
            journal_peak = 0
            while time.monotonic() - cut_at < OUTAGE_SECONDS:  # ...then 30 s without it
                await asyncio.sleep(1)
                health = await http.get("/health")
                polls.append(health.status_code == 503 and health.json()["database"] == "down")
                journal_peak = max(journal_peak, health.json()["journal"])
            metrics = (await http.get("/metrics")).text
            db.proxy.restore()
            load.phase = "after"
            restored_at = time.monotonic()
            await asyncio.sleep(2)  # and some load after its return
        finally:
            db.proxy.restore()
            load.running = False
            await asyncio.gather(*workers)

        async def all_written() -> bool:
            health = (await http.get("/health")).json()
            text = (await http.get("/metrics")).text
            return health["journal"] == 0 and metric(text, "spendgate_write_queue_depth") == 0

        await wait_until(all_written, timeout=120)
        drained_in = time.monotonic() - restored_at
        async with gateway.admin() as admin:
            report = (await admin.get("/admin/usage")).json()
        journaled = metric(metrics, "spendgate_usage_events_journaled_total")
        print(
            f"\n30 s database outage under load: {load.total()} requests "
            f"({load.total('outage')} during the outage), {journaled:.0f} events journaled "
            f"(peak {journal_peak:.0f} in the journal), all written {drained_in:.1f} s after "
            f"the restore; ledger {report['totals']['requests']} == upstream "
            f"{upstream.stats.requests}"
        )
    for phase, by_status in load.statuses.items():
        assert set(by_status) == {200}, (phase, by_status)  # no client saw an error
    assert load.total("outage") > 500  # a real load ran through the outage
    assert len(polls) >= 20 and all(polls[2:]), polls  # /health said so all along
    assert journaled > 0 and journal_peak > 0  # past the memory bound: the journal
    assert metric(metrics, "spendgate_usage_events_dropped_total") == 0
    assert report["totals"]["requests"] == upstream.stats.requests == load.total()
    assert not list(journal.iterdir())


async def test_a_database_that_hangs_counts_as_down_and_recovers(make_gateway, db, upstream):
    """A database that keeps its connections open but never answers (a hung server, a
    network dropping packets): look-ups and writes give up after the database timeout
    instead of holding requests for ever, and everything works again once it answers."""
    settings = {"database_url": db.url, "database_timeout_seconds": 1.0}
    async with make_gateway(**settings) as gateway:
        client = gateway.client(await gateway.new_key("uma"))
        stranger = gateway.client(await gateway.new_key("vic"))
        await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        await gateway.flush()
        db.proxy.freeze()
        try:
            for _ in range(3):  # cached, or looked up again: bounded either way
                try:
                    await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
                except openai.APIStatusError as exc:
                    assert_openai_error(exc.response, 503, "database_unavailable")
            started = time.monotonic()
            with pytest.raises(openai.APIStatusError) as refused:
                await stranger.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
            assert time.monotonic() - started < 5
            assert_openai_error(refused.value.response, 503, "database_unavailable")
        finally:
            db.proxy.restore()
        # The hung connections were given up: new ones serve the key and write the queue.
        await stranger.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        await gateway.flush()
        async with gateway.admin() as admin:
            report = (await admin.get("/admin/usage")).json()
        assert report["totals"]["requests"] == upstream.stats.requests


async def test_stopping_while_the_database_hangs_does_not_hang(
    make_gateway, db, upstream, tmp_path
):
    """A database that keeps its connections open but never answers (a network dropping
    packets): the gateway still stops, its unwritten events in the journal."""
    journal = tmp_path / "journal"
    settings = {
        "database_url": db.url,
        "journal_dir": journal,
        "shutdown_write_seconds": 0.5,
        "database_timeout_seconds": 1.0,
    }
    async with make_gateway(**settings) as gateway:
        client = gateway.client(await gateway.new_key("uma"))
        await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        await gateway.flush()
        db.proxy.freeze()
        answered = 0
        for _ in range(3):
            with contextlib.suppress(openai.APIStatusError):  # 503 if the key is looked up
                await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
                answered += 1
        started = time.monotonic()
    stopped_in = time.monotonic() - started
    db.proxy.restore()
    assert stopped_in < 20, stopped_in
    (kept,) = journal.iterdir()
    assert len(kept.read_bytes().splitlines()) == answered
