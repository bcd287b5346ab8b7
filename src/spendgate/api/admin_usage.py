"""Admin API: usage reports, CSV export, monitor and retention."""

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from fastapi.responses import StreamingResponse

from spendgate.alerts import delivery_json
from spendgate.api.admin_keys import find_key
from spendgate.api.deps import AdminDep, RuntimeDep
from spendgate.api.usage_query import check_group_by, parse_day, usage_filter
from spendgate.errors import InvalidRequest
from spendgate.exact_json import ExactJSONResponse
from spendgate.ledger.reports import (
    UsageFilter,
    iter_usage_csv,
    key_totals,
    monitor,
    purge_before,
    usage_report,
)
from spendgate.runtime import Runtime

router = APIRouter(prefix="/admin", tags=["admin: usage"], dependencies=[AdminDep])


async def usage_params(
    runtime: RuntimeDep,
    start: str | None = None,
    end: str | None = None,
    user: str | None = None,
    key: str | None = None,
    model: str | None = None,
    source: str | None = None,
    end_user: str | None = None,
    upstream: str | None = None,
) -> UsageFilter:
    """The usage filter from query parameters (dates UTC, inclusive; key by id or full key)."""
    key_id = (await find_key(runtime, key)).id if key else None
    return usage_filter(
        start, end, user=user, key_id=key_id, model=model, source=source,
        end_user=end_user, upstream=upstream,
    )  # fmt: skip


UsageFilterDep = Annotated[UsageFilter, Depends(usage_params)]


@router.get("/usage", response_class=ExactJSONResponse)
async def usage(
    runtime: RuntimeDep, flt: UsageFilterDep, group_by: str | None = None
) -> ExactJSONResponse:
    """Totals and groups over a UTC date range (default: the last 30 days)."""
    grouping = check_group_by(group_by)
    return ExactJSONResponse(await usage_report(runtime.engine, flt, grouping))


def usage_csv_response(runtime: Runtime, flt: UsageFilter) -> StreamingResponse:
    """The CSV download of `flt`'s events (the admin API's and the console's)."""
    filename = f"spendgate-usage-{flt.start}-{flt.end}.csv"
    return StreamingResponse(
        iter_usage_csv(runtime.engine, flt),
        media_type="text/csv; charset=utf-8",
        headers={"content-disposition": f'attachment; filename="{filename}"'},
    )


_CSV = {"content": {"text/csv": {"schema": {"type": "string"}}}}


@router.get("/usage.csv", response_class=StreamingResponse, responses={200: _CSV})
async def usage_csv(runtime: RuntimeDep, flt: UsageFilterDep) -> StreamingResponse:
    """One CSV row per request, header first, streamed."""
    return usage_csv_response(runtime, flt)


@router.get("/usage/{id_or_key}", response_class=ExactJSONResponse)
async def usage_of_key(id_or_key: str, runtime: RuntimeDep) -> ExactJSONResponse:
    """All-time totals of one key."""
    record = await find_key(runtime, id_or_key)
    totals = await key_totals(runtime.engine, record.id)
    return ExactJSONResponse({"key": record.display, "user": record.user, "totals": totals})


@router.delete("/usage", response_class=ExactJSONResponse)
async def delete_usage(runtime: RuntimeDep, before: str | None = None) -> ExactJSONResponse:
    """Purge events older than `before`; daily rollups stay."""
    day = parse_day(before, "before")
    if day is None:
        raise InvalidRequest("'before' (YYYY-MM-DD) is required.", param="before")
    await runtime.writer.flush()
    return ExactJSONResponse({"deleted": await purge_before(runtime.engine, day)})


async def monitor_data(runtime: Runtime) -> dict[str, Any]:
    """Totals today, active users, top users, recent requests and the writer's health."""
    data = await monitor(runtime.engine, datetime.now(UTC).date())
    writer = runtime.writer
    data["writer"] = {
        "queue_depth": writer.queue_depth,
        "written": writer.written,
        "dropped": writer.dropped,
        "retries": writer.retries,
        "last_error": writer.last_error,
    }
    data["alerts"] = [delivery_json(alert) for alert in await runtime.alerts.alerts.recent(50)]
    return data


@router.get("/monitor", response_class=ExactJSONResponse)
async def monitor_view(runtime: RuntimeDep) -> ExactJSONResponse:
    """Totals today, active users, top users, recent requests, writer health."""
    return ExactJSONResponse(await monitor_data(runtime))


@router.get("/alerts", response_class=ExactJSONResponse)
async def alerts_view(runtime: RuntimeDep) -> ExactJSONResponse:
    """The latest 50 budget and balance alerts, newest first, with their delivery state."""
    alerts = await runtime.alerts.alerts.recent(50)
    return ExactJSONResponse({"alerts": [delivery_json(alert) for alert in alerts]})
