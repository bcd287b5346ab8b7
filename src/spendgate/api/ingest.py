"""Client-push ingestion: usage of apps that call a provider directly, pushed by the app.

`POST /ingest` (header `X-Ingest-Key`) takes one event or `{"events": [...]}`; each event
names a tracking token, which says whose usage it is. A batch is all or nothing: every event
is validated, every token checked and the token's rate limit taken before anything is
written. The events are written at once, in one transaction (not through the writer's
queue), because the answer must say how many were new: an event's ledger request id is
derived from its token and the client's request id, so a repeat (in the same batch, a later
batch, or on another instance) is found in the ledger and counted as a duplicate.
"""

import hashlib
import secrets
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import orjson
from fastapi import APIRouter, Request
from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError

from spendgate.api.deps import RuntimeDep
from spendgate.api.schemas import IngestEvent
from spendgate.errors import (
    Forbidden,
    InvalidAPIKey,
    InvalidRequest,
    NotFound,
    RateLimitExceeded,
    RequestTooLarge,
)
from spendgate.exact_json import ExactJSONResponse
from spendgate.keys.material import hash_key, same_secret
from spendgate.ledger.events import UsageEvent
from spendgate.ledger.tracking import TrackingTokenRecord
from spendgate.ledger.writer import Statements, write_events
from spendgate.limits.backend import Grant
from spendgate.limits.gcra import Rate, check
from spendgate.limits.headers import retry_after_seconds
from spendgate.limits.policy import user_scope
from spendgate.metering.usage import Usage
from spendgate.money import usd_to_pico
from spendgate.runtime import Runtime

MAX_EVENTS = 1000  # per request
MAX_BODY_BYTES = 4 * 1024 * 1024
MAX_FUTURE = timedelta(minutes=5)  # clock skew allowed to a client's timestamp
MAX_AGE = timedelta(days=400)  # how far back an event may be dated
_REQUEST_ID_LEN = 64  # usage_events.request_id
_WRITE_ATTEMPTS = 3

router = APIRouter(tags=["ingest"])

_EVENT_SCHEMA = IngestEvent.model_json_schema()
_BODY_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "oneOf": [
                        _EVENT_SCHEMA,
                        {
                            "type": "object",
                            "properties": {
                                "events": {
                                    "type": "array",
                                    "items": _EVENT_SCHEMA,
                                    "minItems": 1,
                                    "maxItems": MAX_EVENTS,
                                }
                            },
                            "required": ["events"],
                            "additionalProperties": False,
                        },
                    ]
                }
            }
        },
    }
}


class IngestLimiter:
    """Events per minute per tracking token (GCRA), in this process."""

    def __init__(self, rate: Rate, clock: Callable[[], int] = time.time_ns) -> None:
        self._rate = rate
        self._clock = clock
        self._tat: dict[int, int] = {}

    def take(self, counts: dict[int, int]) -> int:
        """Take `counts` events per token id, all or none; 0, or the nanoseconds to wait."""
        now = self._clock()
        states = {}
        for token_id, count in counts.items():
            verdict = check(self._rate, self._tat.get(token_id, 0), now, count)
            if not verdict.allowed:
                return max(verdict.retry_after_ns, 1)
            states[token_id] = verdict.tat
        self._tat.update(states)
        return 0


@dataclass
class IngestState:
    """What ingestion keeps between requests: the rate states and the built statements."""

    events_per_minute: int
    limiter: IngestLimiter
    statements: Statements = field(default_factory=Statements)


def _state(request: Request, runtime: Runtime) -> IngestState:
    # Kept on the API app (one per gateway), made on first use.
    app_state = request.app.state
    state: IngestState | None = getattr(app_state, "ingest", None)
    if state is None:
        per_minute = runtime.settings.ingest_events_per_minute
        limiter = IngestLimiter(Rate(per_minute, 60 * 1_000_000_000))
        state = app_state.ingest = IngestState(per_minute, limiter)
    return state


