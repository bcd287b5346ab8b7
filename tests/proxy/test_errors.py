"""Gateway and upstream errors: OpenAI-shaped, with the contract's codes, and recorded."""

import asyncio
import socket

import openai
import pytest

from tests.support import UPSTREAM_KEY


def error_of(response):
    body = response.json()
    assert set(body["error"]) == {"message", "type", "code", "param"}
    return body["error"]["code"]


async def raw_request(url: str, request_line: str, key: str) -> tuple[int, bytes]:
    """Send a request line exactly as written (no client-side path normalisation)."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        f"{request_line}\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
        "Connection: close\r\n\r\n".encode()
    )
    await writer.drain()
    data = await reader.read()
    writer.close()
    await writer.wait_closed()
    status = int(data.split(b" ", 2)[1])
    return status, data


@pytest.mark.parametrize(
    "path",
    [
        "/v1/../admin/users",
        "/v1/%2e%2e/admin/users",
        "/v1/%2E%2E/%2e%2e/etc/passwd",
        "/v1//evil.example/v1/models",
        "/v1/files/%252e%252e/x",
        "/v1/files/..%2fadmin",
        "/v1/files/a%5c..%5cb",
    ],
)
async def test_path_escapes_are_refused(gateway, upstream, path):
    key = await gateway.new_key()
    before = upstream.stats.received
    status, data = await raw_request(gateway.url, f"GET {path} HTTP/1.1", key)
    assert status == 400, data
    assert b'"invalid_request"' in data
    assert upstream.stats.received == before


async def test_missing_unknown_and_revoked_keys_are_refused(gateway, upstream):
    http = gateway.http()
    body = {"model": "gpt-4o-mini", "input": "x"}
    missing = await http.post("/v1/embeddings", json=body)
    assert missing.status_code == 401 and error_of(missing) == "invalid_api_key"
    unknown = await http.post(
        "/v1/embeddings", json=body, headers={"Authorization": "Bearer sg-" + "x" * 43}
    )
    assert unknown.status_code == 401 and error_of(unknown) == "invalid_api_key"
    assert unknown.headers["x-spendgate-request-id"]

    key = await gateway.new_key()
    client = gateway.client(key)
    await client.embeddings.create(model="text-embedding-3-small", input="x")
    async with gateway.admin() as admin:
        keys = (await admin.get("/admin/keys")).json()
        revoked = await admin.post(f"/admin/keys/{keys[0]['id']}/revoke")
    assert revoked.status_code == 200 and revoked.json()["revoked_at"]
    with pytest.raises(openai.AuthenticationError) as refused:
        await client.embeddings.create(model="text-embedding-3-small", input="x")
    assert refused.value.code == "invalid_api_key"
    assert upstream.stats.received == 1


async def test_revoke_by_another_process_takes_effect_within_the_refresh_interval(gateway):
    key = await gateway.new_key()
    client = gateway.client(key)
    await client.models.list()
    # Simulate another process: change the database without telling this cache.
    record = (await gateway.runtime.store.list_keys())[0]
    await gateway.runtime.store.revoke_key(record.id)
    await gateway.runtime.principals.refresh()
    with pytest.raises(openai.AuthenticationError):
        await client.models.list()


async def test_expired_key_is_refused(gateway):
    from datetime import UTC, datetime, timedelta

    key = await gateway.new_key(expires_at=datetime.now(UTC) - timedelta(seconds=1))
    with pytest.raises(openai.AuthenticationError):
        await gateway.client(key).models.list()


@pytest.mark.parametrize("status", [400, 429, 500, 503])
async def test_upstream_errors_are_relayed_as_they_are_and_recorded(gateway, upstream, status):
    key = await gateway.new_key()
    response = await gateway.http().post(
        "/v1/chat/completions",
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]},
        headers={"Authorization": f"Bearer {key}", "x-fake-status": str(status)},
    )
    assert response.status_code == status
    assert "fake upstream error" in response.json()["error"]["message"]
    await gateway.flush()
    async with gateway.admin() as admin:
        csv_rows = (await admin.get("/admin/usage.csv")).text.strip().splitlines()
    assert len(csv_rows) == 2 and f",{status}," in csv_rows[1]


async def test_unreachable_upstream_is_a_502(make_gateway):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]
    async with make_gateway(upstream_base=f"http://127.0.0.1:{dead_port}/v1") as gateway:
        response = await gateway.http().get(
            "/v1/files", headers={"Authorization": f"Bearer {await gateway.new_key()}"}
        )
        assert response.status_code == 502 and error_of(response) == "upstream_unavailable"
        await gateway.flush()
        async with gateway.admin() as admin:
            totals = (await admin.get("/admin/usage")).json()["totals"]
        assert totals["requests"] == 1


async def test_slow_upstream_is_a_504(make_gateway, upstream):
    async with make_gateway(upstream_timeout=0.2) as gateway:
        response = await gateway.http().get(
            "/v1/files",
            headers={
                "Authorization": f"Bearer {await gateway.new_key()}",
                "x-fake-latency-ms": "2000",
            },
        )
        assert response.status_code == 504 and error_of(response) == "upstream_timeout"


async def test_body_over_the_limit_is_a_413(make_gateway, upstream):
    async with make_gateway(max_body_bytes=1000) as gateway:
        response = await gateway.http().post(
            "/v1/embeddings",
            json={"model": "m", "input": "x" * 2000},
            headers={"Authorization": f"Bearer {await gateway.new_key()}"},
        )
        assert response.status_code == 413 and error_of(response) == "request_too_large"
        assert upstream.stats.received == 0


async def test_malformed_json_on_a_metered_endpoint_is_a_400(gateway, upstream):
    response = await gateway.http().post(
        "/v1/chat/completions",
        content=b"{not json",
        headers={
            "Authorization": f"Bearer {await gateway.new_key()}",
            "content-type": "application/json",
        },
    )
    assert response.status_code == 400 and error_of(response) == "invalid_request"
    assert upstream.stats.received == 0


async def test_upstream_key_never_appears_in_gateway_answers(gateway, upstream):
    key = await gateway.new_key()
    http = gateway.http()
    answers = [
        await http.get("/v1/files", headers={"Authorization": f"Bearer {key}"}),
        await http.get(
            "/v1/files", headers={"Authorization": f"Bearer {key}", "x-fake-status": "401"}
        ),
        await http.get("/v1/files", headers={"Authorization": "Bearer wrong"}),
    ]
    for answer in answers:
        assert UPSTREAM_KEY not in answer.text and UPSTREAM_KEY not in str(answer.headers)
