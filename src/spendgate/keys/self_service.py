"""Self-service keys: people request their own gateway key (SPENDGATE_SELF_SERVICE=true).

Shared by the public API (/public/keys) and the console's request-key page. Anyone who can
reach the gateway may ask, so every request is checked here: self-service must be on, the
username well formed and, with SPENDGATE_SELF_SERVICE_TRUSTED_ONLY, the caller's trusted
identity (`api/identity.py`) must be that username. A disabled user gets no new key.

Without a trusted identity nobody is known to be who they say, so a key is only issued for a
new username: otherwise anyone could mint a key charged to an existing user's budget. A user
whose trusted identity is their name may ask for more keys.
"""

import re
from datetime import UTC, datetime

from spendgate.config import Settings
from spendgate.errors import Forbidden, InvalidRequest, NotFound
from spendgate.keys.material import display_key, hash_key, new_key
from spendgate.ledger.records import KeyRecord
from spendgate.runtime import Runtime

USERNAME = re.compile(r"[A-Za-z0-9._@-]{1,64}")
MAX_NOTE_LEN = 500


def check_username(username: str) -> None:
    """`InvalidRequest` unless `username` is 1 to 64 of letters, digits, '.', '_', '@', '-'."""
    if not USERNAME.fullmatch(username):
        raise InvalidRequest(
            "'username' must be 1 to 64 characters: letters, digits, '.', '_', '@' or '-'.",
            param="username",
        )


def check_self_service(settings: Settings, username: str, identity: str | None) -> None:
    """Refuse a self-service request: off (404), bad username (400), not its identity (403)."""
    if not settings.self_service:
        raise NotFound("Not found.")  # as if the route did not exist
    check_username(username)
    if settings.self_service_trusted_only and identity != username:
        raise Forbidden(
            "Self-service keys are only for the signed-in user, in their own name."
            if identity is None
            else f"Signed in as {identity!r}: you may only request keys for yourself."
        )


async def issue_self_service_key(
    runtime: Runtime, username: str, note: str | None, identity: str | None
) -> tuple[str, KeyRecord]:
    """A new key for `username`, created if absent: the key (shown once) and its record.

    `identity` is the caller's trusted identity (`trusted_identity()`), None without one.
    """
    check_self_service(runtime.settings, username, identity)
    note = (note.strip() or None) if note is not None else None
    if note is not None and len(note) > MAX_NOTE_LEN:
        raise InvalidRequest(f"'note' is longer than {MAX_NOTE_LEN} characters.", param="note")
    user = await runtime.store.get_user(username)
    if user is not None and user.disabled:
        raise Forbidden(f"The user {username!r} is disabled.")
    if user is not None and identity != username:
        raise Forbidden(
            f"The user {username!r} exists: ask an administrator for another key, or sign in "
            "through single sign-on to request one."
        )
    key = new_key()
    record = await runtime.store.create_key(username, hash_key(key), display_key(key), note=note)
    await runtime.principals.changed()
    return key, record


async def self_service_keys(runtime: Runtime, username: str) -> list[KeyRecord]:
    """The user's active keys (neither revoked nor expired), oldest first; [] for no such user.

    Only the self-service switch and the username are checked here: the caller decides who
    may ask (`check_self_service` with the caller's identity).
    """
    if not runtime.settings.self_service:
        raise NotFound("Not found.")
    check_username(username)
    now = datetime.now(UTC)
    return [
        key
        for key in await runtime.store.list_keys(username)
        if key.revoked_at is None and (key.expires_at is None or key.expires_at > now)
    ]
