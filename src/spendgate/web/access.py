"""Who is looking at a console page, what they may see, and CSRF checks on their forms.

A viewer comes from the session cookie (an admin, or a user signed in with a key that is
re-checked on every request) or, without a session, from the trusted user header (SSO:
an existing, enabled user). Forms are checked against the session's CSRF token; without
a session (sign-in, key requests, SSO viewers), against the signed double-submit cookie.
"""

from dataclasses import dataclass
from typing import Annotated
from urllib.parse import quote

from fastapi import Depends, Request
from starlette.datastructures import FormData
from starlette.requests import HTTPConnection

from spendgate.api.deps import get_runtime
from spendgate.api.identity import trusted_identity
from spendgate.errors import Forbidden, InvalidAPIKey
from spendgate.keys.material import same_secret
from spendgate.keys.principals import Principal, check_usable
from spendgate.ledger.records import UserRecord
from spendgate.web.session import SESSION_COOKIE, Role, Session
from spendgate.web.state import console_state

CSRF_COOKIE = "spendgate_csrf"
CSRF_FIELD = "csrf_token"
_VIEWER = "console_viewer"  # request.state attribute: the viewer, looked up once


@dataclass(frozen=True, slots=True)
class Viewer:
    """A signed-in viewer: an admin, or a user (with the key signed in with, if any)."""

    role: Role
    user: UserRecord | None = None
    principal: Principal | None = None  # a user signed in with a key
    session: Session | None = None  # None: signed in through the trusted header

    @property
    def name(self) -> str:
        """How the page header names the viewer."""
        return self.user.name if self.user is not None else "admin"


class SignInRequired(Exception):
    """Not signed in: answered with 303 to the sign-in page (see `console.install`)."""

    def __init__(self, next_path: str) -> None:
        super().__init__(next_path)
        self.next_path = next_path


def csrf_refused() -> Forbidden:
    """The 403 of a form without a valid CSRF token."""
    return Forbidden("CSRF token missing or wrong: reload the page and send the form again.")


async def current_viewer(request: Request) -> Viewer | None:
    """The signed-in viewer, or None (looked up once per request)."""
    if hasattr(request.state, _VIEWER):
        cached: Viewer | None = getattr(request.state, _VIEWER)
        return cached
    viewer = await _session_viewer(request) or await _trusted_viewer(request)
    setattr(request.state, _VIEWER, viewer)
    return viewer


def known_viewer(connection: HTTPConnection) -> Viewer | None:
    """The viewer if this request already looked it up, else None (no database read)."""
    viewer: Viewer | None = getattr(connection.state, _VIEWER, None)
    return viewer


async def _session_viewer(request: Request) -> Viewer | None:
    state = console_state(request)
    session = state.codec.loads(request.cookies.get(SESSION_COOKIE))
    if session is None:
        return None
    if session.role == "admin":
        token = state.settings.admin_token
        if token is None or session.admin_tag is None:
            return None
        expected = state.codec.admin_tag(token.get_secret_value())
        if not same_secret(session.admin_tag, expected):
            return None  # signed in with an admin token that is no longer the one
        return Viewer("admin", session=session)
    store = get_runtime(request).store
    key = await store.get_key(session.key_id) if session.key_id is not None else None
    user = await store.get_user(key.user) if key is not None else None
    if key is None or user is None:
        return None
    principal = Principal(key=key, user=user)
    try:
        check_usable(principal)  # revoked, expired or disabled since: signed out
    except InvalidAPIKey:
        return None
    return Viewer("user", user=user, principal=principal, session=session)


async def _trusted_viewer(request: Request) -> Viewer | None:
    identity = trusted_identity(request, console_state(request).settings)
    if identity is None:
        return None
    user = await get_runtime(request).store.get_user(identity)
    if user is None or user.disabled:
        return None
    return Viewer("user", user=user)


def here(request: Request) -> str:
    """The request's path and query, to come back to after signing in."""
    query = request.url.query
    return request.url.path + (f"?{query}" if query else "")


def login_url(next_path: str) -> str:
    """The sign-in page, returning to `next_path`."""
    return "/ui/login?next=" + quote(next_path, safe="/")


async def require_viewer(request: Request) -> Viewer:
    """The viewer, or `SignInRequired`."""
    viewer = await current_viewer(request)
    if viewer is None:
        raise SignInRequired(here(request))
    return viewer


async def require_admin_viewer(request: Request) -> Viewer:
    """The admin viewer; `SignInRequired` when nobody is signed in, 403 for a user."""
    viewer = await require_viewer(request)
    if viewer.role != "admin":
        raise Forbidden("This page is for administrators.")
    return viewer


ViewerDep = Annotated[Viewer, Depends(require_viewer)]
AdminViewerDep = Annotated[Viewer, Depends(require_admin_viewer)]


def anonymous_csrf(request: Request) -> str | None:
    """The valid double-submit token in the request's cookie, or None."""
    cookie = request.cookies.get(CSRF_COOKIE)
    if cookie and console_state(request).codec.csrf_cookie_valid(cookie):
        return cookie
    return None


async def checked_form(request: Request) -> FormData:
    """The posted form, once its CSRF token matches the session's (or the cookie's)."""
    form = await request.form()
    given = form.get(CSRF_FIELD)
    viewer = await current_viewer(request)
    expected = viewer.session.csrf if viewer and viewer.session else anonymous_csrf(request)
    if not isinstance(given, str) or not given or expected is None:
        raise csrf_refused()
    if not same_secret(given, expected):
        raise csrf_refused()
    return form


CheckedFormDep = Annotated[FormData, Depends(checked_form)]
