"""Prometheus metrics, one registry per app (never the process-global default registry)."""

from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

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


class GatewayMetrics:
    """Every metric the gateway exports, registered on its own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        docs = METRIC_DOCS
        r = self.registry
        self.requests = Counter(
            "spendgate_requests", docs["spendgate_requests_total"],
            ["endpoint", "model", "status"], registry=r,
        )  # fmt: skip
        self.tokens = Counter(
            "spendgate_tokens", docs["spendgate_tokens_total"], ["model", "kind"], registry=r
        )
        self.cost = Counter(
            "spendgate_cost_usd", docs["spendgate_cost_usd_total"], ["model"], registry=r
        )
        self.duration = Histogram(
            "spendgate_request_duration_seconds",
            docs["spendgate_request_duration_seconds"],
            ["endpoint"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
            registry=r,
        )
        self.rate_limited = Counter(
            "spendgate_rate_limited", docs["spendgate_rate_limited_total"], registry=r
        )
        self.budget_rejected = Counter(
            "spendgate_budget_rejected", docs["spendgate_budget_rejected_total"], ["code"],
            registry=r,
        )  # fmt: skip
        self.events_dropped = Counter(
            "spendgate_usage_events_dropped", docs["spendgate_usage_events_dropped_total"],
            registry=r,
        )  # fmt: skip
        self.unpriced = Counter(
            "spendgate_unpriced_requests", docs["spendgate_unpriced_requests_total"], ["model"],
            registry=r,
        )  # fmt: skip
        self.estimated = Counter(
            "spendgate_estimated_requests", docs["spendgate_estimated_requests_total"],
            registry=r,
        )  # fmt: skip
        self.events_written = Counter(
            "spendgate_usage_events_written", docs["spendgate_usage_events_written_total"],
            registry=r,
        )  # fmt: skip
        self.queue_depth = Gauge(
            "spendgate_write_queue_depth", docs["spendgate_write_queue_depth"], registry=r
        )
        self.drains_active = Gauge(
            "spendgate_stream_drains_active", docs["spendgate_stream_drains_active"], registry=r
        )

    def observe(self, event: UsageEvent) -> None:
        """Count one recorded request."""
        model = event.model or "-"
        self.requests.labels(event.endpoint, model, str(event.status)).inc()
        self.duration.labels(event.endpoint).observe(event.latency_ms / 1000)
        if event.total_tokens or event.prompt_tokens:
            counts = (
                event.prompt_tokens,
                event.completion_tokens,
                event.cached_tokens,
                event.reasoning_tokens,
            )
            for kind, count in zip(_TOKEN_KINDS, counts, strict=True):
                if count:
                    self.tokens.labels(model, kind).inc(count)
        if event.cost_usd is not None:
            if event.cost_usd:
                self.cost.labels(model).inc(float(event.cost_usd))
        elif event.prompt_tokens or event.completion_tokens:
            self.unpriced.labels(model).inc()
        if event.estimated:
            self.estimated.inc()
        code = event.error_code
        if code == "rate_limit_exceeded":
            self.rate_limited.inc()
        elif code in _BUDGET_CODES:
            self.budget_rejected.labels(code).inc()

    def written(self, events: Sequence[UsageEvent]) -> None:
        """Count events committed by the ledger writer."""
        self.events_written.inc(len(events))

    def render(self) -> bytes:
        """The Prometheus text exposition."""
        return generate_latest(self.registry)
