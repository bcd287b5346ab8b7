"""Self API: what a key holder may see of its own account."""

from datetime import timedelta
from typing import Any

from fastapi import APIRouter

from spendgate.api.deps import PrincipalDep, RuntimeDep
from spendgate.api.usage_query import check_group_by, usage_filter
from spendgate.exact_json import ExactJSONResponse
from spendgate.keys.principals import Principal
from spendgate.ledger.records import UserRecord
from spendgate.ledger.reports import usage_report
from spendgate.limits.policy import BudgetView, key_scope, rate_rules, user_scope
from spendgate.money import pico_to_usd
from spendgate.periods import period_start
from spendgate.runtime import Runtime

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


async def account_json(runtime: Runtime, subject: Principal | UserRecord) -> dict[str, Any]:
    """A user's spend, budget, balance and every limit with what is left (/me's body).

    `subject` is a principal (a user signed in with a key: the key's budget and limits
    count too) or just a user (signed in through the trusted header, with no key).
    """
    if isinstance(subject, Principal):
        user, key = subject.user, subject.key
    else:
        user, key = subject, None
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
    key_budget = (
        await policy.budget_view(key_scope(key.id, user.name), key.budget_usd, key.budget_period)
        if key is not None
        else None
    )
    if isinstance(subject, Principal):
        states = await policy.limit_states(subject)
    else:
        states = await backend.peek(rate_rules(scope, user.limits))
    limits: dict[str, dict[str, Any]] = {}
    for state in states:
        name = state.rule.name
        if name in limits and limits[name]["remaining"] <= state.remaining:
            continue  # the user's and the key's limit of one name: show the tighter
        limits[name] = {
            "limit": state.rule.rate.limit,
            "remaining": state.remaining,
            "resets_at": now + timedelta(microseconds=state.reset_after_ns // 1000),
            "scope": "user" if state.rule.scope == scope else "key",
        }
    key_body = None
    if key is not None:
        key_body = {
            "display": key.display,
            "note": key.note,
            "expires_at": key.expires_at,
            "models": key.models,
            "budget": budget_json(key_budget),
        }
    return {
        "user": user.name,
        "key": key_body,
        "spend_usd": spend,
        # The user's budget; a key-only budget is shown here too when the user has none.
        "budget": budget_json(user_budget or key_budget),
        "balance_usd": await policy.balance(user),
        "limits": limits,
    }


@router.get("", response_class=ExactJSONResponse)
async def me(principal: PrincipalDep, runtime: RuntimeDep) -> ExactJSONResponse:
    """The caller's user, key, spend, budget, balance and every limit with what is left."""
    return ExactJSONResponse(await account_json(runtime, principal))


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
