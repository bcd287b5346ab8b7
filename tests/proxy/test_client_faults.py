"""Client and upstream faults on real sockets, each ending in exactly one ledger row.

The contract (§4): a request that reached the upstream is recorded once, whatever happens to
the client or the upstream; a usage the provider reported is recorded as it is, anything else
is an estimate (`estimated: true`). Here each fault checks that row (status, `estimated`,
`error_code`), the fake upstream's billed counters against it, and that nothing is left
running afterwards (drains and the in-flight gauge back to 0).

Already covered elsewhere: a chat stream abandoned mid-way in both modes and an upstream reset
mid-stream (test_disconnect.py); upstream 5xx/429, 502 and 504 (test_errors.py).
"""

import asyncio
import contextlib
import inspect
import random
import socket
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from spendgate.ledger.schema import UsageEventRow
from tests.processes import clean_environment, free_port, serve
from tests.support import ADMIN_TOKEN

MiB = 1024 * 1024


async def wait_for(predicate: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Poll a predicate (sync or async) until it holds; fail the test after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def ledger_events(gateway) -> list[dict[str, Any]]:
    """Every usage event the gateway has written, as column -> value (error_code included)."""
    await gateway.runtime.writer.flush()
    async with gateway.runtime.engine.connect() as conn:
        rows = (await conn.execute(select(UsageEventRow).order_by(UsageEventRow.id))).mappings()
        return [dict(row) for row in rows]


async def events_once(gateway, count: int) -> list[dict[str, Any]] | None:
    """The ledger's events once there are `count` of them (None before)."""
    events = await ledger_events(gateway)
    assert len(events) <= count, events
    return events if len(events) == count else None


async def gauges(url: str) -> dict[str, float]:
    """The gateway's Prometheus samples without labels."""
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        text = (await http.get("/metrics", headers={"x-admin-token": ADMIN_TOKEN})).text
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if not sample.labels
    }


async def nothing_running(url: str) -> bool:
    values = await gauges(url)
    return (
        values["spendgate_requests_in_flight"] == 0
        and values["spendgate_stream_drains_active"] == 0
    )


async def settled(gateway, timeout: float = 10.0) -> None:
    """Wait until no drain runs and no proxied request is in flight."""
    await wait_for(lambda: gateway.runtime.drains.active == 0, timeout)
    await wait_for(lambda: nothing_running(gateway.url), timeout)


def chat(stream: bool, max_tokens: int = 20) -> dict[str, Any]:
    return {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "tell me a long story"}],
        "stream": stream,
        "max_tokens": max_tokens,
    }


BODIES = {  # the streamed endpoints test_disconnect.py does not cover
    "completions": lambda n: {
        "model": "gpt-4o-mini", "prompt": "once upon a time", "stream": True, "max_tokens": n,
    },
    "responses": lambda n: {
        "model": "gpt-4o-mini", "input": "tell me a long story", "stream": True,
        "max_output_tokens": n,
    },
}  # fmt: skip


def request_bytes(path: str, key: str, body: dict[str, Any], **knobs: str) -> bytes:
    """A whole HTTP/1.1 request (the connection closes after it)."""
    payload = orjson.dumps(body)
    lines = [
        f"POST {path} HTTP/1.1",
        "Host: 127.0.0.1",
        f"Authorization: Bearer {key}",
        "Content-Type: application/json",
        f"Content-Length: {len(payload)}",
        "Connection: close",
        *(f"x-fake-{name.replace('_', '-')}: {value}" for name, value in knobs.items()),
    ]
    return "\r\n".join(lines).encode() + b"\r\n\r\n" + payload


@contextlib.asynccontextmanager
async def connection(url: str) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """A raw connection to the gateway, closed (the client gone) when the block ends."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def leave_after_chunks(gateway, key: str, path: str, body: dict, chunks: int, **knobs):
    """Stream `body`, read `chunks` raw body chunks, then close the connection."""
    headers = {"Authorization": f"Bearer {key}"}
    headers |= {f"x-fake-{name.replace('_', '-')}": value for name, value in knobs.items()}
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:
        async with http.stream("POST", path, json=body, headers=headers) as resp:
            assert resp.status_code == 200
            seen = 0
            async for _ in resp.aiter_raw():
                seen += 1
                if seen == chunks:
                    break


def assert_billed_as_recorded(event: dict[str, Any], upstream) -> None:
    """A row carrying the provider's usage: the fake billed exactly that one answer."""
    assert event["estimated"] is False and event["error_code"] is None, event
    assert upstream.stats.requests == 1
    assert event["prompt_tokens"] == upstream.stats.prompt_tokens
    assert event["completion_tokens"] == upstream.stats.completion_tokens


