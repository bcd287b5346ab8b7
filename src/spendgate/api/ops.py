"""Operations: health, ping, Prometheus metrics."""

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from spendgate.api.deps import RuntimeDep, require_admin
from spendgate.api.openapi import errors

router = APIRouter(tags=["operations"])


_DOWN = {
    "description": "A part is down: the same body, naming it.",
    "content": {"application/json": {"schema": {}}},
}


@router.get("/health", responses={**errors(), 503: _DOWN})
async def health(runtime: RuntimeDep) -> JSONResponse:
    """200 when the database (and Redis, if used) answer; 503 naming the part that is down."""
    try:
        await runtime.store.ping()
        database = "ok"
    except Exception:  # any failure to reach the database is "down", whatever the driver
        database = "down"
    redis = "off"
    if runtime.redis is not None:
        try:
            await runtime.redis.ping()
            redis = "ok"
        except Exception:  # refused, timed out, pool exhausted: all "down"
            redis = "down"
    writer = runtime.writer
    healthy = database == "ok" and redis != "down"
    body: dict[str, object] = {
        "status": "ok" if healthy else "degraded",
        "database": database,
        "redis": redis,
        "write_queue": writer.queue_depth,
        "writer_last_error": writer.last_error,
        "journal": writer.journal_pending,
    }
    if runtime.guard is not None:
        body["limits_backlog"] = runtime.guard.backlog
    body["upstreams"] = {
        name: "ok" if up else "cooling_down" for name, up in runtime.router.states().items()
    }
    return JSONResponse(body, status_code=200 if healthy else 503)


@router.get("/ping", response_class=PlainTextResponse, responses=errors())
async def ping() -> str:
    """Liveness: answers without touching anything."""
    return "pong"


_EXPOSITION = {"content": {"text/plain": {"schema": {"type": "string"}}}}


@router.get("/metrics", response_class=Response, responses={**errors(401), 200: _EXPOSITION})
async def metrics(request: Request, runtime: RuntimeDep) -> Response:
    """Prometheus text exposition."""
    if not runtime.settings.metrics_public:
        require_admin(request, runtime)
    return Response(runtime.metrics.render(), media_type=CONTENT_TYPE_LATEST)
