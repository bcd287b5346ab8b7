"""Console sessions: a signed, timestamped cookie naming who signed in, and its CSRF token.

The cookie holds no secret of the user's: the role, the id of the key a user signed in
with (re-checked on every request, so a revoked key signs its sessions out), a tag of the
admin token an admin signed in with (a new admin token signs old admin sessions out), and
the session's CSRF token. itsdangerous signs it with a timestamp; past `session_hours` it
is refused like a forged one.
"""

import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from itsdangerous import BadData, Signer, TimestampSigner, URLSafeTimedSerializer
from starlette.requests import HTTPConnection
from starlette.responses import Response

from spendgate.config import Settings

log = logging.getLogger("spendgate")

SESSION_COOKIE = "spendgate_session"
_SESSION_SALT = "spendgate.console.session"
_CSRF_SALT = "spendgate.console.csrf"
_ADMIN_TAG_LABEL = b"spendgate console admin tag"
# The admin token is only an HMAC key here: sessions signed with it are worthless elsewhere.
_SECRET_LABEL = b"spendgate console session secret v1"

Role = Literal["admin", "user"]


@dataclass(frozen=True, slots=True)
class Session:
    """What a session cookie says: the role, a user's key id, the admin tag, the CSRF token."""

    role: Role
    csrf: str
    key_id: int | None = None
    admin_tag: str | None = None


def session_secret(settings: Settings) -> bytes:
    """SPENDGATE_SESSION_SECRET, else derived from the admin token, else random (a warning)."""
    if settings.session_secret is not None:
        return settings.session_secret.get_secret_value().encode()
    if settings.admin_token is not None:
        token = settings.admin_token.get_secret_value().encode()
        return hmac.new(token, _SECRET_LABEL, hashlib.sha256).digest()
    log.warning(
        "console sessions are signed with a random secret: sign-ins end when this process "
        "stops and are not shared between instances (set SPENDGATE_SESSION_SECRET)"
    )
    return secrets.token_bytes(32)


class _ClockedSigner(TimestampSigner):
    """A timestamp signer reading an injected clock (tests sign sessions in the past)."""

    def __init__(self, *args: Any, clock: Callable[[], float] = time.time, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._clock = clock

    def get_timestamp(self) -> int:
        return int(self._clock())


class SessionCodec:
    """Signs and reads session cookies and anonymous CSRF cookies with one secret."""

    def __init__(
        self, secret: bytes, max_age_seconds: int, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.max_age = max_age_seconds
        self._secret = secret
        self._serializer = URLSafeTimedSerializer(
            secret, salt=_SESSION_SALT, signer=_ClockedSigner, signer_kwargs={"clock": clock}
        )
        self._csrf_signer = Signer(secret, salt=_CSRF_SALT)

    def dumps(self, session: Session) -> str:
        """The cookie value of `session`."""
        payload: dict[str, Any] = {"r": session.role, "c": session.csrf}
        if session.key_id is not None:
            payload["k"] = session.key_id
        if session.admin_tag is not None:
            payload["t"] = session.admin_tag
        return self._serializer.dumps(payload)

    def loads(self, value: str | None) -> Session | None:
        """The session in a cookie value; None when absent, forged, malformed or expired."""
        if not value:
            return None
        try:
            payload = self._serializer.loads(value, max_age=self.max_age)
        except BadData:
            return None
        if not isinstance(payload, dict):
            return None
        role, csrf = payload.get("r"), payload.get("c")
        key_id, tag = payload.get("k"), payload.get("t")
        if not isinstance(csrf, str) or not csrf:
            return None
        if role == "admin" and isinstance(tag, str):
            return Session("admin", csrf, admin_tag=tag)
        if role == "user" and isinstance(key_id, int) and not isinstance(key_id, bool):
            return Session("user", csrf, key_id=key_id)
        return None

    def admin_tag(self, admin_token: str) -> str:
        """A tag of the admin token (not the token): sessions of an older token do not match."""
        key = hmac.new(self._secret, _ADMIN_TAG_LABEL, hashlib.sha256).digest()
        return hmac.new(key, admin_token.encode(), hashlib.sha256).hexdigest()[:32]

    def new_csrf_cookie(self) -> str:
        """A fresh signed token for the double-submit cookie of anonymous forms."""
        return self._csrf_signer.sign(secrets.token_urlsafe(24)).decode()

    def csrf_cookie_valid(self, value: str) -> bool:
        """Whether `value` is a double-submit token this gateway signed."""
        return self._csrf_signer.validate(value)


def new_csrf_token() -> str:
    """A session's CSRF token."""
    return secrets.token_urlsafe(24)


def is_https(connection: HTTPConnection) -> bool:
    """Whether the browser reached us over https: directly, or as a proxy says it did.

    X-Forwarded-Proto is believed from anyone: it only ever makes the cookie stricter
    (Secure), and a client that lies about it only loses its own sign-in.
    """
    if connection.url.scheme == "https":
        return True
    forwarded = connection.headers.get("x-forwarded-proto", "")
    return forwarded.split(",")[0].strip().lower() == "https"


def set_cookie(
    response: Response, connection: HTTPConnection, name: str, value: str, max_age: int | None
) -> None:
    """Set a console cookie: HttpOnly, SameSite=Strict, Path=/, Secure over https."""
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path="/",
        httponly=True,
        samesite="strict",
        secure=is_https(connection),
    )


def clear_cookie(response: Response, connection: HTTPConnection, name: str) -> None:
    """Delete a console cookie (with the same attributes it was set with)."""
    response.delete_cookie(
        name, path="/", httponly=True, samesite="strict", secure=is_https(connection)
    )
