"""Admin pages: users, their budgets and limits, credits (with the ledger) and disabling.

Every change goes through the admin API's own functions (`api/admin_users.py`), so a
user changed here is validated, stored and announced to the key caches exactly as one
changed through `/admin/users`.
"""

from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.datastructures import FormData

from spendgate.api.admin_users import (
    create_user_from,
    credit_ledger,
    credit_user,
    find_user,
    patch_user,
    render_user,
)
from spendgate.api.deps import RuntimeDep
from spendgate.api.schemas import CreditChange, UserCreate, UserPatch
from spendgate.errors import Conflict, InvalidRequest
from spendgate.web.access import AdminViewerDep, CheckedFormDep
from spendgate.web.forms import field, limits_field, parse_model
from spendgate.web.pages_keys import key_status
from spendgate.web.render import render_page

router = APIRouter(include_in_schema=False)
CONSOLE_ACTOR = "console"


def user_url(name: str) -> str:
    """The console page of user `name`."""
    return "/ui/users/" + quote(name, safe="")


def _account_fields(form: FormData) -> dict[str, Any]:
    """email, budget_usd, budget_period and limits as the form gives them (empty: none)."""
    return {
        "email": field(form, "email"),
        "budget_usd": field(form, "budget_usd"),
        "budget_period": field(form, "budget_period"),
        "limits": limits_field(form),
    }


async def _users_page(
    request: Request, runtime: RuntimeDep, *, status: int = 200, error: str | None = None,
    values: dict[str, Any] | None = None,
) -> Response:  # fmt: skip
    users = [await render_user(runtime, user) for user in await runtime.store.list_users()]
    return await render_page(
        request, "users.html", status=status, users=users, error=error, values=values or {}
    )


@router.get("/ui/users", response_class=HTMLResponse)
async def users(request: Request, viewer: AdminViewerDep, runtime: RuntimeDep) -> Response:
    """Every user with budget, spend this period, balance, limits and status; the create form."""
    return await _users_page(request, runtime)


@router.post("/ui/users", response_class=HTMLResponse)
async def create_user(
    request: Request, viewer: AdminViewerDep, runtime: RuntimeDep, form: CheckedFormDep
) -> Response:
    """Create a user and go to its page (303), or show the form again with what was wrong."""
    try:
        body = parse_model(UserCreate, {"name": field(form, "name"), **_account_fields(form)})
        user = await create_user_from(runtime, body)
    except (InvalidRequest, Conflict) as error:
        return await _users_page(
            request, runtime, status=error.status, error=error.message, values=dict(form)
        )
    return RedirectResponse(user_url(user.name), status_code=303)


async def _user_page(
    request: Request, runtime: RuntimeDep, name: str, *, status: int = 200,
    error: str | None = None,
) -> Response:  # fmt: skip
    user = await render_user(runtime, await find_user(runtime, name))
    return await render_page(
        request,
        "user.html",
        status=status,
        user=user,
        ledger=await credit_ledger(runtime, name),
        keys=list(reversed(await runtime.store.list_keys(name))),
        status_of=key_status,
        now=datetime.now(UTC),
        error=error,
    )


@router.get("/ui/users/{name}", response_class=HTMLResponse)
async def user_page(
    name: str, request: Request, viewer: AdminViewerDep, runtime: RuntimeDep
) -> Response:
    """One user: edit budget, period and limits; add credits; the credit ledger; its keys."""
    return await _user_page(request, runtime, name)


async def _change_user(
    request: Request, runtime: RuntimeDep, name: str, values: dict[str, Any]
) -> Response:
    try:
        await patch_user(runtime, name, parse_model(UserPatch, values))
    except InvalidRequest as error:
        return await _user_page(request, runtime, name, status=400, error=error.message)
    return RedirectResponse(user_url(name), status_code=303)


@router.post("/ui/users/{name}", response_class=HTMLResponse)
async def edit_user(
    name: str, request: Request, viewer: AdminViewerDep, runtime: RuntimeDep, form: CheckedFormDep
) -> Response:
    """Set the user's email, budget, period and limits (an empty field clears it)."""
    return await _change_user(request, runtime, name, _account_fields(form))


@router.post("/ui/users/{name}/toggle", response_class=HTMLResponse)
async def toggle_user(
    name: str, request: Request, viewer: AdminViewerDep, runtime: RuntimeDep, form: CheckedFormDep
) -> Response:
    """Disable (its keys stop working at once) or enable the user."""
    disabled = field(form, "disabled")
    if disabled not in ("true", "false"):
        return await _user_page(request, runtime, name, status=400, error="Nothing to change.")
    return await _change_user(request, runtime, name, {"disabled": disabled == "true"})


@router.post("/ui/users/{name}/credits", response_class=HTMLResponse)
async def add_credits(
    name: str, request: Request, viewer: AdminViewerDep, runtime: RuntimeDep, form: CheckedFormDep
) -> Response:
    """Add credits (negative: refund or correction) with a note: one more ledger row."""
    try:
        values = {"amount_usd": field(form, "amount_usd"), "note": field(form, "note")}
        await credit_user(runtime, name, parse_model(CreditChange, values), CONSOLE_ACTOR)
    except (InvalidRequest, Conflict) as error:
        return await _user_page(request, runtime, name, status=error.status, error=error.message)
    return RedirectResponse(user_url(name), status_code=303)
