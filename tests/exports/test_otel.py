"""The OpenTelemetry export: GenAI spans from a real gateway, and a real OTLP/HTTP round trip."""

import asyncio
import gzip
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from sqlalchemy import select

from spendgate.exports.otel import OtelExport
from spendgate.fake_upstream import FakeUpstream
from spendgate.ledger.events import UsageEvent
from spendgate.ledger.schema import UsageEventRow
from spendgate.money import pico_to_usd
from tests.conftest import Gateway, gateway_settings, running_gateway

INGEST_KEY = "ingest-key-for-the-otel-tests-012345"
PROMPT = "the launch codes are hidden under the blue mattress"
WHEN = datetime(2025, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
WHEN_NS = 1735787045678901000


@dataclass
class Collector:
    """A loopback OTLP/HTTP traces receiver keeping every request body it was sent."""

    url: str = ""
    bodies: list[bytes] = field(default_factory=list)

    async def receive(self, request: web.Request) -> web.Response:
        body = await request.read()
        if request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        self.bodies.append(body)
        reply = ExportTraceServiceResponse().SerializeToString()
        return web.Response(body=reply, content_type="application/x-protobuf")

    def spans(self) -> list[tuple[dict[str, Any], Any]]:
        """(resource attributes, span) for every span received."""
        found = []
        for body in self.bodies:
            request = ExportTraceServiceRequest()
            request.ParseFromString(body)
            for resource_spans in request.resource_spans:
                resource = attribute_dict(resource_spans.resource.attributes)
                for scope_spans in resource_spans.scope_spans:
                    found.extend((resource, span) for span in scope_spans.spans)
        return found


def attribute_dict(attributes: Any) -> dict[str, Any]:
    """OTLP KeyValues as a dict of plain Python values."""
    values = {}
    for item in attributes:
        kind = item.value.WhichOneof("value")
        values[item.key] = getattr(item.value, kind)
    return values


@pytest.fixture
async def collector() -> AsyncIterator[Collector]:
    sink = Collector()
    app = web.Application()
    app.router.add_post("/v1/traces", sink.receive)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    sink.url = f"http://127.0.0.1:{port}/v1/traces"
    yield sink
    await runner.cleanup()


async def wait_for(condition: Callable[[], bool], what: str, seconds: float = 30.0) -> None:
    """Poll `condition()` until true; fail naming `what` after `seconds`."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def otel_export(gw: Gateway) -> OtelExport:
    [export] = [e for e in gw.runtime.exports if e.name == "otel"]
    assert isinstance(export, OtelExport)
    return export


async def ledger_rows(gw: Gateway) -> list[UsageEventRow]:
    async with gw.runtime.engine.connect() as conn:
        result = await conn.execute(select(UsageEventRow).order_by(UsageEventRow.id))
        return list(result.all())


def epoch_ns(moment: datetime) -> int:
    return (moment - datetime(1970, 1, 1, tzinfo=UTC)) // datetime.resolution * 1000


def span_attributes_of(row: Any) -> dict[str, Any]:
    """What the GenAI conventions (and spendgate's own namespace) say a row's span carries."""
    operation = {"chat/completions": "chat", "embeddings": "embeddings"}[row.endpoint]
    expected: dict[str, Any] = {
        "gen_ai.operation.name": operation,
        "gen_ai.provider.name": "openai",
        "gen_ai.system": "openai",
        "gen_ai.request.model": row.requested_model,
        "gen_ai.response.model": row.model,
        "gen_ai.usage.input_tokens": row.prompt_tokens,
        "gen_ai.usage.output_tokens": row.completion_tokens,
        "http.response.status_code": row.status,
        "spendgate.request_id": row.request_id,
        "spendgate.user": row.user_name,
        "spendgate.key": row.key_display,
        "spendgate.endpoint": row.endpoint,
        "spendgate.stream": row.stream,
        "spendgate.estimated": row.estimated,
        "spendgate.cost_usd": float(pico_to_usd(row.cost_pico)),
    }
    if row.cached_tokens:
        expected["gen_ai.usage.cache_read.input_tokens"] = row.cached_tokens
    if row.reasoning_tokens:
        expected["gen_ai.usage.reasoning.output_tokens"] = row.reasoning_tokens
    if row.error_code:
        expected["error.type"] = row.error_code
    return expected


async def send_traffic(gw: Gateway) -> tuple[list[str], list[str]]:
    """A chat, a streamed chat, embeddings, a refused chat and an ingested event.

    Returns the keys used and the texts the upstream answered with.
    """
    alice_key = await gw.new_key("alice")
    bob_key = await gw.new_key("bob", models=["text-embedding-*"])
    alice = gw.client(alice_key)
    hello = [{"role": "user", "content": PROMPT}]
    knobs = {
        "x-fake-served-model": "gpt-4o-2024-08-06",
        "x-fake-cached-tokens": "4",
        "x-fake-reasoning-tokens": "3",
        "x-fake-latency-ms": "40",
    }
    reply = await alice.chat.completions.create(
        model="gpt-4o", messages=hello, max_tokens=12, extra_headers=knobs
    )
    stream = await alice.chat.completions.create(
        model="gpt-4o-mini", messages=hello, stream=True, stream_options={"include_usage": True}
    )
    streamed = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    await alice.embeddings.create(model="text-embedding-3-small", input=[PROMPT])
    with pytest.raises(openai.PermissionDeniedError):
        await gw.client(bob_key).chat.completions.create(model="gpt-4o-mini", messages=hello)
    async with gw.admin() as admin:
        made = await admin.post("/admin/tracking-tokens", json={"name": "app", "user": "tara"})
        assert made.status_code == 201, made.text
    pushed = await gw.http().post(
        "/ingest",
        json={"tracking_token": made.json()["token"], "model": "gpt-4o-mini",
              "prompt_tokens": 30, "completion_tokens": 9, "request_id": "app-1"},
        headers={"X-Ingest-Key": INGEST_KEY},
    )  # fmt: skip
    assert pushed.status_code == 202, pushed.text
    await gw.flush()
    return [alice_key, bob_key], [reply.choices[0].message.content or "", streamed]


async def test_every_proxied_ledger_row_becomes_a_genai_client_span(
    tmp_path: Path, upstream: FakeUpstream, collector: Collector
):
    settings = gateway_settings(
        tmp_path,
        upstream_base=upstream.base_url,
        ingest_key=INGEST_KEY,
        otel=True,
        otel_endpoint=collector.url,
    )
    memory = InMemorySpanExporter()
    async with running_gateway(settings) as gw:
        export = otel_export(gw)
        export.provider.add_span_processor(SimpleSpanProcessor(memory))
        keys, answers = await send_traffic(gw)
        rows = await ledger_rows(gw)
        await wait_for(lambda: export.buffered == 0, "the spans of every committed event")
        assert export.sent == 4

    proxied = [row for row in rows if row.source == "proxy"]
    assert len(rows) == 5 and len(proxied) == 4  # the ingested row gets no span
    spans: dict[str, ReadableSpan] = {}
    for span in memory.get_finished_spans():
        assert span.attributes is not None
        spans[str(span.attributes["spendgate.request_id"])] = span
    assert sorted(spans) == sorted(row.request_id for row in proxied)
    for row in proxied:
        span = spans[row.request_id]
        assert span.attributes is not None and span.start_time and span.end_time
        assert dict(span.attributes) == span_attributes_of(row), row.request_id
        operation = span.attributes["gen_ai.operation.name"]
        assert span.name == f"{operation} {row.requested_model}"
        assert span.kind is SpanKind.CLIENT
        assert span.parent is None
        assert span.resource.attributes["service.name"] == "spendgate"
        # ends when the ledger says the request ended, and lasts the ledger's latency
        assert span.end_time == epoch_ns(row.ts)
        assert span.end_time - span.start_time == row.latency_ms * 1_000_000
        refused = row.status >= 400
        assert span.status.status_code is (StatusCode.ERROR if refused else StatusCode.UNSET)
    assert len({span.context.trace_id for span in spans.values()}) == 4

    by_kind = {(r.endpoint, r.stream, r.status): spans[r.request_id] for r in proxied}
    chat = by_kind[("chat/completions", False, 200)]
    assert chat.name == "chat gpt-4o"
    assert chat.attributes is not None
    assert chat.attributes["gen_ai.response.model"] == "gpt-4o-2024-08-06"
    assert chat.attributes["gen_ai.usage.cache_read.input_tokens"] == 4
    assert chat.attributes["gen_ai.usage.reasoning.output_tokens"] == 3
    assert chat.end_time - chat.start_time >= 40_000_000  # type: ignore[operator]
    assert by_kind[("chat/completions", True, 200)].name == "chat gpt-4o-mini"
    assert by_kind[("embeddings", False, 200)].name == "embeddings text-embedding-3-small"
    refused = by_kind[("chat/completions", False, 403)]
    assert refused.attributes is not None
    assert refused.attributes["error.type"] == "model_not_allowed"
    assert all(
        span.attributes and span.attributes["spendgate.cost_usd"] > 0  # type: ignore[operator]
        for span in spans.values()
        if span is not refused
    )

    secrets = [PROMPT, "launch codes", *keys, *(answer for answer in answers if len(answer) > 8)]
    for span in spans.values():
        assert span.attributes is not None
        texts = [span.name, *(str(value) for value in span.attributes.values())]
        leaked = [secret for secret in secrets for text in texts if secret in text]
        assert not leaked, leaked


async def test_spans_reach_an_otlp_http_collector_by_the_time_the_gateway_stops(
    tmp_path: Path, upstream: FakeUpstream, collector: Collector
):
    settings = gateway_settings(
        tmp_path, upstream_base=upstream.base_url, otel=True, otel_endpoint=collector.url
    )
    async with running_gateway(settings) as gw:
        client = gw.client(await gw.new_key("alice"))
        await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": PROMPT}]
        )
        await gw.flush()
        [row] = await ledger_rows(gw)
    # The batch processor waits seconds before sending: only the shutdown flush sent this.
    received = collector.spans()
    assert len(received) == 1, received
    resource, span = received[0]
    assert resource["service.name"] == "spendgate"
    attributes = attribute_dict(span.attributes)
    assert attributes["gen_ai.usage.input_tokens"] == row.prompt_tokens > 0
    assert attributes["gen_ai.usage.output_tokens"] == row.completion_tokens > 0
    assert attributes["spendgate.request_id"] == row.request_id
    assert attributes["gen_ai.operation.name"] == "chat"
    assert span.name == "chat gpt-4o-mini"
    assert span.kind == span.SPAN_KIND_CLIENT
    assert span.end_time_unix_nano == epoch_ns(row.ts)
    assert span.end_time_unix_nano - span.start_time_unix_nano == row.latency_ms * 1_000_000


def usage_event(**fields: object) -> UsageEvent:
    """A priced proxied chat event, changed by `fields`."""
    base: dict[str, object] = {
        "request_id": "req-1", "timestamp": WHEN, "user": "alice", "key_id": 7,
        "model": "gpt-4o-mini", "endpoint": "chat/completions", "method": "POST",
        "status": 200, "stream": True, "prompt_tokens": 10, "completion_tokens": 5,
        "cached_tokens": 0, "reasoning_tokens": 0, "total_tokens": 15,
        "cost_usd": Decimal("0.000012345678"), "latency_ms": 42,
    }  # fmt: skip
    return UsageEvent(**(base | fields))  # type: ignore[arg-type]


async def spans_of(events: list[UsageEvent]) -> dict[str, ReadableSpan]:
    """The spans an export makes of `events`, by request id."""
    memory = InMemorySpanExporter()
    export = OtelExport("gw-test", SimpleSpanProcessor(memory))
    await export.start()
    export.add(events)
    await export.stop()
    assert export.sent == len(memory.get_finished_spans())
    return {str(s.attributes["spendgate.request_id"]): s for s in memory.get_finished_spans()}  # type: ignore[index]


async def test_event_details_map_to_conventions_and_ingested_events_are_skipped():
    spans = await spans_of([
        usage_event(request_id="plain"),
        usage_event(request_id="broken", error_code="upstream_broken"),
        usage_event(request_id="unpriced", model="house-model", cost_usd=None),
        usage_event(request_id="azure", upstream="azure.ai.openai"),
        usage_event(request_id="legacy", endpoint="completions", upstream="default"),
        usage_event(request_id="files", endpoint="files", model="", status=500),
        usage_event(request_id="pushed", source="ingest"),
    ])  # fmt: skip
    assert sorted(spans) == ["azure", "broken", "files", "legacy", "plain", "unpriced"]
    plain = spans["plain"]
    assert plain.start_time == WHEN_NS - 42_000_000 and plain.end_time == WHEN_NS
    assert plain.resource.attributes["service.name"] == "gw-test"
    assert plain.attributes is not None
    assert "error.type" not in plain.attributes and "spendgate.key" not in plain.attributes
    assert "gen_ai.usage.cache_read.input_tokens" not in plain.attributes
    assert plain.attributes["spendgate.cost_usd"] == 0.000012345678
    # a stream cut after its 200 is still a failed call
    broken = spans["broken"]
    assert broken.status.status_code is StatusCode.ERROR
    assert broken.attributes and broken.attributes["error.type"] == "upstream_broken"
    assert spans["unpriced"].attributes is not None
    assert "spendgate.cost_usd" not in spans["unpriced"].attributes
    assert spans["azure"].attributes and (
        spans["azure"].attributes["gen_ai.provider.name"] == "azure.ai.openai"
    )
    legacy = spans["legacy"]
    assert legacy.name == "text_completion gpt-4o-mini"
    assert legacy.attributes and legacy.attributes["gen_ai.provider.name"] == "openai"
    files = spans["files"]
    assert files.name == "files" and files.status.status_code is StatusCode.ERROR
    assert files.attributes and files.attributes["error.type"] == "500"
    assert "gen_ai.request.model" not in files.attributes
