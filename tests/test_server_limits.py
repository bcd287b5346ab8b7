"""Slow and oversized requests are cut off by the server; normal traffic is not (real sockets)."""

import asyncio
import json
import time

import pytest

from tests.support import assert_openai_error

READ_SECONDS = 1.0


@pytest.fixture
async def limited(make_gateway):
    async with make_gateway(request_read_seconds=READ_SECONDS, max_header_bytes=8192) as gw:
        yield gw


async def connect(gateway):
    host, port = gateway.url.removeprefix("http://").split(":")
    return await asyncio.open_connection(host, int(port))


def parse(data: bytes) -> tuple[int, dict, bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split(" ")[1]), headers, body


async def answer_and_close(reader, within: float) -> bytes:
    """Everything the server sends until it closes the connection (fails after `within` s)."""
    return await asyncio.wait_for(reader.read(), within)


async def test_a_connection_that_never_sends_is_closed_with_a_408(limited):
    reader, writer = await connect(limited)
    started = time.monotonic()
    data = await answer_and_close(reader, 10)
    assert time.monotonic() - started >= READ_SECONDS * 0.9
    status, headers, body = parse(data)
    assert status == 408 and headers["connection"] == "close"
    assert json.loads(body)["error"]["code"] == "request_timeout"
    writer.close()


async def test_a_head_sent_a_byte_at_a_time_is_cut_off(limited):
    reader, writer = await connect(limited)
    head = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200
    started = time.monotonic()
    closed = asyncio.ensure_future(reader.read())
    for byte in head:  # slowloris: one byte every 50 ms, each one resetting nothing
        if closed.done():
            break
        writer.write(bytes([byte]))
        await asyncio.sleep(0.05)
    data = await asyncio.wait_for(closed, 10)
    assert READ_SECONDS * 0.9 <= time.monotonic() - started < READ_SECONDS + 5
    assert parse(data)[0] == 408
    writer.close()


async def test_a_body_that_trickles_is_cut_off(limited, upstream):
    key = await limited.new_key()
    reader, writer = await connect(limited)
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {key}\r\nContent-Length: 1000\r\n\r\n".encode()
        + b'{"model": "gpt-4o-mini", '
    )
    await writer.drain()
    data = await answer_and_close(reader, 10)
    assert parse(data)[0] == 408
    assert upstream.stats.received == 0  # nothing was forwarded
    writer.close()


async def test_a_head_over_the_limit_is_a_431(limited):
    reader, writer = await connect(limited)
    writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n")
    for i in range(40):  # 40 headers of 1 KB: over the 8 KB limit
        writer.write(f"X-Big-{i}: {'b' * 1024}\r\n".encode())
    writer.write(b"\r\n")
    with_error = await answer_and_close(reader, 10)
    status, headers, body = parse(with_error)
    assert status == 431 and headers["connection"] == "close"
    assert json.loads(body)["error"]["code"] == "request_header_too_large"
    writer.close()


async def test_a_head_under_the_limit_is_served(limited):
    http = limited.http()
    response = await http.get("/health", headers={"X-Big": "b" * 6000})
    assert response.status_code == 200


async def test_keep_alive_requests_and_long_streams_are_not_cut(limited, upstream):
    """The read limit is per request: a keep-alive connection used for longer than it, and
    a stream that outlives it, both work."""
    key = await limited.new_key()
    client = limited.client(key)
    http = limited.http()
    started = time.monotonic()
    while time.monotonic() - started < READ_SECONDS * 2.5:  # one connection, many requests
        assert (await http.get("/health")).status_code == 200
        await asyncio.sleep(0.2)
    stream = await client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        max_tokens=30,
        extra_headers={"x-fake-chunk-delay-ms": "100"},  # 3 s of stream
    )
    pieces = [chunk async for chunk in stream]
    assert sum(1 for p in pieces if p.choices and p.choices[0].delta.content) == 30


async def test_a_chunked_body_that_stops_is_cut_off_with_an_openai_error(limited, upstream):
    key = await limited.new_key()
    reader, writer = await connect(limited)
    writer.write(
        f"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
        "Transfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\n"
        '5\r\n{"mod\r\n'.encode()
    )
    status, _, body = parse(await answer_and_close(reader, 10))
    assert status == 408
    assert set(json.loads(body)["error"]) == {"message", "type", "code", "param"}
    assert upstream.stats.received == 0
    writer.close()


async def test_api_and_console_bodies_are_bounded_like_the_proxys(make_gateway):
    """Not only /v1: an unauthenticated sign-in form or /ingest cannot make the gateway read
    an unbounded body either, declared or chunked."""
    async with make_gateway(max_body_bytes=10_000, ingest_key="ingest-key-0123456789abcdef") as gw:
        http = gw.http()
        big = "x" * 20_000
        login = await http.post("/ui/login", data={"token": big})
        assert login.status_code == 413
        declared = await http.post("/ingest", content=big, headers={"X-Ingest-Key": "k"})
        assert_openai_error(declared, 413, "request_too_large")

        async def chunks():
            for _ in range(20):
                yield b"y" * 1000

        chunked = await http.post("/admin/users", content=chunks(), headers={"X-Admin-Token": "t"})
        assert_openai_error(chunked, 413, "request_too_large")
        small = await http.post("/ui/login", data={"token": "short"})
        assert small.status_code != 413


async def test_a_large_body_sent_with_its_head_is_not_taken_for_a_large_head(limited, upstream):
    """One write carrying a small head and a 100 KB body: the body does not count as head."""
    key = await limited.new_key()
    body = json.dumps({"model": "gpt-4o-mini", "input": "word " * 20_000}).encode()
    reader, writer = await connect(limited)
    writer.write(
        b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {key}\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n".encode()
        + body
    )
    status, _, answer = parse(await answer_and_close(reader, 10))
    assert status == 200, answer
    writer.close()


async def test_a_large_head_arriving_whole_in_one_read_is_a_431(limited):
    reader, writer = await connect(limited)
    big = "".join(f"X-Big-{i}: {'b' * 1000}\r\n" for i in range(12))  # ~12 KB > 8 KB
    writer.write(f"GET /health HTTP/1.1\r\nHost: x\r\n{big}\r\n".encode())
    status, _, _ = parse(await answer_and_close(reader, 10))
    assert status == 431
    writer.close()
