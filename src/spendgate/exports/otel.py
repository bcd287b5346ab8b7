"""The OpenTelemetry export: one span per proxied request, with the GenAI semantic conventions.

Spans are made after the fact from committed ledger events: a `CLIENT` span named
`"{gen_ai.operation.name} {gen_ai.request.model}"`, starting `latency_ms` before the event's
timestamp and ending at it, each the root of a trace of its own. The export has a
`TracerProvider` of its own (the global one is left to whoever embeds spendgate), whose
`BatchSpanProcessor` sends the spans over OTLP/HTTP from its own thread. `add()` only queues
the events; a task makes the spans (in memory, ~25 µs each) a chunk at a time, so a writer
batch of a thousand events does not hold the event loop for tens of milliseconds, and hands
them to that processor, which drops rather than blocks when its queue is full.

Ingested events (`source="ingest"`) get no span: spendgate did not serve those calls, so a
span would claim a client call, and a duration, that it never saw. They are in the ledger
and in the other exports.

Spans carry counts, models, status, cost and identifiers only: never prompts, completions
or keys (`spendgate.key` is the key's display form, as on the dashboard).
"""

import asyncio
from collections import deque
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from opentelemetry.context import Context
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.util.types import AttributeValue

from spendgate.ledger.events import UsageEvent

if TYPE_CHECKING:
    from spendgate.config import Settings

EXPORT_TIMEOUT_SECONDS = 5.0
SPANS_PER_CHUNK = 64  # made between two yields to the event loop
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class OtelExport:
    """Turns committed proxied usage events into finished spans on its own provider."""

    name = "otel"

    def __init__(
        self,
        service_name: str = "spendgate",
        processor: SpanProcessor | None = None,
        *,
        provider_name: str = "openai",
    ) -> None:
        self.provider = TracerProvider(
            resource=Resource.create({SERVICE_NAME: service_name}),
            shutdown_on_exit=False,  # `stop()` shuts it down; no atexit hook per gateway
        )
        if processor is not None:
            self.provider.add_span_processor(processor)
        self._tracer = self.provider.get_tracer("spendgate")
        self._provider_name = provider_name
        self._sent = 0
        self._pending: deque[UsageEvent] = deque()
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def from_settings(cls, settings: "Settings") -> "OtelExport":
        """An export batching spans to the settings' OTLP/HTTP traces endpoint."""
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(endpoint=settings.otel_endpoint, timeout=EXPORT_TIMEOUT_SECONDS)
        # An upstream that needs an api-version is Azure OpenAI.
        provider = "azure.ai.openai" if settings.upstream_api_version else "openai"
        return cls(settings.otel_service_name, BatchSpanProcessor(exporter), provider_name=provider)

    @property
    def sent(self) -> int:
        """Spans ended (handed to the span processor)."""
        return self._sent

    @property
    def dropped(self) -> int:
        """Always 0: the SDK's batch processor keeps its own count of what it drops."""
        return 0

    @property
    def retries(self) -> int:
        """Always 0: the OTLP exporter retries inside its own export call."""
        return 0

    @property
    def buffered(self) -> int:
        """Proxied events whose span is not made yet."""
        return len(self._pending)

    def add(self, events: Sequence[UsageEvent]) -> None:
        """Queue the proxied events for the span-making task (ingested ones are skipped)."""
        self._pending.extend(event for event in events if event.source == "proxy")
        if self._pending:
            self._wake.set()

    async def start(self) -> None:
        """Start the task that makes the spans."""
        self._task = asyncio.create_task(self._make_spans(), name="otel-export")

    async def stop(self) -> None:
        """Make the queued spans, then flush and shut the provider down off the event loop."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            await self._task
        while self._pending:  # never started
            self._record(self._pending.popleft())
        await asyncio.to_thread(self.provider.shutdown)

    async def _make_spans(self) -> None:
        while not self._stopping or self._pending:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                for _ in range(min(SPANS_PER_CHUNK, len(self._pending))):
                    self._record(self._pending.popleft())
                await asyncio.sleep(0)  # let requests run between chunks

    def _record(self, event: UsageEvent) -> None:
        operation = operation_name(event.endpoint)
        requested = event.requested_model or event.model
        end = epoch_ns(event.timestamp)
        span = self._tracer.start_span(
            f"{operation} {requested}" if requested else operation,
            context=Context(),  # a root span, whatever span is current in the caller
            kind=SpanKind.CLIENT,
            attributes=span_attributes(event, operation, self._provider_name),
            start_time=end - event.latency_ms * 1_000_000,
        )
        if event.status >= 400 or event.error_code:
            span.set_status(Status(StatusCode.ERROR))
        span.end(end_time=end)
        self._sent += 1


def operation_name(endpoint: str) -> str:
    """`gen_ai.operation.name` of an endpoint: chat, text_completion, embeddings, or itself."""
    if endpoint in ("chat/completions", "responses"):
        return "chat"
    if endpoint == "completions":
        return "text_completion"
    if endpoint == "embeddings":
        return "embeddings"
    return endpoint


def span_attributes(
    event: UsageEvent, operation: str, default_provider: str
) -> dict[str, AttributeValue]:
    """The span attributes of one event: GenAI and HTTP semantic conventions, then ours."""
    provider = default_provider if event.upstream in (None, "", "default") else event.upstream
    attributes: dict[str, AttributeValue] = {
        "gen_ai.operation.name": operation,
        "gen_ai.provider.name": provider,
        "gen_ai.system": provider,  # the pre-1.37 name, still what older backends read
        "gen_ai.usage.input_tokens": event.prompt_tokens,
        "gen_ai.usage.output_tokens": event.completion_tokens,
        "http.response.status_code": event.status,
        "spendgate.request_id": event.request_id,
        "spendgate.user": event.user,
        "spendgate.endpoint": event.endpoint,
        "spendgate.stream": event.stream,
        "spendgate.estimated": event.estimated,
    }
    if event.requested_model or event.model:
        attributes["gen_ai.request.model"] = event.requested_model or event.model
    if event.model:
        attributes["gen_ai.response.model"] = event.model
    if event.cached_tokens:
        attributes["gen_ai.usage.cache_read.input_tokens"] = event.cached_tokens
    if event.reasoning_tokens:
        attributes["gen_ai.usage.reasoning.output_tokens"] = event.reasoning_tokens
    if event.error_code or event.status >= 400:
        # The HTTP conventions' choice when there is no better name: the status code.
        attributes["error.type"] = event.error_code or str(event.status)
    if event.key_display:
        attributes["spendgate.key"] = event.key_display
    if event.cost_usd is not None:
        attributes["spendgate.cost_usd"] = float(event.cost_usd)
    return attributes


def epoch_ns(moment: datetime) -> int:
    """Nanoseconds since the Unix epoch, exact to the microsecond (no float rounding)."""
    delta = moment - _EPOCH
    return ((delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds) * 1000
