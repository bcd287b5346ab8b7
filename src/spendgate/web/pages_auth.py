"""Signing in and out of the console.

An admin signs in with the admin token (compared in constant time), a user with their own
gateway key (checked like a request at /v1: unknown, revoked, expired keys and disabled
users are refused). What was typed is never logged nor put back into the page.
"""

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from spendgate.api.deps import RuntimeDep
from spendgate.errors import InvalidAPIKey
from spendgate.keys.material import same_secret
from spendgate.web.access import CheckedFormDep, checked_form, current_viewer
from spendgate.web.forms import field, safe_next
from spendgate.web.render import render_page
from spendgate.web.session import SESSION_COOKIE, Session, clear_cookie, new_csrf_token, set_cookie
from spendgate.web.state import console_state

router = APIRouter(include_in_schema=False)

WRONG_CREDENTIALS = "That did not work: check the token or key and try again."


@router.get("/ui/login", response_class=HTMLResponse)
async def login_page(request: Request, next: str | None = None) -> Response:
    """The sign-in forms: admin token, or a user's own gateway key."""
    return await render_page(request, "login.html", next=safe_next(next, ""), error=None)


@router.post("/ui/login", response_class=HTMLResponse)
async def login(request: Request, runtime: RuntimeDep, form: CheckedFormDep) -> Response:
    """Start a session and go where the sign-in was asked from (303), or 401 with the form."""
    codec = console_state(request).codec
    token, key = field(form, "token"), field(form, "key")
    admin_token = runtime.settings.admin_token
    session: Session | None = None
    if token is not None:
        if admin_token is not None and same_secret(token, admin_token.get_secret_value()):
            tag = codec.admin_tag(admin_token.get_secret_value())
            session = Session("admin", new_csrf_token(), admin_tag=tag)
    elif key is not None:
        try:
            principal = await runtime.principals.authenticate(key)
        except InvalidAPIKey:
            principal = None
        if principal is not None:
            session = Session("user", new_csrf_token(), key_id=principal.key.id)
    next_path = safe_next(form.get("next"), "")
    if session is None:
        runtime.auth_throttle.failed(request.scope)
        return await render_page(
            request, "login.html", status=401, next=next_path, error=WRONG_CREDENTIALS
        )
    home = "/ui/" if session.role == "admin" else "/ui/me"
    response = RedirectResponse(next_path or home, status_code=303)
    set_cookie(response, request, SESSION_COOKIE, codec.dumps(session), max_age=codec.max_age)
    return response


@router.post("/ui/logout")
async def logout(request: Request) -> Response:
    """End the session (its form's CSRF token is checked) and go to the sign-in page."""
    viewer = await current_viewer(request)
    if viewer is not None and viewer.session is not None:
        await checked_form(request)  # only a session's own page may end it
    response = RedirectResponse("/ui/login", status_code=303)
    clear_cookie(response, request, SESSION_COOKIE)
    return response
