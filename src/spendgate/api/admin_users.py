"""Admin API: users.

The route bodies are functions of their own (`create_user_from`, `patch_user`, ...) so the
web console changes users through exactly the same steps as the JSON API.
"""

from typing import Any

from fastapi import APIRouter

from spendgate.api.deps import AdminDep, RuntimeDep
from spendgate.api.schemas import CreditChange, UserCreate, UserPatch, user_json
from spendgate.errors import InvalidRequest, NotFound
from spendgate.exact_json import ExactJSONResponse
from spendgate.ledger.records import UserRecord
from spendgate.runtime import Runtime

router = APIRouter(prefix="/admin/users", tags=["admin: users"], dependencies=[AdminDep])


async def render_user(runtime: Runtime, user: UserRecord) -> dict[str, Any]:
    """A user object with its spend this period and its credit balance."""
    policy = runtime.limits
    return user_json(user, await policy.period_spend(user), await policy.balance(user))


async def find_user(runtime: Runtime, name: str) -> UserRecord:
    """The user called `name`, or `NotFound`."""
    user = await runtime.store.get_user(name)
    if user is None:
        raise NotFound(f"No user named {name!r}.")
    return user


async def create_user_from(runtime: Runtime, body: UserCreate) -> UserRecord:
    """Create the user `body` describes and tell the key caches."""
    user = await runtime.store.create_user(
        body.name,
        email=body.email,
        budget_usd=body.budget_usd,
        budget_period=body.budget_period,
        limits=body.limits.as_dict() if body.limits else None,
    )
    await runtime.principals.changed()
    return user


async def patch_user(runtime: Runtime, name: str, body: UserPatch) -> UserRecord:
    """Apply the fields set in `body` to user `name`; `NotFound` if there is none."""
    fields = body.model_dump(exclude_unset=True)
    if fields.get("disabled", False) is None:
        raise InvalidRequest("'disabled' must be true or false.", param="disabled")
    if "limits" in fields:
        fields["limits"] = body.limits.as_dict() if body.limits else None
    user = await runtime.store.update_user(name, **fields)
    if user is None:
        raise NotFound(f"No user named {name!r}.")
    await runtime.principals.changed()
    return user


async def credit_user(
    runtime: Runtime, name: str, body: CreditChange, default_actor: str
) -> UserRecord:
    """Add one credit transaction to user `name`; `NotFound` if there is none."""
    user = await runtime.store.add_credit(
        name, body.amount_usd, note=body.note, actor=body.actor or default_actor
    )
    if user is None:
        raise NotFound(f"No user named {name!r}.")
    await runtime.principals.changed()
    return user


async def credit_ledger(runtime: Runtime, name: str) -> dict[str, Any]:
    """The user's name, balance now and credit transactions, oldest first."""
    user = await find_user(runtime, name)
    transactions = [
        {
            "id": record.id,
            "amount_usd": record.amount_usd,
            "note": record.note,
            "actor": record.actor,
            "created_at": record.created_at,
        }
        for record in await runtime.store.list_credits(name)
    ]
    return {
        "name": user.name,
        "balance_usd": await runtime.limits.balance(user),
        "transactions": transactions,
    }


@router.post("", status_code=201, response_class=ExactJSONResponse)
async def create_user(body: UserCreate, runtime: RuntimeDep) -> ExactJSONResponse:
    """Create a user."""
    user = await create_user_from(runtime, body)
    return ExactJSONResponse(await render_user(runtime, user), status_code=201)


@router.get("", response_class=ExactJSONResponse)
async def list_users(runtime: RuntimeDep) -> ExactJSONResponse:
    """Every user."""
    users = await runtime.store.list_users()
    return ExactJSONResponse([await render_user(runtime, user) for user in users])


@router.get("/{name}", response_class=ExactJSONResponse)
async def get_user(name: str, runtime: RuntimeDep) -> ExactJSONResponse:
    """One user."""
    return ExactJSONResponse(await render_user(runtime, await find_user(runtime, name)))


@router.patch("/{name}", response_class=ExactJSONResponse)
async def update_user(name: str, body: UserPatch, runtime: RuntimeDep) -> ExactJSONResponse:
    """Change a user's email, budget, limits or disabled flag."""
    user = await patch_user(runtime, name, body)
    return ExactJSONResponse(await render_user(runtime, user))


@router.post("/{name}/credits", response_class=ExactJSONResponse)
async def add_credit(name: str, body: CreditChange, runtime: RuntimeDep) -> ExactJSONResponse:
    """Top up (positive) or refund/correct (negative) a user's prepaid credit."""
    user = await credit_user(runtime, name, body, "admin-api")
    return ExactJSONResponse({"name": user.name, "balance_usd": await runtime.limits.balance(user)})


@router.get("/{name}/credits", response_class=ExactJSONResponse)
async def list_credits(name: str, runtime: RuntimeDep) -> ExactJSONResponse:
    """The user's credit transactions, oldest first, with the balance now."""
    return ExactJSONResponse(await credit_ledger(runtime, name))
