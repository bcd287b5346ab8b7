"""Self API: what a key holder may see of its own account."""

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter

from spendgate.api.deps import PrincipalDep, RuntimeDep
from spendgate.api.usage_query import check_group_by, usage_filter
from spendgate.exact_json import ExactJSONResponse
from spendgate.ledger.reports import spend_summary, usage_report
from spendgate.periods import period_resets_at, period_start

router = APIRouter(prefix="/me", tags=["self"])


@router.get("", response_class=ExactJSONResponse)
async def me(principal: PrincipalDep, runtime: RuntimeDep) -> ExactJSONResponse:
    """The caller's user, key, spend, budget, balance and limits."""
    user, key = principal.user, principal.key
    today = datetime.now(UTC).date()
    spend = await spend_summary(runtime.engine, user.name, today)
    budget: dict[str, Any] | None = None
    if user.budget_usd is not None:
        start = period_start(user.budget_period or "monthly", today)
        report = await usage_report(runtime.engine, usage_filter(
            start.isoformat(), today.isoformat(), user=user.name), None)  # fmt: skip
        spent = report["totals"]["cost_usd"]
        budget = {
            "usd": user.budget_usd,
            "period": user.budget_period or "monthly",
            "remaining_usd": max(user.budget_usd - spent, 0),
            "resets_at": period_resets_at(user.budget_period or "monthly", today),
        }
    body = {
        "user": user.name,
        "key": {"display": key.display, "note": key.note, "expires_at": key.expires_at},
        "spend_usd": spend,
        "budget": budget,
        "balance_usd": None,
        "limits": {},
    }
    return ExactJSONResponse(body)


@router.get("/usage", response_class=ExactJSONResponse)
async def my_usage(
    principal: PrincipalDep,
    runtime: RuntimeDep,
    start: str | None = None,
    end: str | None = None,
    group_by: str | None = None,
) -> ExactJSONResponse:
    """The caller's usage, as /admin/usage, grouped by day or model."""
    grouping = check_group_by(group_by, ("day", "model"))
    flt = usage_filter(start, end, user=principal.user.name)
    return ExactJSONResponse(await usage_report(runtime.engine, flt, grouping))
