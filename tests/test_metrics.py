"""The Prometheus exposition of `GatewayMetrics`: names, labels, buckets and exact sums."""

from datetime import UTC, datetime
from decimal import Decimal

from prometheus_client.parser import text_string_to_metric_families

from spendgate.ledger.events import UsageEvent
from spendgate.metrics import (
    MAX_MODEL_LABELS,
    METRIC_DOCS,
    OTHER_MODELS,
    ExportState,
    GatewayMetrics,
    RuntimeState,
)


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
    _, text = samples(GatewayMetrics(user_labels=True))
    for name in METRIC_DOCS:
        assert f"# HELP {name.removesuffix('_total')}" in text, name
    # the process's own memory, CPU and file descriptors, for leak watching
    assert "process_resident_memory_bytes" in text
    assert "process_open_fds" in text


def test_per_user_series_only_when_asked_for():
    plain, with_users = GatewayMetrics(), GatewayMetrics(user_labels=True)
    for metrics in (plain, with_users):
        metrics.observe(event(user="ann"))
        metrics.observe(event(user="bob", cost_usd=Decimal("0.25")))
    got, _ = samples(with_users)
    assert "spendgate_user" not in samples(plain)[1]
    assert got[("spendgate_user_requests_total", (("user", "ann"),))] == 1
    assert got[("spendgate_user_cost_usd_total", (("user", "bob"),))] == 0.25
    assert got[("spendgate_user_tokens_total", (("kind", "prompt"), ("user", "bob")))] == 10


def test_model_labels_are_bounded():
    metrics = GatewayMetrics()
    for n in range(MAX_MODEL_LABELS + 5):
        metrics.observe(event(model=f"m{n}"))
    got, _ = samples(metrics)
    models = {dict(labels)["model"] for name, labels in got if name == "spendgate_requests_total"}
    assert len(models) == MAX_MODEL_LABELS + 1
    chat = ("endpoint", "chat/completions")
    other = (chat, ("model", OTHER_MODELS), ("status", "200"))
    assert got[("spendgate_requests_total", other)] == 5


def test_state_of_other_components_is_read_at_scrape_time():
    current = RuntimeState()
    metrics = GatewayMetrics(state=lambda: current)
    current = RuntimeState(
        queue_depth=3, events_dropped=2, events_retried=40, reservations_open=4,
        reserved_pico=1_500_000_000_000, redis_errors=6, settlements_pending=1,
        database_errors={"ledger_write": 2, "key_lookup": 1},
        exports=[ExportState("influxdb", sent=10, dropped=1, retries=3, buffered=5)],
    )  # fmt: skip
    metrics.flushed(0.003)
    metrics.in_flight = 7
    got, _ = samples(metrics)
    assert got[("spendgate_write_queue_depth", ())] == 3
    assert got[("spendgate_usage_events_dropped_total", ())] == 2
    assert got[("spendgate_usage_events_retried_total", ())] == 40
    assert got[("spendgate_reservations_open", ())] == 4
    assert got[("spendgate_reserved_usd", ())] == 1.5
    assert got[("spendgate_redis_errors_total", ())] == 6
    assert got[("spendgate_settlements_pending", ())] == 1
    assert got[("spendgate_requests_in_flight", ())] == 7
    assert got[("spendgate_database_errors_total", (("operation", "ledger_write"),))] == 2
    assert (
        got[("spendgate_export_events_total", (("export", "influxdb"), ("outcome", "sent")))] == 10
    )
    assert got[("spendgate_export_retries_total", (("export", "influxdb"),))] == 3
    assert got[("spendgate_export_buffered", (("export", "influxdb"),))] == 5
    assert got[("spendgate_ledger_flush_seconds_bucket", (("le", "0.0025"),))] == 0
    assert got[("spendgate_ledger_flush_seconds_bucket", (("le", "0.005"),))] == 1


def test_upstream_latency_and_first_token_histograms_by_model():
    metrics = GatewayMetrics()
    metrics.observe(event(), upstream_seconds=0.02, first_token_seconds=0.04)
    metrics.observe(event(), upstream_seconds=0.3)
    metrics.observe(event(source="ingest"), upstream_seconds=9)  # not timed here: ignored
    got, _ = samples(metrics)
    model = ("model", "gpt-4o-mini")
    assert got[("spendgate_upstream_latency_seconds_count", (model,))] == 2
    assert got[("spendgate_upstream_latency_seconds_bucket", (("le", "0.025"), model))] == 1
    assert got[("spendgate_upstream_latency_seconds_bucket", (("le", "0.5"), model))] == 2
    assert abs(got[("spendgate_upstream_latency_seconds_sum", (model,))] - 0.32) < 1e-9
    assert got[("spendgate_time_to_first_token_seconds_count", (model,))] == 1


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

    # Buckets are cumulative: 3 ms and 3 requests at 30 ms (<= 0.05 s), five in all.
    def bucket(le):
        return got[("spendgate_request_duration_seconds_bucket", (chat, ("le", le)))]

    assert bucket("0.005") == 1
    assert bucket("0.025") == 1
    assert bucket("0.05") == 5
    assert bucket("+Inf") == 5
    assert got[("spendgate_request_duration_seconds_count", (chat,))] == 5
    assert abs(got[("spendgate_request_duration_seconds_sum", (chat,))] - 0.123) < 1e-9


def test_provider_reported_costs_are_compared_with_ours_by_upstream():
    metrics = GatewayMetrics()

    def observe(ours, reported_pico, upstream="openrouter"):
        metrics.observe(event(upstream=upstream, cost_usd=ours, provider_cost_pico=reported_pico))

    observe(Decimal("1"), 1_009_000_000_000)  # 0.9% off: agrees
    observe(Decimal("0.5"), 510_000_000_000)  # 2% off: a mismatch
    observe(None, 3)  # we have no price: a mismatch
    observe(Decimal("7"), None)  # no reported cost: not compared
    observe(Decimal("0"), 0, upstream=None)  # no upstream named: the "-" label
    got, _ = samples(metrics)

    def value(name, upstream="openrouter"):
        return got.get((name, (("upstream", upstream),)))

    assert value("spendgate_provider_cost_usd_total") == 1.519000000003
    assert value("spendgate_provider_cost_ours_usd_total") == 1.5
    assert value("spendgate_provider_cost_mismatches_total") == 2
    assert value("spendgate_provider_cost_usd_total", "-") == 0
    assert value("spendgate_provider_cost_mismatches_total", "-") is None


def test_no_provider_cost_series_without_reported_costs():
    metrics = GatewayMetrics()
    metrics.observe(event(upstream="openai"))
    _, text = samples(metrics)
    assert "spendgate_provider_cost_usd_total{" not in text
    assert "spendgate_provider_cost_mismatches_total{" not in text
