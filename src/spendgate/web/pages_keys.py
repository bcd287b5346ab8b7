"""Admin pages: gateway keys. Create (the key shown once), edit, revoke, last use.

Changes go through the admin API's functions (`api/admin_keys.py`): a key revoked here is
refused at /v1 at once, on every instance, exactly as after `POST /admin/keys/{id}/revoke`.
"""

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.datastructures import FormData

from spendgate.api.admin_keys import issue_key, parse_key_id, patch_key, revoke
from spendgate.api.deps import RuntimeDep
from spendgate.api.schemas import KeyCreate, KeyPatch
from spendgate.errors import Conflict, InvalidRequest, NotFound
from spendgate.ledger.records import KeyRecord
from spendgate.ledger.reports import key_totals
from spendgate.runtime import Runtime
from spendgate.web.access import AdminViewerDep, CheckedFormDep
from spendgate.web.forms import (
    day_field,
    field,
    limits_field,
    models_field,
    parse_model,
    safe_next,
    start_of_day,
)
from spendgate.web.render import render_page

router = APIRouter(include_in_schema=False)


def key_status(key: KeyRecord, now: datetime) -> str:
    """`active`, `revoked` or `expired`."""
    if key.revoked_at is not None:
        return "revoked"
    if key.expires_at is not None and key.expires_at <= now:
        return "expired"
    return "active"


def _settings_fields(form: FormData) -> dict[str, Any]:
    """note, models, budget and limits as the form gives them (empty: none)."""
    return {
        "note": field(form, "note"),
        "models": models_field(form),
        "budget_usd": field(form, "budget_usd"),
        "budget_period": field(form, "budget_period"),
        "limits": limits_field(form),
    }


async def _keys_page(
    request: Request, runtime: Runtime, user: str | None, **context: Any
) -> Response:
    keys = list(reversed(await runtime.store.list_keys(user or None)))
    users = [record.name for record in await runtime.store.list_users()]
    context.setdefault("error", None)
    context.setdefault("values", {})
    context.setdefault("new_key", None)
    return await render_page(
        request,
        "keys.html",
        keys=keys,
        users=users,
        user_filter=user or "",
        now=datetime.now(UTC),
        status_of=key_status,
        **context,
    )


@router.get("/ui/keys", response_class=HTMLResponse)
async def keys(
    request: Request, viewer: AdminViewerDep, runtime: RuntimeDep, user: str | None = None
) -> Response:
    """Every key (or one user's), newest first, display form only; the create form."""
    return await _keys_page(request, runtime, user)


@router.post("/ui/keys", response_class=HTMLResponse)
async def create_key(
    request: Request, viewer: AdminViewerDep, runtime: RuntimeDep, form: CheckedFormDep
) -> Response:
    """Create a key: 200 with the key shown this once, or the form again with what was wrong."""
    try:
        expires = day_field(form, "expires_at")
        values = {
            "user": field(form, "user"),
            "expires_at": start_of_day(expires) if expires else None,
            **_settings_fields(form),
        }
        key, record = await issue_key(runtime, parse_model(KeyCreate, values))
    except (InvalidRequest, Conflict) as error:
        return await _keys_page(
            request, runtime, None, status=error.status, error=error.message, values=dict(form)
        )
    return await _keys_page(request, runtime, None, new_key=key, new_record=record)


async def _find(runtime: Runtime, key_id: str) -> KeyRecord:
    number = parse_key_id(key_id)
    record = await runtime.store.get_key(number) if number is not None else None
    if record is None:
        raise NotFound("No such key.")
    return record


async def _key_page(
    request: Request, runtime: Runtime, record: KeyRecord, *, status: int = 200,
    error: str | None = None,
) -> Response:  # fmt: skip
    return await render_page(
        request,
        "key.html",
        status=status,
        key=record,
        key_state=key_status(record, datetime.now(UTC)),
        totals=await key_totals(runtime.engine, record.id),
        error=error,
    )


@router.get("/ui/keys/{key_id}", response_class=HTMLResponse)
async def key_page(
    key_id: str, request: Request, viewer: AdminViewerDep, runtime: RuntimeDep
) -> Response:
    """One key: its settings to edit, its status, last use and all-time usage."""
    return await _key_page(request, runtime, await _find(runtime, key_id))


@router.post("/ui/keys/{key_id}", response_class=HTMLResponse)
async def edit_key(
    key_id: str, request: Request, viewer: AdminViewerDep, runtime: RuntimeDep, form: CheckedFormDep
) -> Response:
    """Set the key's note, models, expiry, budget and limits (an empty field clears it)."""
    record = await _find(runtime, key_id)
    try:
        values = _settings_fields(form)
        expires = day_field(form, "expires_at")
        current = record.expires_at
        # The form shows the expiry's date only: the same date keeps the exact time it had.
        if current is None or expires != current.astimezone(UTC).date():
            values["expires_at"] = start_of_day(expires) if expires else None
        record = await patch_key(runtime, record.id, parse_model(KeyPatch, values))
    except InvalidRequest as error:
        return await _key_page(request, runtime, record, status=400, error=error.message)
    return RedirectResponse(f"/ui/keys/{record.id}", status_code=303)


@router.post("/ui/keys/{key_id}/revoke", response_class=HTMLResponse)
async def revoke_key(
    key_id: str, request: Request, viewer: AdminViewerDep, runtime: RuntimeDep, form: CheckedFormDep
) -> Response:
    """Revoke the key: new requests with it are refused at once. Back to the page it was on."""
    if parse_key_id(key_id) is None:  # ids only here, never a full key in a URL
        raise NotFound("No such key.")
    record = await revoke(runtime, key_id)
    return RedirectResponse(safe_next(form.get("next"), f"/ui/keys/{record.id}"), status_code=303)
