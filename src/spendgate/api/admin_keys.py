"""Admin API: gateway keys."""

from fastapi import APIRouter

from spendgate.api.deps import AdminDep, RuntimeDep
from spendgate.api.schemas import KeyCreate, KeyPatch, key_json
from spendgate.errors import NotFound
from spendgate.exact_json import ExactJSONResponse
from spendgate.keys.material import display_key, hash_key, looks_like_key, new_key
from spendgate.ledger.records import KeyRecord
from spendgate.runtime import Runtime

router = APIRouter(prefix="/admin/keys", tags=["admin: keys"], dependencies=[AdminDep])

MAX_KEY_ID = 2**63 - 1  # the largest id a BIGINT holds on every backend


def parse_key_id(text: str) -> int | None:
    """A key id written in ASCII digits and small enough to be one, else None."""
    if text.isascii() and text.isdigit() and int(text) <= MAX_KEY_ID:
        return int(text)
    return None


async def find_key(runtime: Runtime, id_or_key: str) -> KeyRecord:
    """A key by its numeric id or by the full key."""
    key_id = parse_key_id(id_or_key)
    if looks_like_key(id_or_key):
        found = await runtime.store.find_key_by_hash(hash_key(id_or_key))
        record = found[0] if found else None
    elif key_id is not None:
        record = await runtime.store.get_key(key_id)
    else:
        record = None
    if record is None:
        raise NotFound("No such key.")
    return record


async def issue_key(runtime: Runtime, body: KeyCreate) -> tuple[str, KeyRecord]:
    """Create the key `body` describes (and its user if absent): the key and its record."""
    key = new_key()
    record = await runtime.store.create_key(
        str(body.user or body.label),
        hash_key(key),
        display_key(key),
        note=body.note,
        expires_at=body.expires_at,
        models=body.models,
        budget_usd=body.budget_usd,
        budget_period=body.budget_period,
        limits=body.limits.as_dict() if body.limits else None,
    )
    await runtime.principals.changed()
    return key, record


async def revoke(runtime: Runtime, id_or_key: str) -> KeyRecord:
    """Revoke a key by id or full key; new requests with it are refused at once."""
    record = await find_key(runtime, id_or_key)
    revoked = await runtime.store.revoke_key(record.id)
    await runtime.principals.changed()
    return revoked or record


async def patch_key(runtime: Runtime, key_id: int, body: KeyPatch) -> KeyRecord:
    """Apply the fields set in `body` to key `key_id`; `NotFound` if there is none."""
    if not 0 <= key_id <= MAX_KEY_ID:
        raise NotFound("No such key.")
    fields = body.model_dump(exclude_unset=True)
    if "limits" in fields:
        fields["limits"] = body.limits.as_dict() if body.limits else None
    record = await runtime.store.update_key(key_id, **fields)
    if record is None:
        raise NotFound("No such key.")
    await runtime.principals.changed()
    return record


@router.post("", status_code=201, response_class=ExactJSONResponse)
async def create_key(body: KeyCreate, runtime: RuntimeDep) -> ExactJSONResponse:
    """Create a key (and its user if absent); the key is shown here once."""
    key, record = await issue_key(runtime, body)
    return ExactJSONResponse({**key_json(record), "key": key}, status_code=201)


@router.get("", response_class=ExactJSONResponse)
async def list_keys(runtime: RuntimeDep, user: str | None = None) -> ExactJSONResponse:
    """Keys, optionally of one user, in display form only."""
    return ExactJSONResponse([key_json(key) for key in await runtime.store.list_keys(user)])


@router.post("/{id_or_key}/revoke", response_class=ExactJSONResponse)
async def revoke_key(id_or_key: str, runtime: RuntimeDep) -> ExactJSONResponse:
    """Revoke a key; new requests with it are refused at once."""
    return ExactJSONResponse(key_json(await revoke(runtime, id_or_key)))


@router.patch("/{key_id}", response_class=ExactJSONResponse)
async def update_key(key_id: int, body: KeyPatch, runtime: RuntimeDep) -> ExactJSONResponse:
    """Change a key's note, budget, models, expiry or limits."""
    return ExactJSONResponse(key_json(await patch_key(runtime, key_id, body)))
