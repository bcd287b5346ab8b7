"""Public API: self-service key requests (only when SPENDGATE_SELF_SERVICE=true).

Both routes answer 404 while self-service is off, before the body is even read: the
switch is checked by a router dependency, which FastAPI runs before body validation.
"""

from fastapi import APIRouter, Depends, Request

from spendgate.api.deps import RuntimeDep
from spendgate.api.identity import trusted_identity
from spendgate.api.schemas import SelfServiceKeyRequest, self_service_key_json
from spendgate.errors import NotFound
from spendgate.exact_json import ExactJSONResponse
from spendgate.keys.self_service import (
    check_self_service,
    issue_self_service_key,
    self_service_keys,
)


def require_self_service(runtime: RuntimeDep) -> None:
    """404, as for an unknown route, while self-service is off."""
    if not runtime.settings.self_service:
        raise NotFound("Not found.")


router = APIRouter(prefix="/public", tags=["public"], dependencies=[Depends(require_self_service)])


@router.post("/keys", status_code=201, response_class=ExactJSONResponse)
async def request_key(
    body: SelfServiceKeyRequest, request: Request, runtime: RuntimeDep
) -> ExactJSONResponse:
    """Issue a key for `username` (created if absent); the key is shown here once."""
    identity = trusted_identity(request, runtime.settings)
    key, record = await issue_self_service_key(runtime, body.username, body.note, identity)
    created = {
        "id": record.id,
        "user": record.user,
        "key": key,
        "display": record.display,
        "note": record.note,
        "created_at": record.created_at,
        "expires_at": record.expires_at,
    }
    return ExactJSONResponse(created, status_code=201)


@router.get("/keys/{username}", response_class=ExactJSONResponse)
async def list_keys(username: str, request: Request, runtime: RuntimeDep) -> ExactJSONResponse:
    """The user's active keys, in display form only."""
    check_self_service(runtime.settings, username, trusted_identity(request, runtime.settings))
    keys = await self_service_keys(runtime, username)
    return ExactJSONResponse([self_service_key_json(key) for key in keys])
