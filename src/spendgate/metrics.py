"""Prometheus metrics, one registry per app (never the process-global default registry)."""

from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from spendgate.ledger.events import UsageEvent

# Name → one-line documentation. The README test checks every name here is documented.
METRIC_DOCS = {
    "spendgate_event_loop_tasks": (
        "Tasks alive on the process's event loop (requests, drains, background work): flat "
        "under steady load, so a leak shows as growth."
    ),
    "spendgate_auth_failures_total": (
        "Failed authentications: wrong or missing gateway keys, admin token, ingest key, "
        "console sign-ins."
    ),
    "spendgate_auth_refused_total": (
        "Requests refused (429) because their address made too many failed authentications."
    ),
    "spendgate_auth_blocked_addresses": (
        "Client addresses blocked now for too many failed authentications."
    ),
    "spendgate_requests_total": "Requests recorded, by endpoint, model and status code.",
    "spendgate_tokens_total": (
        "Tokens recorded, by model and kind (prompt, completion, cached, reasoning)."
    ),
    "spendgate_cost_usd_total": "Cost recorded in USD, by model.",
    "spendgate_request_duration_seconds": (
        "Time from request to the end of the response, by endpoint."
    ),
    "spendgate_upstream_latency_seconds": (
        "Time from sending a request upstream to its response headers, by model."
    ),
    "spendgate_time_to_first_token_seconds": (
        "Streams: time from the request to the first streamed bytes relayed, by model."
    ),
    "spendgate_requests_in_flight": "Proxied requests whose response has not ended.",
    "spendgate_upstream_attempts_total": (
        "Calls to each upstream, by outcome (ok, http_429, http_5xx, connect_error, timeout): "
        "a request that falls back to another upstream counts one per attempt."
    ),
    "spendgate_upstream_up": "1 while an upstream is used, 0 while it cools down after failures.",
    "spendgate_rate_limited_total": "Requests refused by a rate limit.",
    "spendgate_budget_rejected_total": "Requests refused for budget or credit, by code.",
    "spendgate_usage_events_dropped_total": "Usage events lost because the write queue was full.",
    "spendgate_unpriced_requests_total": "Requests whose model has no known price, by model.",
    "spendgate_estimated_requests_total": "Requests whose usage was estimated (no usage reported).",
    "spendgate_usage_events_written_total": "Usage events committed to the ledger.",
    "spendgate_usage_events_retried_total": (
        "Usage events in ledger writes that failed and were retried (counted per attempt)."
    ),
    "spendgate_write_queue_depth": "Usage events waiting to be written.",
    "spendgate_usage_events_journaled_total": (
        "Usage events put in the local journal (queue full or unwritten at shutdown)."
    ),
    "spendgate_journal_events": "Usage events in this process's journal, waiting to be written.",
    "spendgate_ledger_flush_seconds": "Duration of each batched ledger write (one transaction).",
    "spendgate_stream_drains_active": "Abandoned streams being drained for their usage.",
    "spendgate_reservations_open": "Budget and credit reservations held by requests in progress.",
    "spendgate_reserved_usd": "USD held by the open reservations.",
    "spendgate_settlements_pending": (
        "Settlements kept while the limit store (Redis) is unreachable, to be replayed."
    ),
    "spendgate_database_errors_total": (
        "Failed database operations, by operation (ledger_write, key_lookup, key_refresh)."
    ),
    "spendgate_redis_errors_total": "Failed calls to Redis (limits, budgets, settlements).",
    "spendgate_export_events_total": (
        "Usage events handled by an export (influxdb, otel), by outcome (sent, dropped)."
    ),
    "spendgate_export_retries_total": "Failed export attempts that will be retried, by export.",
    "spendgate_export_buffered": "Usage events waiting to be exported, by export.",
    "spendgate_provider_cost_usd_total": (
        "Cost in USD the provider itself reported (OpenRouter), by upstream."
    ),
    "spendgate_provider_cost_ours_usd_total": (
        "Our price in USD for the requests whose provider reported a cost, by upstream."
    ),
    "spendgate_provider_cost_mismatches_total": (
        "Requests whose provider-reported cost differs from ours by over 1% "
        "(or that we could not price), by upstream."
    ),
    "spendgate_user_requests_total": (
        "Requests by user (only with SPENDGATE_METRICS_USER_LABELS=true)."
    ),
    "spendgate_user_tokens_total": (
        "Tokens by user and kind (only with SPENDGATE_METRICS_USER_LABELS=true)."
    ),
    "spendgate_user_cost_usd_total": (
        "Cost in USD by user (only with SPENDGATE_METRICS_USER_LABELS=true)."
    ),
}

