"""Several upstreams behind one gateway: routing by model, Azure and OpenRouter shapes,
fallbacks and retries, cooldown, and metering of the attempt that answered.

Every upstream is a real FakeUpstream on its own loopback port; clients are the official SDK.
"""

import asyncio
import contextlib
import csv
import io
import socket
from collections.abc import AsyncIterator
from decimal import Decimal

import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from spendgate.fake_upstream import FakeUpstream
from tests.support import assert_openai_error

MESSAGES = [{"role": "user", "content": "one two three"}]


@contextlib.asynccontextmanager
async def fakes(count: int, **options) -> AsyncIterator[list[FakeUpstream]]:
    started = [FakeUpstream(**options) for _ in range(count)]
    for fake in started:
        await fake.start("127.0.0.1", 0)
    try:
        yield started
    finally:
        for fake in started:
            await fake.stop()


def upstream(name: str, fake: FakeUpstream | str, **fields) -> dict:
    base = fake if isinstance(fake, str) else fake.base_url
    return {"name": name, "base_url": base, "api_key": f"key-{name}", **fields}


def dead_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}/v1"


async def chat(client, model: str = "gpt-4o-mini", **kwargs):
    return await client.chat.completions.with_raw_response.create(
        model=model, messages=MESSAGES, **kwargs
    )


async def ledger_by_upstream(gateway) -> dict[str, dict]:
    await gateway.flush()
    async with gateway.admin() as admin:
        report = (await admin.get("/admin/usage", params={"group_by": "upstream"})).json()
    return {group["upstream"]: group for group in report["groups"]}


async def metric(gateway, name: str, **labels: str) -> float:
    text = (await gateway.http().get("/metrics")).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


async def test_requests_go_to_the_upstream_serving_their_model(make_gateway):
    async with fakes(2) as (gpt, llama):
        config = [
            upstream("gpt", gpt, models=["gpt-*"]),
            upstream("local", llama, kind="generic", models=["llama-*"]),
        ]
        async with make_gateway(upstreams=config) as gateway:
            client = gateway.client(await gateway.new_key())
            answer = await chat(client, "gpt-4o-mini")
            assert answer.headers["x-spendgate-upstream"] == "gpt"
            answer = await chat(client, "llama-3-8b")
            assert answer.headers["x-spendgate-upstream"] == "local"
            with pytest.raises(openai.NotFoundError) as refused:
                await chat(client, "claude-3")
            assert_openai_error(refused.value.response, 404, "model_not_found", "model")
            assert (gpt.stats.received, llama.stats.received) == (1, 1)
            assert gpt.requests[-1].headers["authorization"] == "Bearer key-gpt"
            assert llama.requests[-1].headers["authorization"] == "Bearer key-local"
            rows = await ledger_by_upstream(gateway)
            assert rows["gpt"]["requests"] == 1 and rows["local"]["requests"] == 1
            assert rows["gpt"]["prompt_tokens"] == gpt.stats.prompt_tokens


async def test_azure_gets_deployment_urls_api_version_and_api_key(make_gateway):
    async with fakes(1, deployments={"gpt4o-prod": "gpt-4o"}, require_key="key-azure") as (az,):
        config = [
            upstream(
                "azure", az.base_url.removesuffix("/v1"), kind="azure",
                api_version="2024-10-21", deployments={"gpt-4o": "gpt4o-prod"},
                models=["gpt-4o"],
            )
        ]  # fmt: skip
        async with make_gateway(upstreams=config) as gateway:
            client = gateway.client(await gateway.new_key())
            answer = (await chat(client, "gpt-4o")).parse()
            assert answer.model.startswith("gpt-4o")
            stream = await client.chat.completions.create(
                model="gpt-4o", messages=MESSAGES, stream=True
            )
            async for _ in stream:
                pass
            sent = az.requests[-1]
            assert sent.path == "/openai/deployments/gpt4o-prod/chat/completions"
            assert sent.query_string == "api-version=2024-10-21"
            assert sent.headers["api-key"] == "key-azure"
            assert "authorization" not in sent.headers
            rows = await ledger_by_upstream(gateway)
            assert rows["azure"]["requests"] == 2
            assert rows["azure"]["total_tokens"] == az.stats.total_tokens
            assert float(rows["azure"]["cost_usd"]) > 0