@router.post("/ingest", status_code=202, response_class=ExactJSONResponse, openapi_extra=_BODY_DOC)
async def ingest(request: Request, runtime: RuntimeDep) -> ExactJSONResponse:
    """Record usage events pushed by clients; answers how many were new and how many repeats."""
    _require_ingest_key(request, runtime)
    items, batch = _event_items(await _read_body(request))
    now = datetime.now(UTC)
    events = [_validate(item, _where(batch, index), now) for index, item in enumerate(items)]
    tokens = await _tokens_of(runtime, events, batch)
    state = _state(request, runtime)
    wait_ns = state.limiter.take(dict(Counter(tokens[e.tracking_token].id for e in events)))
    if wait_ns:
        seconds = retry_after_seconds(wait_ns)
        raise RateLimitExceeded(
            f"Rate limit reached for this tracking token: {state.events_per_minute} events per "
            f"minute. Try again in {seconds} s.",
            headers=[(b"retry-after", b"%d" % seconds)],
        )
    usage_events = [
        _usage_event(runtime, event, tokens[event.tracking_token], now) for event in events
    ]
    inserted = await _write(runtime, usage_events, state.statements)
    for written in inserted:
        runtime.metrics.observe(written)
        if runtime.request_log is not None:
            runtime.request_log.add(written)
    runtime.events_written(inserted)
    users = {token.user for token in tokens.values() if token.user is not None}
    await _charge(runtime, inserted, now, users)
    return ExactJSONResponse(
        {"accepted": len(inserted), "duplicates": len(events) - len(inserted)}, status_code=202
    )


def _require_ingest_key(request: Request, runtime: Runtime) -> None:
    expected = runtime.settings.ingest_key
    given = request.headers.getlist("x-ingest-key")  # every copy must be right
    if (
        expected is None
        or not given
        or not all(same_secret(value, expected.get_secret_value()) for value in given)
    ):
        raise InvalidAPIKey("Ingest key missing or wrong (header X-Ingest-Key).")


async def _read_body(request: Request) -> Any:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise RequestTooLarge(f"The body is over {MAX_BODY_BYTES} bytes.")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        raise InvalidRequest("The body is not valid JSON.") from None


def _event_items(body: Any) -> tuple[list[Any], bool]:
    """The raw events and whether they came as a batch (`{"events": [...]}`)."""
    if not isinstance(body, dict):
        raise InvalidRequest('The body must be one event or {"events": [...]}.')
    if "events" not in body:
        return [body], False
    extra = sorted(set(body) - {"events"})
    if extra:
        raise InvalidRequest(
            f"{extra[0]}: a batch has only 'events' (extra inputs are not permitted).",
            param=extra[0],
        )
    items = body["events"]
    if not isinstance(items, list) or not items:
        raise InvalidRequest("'events' must be a non-empty list of events.", param="events")
    if len(items) > MAX_EVENTS:
        raise RequestTooLarge(
            f"A batch holds at most {MAX_EVENTS} events, not {len(items)}: split it.",
            param="events",
        )
    return items, True


def _where(batch: bool, index: int) -> str:
    return f"events[{index}]" if batch else ""


def _param(where: str, name: str) -> str:
    return f"{where}.{name}" if where and name else where or name


def _validate(item: Any, where: str, now: datetime) -> IngestEvent:
    try:
        event = IngestEvent.model_validate(item)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = _param(where, ".".join(str(part) for part in first["loc"]))
        raise InvalidRequest(f"{param or 'body'}: {first['msg']}", param=param or None) from None
    problem = event.inconsistency()
    if problem is not None:
        param = _param(where, problem[0])
        raise InvalidRequest(f"{param}: {problem[1]}", param=param)
    if event.timestamp is not None:
        ts = event.timestamp
        ts = ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)
        param = _param(where, "timestamp")
        if ts > now + MAX_FUTURE:
            raise InvalidRequest(f"{param}: is in the future.", param=param)
        if ts < now - MAX_AGE:
            raise InvalidRequest(
                f"{param}: is more than {MAX_AGE.days} days in the past.", param=param
            )
        event.timestamp = ts
    return event


