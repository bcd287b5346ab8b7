"""A user's own pages: their account (/ui/me) and self-service key requests.

/ui/me shows what `GET /me` answers (spend, budget, balance, limits with reset times;
`api/me.py` computes both), the user's keys in display form and their usage by day. Key
requests go through `keys/self_service.py`, as `POST /public/keys` does.
"""

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from spendgate.api.deps import RuntimeDep
from spendgate.api.identity import trusted_identity
from spendgate.api.me import account_json
from spendgate.api.public import require_self_service
from spendgate.api.usage_query import usage_filter
from spendgate.errors import Forbidden, GatewayError, NotFound
from spendgate.keys.self_service import issue_self_service_key, self_service_keys
from spendgate.ledger.reports import usage_report
from spendgate.runtime import Runtime
from spendgate.web import charts
from spendgate.web.access import CheckedFormDep, ViewerDep, current_viewer
from spendgate.web.forms import field
from spendgate.web.pages_keys import key_status
from spendgate.web.render import render_page

router = APIRouter(include_in_schema=False)
NO_IDENTITY = (
    "Keys are handed out here only to people signed in through the company sign-in, "
    "and this request did not come with a signed-in user."
)


@router.get("/ui/me", response_class=HTMLResponse)
async def my_account(request: Request, viewer: ViewerDep, runtime: RuntimeDep) -> Response:
    """The viewer's spend, balance, budget, limits, keys and usage by day (admins: a link)."""
    if viewer.user is None:
        return await render_page(request, "me.html", account=None)
    user = viewer.user
    account = await account_json(runtime, viewer.principal or user)
    usage = await usage_report(runtime.engine, usage_filter(None, None, user=user.name), "day")
    return await render_page(
        request,
        "me.html",
        account=account,
        keys=list(reversed(await runtime.store.list_keys(user.name))),
        status_of=key_status,
        now=runtime.limits.now(),
        usage=usage,
        figure=charts.my_daily(usage["groups"], usage["start"], usage["end"]),
    )


@router.get("/request-key")
async def request_key_redirect() -> RedirectResponse:
    """Self-service key requests live in the console."""
    return RedirectResponse("/ui/request-key", status_code=303)


async def _request_page(
    request: Request,
    runtime: Runtime,
    *,
    status: int = 200,
    error: str | None = None,
    username: str | None = None,
    note: str = "",
) -> Response:
    """The form; with trusted-only and no trusted identity, the 403 page saying why."""
    identity = trusted_identity(request, runtime.settings)
    trusted_only = runtime.settings.self_service_trusted_only
    if trusted_only and identity is None:
        raise Forbidden(NO_IDENTITY)
    if trusted_only or username is None:
        viewer = await current_viewer(request)
        username = identity or (viewer.user.name if viewer and viewer.user else "")
    return await render_page(
        request,
        "request_key.html",
        status=status,
        username=username,
        locked=trusted_only,
        note=note,
        error=error,
        new_key=None,
    )


# While self-service is off, both answer 404 before anything else (the form is not read).
SELF_SERVICE = [Depends(require_self_service)]


@router.get("/ui/request-key", response_class=HTMLResponse, dependencies=SELF_SERVICE)
async def request_key_page(request: Request, runtime: RuntimeDep) -> Response:
    """The key request form (404 while self-service is off)."""
    return await _request_page(request, runtime)


@router.post("/ui/request-key", response_class=HTMLResponse, dependencies=SELF_SERVICE)
async def request_key(request: Request, runtime: RuntimeDep, form: CheckedFormDep) -> Response:
    """Issue a key: 200 with the key shown this once, or the form with what was wrong."""
    identity = trusted_identity(request, runtime.settings)
    username = field(form, "username") or ""
    note = field(form, "note")
    try:
        key, record = await issue_self_service_key(runtime, username, note, identity)
    except NotFound:
        raise
    except GatewayError as error:  # a bad username, someone else's name, a disabled user
        return await _request_page(
            request, runtime, status=error.status, error=error.message, username=username,
            note=note or "",
        )  # fmt: skip
    return await render_page(
        request,
        "request_key.html",
        username=record.user,
        locked=True,
        new_key=key,
        new_record=record,
        active_keys=await self_service_keys(runtime, record.user),
        error=None,
        note="",
    )