async def test_openrouter_gets_its_headers_and_mapped_model_names(make_gateway):
    async with fakes(1, report_cost=True) as (router,):
        config = [
            upstream(
                "openrouter", router, kind="openrouter", models=["*/*", "gpt-4o-mini"],
                headers={"HTTP-Referer": "https://intranet.example", "X-Title": "spendgate"},
                model_map={"gpt-4o-mini": "openai/gpt-4o-mini"},
            )
        ]  # fmt: skip
        async with make_gateway(upstreams=config) as gateway:
            client = gateway.client(await gateway.new_key())
            await chat(client, "gpt-4o-mini")
            await chat(client, "meta-llama/llama-3-8b")
            first, second = list(router.requests)[-2:]
            assert first.json["model"] == "openai/gpt-4o-mini"
            assert second.json["model"] == "meta-llama/llama-3-8b"
            for sent in (first, second):
                assert sent.headers["http-referer"] == "https://intranet.example"
                assert sent.headers["x-title"] == "spendgate"
                assert sent.headers["authorization"] == "Bearer key-openrouter"
            stream = await client.chat.completions.create(
                model="gpt-4o-mini", messages=MESSAGES, stream=True
            )
            async for _ in stream:
                pass
            rows = await ledger_by_upstream(gateway)
            assert rows["openrouter"]["requests"] == 3
            async with gateway.admin() as admin:
                csv_text = (await admin.get("/admin/usage.csv")).text
            reported = [
                Decimal(r["provider_cost_usd"]) for r in csv.DictReader(io.StringIO(csv_text))
            ]
            assert len(reported) == 3 and sum(reported) == router.stats.cost_reported
            provider = "spendgate_provider_cost_usd_total"
            assert await metric(gateway, provider, upstream="openrouter") == pytest.approx(
                float(router.stats.cost_reported), rel=1e-12
            )


@pytest.mark.parametrize("failure", ["429", "503", "refused", "slow"])
async def test_a_failing_primary_falls_back_and_only_the_answer_is_charged(make_gateway, failure):
    async with fakes(2) as (primary, backup):
        first = upstream("primary", dead_url() if failure == "refused" else primary, timeout=0.3)
        config = [first, upstream("backup", backup)]
        async with make_gateway(upstreams=config, upstream_retry_backoff_ms=0) as gateway:
            if failure in ("429", "503"):
                primary.fail_next(int(failure))
            elif failure == "slow":
                primary.delay_headers(2.0)
            client = gateway.client(await gateway.new_key())
            answer = await chat(client)
            assert answer.headers["x-spendgate-upstream"] == "backup"
            assert primary.stats.requests == 0  # nothing billed there
            assert backup.stats.requests == 1
            rows = await ledger_by_upstream(gateway)
            assert list(rows) == ["backup"] and rows["backup"]["requests"] == 1
            assert rows["backup"]["total_tokens"] == backup.stats.total_tokens
            outcome = {"429": "http_429", "503": "http_5xx", "refused": "connect_error",
                       "slow": "timeout"}[failure]  # fmt: skip
            attempts = "spendgate_upstream_attempts_total"
            assert await metric(gateway, attempts, upstream="primary", outcome=outcome) == 1
            assert await metric(gateway, attempts, upstream="backup", outcome="ok") == 1
            if failure == "slow":
                primary.delay_headers(0)


async def test_no_fallback_once_a_stream_has_started(make_gateway):
    async with fakes(2) as (primary, backup):
        config = [upstream("primary", primary), upstream("backup", backup)]
        async with make_gateway(upstreams=config) as gateway:
            client = gateway.client(await gateway.new_key())
            stream = await client.chat.completions.create(
                model="gpt-4o-mini", messages=MESSAGES, stream=True,
                extra_headers={"x-fake-reset-after": "3"},
            )  # fmt: skip
            pieces = [chunk async for chunk in stream]
            assert 0 < len(pieces) < 10  # cut after 3 content chunks: no second answer spliced in
            assert backup.stats.received == 0
            # the row is written once the gateway has seen the upstream break, just after
            # the client's stream ended
            deadline = asyncio.get_running_loop().time() + 10
            while not (rows := await ledger_by_upstream(gateway)):
                assert asyncio.get_running_loop().time() < deadline
                await asyncio.sleep(0.02)
            assert list(rows) == ["primary"] and rows["primary"]["requests"] == 1
            async with gateway.admin() as admin:
                csv_text = (await admin.get("/admin/usage.csv")).text
            row = next(csv.DictReader(io.StringIO(csv_text)))
            assert row["estimated"] == "true"  # metered from what was relayed


