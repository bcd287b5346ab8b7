"""Client disconnects mid-stream (drain and abort modes) and upstream breaks mid-stream."""

import asyncio
import time

import httpx
import pytest

from tests.stacks import COVERING

pytestmark = pytest.mark.matrix(COVERING)


async def wait_for(predicate, timeout: float = 10.0):
    """Poll an async predicate until it holds (fails the test after `timeout`)."""
    deadline = time.monotonic() + timeout
    while True:
        result = await predicate()
        if result:
            return result
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def ledger_rows(gateway):
    await gateway.runtime.writer.flush()
    async with gateway.admin() as admin:
        text = (await admin.get("/admin/usage.csv")).text
    lines = text.strip().splitlines()
    header = lines[0].split(",")
    return [dict(zip(header, line.split(","), strict=True)) for line in lines[1:]]


async def read_two_chunks_then_leave(gateway, key, **extra_headers):
    body = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "tell me a story"}],
        "stream": True,
        "max_tokens": 30,
    }
    headers = {"Authorization": f"Bearer {key}", "x-fake-chunk-delay-ms": "20", **extra_headers}
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:
        async with http.stream("POST", "/v1/chat/completions", json=body, headers=headers) as resp:
            assert resp.status_code == 200
            seen = 0
            async for _ in resp.aiter_raw():
                seen += 1
                if seen == 2:
                    break
    # Leaving the `async with` blocks closes the connection mid-stream.


async def test_drain_mode_reads_the_abandoned_stream_to_its_real_usage(gateway, upstream):
    key = await gateway.new_key()
    await read_two_chunks_then_leave(gateway, key)
    rows = await wait_for(lambda: ledger_rows(gateway))
    assert len(rows) == 1
    row = rows[0]
    assert row["estimated"] == "false"
    assert upstream.stats.requests == 1
    assert int(row["completion_tokens"]) == upstream.stats.completion_tokens == 30
    assert int(row["prompt_tokens"]) == upstream.stats.prompt_tokens


async def test_abort_mode_closes_upstream_and_records_an_estimate(make_gateway, upstream):
    async with make_gateway(on_disconnect="abort") as gateway:
        key = await gateway.new_key()
        await read_two_chunks_then_leave(gateway, key)
        rows = await wait_for(lambda: ledger_rows(gateway))
        assert len(rows) == 1 and rows[0]["estimated"] == "true"
        assert int(rows[0]["prompt_tokens"]) > 0
        assert 0 < int(rows[0]["completion_tokens"]) < 30
        await wait_for(lambda: _unbilled(upstream))
        assert upstream.stats.requests == 0


async def _unbilled(upstream):
    return upstream.stats.unbilled == 1


async def test_drain_bound_reached_falls_back_to_abort_with_an_estimate(make_gateway, upstream):
    async with make_gateway(max_drains=0) as gateway:
        await read_two_chunks_then_leave(gateway, await gateway.new_key())
        rows = await wait_for(lambda: ledger_rows(gateway))
        assert rows[0]["estimated"] == "true"


async def test_upstream_reset_mid_stream_is_recorded_as_estimated(gateway, upstream):
    key = await gateway.new_key()
    body = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "one two three"}],
        "stream": True,
        "max_tokens": 20,
    }
    headers = {"Authorization": f"Bearer {key}", "x-fake-reset-after": "5"}
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:
        async with http.stream("POST", "/v1/chat/completions", json=body, headers=headers) as resp:
            received = b"".join([chunk async for chunk in resp.aiter_raw()])
    assert received.count(b'"content"') >= 5
    rows = await wait_for(lambda: ledger_rows(gateway))
    assert rows[0]["estimated"] == "true"
    assert int(rows[0]["completion_tokens"]) >= 5
    assert upstream.stats.requests == 0 and upstream.stats.unbilled == 1


async def test_reported_usage_is_never_replaced_by_an_estimate(gateway, upstream):
    key = await gateway.new_key()
    client = gateway.client(key)
    stream = await client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "a"}], stream=True, max_tokens=3
    )
    _ = [chunk async for chunk in stream]
    rows = await wait_for(lambda: ledger_rows(gateway))
    assert rows[0]["estimated"] == "false"
    assert int(rows[0]["completion_tokens"]) == 3
