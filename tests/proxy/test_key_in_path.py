"""`/{key}/v1/{path}` for clients that can only set a base URL (off by default)."""

import openai
import pytest


async def test_key_in_path_works_when_enabled(make_gateway, upstream):
    async with make_gateway(key_in_path=True) as gateway:
        key = await gateway.new_key()
        client = openai.AsyncOpenAI(base_url=f"{gateway.url}/{key}/v1", api_key="unused")
        gateway.clients.append(client)
        result = await client.embeddings.create(model="text-embedding-3-small", input="a b")
        assert result.usage.prompt_tokens > 0
        assert key not in str(upstream.requests[-1].headers)
        assert upstream.requests[-1].path == "/v1/embeddings"


async def test_key_in_path_is_not_served_by_default(gateway, upstream):
    key = await gateway.new_key()
    response = await gateway.http().post(
        f"/{key}/v1/embeddings", json={"model": "text-embedding-3-small", "input": "x"}
    )
    assert response.status_code == 404
    assert upstream.stats.received == 0


@pytest.mark.parametrize("prefix", ["/sg-short/v1/models", "/sg-" + "a" * 40 + "/v2/models"])
async def test_malformed_key_paths_are_refused(make_gateway, upstream, prefix):
    async with make_gateway(key_in_path=True) as gateway:
        response = await gateway.http().get(prefix)
        assert response.status_code in (400, 401, 404)
        assert upstream.stats.received == 0
