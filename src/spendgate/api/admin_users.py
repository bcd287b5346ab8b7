"""Admin API: users."""

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from fastapi import APIRouter

from spendgate.api.deps import AdminDep, RuntimeDep
from spendgate.api.schemas import UserCreate, UserPatch, user_json
from spendgate.errors import InvalidRequest, NotFound
from spendgate.exact_json import ExactJSONResponse
from spendgate.ledger.records import UserRecord
from spendgate.ledger.reports import UsageFilter, usage_report
from spendgate.periods import period_start
from spendgate.runtime import Runtime

router = APIRouter(prefix="/admin/users", tags=["admin: users"], dependencies=[AdminDep])


async def period_spend(runtime: Runtime, user: UserRecord) -> Decimal:
    """What the user spent in its budget period so far (this month when it has none)."""
    today = datetime.now(UTC).date()
    flt = UsageFilter(start=period_start(user.budget_period, today), end=today, user=user.name)
    report = await usage_report(runtime.engine, flt, None)
    spent: Decimal = report["totals"]["cost_usd"]
    return spent


async def render_user(runtime: Runtime, user: UserRecord) -> dict[str, Any]:
    """A user object with its spend this period."""
    return user_json(user, await period_spend(runtime, user), None)


@router.post("", status_code=201, response_class=ExactJSONResponse)
async def create_user(body: UserCreate, runtime: RuntimeDep) -> ExactJSONResponse:
    """Create a user."""
    user = await runtime.store.create_user(
        body.name,
        email=body.email,
        budget_usd=body.budget_usd,
        budget_period=body.budget_period,
        limits=body.limits.as_dict() if body.limits else None,
    )
    runtime.principals.invalidate()
    return ExactJSONResponse(await render_user(runtime, user), status_code=201)


@router.get("", response_class=ExactJSONResponse)
async def list_users(runtime: RuntimeDep) -> ExactJSONResponse:
    """Every user."""
    users = await runtime.store.list_users()
    return ExactJSONResponse([await render_user(runtime, user) for user in users])


@router.get("/{name}", response_class=ExactJSONResponse)
async def get_user(name: str, runtime: RuntimeDep) -> ExactJSONResponse:
    """One user."""
    user = await runtime.store.get_user(name)
    if user is None:
        raise NotFound(f"No user named {name!r}.")
    return ExactJSONResponse(await render_user(runtime, user))


@router.patch("/{name}", response_class=ExactJSONResponse)
async def update_user(name: str, body: UserPatch, runtime: RuntimeDep) -> ExactJSONResponse:
    """Change a user's email, budget, limits or disabled flag."""
    fields = body.model_dump(exclude_unset=True)
    if fields.get("disabled", False) is None:
        raise InvalidRequest("'disabled' must be true or false.", param="disabled")
    if "limits" in fields:
        fields["limits"] = body.limits.as_dict() if body.limits else None
    user = await runtime.store.update_user(name, **fields)
    if user is None:
        raise NotFound(f"No user named {name!r}.")
    runtime.principals.invalidate()
    return ExactJSONResponse(await render_user(runtime, user))
