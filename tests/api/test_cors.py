"""CORS (SPENDGATE_CORS_ORIGINS) on the proxy and the API alike, against a real gateway."""

import pytest

ALLOWED = "https://console.example"
OTHER = "https://evil.example"
PATHS = ["/v1/models", "/me"]
CLIENT_HEADERS = {
    "authorization",
    "content-type",
    "api-key",
    "x-api-key",
    "x-user-id",
    "x-admin-token",
    "x-ingest-key",
}
EXPOSED = {
    "x-spendgate-request-id",
    "x-spendgate-cost-usd",
    "retry-after",
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-tokens",
}


def preflight_headers(origin, method="GET", headers="authorization, content-type"):
    return {
        "Origin": origin,
        "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": headers,
    }


def listed(value):
    return {item.strip().lower() for item in (value or "").split(",") if item.strip()}


def cors_headers(response):
    return {name for name in response.headers if name.lower().startswith("access-control-")}


@pytest.mark.parametrize("path", PATHS)
async def test_a_preflight_from_an_allowed_origin_is_answered(make_gateway, upstream, path):
    async with make_gateway(cors_origins=[ALLOWED, "http://localhost:3000"]) as gw:
        response = await gw.http().options(
            path, headers=preflight_headers(ALLOWED, "POST", ", ".join(sorted(CLIENT_HEADERS)))
        )
    assert response.status_code == 200, response.text
    assert response.headers["access-control-allow-origin"] == ALLOWED
    methods = listed(response.headers["access-control-allow-methods"])
    assert methods == {"get", "post", "patch", "delete", "options"}
    assert listed(response.headers["access-control-allow-headers"]) >= CLIENT_HEADERS
    assert "access-control-allow-credentials" not in response.headers
    assert not upstream.requests  # a preflight is never forwarded


async def test_the_openai_sdk_headers_pass_a_preflight(make_gateway):
    sdk = "authorization, content-type, x-stainless-os, x-stainless-lang, openai-beta"
    async with make_gateway(cors_origins=[ALLOWED]) as gw:
        response = await gw.http().options(
            "/v1/chat/completions", headers=preflight_headers(ALLOWED, "POST", sdk)
        )
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("path", PATHS)
async def test_a_request_from_an_allowed_origin_gets_the_cors_headers(make_gateway, path):
    async with make_gateway(cors_origins=[ALLOWED]) as gw:
        key = await gw.new_key("cora")
        response = await gw.http().get(
            path, headers={"Origin": ALLOWED, "Authorization": f"Bearer {key}"}
        )
    assert response.status_code == 200, response.text
    assert response.headers["access-control-allow-origin"] == ALLOWED
    assert listed(response.headers["access-control-expose-headers"]) >= EXPOSED
    assert "origin" in listed(response.headers.get("vary"))
    assert "access-control-allow-credentials" not in response.headers


@pytest.mark.parametrize("path", PATHS)
async def test_another_origin_is_not_allowed(make_gateway, upstream, path):
    async with make_gateway(cors_origins=[ALLOWED]) as gw:
        key = await gw.new_key("cora")
        client = gw.http()
        preflight = await client.options(path, headers=preflight_headers(OTHER))
        simple = await client.get(path, headers={"Origin": OTHER, "Authorization": f"Bearer {key}"})
    assert preflight.status_code == 400
    assert "access-control-allow-origin" not in preflight.headers
    assert simple.status_code == 200, simple.text
    assert "access-control-allow-origin" not in simple.headers


@pytest.mark.parametrize("path", PATHS)
async def test_without_origins_there_are_no_cors_headers(make_gateway, path):
    async with make_gateway() as gw:
        key = await gw.new_key("cora")
        client = gw.http()
        preflight = await client.options(
            path, headers={**preflight_headers(ALLOWED), "Authorization": f"Bearer {key}"}
        )
        simple = await client.get(
            path, headers={"Origin": ALLOWED, "Authorization": f"Bearer {key}"}
        )
    assert simple.status_code == 200, simple.text
    assert cors_headers(simple) == set()
    assert cors_headers(preflight) == set()


@pytest.mark.parametrize(
    "origin",
    [
        "https://console.example.evil.example",  # a suffix
        "https://evil.example/https://console.example",
        "http://console.example",  # another scheme
        "https://console.example:8443",  # another port
        "HTTPS://CONSOLE.EXAMPLE.",
        "null",  # sandboxed frames and file:// pages
        "https://console.example, https://evil.example",
    ],
)
async def test_only_the_exact_origin_is_allowed(make_gateway, origin):
    async with make_gateway(cors_origins=[ALLOWED]) as gw:
        key = await gw.new_key("cora")
        client = gw.http()
        preflight = await client.options("/me", headers=preflight_headers(origin))
        simple = await client.get(
            "/me", headers={"Origin": origin, "Authorization": f"Bearer {key}"}
        )
    assert preflight.status_code == 400
    assert "access-control-allow-origin" not in preflight.headers
    assert "access-control-allow-origin" not in simple.headers


async def test_a_preflight_asking_for_other_methods_or_headers_is_refused(make_gateway):
    async with make_gateway(cors_origins=[ALLOWED]) as gw:
        client = gw.http()
        method = await client.options("/v1/models", headers=preflight_headers(ALLOWED, "PUT"))
        header = await client.options(
            "/v1/models", headers=preflight_headers(ALLOWED, "GET", "authorization, x-evil")
        )
    assert method.status_code == 400 and header.status_code == 400
