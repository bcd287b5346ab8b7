"""Admin pages: the overview, the reports with their charts, and the usage explorer."""

from datetime import UTC, datetime
from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse

from spendgate.api.admin_usage import UsageFilterDep, monitor_data, usage_csv_response
from spendgate.api.deps import RuntimeDep, require_admin
from spendgate.api.usage_query import usage_filter
from spendgate.errors import AdminAuthRequired, Forbidden
from spendgate.exact_json import ExactJSONResponse
from spendgate.ledger.reports import UsageFilter, usage_events_page, usage_report
from spendgate.web import charts
from spendgate.web.access import AdminViewerDep, ViewerDep, current_viewer
from spendgate.web.render import render_page
from spendgate.web.report_data import report_data

router = APIRouter(include_in_schema=False)
data_router = APIRouter(tags=["reports"])

PAGE_SIZE = 50
MAX_PAGE = 1_000_000
FILTER_NAMES = ("start", "end", "user", "key", "model", "source", "end_user", "upstream")


@router.get("/ui/", response_class=HTMLResponse)
async def overview(request: Request, viewer: ViewerDep, runtime: RuntimeDep) -> Response:
    """Spend today and this month, top users, recent requests, the usage writer's health."""
    if viewer.role != "admin":
        return RedirectResponse("/ui/me", status_code=303)
    monitor = await monitor_data(runtime)
    today = datetime.now(UTC).date()
    month = await usage_report(runtime.engine, UsageFilter(today.replace(day=1), today), None)
    writer = monitor["writer"]
    healthy = writer["last_error"] is None and writer["dropped"] == 0
    return await render_page(
        request,
        "overview.html",
        today=today,
        monitor=monitor,
        month=month["totals"],
        writer=writer,
        writer_ok=healthy,
    )


@router.get("/reports")
async def reports_redirect() -> RedirectResponse:
    """The reports live in the console."""
    return RedirectResponse("/ui/reports", status_code=303)


@router.get("/ui/reports", response_class=HTMLResponse)
async def reports(
    request: Request,
    viewer: AdminViewerDep,
    runtime: RuntimeDep,
    start: str | None = None,
    end: str | None = None,
) -> Response:
    """Charts of a UTC date range (default: the last 30 days), each with its table."""
    data = await report_data(runtime.engine, usage_filter(start, end))
    figures = {
        "cost-by-user": charts.cost_by_user(data["by_user"]),
        "daily-cost": charts.daily_cost(data["daily"], data["start"], data["end"]),
        "daily-by-user": charts.daily_by_user(data["daily_by_user"], data["start"], data["end"]),
        "by-model": charts.by_model(data["by_model"]),
    }
    query = urlencode({"start": data["start"], "end": data["end"]})
    return await render_page(request, "reports.html", data=data, figures=figures, query=query)


async def _require_report_reader(request: Request, runtime: RuntimeDep) -> None:
    """An admin token in the headers, or an admin's console session."""
    try:
        require_admin(request, runtime)
    except AdminAuthRequired:
        viewer = await current_viewer(request)
        if viewer is None:
            raise
        if viewer.role != "admin":
            raise Forbidden("The reports are for administrators.") from None


async def _report_json(
    request: Request, runtime: RuntimeDep, start: str | None, end: str | None
) -> ExactJSONResponse:
    await _require_report_reader(request, runtime)
    return ExactJSONResponse(await report_data(runtime.engine, usage_filter(start, end)))


@data_router.get("/reports/data", response_class=ExactJSONResponse)
async def reports_data(
    request: Request, runtime: RuntimeDep, start: str | None = None, end: str | None = None
) -> ExactJSONResponse:
    """The reports' numbers: cost by user, by day (with cumulative), by day and user, by model.

    Admin token or an admin's console session; UTC dates, inclusive, default the last 30 days.
    """
    return await _report_json(request, runtime, start, end)


@router.get("/ui/reports/data", response_class=ExactJSONResponse)
async def console_reports_data(
    request: Request, runtime: RuntimeDep, start: str | None = None, end: str | None = None
) -> ExactJSONResponse:
    """/reports/data under /ui/."""
    return await _report_json(request, runtime, start, end)


def _filter_query(request: Request, **extra: str | int) -> str:
    """The request's filters (as given, no page) with `extra`, as a query string."""
    pairs: list[tuple[str, str | int]] = [
        (name, value) for name, value in request.query_params.multi_items() if name in FILTER_NAMES
    ]
    pairs += list(extra.items())
    return urlencode(pairs)


@router.get("/ui/usage", response_class=HTMLResponse)
async def usage(
    request: Request,
    viewer: AdminViewerDep,
    runtime: RuntimeDep,
    flt: UsageFilterDep,
    page: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 1,
) -> Response:
    """Every request of the filter, newest first, 50 a page, with the CSV of exactly them."""
    rows = await usage_events_page(
        runtime.engine, flt, limit=PAGE_SIZE + 1, offset=(page - 1) * PAGE_SIZE
    )
    totals = (await usage_report(runtime.engine, flt, None))["totals"]
    users = [user.name for user in await runtime.store.list_users()]
    values = {name: request.query_params.get(name, "") for name in FILTER_NAMES}
    values["start"], values["end"] = flt.start.isoformat(), flt.end.isoformat()
    return await render_page(
        request,
        "usage.html",
        events=rows[:PAGE_SIZE],
        page=page,
        prev_query=_filter_query(request, page=page - 1) if page > 1 else None,
        next_query=_filter_query(request, page=page + 1) if len(rows) > PAGE_SIZE else None,
        csv_query=_filter_query(request),
        values=values,
        totals=totals,
        users=users,
    )


@router.get("/ui/usage.csv")
async def usage_csv(
    viewer: AdminViewerDep, runtime: RuntimeDep, flt: UsageFilterDep
) -> StreamingResponse:
    """The explorer's CSV export: byte for byte what /admin/usage.csv gives for the filters."""
    return usage_csv_response(runtime, flt)
