"""SIGTERM finishes in-flight streams and loses no event; a restart keeps every event."""

import asyncio
import os
import signal
import socket
import sys

import httpx

from spendgate.keys.material import display_key, hash_key, new_key
from spendgate.ledger.engine import create_engine, normalize_database_url, upgrade
from spendgate.ledger.reports import UsageFilter, usage_report
from spendgate.ledger.store import Store
from tests.support import ADMIN_TOKEN


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def ledger_requests(database_url: str) -> int:
    engine = create_engine(normalize_database_url(database_url))
    try:
        from datetime import UTC, date, datetime

        today = datetime.now(UTC).date()
        report = await usage_report(engine, UsageFilter(start=date(2000, 1, 1), end=today), None)
        return int(report["totals"]["requests"])
    finally:
        await engine.dispose()


async def make_key(database_url: str) -> str:
    engine = create_engine(normalize_database_url(database_url))
    try:
        await upgrade(engine)
        key = new_key()
        await Store(engine).create_key("term", hash_key(key), display_key(key))
        return key
    finally:
        await engine.dispose()


async def stream_to_the_end(url: str, key: str) -> bytes:
    body = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "x"}],
        "stream": True,
        "max_tokens": 20,
    }
    headers = {"Authorization": f"Bearer {key}", "x-fake-chunk-delay-ms": "40"}
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        async with http.stream("POST", "/v1/chat/completions", json=body, headers=headers) as resp:
            return b"".join([chunk async for chunk in resp.aiter_raw()])


async def test_sigterm_under_load_finishes_streams_and_loses_nothing(tmp_path, upstream):
    database_url = f"sqlite:///{tmp_path}/ledger.db"
    key = await make_key(database_url)
    port = free_port()
    env = {
        **os.environ,
        "SPENDGATE_DATABASE_URL": database_url,
        "SPENDGATE_UPSTREAM_BASE": upstream.base_url,
        "SPENDGATE_UPSTREAM_API_KEY": "sk-test",
        "SPENDGATE_ADMIN_TOKEN": ADMIN_TOKEN,
        "SPENDGATE_PORT": str(port),
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "spendgate", "serve", cwd=tmp_path, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        line = b""
        while b"listening" not in line:
            line = await asyncio.wait_for(process.stdout.readline(), 30)
            assert line, "the gateway exited before listening"
        streams = [asyncio.create_task(stream_to_the_end(url, key)) for _ in range(20)]
        while upstream.stats.received < 20:
            await asyncio.sleep(0.01)
        process.send_signal(signal.SIGTERM)
        bodies = await asyncio.gather(*streams)
        # uvicorn re-raises the signal after its graceful shutdown: -SIGTERM is the clean end.
        assert await asyncio.wait_for(process.wait(), 30) in (0, -signal.SIGTERM)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert all(body.rstrip().endswith(b"data: [DONE]") for body in bodies)
    assert upstream.stats.requests == 20
    assert await ledger_requests(database_url) == 20


async def test_restart_keeps_every_event(make_gateway, upstream):
    async with make_gateway() as gateway:
        client = gateway.client(await gateway.new_key())
        for _ in range(30):
            await client.embeddings.create(model="text-embedding-3-small", input="a b")
        url = gateway.settings.database
    assert await ledger_requests(url) == 30
    async with make_gateway() as again:
        async with again.admin() as admin:
            totals = (await admin.get("/admin/usage")).json()["totals"]
    assert totals["requests"] == 30
