"""The sample Grafana dashboard in docs/ queries only metrics the gateway exports."""

import json
import re
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from spendgate.metrics import GatewayMetrics

DASHBOARD = Path(__file__).parent.parent / "docs" / "grafana-dashboard.json"


def exported_sample_names() -> set[str]:
    text = GatewayMetrics(user_labels=True).render().decode()
    names = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        if family.type == "counter":
            names.add(f"{family.name}_total")
        if family.type == "histogram":
            names |= {f"{family.name}_{suffix}" for suffix in ("bucket", "sum", "count")}
    return names


def test_every_panel_queries_exported_metrics():
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    exported = exported_sample_names()
    queried = set()
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            names = set(re.findall(r"\b(?:spendgate|process)_[a-z_]+\b", target["expr"]))
            assert names, target["expr"]
            assert names <= exported, (panel["title"], names - exported)
            queried |= names
    # the headline series are all on it
    for name in (
        "spendgate_cost_usd_total",
        "spendgate_tokens_total",
        "spendgate_upstream_latency_seconds_bucket",
        "spendgate_time_to_first_token_seconds_bucket",
        "spendgate_write_queue_depth",
        "spendgate_export_events_total",
    ):
        assert name in queried, name