async def assert_unbilled_estimate(event: dict[str, Any], upstream, code: str) -> None:
    """A row estimated because the provider's usage never came: the fake billed nothing."""
    assert event["estimated"] is True and event["error_code"] == code, event
    assert event["prompt_tokens"] > 0
    await wait_for(lambda: upstream.stats.unbilled == 1)
    assert upstream.stats.requests == 0


# -- the client leaves before the response headers ---------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("mode", ["drain", "abort"])
async def test_client_gone_before_the_response_headers(make_gateway, upstream, mode, stream):
    """The upstream is still waiting its latency when the client leaves.

    The gateway only notices a disconnect while relaying a stream: a plain answer is read
    and recorded with its real usage in both modes; a stream is drained for its usage
    (drain) or closed at its first chunk and estimated (abort).
    """
    async with make_gateway(on_disconnect=mode) as gateway:
        key = await gateway.new_key()
        request = request_bytes(
            "/v1/chat/completions", key, chat(stream), latency_ms="300", chunk_delay_ms="20"
        )
        async with connection(gateway.url) as (_, writer):
            writer.write(request)
            await writer.drain()
            await wait_for(lambda: upstream.stats.received == 1)
        (event,) = await wait_for(lambda: events_once(gateway, 1))
        await settled(gateway)
        assert event["status"] == 200 and event["stream"] is stream
        if stream and mode == "abort":
            await assert_unbilled_estimate(event, upstream, "client_disconnected")
        else:
            assert_billed_as_recorded(event, upstream)
            assert event["completion_tokens"] == 20
        assert upstream.stats.received == 1


# -- the client leaves mid-stream, on the other streamed endpoints ---------------------


@pytest.mark.parametrize("endpoint", ["completions", "responses"])
@pytest.mark.parametrize("mode", ["drain", "abort"])
async def test_client_gone_mid_stream(make_gateway, upstream, mode, endpoint):
    async with make_gateway(on_disconnect=mode) as gateway:
        key = await gateway.new_key()
        body = BODIES[endpoint](30)
        await leave_after_chunks(gateway, key, f"/v1/{endpoint}", body, 2, chunk_delay_ms="20")
        (event,) = await wait_for(lambda: events_once(gateway, 1))
        await settled(gateway)
        assert event["endpoint"] == endpoint and event["stream"] is True
        if mode == "drain":
            assert_billed_as_recorded(event, upstream)
            assert event["completion_tokens"] == 30
        else:
            await assert_unbilled_estimate(event, upstream, "client_disconnected")
            assert 0 < event["completion_tokens"] < 30


async def test_abort_closes_a_silent_upstream_at_once(make_gateway, upstream):
    """Abort mode closes the upstream when the client leaves, not at the upstream's next
    chunk: a model thinking for a minute between chunks would go on (and be billed)."""
    relay = CountingRelay(upstream_port(upstream))
    relay_port = await relay.start()
    try:
        base = f"http://127.0.0.1:{relay_port}/v1"
        async with make_gateway(on_disconnect="abort", upstream_base=base) as gateway:
            key = await gateway.new_key()
            request = request_bytes(
                "/v1/chat/completions", key, chat(True, 3), chunk_delay_ms="3000"
            )
            async with connection(gateway.url) as (reader, writer):
                writer.write(request)
                await writer.drain()
                await reader.readuntil(b"\r\n\r\n")
                assert b'"content"' in await reader.read(64 * 1024)  # the first chunk
                assert not relay.closed_by_gateway
            left = time.monotonic()
            await wait_for(lambda: relay.closed_by_gateway, timeout=10)
            closed_after = relay.closed_by_gateway[0] - left
            (event,) = await wait_for(lambda: events_once(gateway, 1))
            await assert_unbilled_estimate(event, upstream, "client_disconnected")
            assert closed_after < 1, f"upstream closed {closed_after:.1f} s after the client left"
    finally:
        await relay.stop()


