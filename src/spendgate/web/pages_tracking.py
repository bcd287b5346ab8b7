"""Admin pages: tracking tokens for client-push ingestion, with a snippet to copy."""

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from spendgate.api.admin_tracking import issue_tracking_token, parse_token_id
from spendgate.api.deps import RuntimeDep
from spendgate.api.schemas import TrackingTokenCreate
from spendgate.errors import Conflict, InvalidRequest, NotFound
from spendgate.runtime import Runtime
from spendgate.web.access import AdminViewerDep, CheckedFormDep
from spendgate.web.forms import field, parse_model
from spendgate.web.render import render_page

router = APIRouter(include_in_schema=False)

SNIPPET = """\
# Push one request's usage to spendgate (the ingest key is SPENDGATE_INGEST_KEY).
curl -sS -X POST {base}/ingest \\
  -H "X-Ingest-Key: $SPENDGATE_INGEST_KEY" \\
  -H "Content-Type: application/json" \\
  -d '{{"tracking_token": "{token}", "model": "gpt-4o-mini",
       "prompt_tokens": 120, "completion_tokens": 40, "request_id": "req-0001"}}'

# Python, after each call to the provider (response = client.chat.completions.create(...)):
import os, httpx

httpx.post(
    "{base}/ingest",
    headers={{"X-Ingest-Key": os.environ["SPENDGATE_INGEST_KEY"]}},
    json={{
        "tracking_token": "{token}",
        "model": response.model,
        "prompt_tokens": response.usage.prompt_tokens,
        "completion_tokens": response.usage.completion_tokens,
        "request_id": response.id,  # sent twice, counted once
    }},
).raise_for_status()
"""


async def _tokens_page(request: Request, runtime: Runtime, **context: Any) -> Response:
    context.setdefault("error", None)
    context.setdefault("values", {})
    context.setdefault("new_token", None)
    tokens = await runtime.tracking.list()
    return await render_page(request, "tracking.html", tokens=tokens, **context)


@router.get("/ui/tracking-tokens", response_class=HTMLResponse)
async def tracking_tokens(
    request: Request, viewer: AdminViewerDep, runtime: RuntimeDep
) -> Response:
    """Every tracking token (display form), its state, toggle and delete; the create form."""
    return await _tokens_page(request, runtime)


@router.post("/ui/tracking-tokens", response_class=HTMLResponse)
async def create_tracking_token(
    request: Request, viewer: AdminViewerDep, runtime: RuntimeDep, form: CheckedFormDep
) -> Response:
    """Create a token: 200 with the token shown this once and a client snippet to copy."""
    try:
        body = parse_model(
            TrackingTokenCreate, {"name": field(form, "name"), "user": field(form, "user")}
        )
        token, record = await issue_tracking_token(runtime, body)
    except (InvalidRequest, Conflict, NotFound) as error:
        return await _tokens_page(
            request, runtime, status=error.status, error=error.message, values=dict(form)
        )
    base = str(request.base_url).rstrip("/")
    snippet = SNIPPET.format(base=base, token=token)
    return await _tokens_page(request, runtime, new_token=token, new_record=record, snippet=snippet)


@router.post("/ui/tracking-tokens/{token_id}/toggle", response_class=HTMLResponse)
async def toggle_tracking_token(
    token_id: str, viewer: AdminViewerDep, runtime: RuntimeDep, form: CheckedFormDep
) -> Response:
    """Pause or resume a token (the form says which: a double click changes nothing more)."""
    active = field(form, "active")
    if active not in ("true", "false"):
        raise InvalidRequest("'active' must be true or false.", param="active")
    if await runtime.tracking.set_active(parse_token_id(token_id), active == "true") is None:
        raise NotFound("No such tracking token.")
    return RedirectResponse("/ui/tracking-tokens", status_code=303)


@router.post("/ui/tracking-tokens/{token_id}/delete", response_class=HTMLResponse)
async def delete_tracking_token(
    token_id: str, viewer: AdminViewerDep, runtime: RuntimeDep, form: CheckedFormDep
) -> Response:
    """Delete a token for good."""
    if not await runtime.tracking.delete(parse_token_id(token_id)):
        raise NotFound("No such tracking token.")
    return RedirectResponse("/ui/tracking-tokens", status_code=303)
