"""Admin API: tracking tokens for client-push ingestion."""

from fastapi import APIRouter

from spendgate.api.admin_keys import parse_key_id
from spendgate.api.deps import AdminDep, RuntimeDep
from spendgate.api.schemas import TrackingTokenCreate, TrackingTokenPatch, tracking_token_json
from spendgate.errors import NotFound
from spendgate.exact_json import ExactJSONResponse
from spendgate.keys.material import display_key, hash_key, new_tracking_token
from spendgate.ledger.tracking import TrackingTokenRecord
from spendgate.runtime import Runtime

router = APIRouter(
    prefix="/admin/tracking-tokens", tags=["admin: tracking tokens"], dependencies=[AdminDep]
)


def parse_token_id(text: str) -> int:
    """A token id from the path; `NotFound` for anything that cannot be one."""
    token_id = parse_key_id(text)
    if token_id is None:
        raise NotFound("No such tracking token.")
    return token_id


@router.post("", status_code=201, response_class=ExactJSONResponse)
async def create_tracking_token(
    body: TrackingTokenCreate, runtime: RuntimeDep
) -> ExactJSONResponse:
    """Create a tracking token (and its user if absent); the token is shown here once."""
    token, record = await issue_tracking_token(runtime, body)
    return ExactJSONResponse({**tracking_token_json(record), "token": token}, status_code=201)


async def issue_tracking_token(
    runtime: Runtime, body: TrackingTokenCreate
) -> tuple[str, TrackingTokenRecord]:
    """A new tracking token (its user created if absent): the token, shown once, and its record."""
    if body.user is not None:
        await runtime.store.ensure_user(body.user)
    token = new_tracking_token()
    record = await runtime.tracking.create(
        body.name, body.user, hash_key(token), display_key(token)
    )
    return token, record


@router.get("", response_class=ExactJSONResponse)
async def list_tracking_tokens(runtime: RuntimeDep) -> ExactJSONResponse:
    """Every tracking token, newest first, in display form only."""
    return ExactJSONResponse([tracking_token_json(t) for t in await runtime.tracking.list()])


@router.get("/{token_id}", response_class=ExactJSONResponse)
async def get_tracking_token(token_id: str, runtime: RuntimeDep) -> ExactJSONResponse:
    """One tracking token."""
    record = await runtime.tracking.get(parse_token_id(token_id))
    if record is None:
        raise NotFound("No such tracking token.")
    return ExactJSONResponse(tracking_token_json(record))


@router.patch("/{token_id}", response_class=ExactJSONResponse)
async def update_tracking_token(
    token_id: str, body: TrackingTokenPatch, runtime: RuntimeDep
) -> ExactJSONResponse:
    """Turn a tracking token on or off, or rename it."""
    record = await runtime.tracking.update(
        parse_token_id(token_id), active=body.active, name=body.name
    )
    if record is None:
        raise NotFound("No such tracking token.")
    return ExactJSONResponse(tracking_token_json(record))


@router.delete("/{token_id}", response_class=ExactJSONResponse)
async def delete_tracking_token(token_id: str, runtime: RuntimeDep) -> ExactJSONResponse:
    """Delete a tracking token for good (PATCH `active` to pause one instead)."""
    if not await runtime.tracking.delete(parse_token_id(token_id)):
        raise NotFound("No such tracking token.")
    return ExactJSONResponse({"deleted": True})