# -- faults during a drain ---------------------------------------------------------------


async def test_upstream_breaking_during_a_drain_is_recorded_as_estimated(gateway, upstream):
    key = await gateway.new_key()
    await leave_after_chunks(
        gateway, key, "/v1/chat/completions", chat(True, 40), 2,
        chunk_delay_ms="20", reset_after="15",
    )  # fmt: skip
    (event,) = await wait_for(lambda: events_once(gateway, 1))
    await settled(gateway)
    await assert_unbilled_estimate(event, upstream, "upstream_broken")
    # the estimate counts what the drain read too, not only what the client got
    assert 15 <= event["completion_tokens"] < 40


@pytest.mark.parametrize("endless", [False, True], ids=["finite", "endless"])
async def test_shutdown_during_a_drain_still_writes_the_row(make_gateway, upstream, endless):
    """Stopping the gateway waits for its drains (bounded by the longest stream time)."""
    async with make_gateway(**({"stream_max_seconds": 1.5} if endless else {})) as gateway:
        key = await gateway.new_key()
        knobs = {"chunk_delay_ms": "20", **({"endless": "1"} if endless else {})}
        await leave_after_chunks(gateway, key, "/v1/chat/completions", chat(True, 50), 2, **knobs)
        await wait_for(lambda: gateway.runtime.drains.active == 1)
        assert await ledger_events(gateway) == []
        stopping = time.monotonic()
    stopped_in = time.monotonic() - stopping
    assert stopped_in < 5
    async with make_gateway() as again:  # the same ledger database
        (event,) = await ledger_events(again)
    if endless:
        await assert_unbilled_estimate(event, upstream, "upstream_timeout")
    else:
        assert_billed_as_recorded(event, upstream)
        assert event["completion_tokens"] == 50


# -- a stream that never ends ------------------------------------------------------------


async def test_endless_stream_is_cut_after_the_longest_stream_time(make_gateway, upstream):
    """SPENDGATE_STREAM_MAX_SECONDS ends a stream the upstream never ends; the client gets
    the end of the response (no `[DONE]`: the upstream never sent one)."""
    async with make_gateway(stream_max_seconds=1.0) as gateway:
        key = await gateway.new_key()
        headers = {"x-fake-endless": "1", "x-fake-chunk-delay-ms": "10"}
        started = time.monotonic()
        async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:
            response = await http.post(
                "/v1/chat/completions", json=chat(True),
                headers={**headers, "Authorization": f"Bearer {key}"},
            )  # fmt: skip
        took = time.monotonic() - started
        assert response.status_code == 200
        assert 1.0 <= took < 5, took
        assert response.text.count('"content"') > 20
        (event,) = await wait_for(lambda: events_once(gateway, 1))
        await settled(gateway)
        assert event["stream"] is True and event["status"] == 200
        await assert_unbilled_estimate(event, upstream, "upstream_timeout")
        assert event["completion_tokens"] > 20


async def test_endless_stream_abandoned_in_drain_mode_ends_its_drain(make_gateway, upstream):
    async with make_gateway(stream_max_seconds=1.0) as gateway:
        key = await gateway.new_key()
        await leave_after_chunks(
            gateway, key, "/v1/chat/completions", chat(True), 2, endless="1", chunk_delay_ms="10"
        )
        await wait_for(lambda: gateway.runtime.drains.active == 1)
        (event,) = await wait_for(lambda: events_once(gateway, 1), timeout=5)
        await settled(gateway)
        await assert_unbilled_estimate(event, upstream, "upstream_timeout")


# -- a slow reader -----------------------------------------------------------------------