_TOKEN_KINDS = ("prompt", "completion", "cached", "reasoning")
_BUDGET_CODES = frozenset({"budget_exceeded", "insufficient_credits"})
_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_FLUSH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_PICO = 10**12
# Model names come from clients (and /ingest): past this many, new ones share one label.
MAX_MODEL_LABELS = 1000
OTHER_MODELS = "_other"


@dataclass(slots=True)
class ExportState:
    """One export's counters, read at scrape time."""

    name: str
    sent: int
    dropped: int
    retries: int
    buffered: int


@dataclass(slots=True)
class RuntimeState:
    """The gauges and counters owned by other components, read at scrape time."""

    queue_depth: int = 0
    drains_active: int = 0
    events_dropped: int = 0
    events_retried: int = 0
    events_journaled: int = 0
    journal_pending: int = 0
    reservations_open: int = 0
    reserved_pico: int = 0
    settlements_pending: int = 0
    upstreams_up: dict[str, bool] = field(default_factory=dict)
    redis_errors: int = 0
    database_errors: dict[str, int] = field(default_factory=dict)
    exports: list[ExportState] = field(default_factory=list)
    auth_failures: int = 0
    auth_refused: int = 0
    auth_blocked: int = 0
    tasks: int = 0


class Histograms:
    """Histograms by label value, kept as per-bucket (not cumulative) counts."""

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts: dict[str, list[int]] = {}
        self.sums: dict[str, float] = {}

    def observe(self, label: str, value: float) -> None:
        counts = self.counts.get(label)
        if counts is None:
            counts = self.counts[label] = [0] * (len(self.bounds) + 1)
            self.sums[label] = 0.0
        counts[bisect_left(self.bounds, value)] += 1
        self.sums[label] += value

    def family(self, name: str, label: str) -> HistogramMetricFamily:
        family = HistogramMetricFamily(name, METRIC_DOCS[name], labels=(label,))
        les = [*(repr(float(b)) for b in self.bounds), "+Inf"]
        for value, counts in self.counts.items():
            family.add_metric(
                (value,),
                list(zip(les, accumulate(counts), strict=True)),
                sum_value=self.sums[value],
            )
        return family