async def test_attempts_are_bounded_and_the_last_answer_is_relayed(make_gateway):
    async with fakes(3) as trio:
        config = [upstream(f"u{i}", fake) for i, fake in enumerate(trio)]
        async with make_gateway(
            upstreams=config, upstream_max_attempts=2, upstream_retry_backoff_ms=0
        ) as gateway:
            for fake in trio:
                fake.fail_next(503)
            client = gateway.client(await gateway.new_key())
            with pytest.raises(openai.InternalServerError) as failed:
                await chat(client)
            assert failed.value.status_code == 503
            assert [fake.stats.received for fake in trio] == [1, 1, 0]
            rows = await ledger_by_upstream(gateway)
            assert list(rows) == ["u1"] and rows["u1"]["requests"] == 1


async def test_a_failing_upstream_cools_down_and_health_says_so(make_gateway):
    async with fakes(2) as (primary, backup):
        config = [upstream("primary", primary), upstream("backup", backup)]
        async with make_gateway(
            upstreams=config, upstream_cooldown_failures=2, upstream_cooldown_seconds=60,
            upstream_retry_backoff_ms=0,
        ) as gateway:  # fmt: skip
            client = gateway.client(await gateway.new_key())
            primary.fail_next(500, count=2)
            for _ in range(2):
                assert (await chat(client)).headers["x-spendgate-upstream"] == "backup"
            for _ in range(3):  # now cooling down: the backup is asked first
                assert (await chat(client)).headers["x-spendgate-upstream"] == "backup"
            assert primary.stats.received == 2
            health = (await gateway.http().get("/health")).json()
            assert health["upstreams"] == {"primary": "cooling_down", "backup": "ok"}
            assert await metric(gateway, "spendgate_upstream_up", upstream="primary") == 0
            assert await metric(gateway, "spendgate_upstream_up", upstream="backup") == 1


async def test_models_lists_the_union_filtered_by_the_keys_allow_list(make_gateway):
    async with fakes(2) as (listed, local):
        config = [
            upstream("listed", listed, models=["fake-gpt*"]),
            upstream("local", local, kind="generic", models=["llama-3", "qwen-*"],
                     model_map={"mistral-small": "mistral-small-2409"}),
        ]  # fmt: skip
        async with make_gateway(upstreams=config) as gateway:
            everything = gateway.client(await gateway.new_key())
            ids = sorted(model.id for model in (await everything.models.list()).data)
            assert ids == ["fake-gpt", "fake-gpt-mini", "llama-3", "mistral-small"]
            limited = gateway.client(await gateway.new_key(models=["fake-gpt", "llama-*"]))
            ids = sorted(model.id for model in (await limited.models.list()).data)
            assert ids == ["fake-gpt", "llama-3"]


async def test_concurrent_fallbacks_meter_exactly(make_gateway):
    async with fakes(2) as (primary, backup):
        config = [upstream("primary", primary), upstream("backup", backup)]
        async with make_gateway(
            upstreams=config, upstream_retry_backoff_ms=0, upstream_cooldown_failures=1000
        ) as gateway:
            primary.fail_next(429, count=40)
            client = gateway.client(await gateway.new_key())
            await asyncio.gather(*(chat(client) for _ in range(100)))
            rows = await ledger_by_upstream(gateway)
            assert rows["backup"]["requests"] == 40 == backup.stats.requests
            assert rows["primary"]["requests"] == 60 == primary.stats.requests
            for name, fake in (("primary", primary), ("backup", backup)):
                assert rows[name]["total_tokens"] == fake.stats.total_tokens