class CountingRelay:
    """A TCP relay between the gateway and the fake upstream, counting the bytes sent down.

    It writes to the gateway only as fast as the gateway reads (`drain`), so `down` is what
    the upstream could push into the gateway: its socket buffers and what it reads.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.down = 0
        self.closed_by_gateway: list[float] = []  # when the gateway closed a connection
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        pumps = [
            asyncio.create_task(self._pump(reader, up_writer, count=False, gateway=True)),
            asyncio.create_task(self._pump(up_reader, writer, count=True)),
        ]
        self._tasks.update(pumps)
        await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        for pump in pumps:
            pump.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)
        self._tasks.difference_update(pumps)
        for end in (writer, up_writer):
            end.close()

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        count: bool,
        gateway: bool = False,
    ) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(64 * 1024):
                writer.write(data)
                await writer.drain()
                if count:
                    self.down += len(data)
        if gateway:
            self.closed_by_gateway.append(time.monotonic())


async def csv_rows(url: str, count: int) -> list[dict[str, str]] | None:
    """The rows of /admin/usage.csv, oldest first, once there are `count` of them."""
    async with httpx.AsyncClient(base_url=url, timeout=30) as admin:
        text = (await admin.get("/admin/usage.csv", headers={"x-admin-token": ADMIN_TOKEN})).text
    header, *lines = text.strip().splitlines()
    rows = [dict(zip(header.split(","), line.split(","), strict=True)) for line in lines]
    assert len(rows) <= count, rows
    return sorted(rows, key=lambda row: row["timestamp"]) if len(rows) == count else None


def upstream_port(upstream) -> int:
    return int(httpx.URL(upstream.base_url).port or 0)


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@contextlib.asynccontextmanager
async def raw_stream(
    port: int, request: bytes, rcvbuf: int | None = None
) -> AsyncIterator[socket.socket]:
    """A non-blocking socket that has sent `request`; closed (the client gone) at the end."""
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        if rcvbuf is not None:  # before connecting, so the advertised window is small too
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", port))
        await loop.sock_sendall(sock, request)
        yield sock


async def test_slow_reader_holds_the_upstream_back_with_bounded_memory(tmp_path, upstream):
    """A client that reads a little at a time: the gateway stops reading the upstream
    (TCP backpressure end to end) instead of buffering the stream in memory."""
    loop = asyncio.get_running_loop()
    relay = CountingRelay(upstream_port(upstream))
    relay_port = await relay.start()
    port = free_port()
    env = clean_environment(
        tmp_path,
        SPENDGATE_DATABASE_URL=f"sqlite:///{tmp_path}/ledger.db",
        SPENDGATE_UPSTREAM_BASE=f"http://127.0.0.1:{relay_port}/v1",
        SPENDGATE_UPSTREAM_API_KEY="sk-test",
        SPENDGATE_ADMIN_TOKEN=ADMIN_TOKEN,
        SPENDGATE_PORT=str(port),
        SPENDGATE_ON_DISCONNECT="abort",  # a drain of this stream would take minutes
    )
    url = f"http://127.0.0.1:{port}"
    try:
        async with serve(tmp_path, env) as served:
            await served.wait_for_output("listening")
            pid = served.process.pid
            async with httpx.AsyncClient(base_url=url, timeout=30) as admin:
                created = await admin.post(
                    "/admin/keys", json={"user": "slow"}, headers={"x-admin-token": ADMIN_TOKEN}
                )
                key = created.json()["key"]
                warm = await admin.post(
                    "/v1/chat/completions", json=chat(True, 200),
                    headers={"Authorization": f"Bearer {key}"},
                )  # fmt: skip
                assert warm.status_code == 200
            started_rss = rss_bytes(pid)
            # 50 million tokens of ~150 bytes each: far more than any buffer could hold
            request = request_bytes("/v1/chat/completions", key, chat(True, 50_000_000))

            # A reader as fast as it can for one second: how fast the upstream can push.
            async with raw_stream(port, request) as fast:
                down_before, started = relay.down, time.monotonic()
                got = 0
                while time.monotonic() - started < 1.0:
                    got += len(await loop.sock_recv(fast, 256 * 1024))
                free_rate = (relay.down - down_before) / (time.monotonic() - started)
                fast_rss = rss_bytes(pid)
            assert got > 1 * MiB and free_rate > 1 * MiB, (got, free_rate)
            assert fast_rss - started_rss < 30 * MiB, (fast_rss - started_rss) / MiB
            await wait_for(lambda: nothing_running(url))
            # That abort's estimate loaded the tokenizer (~70 MB, once, on the first
            # estimate), so the slow reader's baseline is taken after it.
            baseline = rss_bytes(pid)

            # A reader taking 1 KiB every 10 ms, through a small receive window.
            async with raw_stream(port, request, rcvbuf=4096) as slow:
                down_start, slow_started = relay.down, time.monotonic()
                samples: list[tuple[float, int, int]] = []
                for i in range(400):
                    assert await loop.sock_recv(slow, 1024)
                    if i in (100, 399):
                        samples.append((time.monotonic(), relay.down, rss_bytes(pid)))
                    await asyncio.sleep(0.01)
            (t_mid, down_mid, _), (t_end, down_end, rss_end) = samples
            # at its own pace the upstream would have sent far more than the memory bound
            assert free_rate * (t_end - slow_started) > 30 * MiB
            # once the buffers on the way are full it goes at the client's pace
            paused_growth = down_end - down_mid
            assert paused_growth < free_rate * (t_end - t_mid) / 10, paused_growth
            assert down_end - down_start < 32 * MiB, (down_end - down_start) / MiB
            assert rss_end - baseline < 30 * MiB, (rss_end - baseline) / MiB

            await wait_for(lambda: nothing_running(url))
            # the warm-up with its usage; the fast and the slow reader aborted, estimated
            rows = await wait_for(lambda: csv_rows(url, 3))
            assert [row["estimated"] for row in rows] == ["false", "true", "true"]
            assert {row["status"] for row in rows} == {"200"}
            await wait_for(lambda: upstream.stats.unbilled == 2)
            assert upstream.stats.requests == 1
    finally:
        await relay.stop()


# -- many clients vanishing at random phases ---------------------------------------------

PHASES = ("complete", "before_body", "before_headers", "after_headers", "mid_stream")


async def vanishing_request(url: str, key: str, rng: random.Random) -> None:
    """One request whose client leaves at a phase drawn from `rng` (or stays to the end)."""
    phase = rng.choice(PHASES)
    stream = rng.random() < 0.7
    wait_s = rng.uniform(0, 0.15)
    keep = rng.randint(1, 3000)
    request = request_bytes(
        "/v1/chat/completions", key, chat(stream), latency_ms="100", chunk_delay_ms="5"
    )
    async with connection(url) as (reader, writer):
        if phase == "before_body":
            writer.write(request[:-10])
            await writer.drain()
            return
        writer.write(request)
        await writer.drain()
        if phase == "before_headers":
            # somewhere in the upstream's latency (or before the gateway read the body)
            await asyncio.sleep(wait_s)
            return
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        if phase == "mid_stream":
            await reader.read(keep)
        elif phase == "complete":
            await reader.read()


@pytest.mark.parametrize("mode", ["drain", "abort"])
async def test_clients_vanishing_at_random_phases_leave_one_row_per_upstream_call(
    make_gateway, upstream, mode
):
    rng = random.Random(20240917)
    async with make_gateway(on_disconnect=mode) as gateway:
        key = await gateway.new_key()
        plans = [random.Random(rng.random()) for _ in range(50)]

        async def client() -> None:
            while plans:
                await vanishing_request(gateway.url, key, plans.pop())

        await asyncio.gather(*(client() for _ in range(5)))
        await settled(gateway)
        stats = upstream.stats
        # the fake has ended every answer: billed or not
        await wait_for(lambda: stats.requests + stats.unbilled == stats.received)
        events = await ledger_events(gateway)
        assert 0 < stats.received < 50  # some clients left before their request went out
        assert len(events) == stats.received
        assert {event["status"] for event in events} == {200}
        real = [event for event in events if not event["estimated"]]
        assert all(event["error_code"] == "client_disconnected" for event in events
                   if event["estimated"])  # fmt: skip
        if mode == "drain":
            # every answer is recorded with the usage the provider billed
            assert len(real) == stats.requests == stats.received
            assert sum(event["completion_tokens"] for event in real) == stats.completion_tokens
        else:
            assert len(real) <= stats.requests
            assert len(events) - len(real) >= stats.unbilled
        assert await nothing_running(gateway.url)
