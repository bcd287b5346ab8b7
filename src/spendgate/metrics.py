"""Prometheus metrics, one registry per app (never the process-global default registry)."""

from bisect import bisect_left
from collections.abc import Iterable, Mapping, Sequence
from itertools import accumulate
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from spendgate.ledger.events import UsageEvent

# Name → one-line documentation. The README test checks every name here is documented.
METRIC_DOCS = {
    "spendgate_requests_total": "Requests recorded, by endpoint, model and status code.",
    "spendgate_tokens_total": (
        "Tokens recorded, by model and kind (prompt, completion, cached, reasoning)."
    ),
    "spendgate_cost_usd_total": "Cost recorded in USD, by model.",
    "spendgate_request_duration_seconds": (
        "Time from request to the end of the response, by endpoint."
    ),
    "spendgate_rate_limited_total": "Requests refused by a rate limit.",
    "spendgate_budget_rejected_total": "Requests refused for budget or credit, by code.",
    "spendgate_usage_events_dropped_total": "Usage events lost because the write queue was full.",
    "spendgate_unpriced_requests_total": "Requests whose model has no known price, by model.",
    "spendgate_estimated_requests_total": "Requests whose usage was estimated (no usage reported).",
    "spendgate_usage_events_written_total": "Usage events committed to the ledger.",
    "spendgate_write_queue_depth": "Usage events waiting to be written.",
    "spendgate_stream_drains_active": "Abandoned streams being drained for their usage.",
}

_TOKEN_KINDS = ("prompt", "completion", "cached", "reasoning")


_BUDGET_CODES = frozenset({"budget_exceeded", "insufficient_credits"})


_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_PICO = 10**12


class GatewayMetrics:
    """Every metric the gateway exports, on its own registry.

    The hot path only adds to plain dicts (`observe` costs a few dictionary updates, no
    locks, no label validation); `_Collector` turns them into Prometheus families when
    `/metrics` is scraped. Costs are summed in integer picodollars, so the exported USD
    total is the ledger's to the last digit a float can show.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests: dict[tuple[str, str, str], int] = {}
        self.tokens: dict[tuple[str, str], int] = {}
        self.cost_pico: dict[str, int] = {}
        self.duration_buckets: dict[str, list[int]] = {}  # per-bucket (not cumulative) counts
        self.duration_sum: dict[str, float] = {}
        self.unpriced: dict[str, int] = {}
        self.budget_rejected: dict[str, int] = {}
        self.rate_limited = 0
        self.estimated = 0
        self.events_written = 0
        self.events_dropped = 0  # set from the writer's count at scrape time
        self.registry.register(_Collector(self))
        self.queue_depth = Gauge(
            "spendgate_write_queue_depth", METRIC_DOCS["spendgate_write_queue_depth"],
            registry=self.registry,
        )  # fmt: skip
        self.drains_active = Gauge(
            "spendgate_stream_drains_active", METRIC_DOCS["spendgate_stream_drains_active"],
            registry=self.registry,
        )  # fmt: skip

    def observe(self, event: UsageEvent) -> None:
        """Count one recorded request (proxied or ingested)."""
        model = event.model or "-"
        endpoint = event.endpoint
        key = (endpoint, model, str(event.status))
        requests = self.requests
        requests[key] = requests.get(key, 0) + 1
        if event.source == "proxy":  # an ingested event's request was never timed here
            seconds = event.latency_ms / 1000
            buckets = self.duration_buckets.get(endpoint)
            if buckets is None:
                buckets = self.duration_buckets[endpoint] = [0] * (len(_DURATION_BUCKETS) + 1)
                self.duration_sum[endpoint] = 0.0
            buckets[bisect_left(_DURATION_BUCKETS, seconds)] += 1
            self.duration_sum[endpoint] += seconds
        if event.total_tokens or event.prompt_tokens:
            tokens = self.tokens
            counts = (
                event.prompt_tokens,
                event.completion_tokens,
                event.cached_tokens,
                event.reasoning_tokens,
            )
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

    def written(self, events: Sequence[UsageEvent]) -> None:
        """Count events committed by the ledger writer."""
        self.events_written += len(events)

    def render(self) -> bytes:
        """The Prometheus text exposition."""
        return generate_latest(self.registry)


class _Collector(Collector):
    """The counters of `GatewayMetrics` as Prometheus metric families."""

    def __init__(self, metrics: GatewayMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[Metric]:
        m = self._metrics
        yield _counter("spendgate_requests", ("endpoint", "model", "status"), m.requests)
        yield _counter("spendgate_tokens", ("model", "kind"), m.tokens)
        cost = {(model,): pico / _PICO for model, pico in m.cost_pico.items()}
        yield _counter("spendgate_cost_usd", ("model",), cost)
        duration = HistogramMetricFamily(
            "spendgate_request_duration_seconds",
            METRIC_DOCS["spendgate_request_duration_seconds"],
            labels=("endpoint",),
        )
        bounds = [*(repr(float(b)) for b in _DURATION_BUCKETS), "+Inf"]
        for endpoint, counts in m.duration_buckets.items():
            cumulative = list(accumulate(counts))
            duration.add_metric(
                (endpoint,),
                list(zip(bounds, cumulative, strict=True)),
                sum_value=m.duration_sum[endpoint],
            )
        yield duration
        yield _counter("spendgate_rate_limited", (), {(): m.rate_limited})
        codes = {(code,): count for code, count in m.budget_rejected.items()}
        yield _counter("spendgate_budget_rejected", ("code",), codes)
        yield _counter("spendgate_usage_events_dropped", (), {(): m.events_dropped})
        yield _counter(
            "spendgate_unpriced_requests", ("model",), {(k,): v for k, v in m.unpriced.items()}
        )
        yield _counter("spendgate_estimated_requests", (), {(): m.estimated})
        yield _counter("spendgate_usage_events_written", (), {(): m.events_written})


def _counter(
    name: str, labels: Sequence[str], values: Mapping[Any, int | float]
) -> CounterMetricFamily:
    """A counter family from a map of label-value tuples to values."""
    family = CounterMetricFamily(name, METRIC_DOCS[f"{name}_total"], labels=labels)
    for key, value in values.items():
        family.add_metric(key, value)
    return family
