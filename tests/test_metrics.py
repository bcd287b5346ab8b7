"""The Prometheus exposition of `GatewayMetrics`: names, labels, buckets and exact sums."""

from datetime import UTC, datetime
from decimal import Decimal

from prometheus_client.parser import text_string_to_metric_families

from spendgate.ledger.events import UsageEvent
from spendgate.metrics import METRIC_DOCS, GatewayMetrics


def event(**fields):
    base = dict(
        request_id="req_1", timestamp=datetime.now(UTC), user="ann", key_id=1,
        model="gpt-4o-mini", endpoint="chat/completions", method="POST", status=200,
        stream=False, prompt_tokens=10, completion_tokens=5, cached_tokens=2,
        reasoning_tokens=0, total_tokens=15, cost_usd=Decimal("0.000001"), latency_ms=30,
    )  # fmt: skip
    return UsageEvent(**(base | fields))


def samples(metrics):
    text = metrics.render().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }, text


def test_every_documented_metric_is_exported_even_before_any_request():
    _, text = samples(GatewayMetrics())
    for name in METRIC_DOCS:
        assert f"# HELP {name.removesuffix('_total')}" in text, name


def test_counters_histogram_and_cost_follow_the_events():
    metrics = GatewayMetrics()
    metrics.observe(event(latency_ms=30))
    metrics.observe(event(latency_ms=3, cost_usd=Decimal("0.000000000001")))
    refused = dict(prompt_tokens=0, completion_tokens=0, total_tokens=0, cached_tokens=0,
                   cost_usd=Decimal(0))  # fmt: skip
    metrics.observe(event(status=429, error_code="rate_limit_exceeded", **refused))
    metrics.observe(event(model="mystery", cost_usd=None))
    metrics.observe(event(status=402, error_code="budget_exceeded", **refused))
    metrics.written([event()] * 4)
    metrics.events_dropped = 7
    got, _ = samples(metrics)
    chat = ("endpoint", "chat/completions")
    assert (
        got[("spendgate_requests_total", (chat, ("model", "gpt-4o-mini"), ("status", "200")))] == 2
    )
    assert (
        got[("spendgate_requests_total", (chat, ("model", "gpt-4o-mini"), ("status", "429")))] == 1
    )
    assert got[("spendgate_tokens_total", (("kind", "prompt"), ("model", "gpt-4o-mini")))] == 20
    assert got[("spendgate_tokens_total", (("kind", "cached"), ("model", "mystery")))] == 2
    assert got[("spendgate_cost_usd_total", (("model", "gpt-4o-mini"),))] == 0.000001000001
    assert got[("spendgate_unpriced_requests_total", (("model", "mystery"),))] == 1
    assert got[("spendgate_rate_limited_total", ())] == 1
    assert got[("spendgate_budget_rejected_total", (("code", "budget_exceeded"),))] == 1
    assert got[("spendgate_usage_events_written_total", ())] == 4
    assert got[("spendgate_usage_events_dropped_total", ())] == 7

    # Buckets are cumulative: 3 ms and 3 requests at 30 ms (<= 0.05 s), five in all.
    def bucket(le):
        return got[("spendgate_request_duration_seconds_bucket", (chat, ("le", le)))]

    assert bucket("0.005") == 1
    assert bucket("0.025") == 1
    assert bucket("0.05") == 5
    assert bucket("+Inf") == 5
    assert got[("spendgate_request_duration_seconds_count", (chat,))] == 5
    assert abs(got[("spendgate_request_duration_seconds_sum", (chat,))] - 0.123) < 1e-9
