"""The console's routes, installed on the API app.

    /ui/login, /ui/logout              pages_auth      sign in with the admin token or a key
    /ui/, /ui/reports, /ui/usage       pages_admin     overview, charts, usage explorer + CSV
    /reports/data (+ /ui/reports/data) pages_admin     the reports' numbers as exact JSON
    /ui/users…                         pages_users     users, budgets, limits, credits
    /ui/keys…                          pages_keys      keys: create (shown once), edit, revoke
    /ui/tracking-tokens…               pages_tracking  tokens for client-push ingestion
    /ui/me, /ui/request-key            pages_self      a user's own account, self-service keys
    /ui/static/{name}                  here            own CSS/JS/icon and plotly.min.js

Errors under /ui/ are HTML pages (`api/routes.py` asks `render.console_error_page`).
"""

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import RedirectResponse, Response

from spendgate.runtime import Runtime
from spendgate.web import (
    pages_admin,
    pages_auth,
    pages_keys,
    pages_self,
    pages_tracking,
    pages_users,
)
from spendgate.web.access import SignInRequired, login_url
from spendgate.web.assets import Assets
from spendgate.web.render import template_environment
from spendgate.web.session import SESSION_COOKIE, SessionCodec, clear_cookie, session_secret
from spendgate.web.state import ConsoleState, console_state

static_router = APIRouter(include_in_schema=False)


@static_router.get("/ui/static/{name}")
async def static_file(name: str, request: Request) -> Response:
    """A console asset, cached for a year (its links carry a version)."""
    return await console_state(request).assets.get(name).response(request)


async def _sign_in_first(request: Request, exc: Exception) -> Response:
    """303 to the sign-in page, coming back here after; a stale session cookie is dropped."""
    assert isinstance(exc, SignInRequired)
    response = RedirectResponse(login_url(exc.next_path), status_code=303)
    if SESSION_COOKIE in request.cookies:
        clear_cookie(response, request, SESSION_COOKIE)
    return response


def install(api: FastAPI) -> None:
    """Add the console's routes (/ui/…, /reports, /request-key) to `api`."""
    runtime: Runtime = api.state.runtime
    settings = runtime.settings
    api.state.console = ConsoleState(
        settings=settings,
        codec=SessionCodec(session_secret(settings), max(1, round(settings.session_hours * 3600))),
        templates=template_environment(),
        assets=Assets(),
    )
    api.add_exception_handler(SignInRequired, _sign_in_first)
    api.include_router(pages_admin.data_router)
    for module in (pages_auth, pages_admin, pages_users, pages_keys, pages_tracking, pages_self):
        api.include_router(module.router)
    api.include_router(static_router)