class GatewayMetrics:
    """Every metric the gateway exports, on its own registry.

    The hot path only adds to plain dicts (`observe` costs a few dictionary updates, no
    locks, no label validation); `_Collector` turns them into Prometheus families when
    `/metrics` is scraped, and reads the other components' numbers through `state`. Costs
    are summed in integer picodollars, so the exported USD total is the ledger's to the
    last digit a float can show.
    """

    def __init__(
        self,
        *,
        user_labels: bool = False,
        state: Callable[[], RuntimeState] = RuntimeState,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.user_labels = user_labels
        self.state = state
        self.requests: dict[tuple[str, str, str], int] = {}
        self.tokens: dict[tuple[str, str], int] = {}
        self.cost_pico: dict[str, int] = {}
        self.duration = Histograms(_DURATION_BUCKETS)
        self.upstream_latency = Histograms(_DURATION_BUCKETS)
        self.first_token = Histograms(_DURATION_BUCKETS)
        self.flush = Histograms(_FLUSH_BUCKETS)
        self.unpriced: dict[str, int] = {}
        self.budget_rejected: dict[str, int] = {}
        self.rate_limited = 0
        self.estimated = 0
        self.events_written = 0
        self.in_flight = 0  # kept by the proxy
        self.attempts: dict[tuple[str, str], int] = {}
        # By upstream, for requests whose provider reported a cost (picodollars, counts).
        self.provider_cost_pico: dict[str, int] = {}
        self.provider_cost_ours_pico: dict[str, int] = {}
        self.provider_cost_mismatches: dict[str, int] = {}
        self.user_requests: dict[str, int] = {}
        self.user_tokens: dict[tuple[str, str], int] = {}
        self.user_cost_pico: dict[str, int] = {}
        self._models: set[str] = set()
        self.registry.register(_Collector(self))
        ProcessCollector(registry=self.registry)

    def observe(
        self,
        event: UsageEvent,
        upstream_seconds: float | None = None,
        first_token_seconds: float | None = None,
    ) -> None:
        """Count one recorded request (proxied or ingested) and its timings."""
        model = event.model or "-"
        if model not in self._models:
            if len(self._models) >= MAX_MODEL_LABELS:
                model = OTHER_MODELS
            else:
                self._models.add(model)
        endpoint = event.endpoint
        key = (endpoint, model, str(event.status))
        requests = self.requests
        requests[key] = requests.get(key, 0) + 1
        if event.source == "proxy":  # an ingested event's request was never timed here
            self.duration.observe(endpoint, event.latency_ms / 1000)
            if upstream_seconds is not None:
                self.upstream_latency.observe(model, upstream_seconds)
            if first_token_seconds is not None:
                self.first_token.observe(model, first_token_seconds)
        counts = (
            event.prompt_tokens,
            event.completion_tokens,
            event.cached_tokens,
            event.reasoning_tokens,
        )
        if event.total_tokens or event.prompt_tokens:
            tokens = self.tokens
            for kind, count in zip(_TOKEN_KINDS, counts, strict=True):
                if count:
                    token_key = (model, kind)
                    tokens[token_key] = tokens.get(token_key, 0) + count
        cost = event.cost_pico
        if cost is not None:
            if cost:
                self.cost_pico[model] = self.cost_pico.get(model, 0) + cost
        elif event.prompt_tokens or event.completion_tokens:
            self.unpriced[model] = self.unpriced.get(model, 0) + 1
        if event.estimated:
            self.estimated += 1
        code = event.error_code
        if code == "rate_limit_exceeded":
            self.rate_limited += 1
        elif code in _BUDGET_CODES:
            self.budget_rejected[code] = self.budget_rejected.get(code, 0) + 1
        if event.provider_cost_pico is not None:
            self._observe_provider_cost(event.upstream or "-", event.provider_cost_pico, cost)
        if self.user_labels:
            self._observe_user(event.user, counts, cost)

    def _observe_provider_cost(self, upstream: str, reported: int, ours: int | None) -> None:
        """Compare the cost the provider reported with ours (both picodollars)."""
        self.provider_cost_pico[upstream] = self.provider_cost_pico.get(upstream, 0) + reported
        if ours is not None:
            self.provider_cost_ours_pico[upstream] = (
                self.provider_cost_ours_pico.get(upstream, 0) + ours
            )
        if ours is None or abs(ours - reported) * 100 > reported:
            mismatches = self.provider_cost_mismatches
            mismatches[upstream] = mismatches.get(upstream, 0) + 1

    def _observe_user(self, user: str, counts: Sequence[int], cost: int | None) -> None:
        self.user_requests[user] = self.user_requests.get(user, 0) + 1
        for kind, count in zip(_TOKEN_KINDS, counts, strict=True):
            if count:
                self.user_tokens[(user, kind)] = self.user_tokens.get((user, kind), 0) + count
        if cost:
            self.user_cost_pico[user] = self.user_cost_pico.get(user, 0) + cost

    def attempt(self, upstream: str, outcome: str) -> None:
        """Count one call to an upstream and how it went."""
        key = (upstream, outcome)
        self.attempts[key] = self.attempts.get(key, 0) + 1

    def written(self, events: Sequence[UsageEvent]) -> None:
        """Count events committed by the ledger writer."""
        self.events_written += len(events)

    def flushed(self, seconds: float) -> None:
        """Time one committed ledger batch."""
        self.flush.observe("", seconds)

    def render(self) -> bytes:
        """The Prometheus text exposition."""
        return generate_latest(self.registry)


class _Collector(Collector):
    """The counters of `GatewayMetrics` as Prometheus metric families."""

    def __init__(self, metrics: GatewayMetrics) -> None:
        self._metrics = metrics

    def describe(self) -> Iterable[Metric]:
        # Registration would otherwise collect once, reading components not built yet.
        return []

    def collect(self) -> Iterable[Metric]:
        m = self._metrics
        state = m.state()
        yield _counter("spendgate_requests", ("endpoint", "model", "status"), m.requests)
        yield _counter("spendgate_tokens", ("model", "kind"), m.tokens)
        yield _counter("spendgate_cost_usd", ("model",), _usd(m.cost_pico))
        yield m.duration.family("spendgate_request_duration_seconds", "endpoint")
        yield m.upstream_latency.family("spendgate_upstream_latency_seconds", "model")
        yield m.first_token.family("spendgate_time_to_first_token_seconds", "model")
        yield _flush_family(m.flush)
        yield _gauge("spendgate_requests_in_flight", m.in_flight)
        yield _counter("spendgate_upstream_attempts", ("upstream", "outcome"), m.attempts)
        up = GaugeMetricFamily(
            "spendgate_upstream_up", METRIC_DOCS["spendgate_upstream_up"], labels=("upstream",)
        )
        for name, is_up in state.upstreams_up.items():
            up.add_metric((name,), 1 if is_up else 0)
        yield up
        yield _counter("spendgate_rate_limited", (), {(): m.rate_limited})
        codes = {(code,): count for code, count in m.budget_rejected.items()}
        yield _counter("spendgate_budget_rejected", ("code",), codes)
        yield _counter("spendgate_usage_events_dropped", (), {(): state.events_dropped})
        yield _counter(
            "spendgate_unpriced_requests", ("model",), {(k,): v for k, v in m.unpriced.items()}
        )
        yield _counter("spendgate_estimated_requests", (), {(): m.estimated})
        yield _counter("spendgate_usage_events_written", (), {(): m.events_written})
        yield _counter("spendgate_usage_events_retried", (), {(): state.events_retried})
        yield _gauge("spendgate_write_queue_depth", state.queue_depth)
        yield _counter("spendgate_usage_events_journaled", (), {(): state.events_journaled})
        yield _gauge("spendgate_journal_events", state.journal_pending)
        yield _gauge("spendgate_stream_drains_active", state.drains_active)
        yield _gauge("spendgate_reservations_open", state.reservations_open)
        yield _gauge("spendgate_reserved_usd", state.reserved_pico / _PICO)
        yield _gauge("spendgate_settlements_pending", state.settlements_pending)
        errors = {(op,): count for op, count in state.database_errors.items()}
        yield _counter("spendgate_database_errors", ("operation",), errors)
        yield _counter("spendgate_redis_errors", (), {(): state.redis_errors})
        yield _counter("spendgate_provider_cost_usd", ("upstream",), _usd(m.provider_cost_pico))
        yield _counter(
            "spendgate_provider_cost_ours_usd", ("upstream",), _usd(m.provider_cost_ours_pico)
        )
        yield _counter(
            "spendgate_provider_cost_mismatches", ("upstream",), _single(m.provider_cost_mismatches)
        )
        yield _counter("spendgate_auth_failures", (), {(): state.auth_failures})
        yield _counter("spendgate_auth_refused", (), {(): state.auth_refused})
        yield _gauge("spendgate_auth_blocked_addresses", state.auth_blocked)
        yield _gauge("spendgate_event_loop_tasks", state.tasks)
        yield from _export_families(state.exports)
        if m.user_labels:
            yield _counter("spendgate_user_requests", ("user",), _single(m.user_requests))
            yield _counter("spendgate_user_tokens", ("user", "kind"), m.user_tokens)
            yield _counter("spendgate_user_cost_usd", ("user",), _usd(m.user_cost_pico))


def _export_families(exports: Sequence[ExportState]) -> Iterable[Metric]:
    events: dict[tuple[str, str], int] = {}
    for export in exports:
        events[(export.name, "sent")] = export.sent
        events[(export.name, "dropped")] = export.dropped
    yield _counter("spendgate_export_events", ("export", "outcome"), events)
    retries = {(export.name,): export.retries for export in exports}
    yield _counter("spendgate_export_retries", ("export",), retries)
    buffered = GaugeMetricFamily(
        "spendgate_export_buffered", METRIC_DOCS["spendgate_export_buffered"], labels=("export",)
    )
    for export in exports:
        buffered.add_metric((export.name,), export.buffered)
    yield buffered


def _flush_family(flush: Histograms) -> HistogramMetricFamily:
    """The ledger flush histogram, which has no labels."""
    name = "spendgate_ledger_flush_seconds"
    family = HistogramMetricFamily(name, METRIC_DOCS[name])
    counts = flush.counts.get("", [0] * (len(flush.bounds) + 1))
    les = [*(repr(float(b)) for b in flush.bounds), "+Inf"]
    family.add_metric(
        (), list(zip(les, accumulate(counts), strict=True)), sum_value=flush.sums.get("", 0.0)
    )
    return family


def _usd(pico: Mapping[str, int]) -> dict[tuple[str], float]:
    return {(label,): amount / _PICO for label, amount in pico.items()}


def _single(values: Mapping[str, int]) -> dict[tuple[str], int]:
    return {(label,): value for label, value in values.items()}


def _gauge(name: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, METRIC_DOCS[name], value=value)


def _counter(
    name: str, labels: Sequence[str], values: Mapping[Any, int | float]
) -> CounterMetricFamily:
    """A counter family from a map of label-value tuples to values."""
    family = CounterMetricFamily(name, METRIC_DOCS[f"{name}_total"], labels=labels)
    for key, value in values.items():
        family.add_metric(key, value)
    return family
