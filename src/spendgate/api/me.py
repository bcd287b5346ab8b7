"""Self API: what a key holder may see of its own account."""

from datetime import timedelta
from typing import Any

from fastapi import APIRouter

from spendgate.api.deps import PrincipalDep, RuntimeDep
from spendgate.api.usage_query import check_group_by, usage_filter
from spendgate.exact_json import ExactJSONResponse
from spendgate.ledger.reports import usage_report
from spendgate.limits.policy import BudgetView, key_scope, user_scope
from spendgate.money import pico_to_usd
from spendgate.periods import period_start

router = APIRouter(prefix="/me", tags=["self"])


def budget_json(view: BudgetView | None) -> dict[str, Any] | None:
    """The contract's budget object: usd, period, remaining_usd, resets_at (+ spent_usd)."""
    if view is None:
        return None
    return {
        "usd": view.usd,
        "period": view.period,
        "spent_usd": view.spent_usd,
        "remaining_usd": view.remaining_usd,
        "resets_at": view.resets_at,
    }


@router.get("", response_class=ExactJSONResponse)
async def me(principal: PrincipalDep, runtime: RuntimeDep) -> ExactJSONResponse:
    """The caller's user, key, spend, budget, balance and every limit with what is left."""
    user, key = principal.user, principal.key
    policy = runtime.limits
    backend = policy.backend
    now = policy.now()
    today = now.date()
    scope = user_scope(user.name)
    spend = {
        "today": pico_to_usd(await backend.spent(scope, today)),
        "month": pico_to_usd(await backend.spent(scope, period_start("monthly", today))),
        "total": pico_to_usd(await backend.spent(scope, None)),
    }
    user_budget = await policy.budget_view(scope, user.budget_usd, user.budget_period)
    key_budget = await policy.budget_view(
        key_scope(key.id, user.name), key.budget_usd, key.budget_period
    )
    limits: dict[str, dict[str, Any]] = {}
    for state in await policy.limit_states(principal):
        name = state.rule.name
        if name in limits and limits[name]["remaining"] <= state.remaining:
            continue  # the user's and the key's limit of one name: show the tighter
        limits[name] = {
            "limit": state.rule.rate.limit,
            "remaining": state.remaining,
            "resets_at": now + timedelta(microseconds=state.reset_after_ns // 1000),
            "scope": "user" if state.rule.scope == scope else "key",
        }
    body = {
        "user": user.name,
        "key": {
            "display": key.display,
            "note": key.note,
            "expires_at": key.expires_at,
            "models": key.models,
            "budget": budget_json(key_budget),
        },
        "spend_usd": spend,
        # The user's budget; a key-only budget is shown here too when the user has none.
        "budget": budget_json(user_budget or key_budget),
        "balance_usd": await policy.balance(user),
        "limits": limits,
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