async def _tokens_of(
    runtime: Runtime, events: Sequence[IngestEvent], batch: bool
) -> dict[str, TrackingTokenRecord]:
    """Each token of the batch, looked up once; 404 if unknown, 403 if paused."""
    tokens: dict[str, TrackingTokenRecord] = {}
    for index, event in enumerate(events):
        if event.tracking_token in tokens:
            continue
        record = await runtime.tracking.find_by_hash(hash_key(event.tracking_token))
        param = _param(_where(batch, index), "tracking_token")
        if record is None:
            raise NotFound("No such tracking token.", param=param)
        if not record.active:
            raise Forbidden("This tracking token is paused.", param=param)
        tokens[event.tracking_token] = record
    return tokens


def ledger_request_id(token_id: int, client_request_id: str | None) -> str:
    """The event's ledger request id: derived from the client's id, so repeats collide."""
    prefix = f"ing_{token_id}_"
    if client_request_id is None:
        return prefix + "r" + secrets.token_hex(16)
    digest = hashlib.sha256(client_request_id.encode("utf-8", "surrogatepass")).hexdigest()
    return (prefix + digest)[:_REQUEST_ID_LEN]


def _usage_event(
    runtime: Runtime, event: IngestEvent, token: TrackingTokenRecord, now: datetime
) -> UsageEvent:
    total = event.prompt_tokens + event.completion_tokens
    usage = Usage.of(
        event.prompt_tokens, event.completion_tokens, event.cached_tokens, event.reasoning_tokens
    )
    if total:  # as the proxy does: an unknown model is recorded unpriced (cost null)
        model, cost = runtime.prices.cost(usage, event.model)
    else:
        model, cost = event.model, Decimal(0)
    return UsageEvent(
        request_id=ledger_request_id(token.id, event.request_id),
        timestamp=event.timestamp or now,
        user=token.user if token.user is not None else f"token:{token.name}"[:200],
        key_id=None,
        model=model or event.model,
        endpoint="ingest",
        method="POST",
        status=200,
        stream=False,
        prompt_tokens=event.prompt_tokens,
        completion_tokens=event.completion_tokens,
        cached_tokens=event.cached_tokens,
        reasoning_tokens=event.reasoning_tokens,
        total_tokens=total,
        cost_usd=cost,
        cost_pico=None if cost is None else usd_to_pico(cost),
        latency_ms=0,
        source="ingest",
        end_user=event.end_user,
        requested_model=event.model,
    )


async def _write(
    runtime: Runtime, events: list[UsageEvent], statements: Statements
) -> list[UsageEvent]:
    """Write the new events with their rollups; those inserted (repeats are skipped)."""
    for attempt in range(1, _WRITE_ATTEMPTS + 1):
        try:
            return await write_events(runtime.engine, events, statements)
        except IntegrityError:
            # Another request committed one of these ids between the look-up and the
            # INSERT: the next attempt finds it and skips it.
            if attempt == _WRITE_ATTEMPTS:
                raise
    raise AssertionError("unreachable")


async def _charge(
    runtime: Runtime, inserted: Sequence[UsageEvent], now: datetime, users: set[str]
) -> None:
    """Add the cost of new, current events to their users' budget and credit counters.

    Only events stamped here (no client timestamp) are charged live: a back-dated event's
    ledger row may already be in a counter's baseline, which would count it twice. The
    counters pick back-dated spend up from the ledger when they next load their baseline.
    """
    spent: Counter[str] = Counter()
    for event in inserted:
        # `is now`: stamped here, not merely sent with the same instant
        if event.timestamp is now and event.cost_pico and event.user in users:
            spent[event.user] += event.cost_pico
    for user, cost_pico in sorted(spent.items()):
        await runtime.limits.backend.commit(Grant(), (), (user_scope(user),), 0, cost_pico, now)
