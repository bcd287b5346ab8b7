"""`spendgate.client.track` / `atrack`: real SDK responses pushed to a real gateway's /ingest."""

import asyncio
import csv
import io
import logging
import socket

import openai

from spendgate.client import atrack, track
from tests.api.test_ingest import INGEST_KEY, new_token

DETAILS = {"x-fake-cached-tokens": "3", "x-fake-reasoning-tokens": "2"}


def sync_client(gw, key):
    return openai.OpenAI(base_url=f"{gw.url}/v1", api_key=key, max_retries=0, timeout=30)


async def ingested(gw):
    await gw.flush()
    async with gw.admin() as admin:
        response = await admin.get("/admin/usage.csv", params={"source": "ingest"})
    assert response.status_code == 200, response.text
    return list(csv.DictReader(io.StringIO(response.text)))


def closed_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_track_and_atrack_push_the_usage_of_sdk_responses(make_gateway):
    async with make_gateway(ingest_key=INGEST_KEY) as gw:
        key = await gw.new_key("alice")
        token = (await new_token(gw, "direct", user="dana"))["token"]
        where = {
            "tracking_token": token,
            "ingest_url": f"{gw.url}/ingest",
            "ingest_key": INGEST_KEY,
        }

        def sync_calls():
            with sync_client(gw, key) as client:
                chat = client.chat.completions.create(
                    model="gpt-4o-mini",
                    messages=[{"role": "user", "content": "hello there"}],
                    extra_headers=DETAILS,
                )
                completion = client.completions.create(model="gpt-4o-mini", prompt="one two")
            assert track(chat, **where, end_user="eu-7") is True
            assert track(completion, **where, request_id="my-own-id") is True
            assert track(chat, **where) is True  # a repeat: accepted, counted once
            return chat, completion

        chat, completion = await asyncio.to_thread(sync_calls)
        client = gw.client(key)
        embedding = await client.embeddings.create(model="text-embedding-3-small", input="a b c")
        response = await client.responses.create(
            model="gpt-4o-mini", input="why", extra_headers=DETAILS
        )
        assert await atrack(embedding, **where) is True
        assert await atrack(response, **where) is True

        rows = await ingested(gw)
        assert len(rows) == 4
        assert {row["user"] for row in rows} == {"dana"}
        by_tokens = {(int(r["prompt_tokens"]), int(r["completion_tokens"])): r for r in rows}
        got = by_tokens[(chat.usage.prompt_tokens, chat.usage.completion_tokens)]
        assert (int(got["cached_tokens"]), int(got["reasoning_tokens"])) == (3, 2)
        assert got["end_user"] == "eu-7"
        assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) in by_tokens
        assert (embedding.usage.prompt_tokens, 0) in by_tokens
        usage = response.usage
        got = by_tokens[(usage.input_tokens, usage.output_tokens)]
        cached = usage.input_tokens_details.cached_tokens
        assert cached > 0 and usage.output_tokens_details.reasoning_tokens == 2
        assert (int(got["cached_tokens"]), int(got["reasoning_tokens"])) == (cached, 2)
        assert int(got["total_tokens"]) == response.usage.total_tokens
        assert all(row["cost_usd"] for row in rows)


async def test_track_returns_false_and_never_raises_or_logs_keys(make_gateway, caplog):
    caplog.set_level(logging.WARNING, logger="spendgate.client")
    async with make_gateway(ingest_key=INGEST_KEY) as gw:
        key = await gw.new_key("alice")
        token = (await new_token(gw))["token"]
        chat = await gw.client(key).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
        )
        good = {"tracking_token": token, "ingest_url": f"{gw.url}/ingest", "ingest_key": INGEST_KEY}
        dead = good | {"ingest_url": f"http://127.0.0.1:{closed_port()}/ingest"}
        assert await atrack(chat, **dead, timeout=2) is False
        assert await asyncio.to_thread(lambda: track(chat, **dead, timeout=2)) is False
        wrong_key = good | {"ingest_key": "not-the-key"}
        assert await atrack(chat, **wrong_key) is False
        assert await atrack(chat, **(good | {"tracking_token": "sgt-unknown"})) is False
        assert await atrack(chat, **(good | {"ingest_url": "file:///etc/passwd"})) is False
        assert await atrack(object(), **good) is False  # no usage at all
        assert len(caplog.records) == 6
        assert "401" in caplog.text and "404" in caplog.text
        for secret in (INGEST_KEY, "not-the-key", token):
            assert secret not in caplog.text
        assert await ingested(gw) == []
