"""Settlement with several upstreams: each provider's price, and the cost a provider reports.

No gateway runs here yet (routing to several upstreams is being built): the tests drive
`Recorder.record` with the `Outcome` the relay hands it, and read the ledger row it writes
(SQLite) and the metrics it counts.
"""

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import RowMapping, select
from sqlalchemy.ext.asyncio import AsyncEngine

from spendgate.keys.principals import Principal
from spendgate.ledger.engine import create_engine, upgrade
from spendgate.ledger.events import UsageEvent
from spendgate.ledger.records import KeyRecord, UserRecord
from spendgate.ledger.schema import UsageEventRow
from spendgate.ledger.writer import LedgerWriter
from spendgate.metering.estimate import TokenEstimator
from spendgate.metering.extract import read_usage
from spendgate.metering.pricing import PriceBook
from spendgate.metering.usage import Usage
from spendgate.metrics import GatewayMetrics
from spendgate.proxy.recorder import Outcome, Recorder
from spendgate.proxy.rewrite import PreparedRequest, prepare_request

CREATED = datetime(2026, 1, 1, tzinfo=UTC)
PRINCIPAL = Principal(
    key=KeyRecord(
        id=7, user_id=1, user="ann", key_hash="h", display="sg-abcd…wxyz", note=None,
        created_at=CREATED, revoked_at=None, expires_at=None, models=None, budget_usd=None,
        budget_period=None, limits={}, last_used_at=None,
    ),
    user=UserRecord(
        id=1, name="ann", email=None, budget_usd=None, budget_period=None, limits={},
        disabled=False, created_at=CREATED,
    ),
)  # fmt: skip
# An OpenRouter answer: 12 + 3 tokens of gpt-4o-mini (USD 0.15 and 0.6 per million), cost
# USD 0.0000036, which is exactly OpenRouter's listed price for those tokens.
OPENROUTER_BODY = (
    b'{"id":"gen-1","model":"openai/gpt-4o-mini","choices":[],"usage":{"prompt_tokens":12,'
    b'"completion_tokens":3,"total_tokens":15,"cost":%s}}'
)


@dataclass
class Gateway:
    """A recorder wired to a real ledger writer and metrics, as the runtime wires it."""

    engine: AsyncEngine
    recorder: Recorder
    writer: LedgerWriter
    metrics: GatewayMetrics
    written: list[UsageEvent]

    async def settle(
        self, request: PreparedRequest, outcome: Outcome
    ) -> tuple[UsageEvent, RowMapping]:
        """Record one request; return its event and its ledger row once committed."""
        request_id = self.recorder.new_request_id()
        self.recorder.record(request_id, PRINCIPAL, request, outcome, time.perf_counter())
        await self.writer.flush()
        (event,) = [event for event in self.written if event.request_id == request_id]
        query = select(UsageEventRow).where(UsageEventRow.request_id == request_id)
        async with self.engine.connect() as conn:
            row = (await conn.execute(query)).mappings().one()
        return event, row

    def samples(self) -> dict[tuple[str, str], float]:
        """The provider-cost samples, by (name, upstream)."""
        text = self.metrics.render().decode()
        return {
            (sample.name, sample.labels["upstream"]): sample.value
            for family in text_string_to_metric_families(text)
            if family.name.startswith("spendgate_provider_cost")
            for sample in family.samples
        }


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[Gateway]:
    engine = create_engine(f"sqlite:///{tmp_path / 'ledger.db'}")
    await upgrade(engine)
    written: list[UsageEvent] = []
    writer = LedgerWriter(engine, flush_interval=0.01, on_written=written.extend)
    writer.start()
    metrics = GatewayMetrics()
    recorder = Recorder(writer, PriceBook({}), TokenEstimator(), metrics)
    try:
        yield Gateway(engine, recorder, writer, metrics, written)
    finally:
        await writer.stop()
        await engine.dispose()


def chat(model: str) -> PreparedRequest:
    body = orjson.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}]})
    return prepare_request(
        "chat/completions", "POST", b"application/json", body,
        default_model=None, end_user_header=None,
    )  # fmt: skip


def openrouter_usage(cost: bytes) -> Usage:
    usage = read_usage("chat/completions", OPENROUTER_BODY % cost)
    assert usage is not None
    return usage


async def test_an_openrouter_answer_is_priced_at_openrouter_and_keeps_its_reported_cost(
    gateway: Gateway,
) -> None:
    outcome = Outcome(
        status=200,
        usage=openrouter_usage(b"0.0000036"),
        upstream="openrouter",
        provider="openrouter",
    )
    event, row = await gateway.settle(chat("openai/gpt-4o-mini"), outcome)
    assert (event.model, event.upstream) == ("openai/gpt-4o-mini", "openrouter")
    assert event.cost_usd == Decimal("0.0000036")
    assert event.provider_cost_pico == 3_600_000 == row["provider_cost_pico"]
    assert (row["cost_pico"], row["upstream"]) == (3_600_000, "openrouter")
    assert gateway.samples() == {
        ("spendgate_provider_cost_usd_total", "openrouter"): 0.0000036,
        ("spendgate_provider_cost_ours_usd_total", "openrouter"): 0.0000036,
    }


async def test_a_reported_cost_we_cannot_price_is_a_mismatch(gateway: Gateway) -> None:
    # A generic upstream (no genai-prices provider) serving OpenRouter-style ids: unpriced.
    outcome = Outcome(
        status=200, usage=openrouter_usage(b"1.2e-05"), upstream="my-router", provider=None
    )
    event, row = await gateway.settle(chat("openai/gpt-4o-mini"), outcome)
    assert event.cost_usd is None and row["cost_pico"] is None
    assert event.provider_cost_pico == 12_000_000 == row["provider_cost_pico"]
    assert gateway.samples() == {
        ("spendgate_provider_cost_usd_total", "my-router"): 0.000012,
        ("spendgate_provider_cost_mismatches_total", "my-router"): 1,
    }


async def test_a_reported_cost_far_from_ours_is_a_mismatch(gateway: Gateway) -> None:
    outcome = Outcome(
        status=200, usage=openrouter_usage(b"0.0000037"), upstream="openrouter",
        provider="openrouter",
    )  # fmt: skip
    await gateway.settle(chat("openai/gpt-4o-mini"), outcome)
    samples = gateway.samples()
    assert samples[("spendgate_provider_cost_mismatches_total", "openrouter")] == 1
    assert samples[("spendgate_provider_cost_ours_usd_total", "openrouter")] == 0.0000036


async def test_an_azure_answer_is_priced_at_azures_rate(gateway: Gateway) -> None:
    # genai-prices lists davinci at USD 2 per million input tokens on Azure, 20 on OpenAI.
    usage = Usage.of(1000, 0, model="davinci")
    event, row = await gateway.settle(
        chat("davinci"), Outcome(status=200, usage=usage, upstream="azure-east", provider="azure")
    )
    assert event.cost_usd == Decimal("0.002") and row["cost_pico"] == 2_000_000_000
    assert (row["upstream"], row["provider_cost_pico"]) == ("azure-east", None)
    openai, _ = await gateway.settle(
        chat("davinci"), Outcome(status=200, usage=usage, upstream="openai", provider="openai")
    )
    assert openai.cost_usd == Decimal("0.02")
    assert gateway.samples() == {}  # no provider reported a cost
