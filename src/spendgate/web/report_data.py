"""The reports' numbers (`/reports/data`): cost by user, by day, by day and user, by model.

Every figure comes from the daily rollups through the ledger's report queries, so a
report over a month of millions of events reads a few thousand rows, and its sums are
exactly those of `/admin/usage` for the same range.
"""

from decimal import Decimal
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from spendgate.ledger.reports import UsageFilter, daily_user_costs, usage_report


async def report_data(engine: AsyncEngine, flt: UsageFilter) -> dict[str, Any]:
    """`{"start", "end", "totals", "by_user", "daily", "daily_by_user", "by_model"}`."""
    by_user = await usage_report(engine, flt, "user")
    by_day = await usage_report(engine, flt, "day")
    by_model = await usage_report(engine, flt, "model")
    cumulative = Decimal(0)
    daily = []
    for group in by_day["groups"]:
        cumulative += group["cost_usd"]
        daily.append(
            {
                "day": group["day"],
                "requests": group["requests"],
                "total_tokens": group["total_tokens"],
                "cost_usd": group["cost_usd"],
                "cumulative_cost_usd": cumulative,
            }
        )
    return {
        "start": by_user["start"],
        "end": by_user["end"],
        "totals": by_user["totals"],
        "by_user": [
            {name: group[name] for name in ("user", "requests", "total_tokens", "cost_usd")}
            for group in by_user["groups"]
        ],
        "daily": daily,
        "daily_by_user": await daily_user_costs(engine, flt),
        "by_model": [
            {
                name: group[name]
                for name in (
                    "model",
                    "requests",
                    "prompt_tokens",
                    "completion_tokens",
                    "total_tokens",
                    "cost_usd",
                )
            }
            for group in by_model["groups"]
        ],
    }
