"""Rendering console pages and HTML error pages from the packaged Jinja templates."""

from http import HTTPStatus
from typing import Any

import jinja2
from starlette.requests import HTTPConnection, Request
from starlette.responses import HTMLResponse

from spendgate.limits.names import LIMIT_WINDOWS
from spendgate.periods import PERIODS
from spendgate.web.access import (
    CSRF_COOKIE,
    CSRF_FIELD,
    Viewer,
    anonymous_csrf,
    current_viewer,
    known_viewer,
)
from spendgate.web.formats import FILTERS
from spendgate.web.session import set_cookie
from spendgate.web.state import console_state

# Own scripts and styles only (Plotly sets inline styles on the elements it draws).
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
PAGE_HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
}
ADMIN_NAV = (
    ("/ui/", "Overview"),
    ("/ui/reports", "Reports"),
    ("/ui/usage", "Usage"),
    ("/ui/users", "Users"),
    ("/ui/keys", "Keys"),
    ("/ui/tracking-tokens", "Tracking tokens"),
)
USER_NAV = (("/ui/me", "My account"),)


def template_environment() -> jinja2.Environment:
    """The console's templates (autoescaped; an undefined name is an error, not blank)."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("spendgate.web", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(FILTERS)
    env.globals.update(limit_names=tuple(LIMIT_WINDOWS), periods=PERIODS)
    return env


def _nav(viewer: Viewer | None, self_service: bool) -> list[tuple[str, str]]:
    if viewer is None:
        items: list[tuple[str, str]] = []
    else:
        items = list(ADMIN_NAV if viewer.role == "admin" else USER_NAV)
    if self_service:
        items.append(("/ui/request-key", "Request a key"))
    return items


def _page(
    connection: HTTPConnection,
    viewer: Viewer | None,
    name: str,
    status: int,
    context: dict[str, Any],
    headers: dict[str, str] | None = None,
) -> HTMLResponse:
    state = console_state(connection)
    csrf, new_cookie = None, None
    if viewer is not None and viewer.session is not None:
        csrf = viewer.session.csrf
    elif isinstance(connection, Request):
        csrf = anonymous_csrf(connection)
        if csrf is None:
            csrf = new_cookie = state.codec.new_csrf_cookie()
    html = state.templates.get_template(name).render(
        viewer=viewer,
        nav=_nav(viewer, state.settings.self_service),
        self_service=state.settings.self_service,
        path=connection.url.path,
        csrf_field=CSRF_FIELD,
        csrf_token=csrf or "",
        asset=state.assets.url,
        **context,
    )
    response = HTMLResponse(html, status_code=status, headers={**PAGE_HEADERS, **(headers or {})})
    if new_cookie is not None:
        set_cookie(response, connection, CSRF_COOKIE, new_cookie, max_age=None)
    return response


async def render_page(
    request: Request, name: str, *, status: int = 200, **context: Any
) -> HTMLResponse:
    """Template `name` with the viewer, navigation, CSRF token and asset URLs."""
    return _page(request, await current_viewer(request), name, status, context)


def error_page(
    connection: HTTPConnection, status: int, message: str, headers: dict[str, str] | None = None
) -> HTMLResponse:
    """The HTML error page: `<h1>` the status phrase (`Forbidden`), `.error` the message."""
    try:
        title = HTTPStatus(status).phrase
    except ValueError:
        title = "Error"
    context = {"title": title, "status": status, "message": message}
    return _page(connection, known_viewer(connection), "error.html", status, context, headers)


def is_console_path(path: str) -> bool:
    """Whether `path` is a console page (errors there are HTML pages, not JSON)."""
    return path == "/ui" or path.startswith("/ui/")


def console_error_page(
    request: Request, status: int, message: str, headers: list[tuple[bytes, bytes]]
) -> HTMLResponse | None:
    """The HTML error page for an error under /ui/, else None (the API answers JSON)."""
    if not is_console_path(request.url.path):
        return None
    return error_page(request, status, message, {k.decode(): v.decode() for k, v in headers})
