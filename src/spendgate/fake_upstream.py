"""A deterministic OpenAI-compatible upstream on a real socket, for the demo, tests and benchmark.

Metered: `POST /v1/chat/completions`, `/v1/completions`, `/v1/embeddings`, `/v1/responses`.
Prompt tokens = whitespace-separated words of the request text, +1 per message (a string
`input`/`instructions` of the Responses API counts as one message; token-id arrays count
their length). Completion tokens = `max_completion_tokens`/`max_tokens`/`max_output_tokens`
or 16 visible words ("tok0 tok1 ...", one stream chunk each), plus the reasoning knob.
`GET /v1/models` lists a few models; any other `/v1` path echoes its method and path.
Knobs are request headers `x-fake-*` (see `_Knobs`); `GET /__fake__/stats` and
`POST /__fake__/reset` show and zero the counters of what the fake billed.

To play other providers (several fakes can run at once, one per provider):
- Azure OpenAI: `POST /openai/deployments/{deployment}/{endpoint}` for the four endpoints above,
  and `POST /openai/responses` naming the deployment in `model` (what the SDK sends). Without
  `?api-version=` they answer Azure's 404 `{"error": {"code": "404", ...}}`; a deployment not
  in `deployments` (deployment -> model) answers 404 `DeploymentNotFound`; the answer names the
  deployment's model.
- `require_key`: a key other than it (`api-key` on Azure routes, `Authorization: Bearer` on /v1)
  gets a 401 `invalid_api_key`.
- OpenRouter: `report_cost` adds `"cost"` (USD, `COST_PER_PROMPT_TOKEN` * prompt +
  `COST_PER_COMPLETION_TOKEN` * completion) to every usage object; `stats.cost_reported` sums it.
For fallback tests one fake among several must fail without header knobs (the gateway forwards
headers to every upstream it tries): `fail_next(status, count)` answers the next requests with
an error, `delay_headers(seconds)` holds every answer's headers back. Errors are never billed.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import itertools
import signal
import struct
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, fields
from decimal import Decimal
from functools import partial
from typing import Any, NamedTuple

import orjson
from aiohttp import web
from multidict import CIMultiDictProxy

DEFAULT_COMPLETION_TOKENS = 16
DEFAULT_EMBEDDING_DIMENSIONS = 8
RECORDED_REQUESTS = 200
MODELS = ("fake-gpt", "fake-gpt-mini", "fake-reasoner", "fake-embedding")
_PRECOMPUTED_WORDS = 1024
_ENDLESS_MIN_DELAY_S = 0.005
_MARK = "\x00"
_MARK_JSON = orjson.dumps(_MARK)
_DONE = b"data: [DONE]\n\n"
_JSON = "application/json"
_FALSY = frozenset({"", "0", "false", "no", "off"})
_NOT_JSON = object()  # sentinel: the request body is not JSON
# OpenRouter-style `usage.cost` (report_cost=True): USD per prompt and per completion token.
COST_PER_PROMPT_TOKEN = Decimal("0.000001")
COST_PER_COMPLETION_TOKEN = Decimal("0.000002")


@dataclass(slots=True)
class ModelStats:
    """Counters of billed responses: those that put a usage object on the wire."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    total_tokens: int = 0

    def add(self, usage: _Usage, sign: int = 1) -> None:
        """Add (or with sign=-1 take back) one billed response."""
        self.requests += sign
        self.prompt_tokens += sign * usage.prompt
        self.completion_tokens += sign * usage.completion
        self.cached_tokens += sign * usage.cached
        self.reasoning_tokens += sign * usage.reasoning
        self.total_tokens += sign * (usage.prompt + usage.completion)


@dataclass(slots=True)
class FakeStats(ModelStats):
    """Live counters: billed totals and per served model, plus errors, unbilled, received."""

    by_model: dict[str, ModelStats] = field(default_factory=dict)
    errors: int = 0  # error responses sent
    unbilled: int = 0  # answers that ended without usage on the wire (reset, gone, no usage)
    received: int = 0  # every request to /v1 or an Azure route
    cost_reported: Decimal = Decimal(0)  # exact sum of the `usage.cost` sent (report_cost)

    def clear(self) -> None:
        """Zero every counter in place, so references to this object stay live."""
        for f in fields(self):
            if f.name != "by_model":
                setattr(self, f.name, Decimal(0) if f.name == "cost_reported" else 0)
        self.by_model.clear()


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One request as the fake saw it; `headers` has lower-cased names, `json` the body."""

    method: str
    path: str
    query_string: str
    headers: dict[str, str]
    json: Any


class _Usage(NamedTuple):
    prompt: int
    completion: int
    cached: int
    reasoning: int


class _Knobs(NamedTuple):
    latency_s: float  # x-fake-latency-ms: delay before answering (default: latency_ms)
    chunk_delay_s: float  # x-fake-chunk-delay-ms: delay between stream content chunks
    status: int  # x-fake-status: answer this error status (>= 400)
    retry_after: str  # x-fake-retry-after: retry-after header of a 429 (default "1")
    reset_after: int  # x-fake-reset-after: close the connection after N content chunks
    cached: int  # x-fake-cached-tokens (clamped to the prompt tokens)
    reasoning: int  # x-fake-reasoning-tokens (added to the completion tokens)
    served_model: str | None  # x-fake-served-model: the model named in the answer
    no_usage: bool  # x-fake-no-usage: a stream sends no usage even if asked
    endless: bool  # x-fake-endless: a stream sends content until the client goes away


class _BadRequest(Exception):
    """A request the fake rejects with a 400 OpenAI error."""


class _Call(NamedTuple):
    request: web.Request
    body: dict[str, Any]
    knobs: _Knobs
    model: str  # the served model


class _Stream(NamedTuple):
    head: list[bytes]
    content: Callable[[int], bytes]  # the event carrying word i
    tail: list[bytes]
    usage_event: bytes | None  # None: the stream ends without usage (unbilled)
    end: bytes


def _num_knob(headers: CIMultiDictProxy[str], name: str, default: float) -> float:
    raw = headers.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 <= value < 1e12:
        raise _BadRequest(f"header {name} must be a non-negative number, got {raw!r}")
    return value


def _words(value: object) -> int:
    """Words of a string or of the text parts of a content list."""
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, list):
        return sum(_words(p.get("text") if isinstance(p, dict) else p) for p in value)
    return 0


def _messages_tokens(items: object) -> int:
    """Words of every message content, plus 1 per message (a string is one message)."""
    if isinstance(items, str):
        return _words(items) + 1
    if not isinstance(items, list):
        return 0
    return sum(1 + _words(m.get("content")) for m in items if isinstance(m, dict))


def _prompt_items(value: object) -> list[int]:
    """Tokens per item of a completions prompt or an embeddings input."""
    if isinstance(value, str):
        return [_words(value)]
    if not isinstance(value, list):
        return []
    if value and all(isinstance(v, int) for v in value):
        return [len(value)]
    return [len(v) if isinstance(v, list) else _words(v) for v in value]


def _max_tokens(body: dict[str, Any], *keys: str) -> int | None:
    for key in keys:
        value = body.get(key)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise _BadRequest(f"{key} must be a non-negative integer")
        return value
    return None


def _fill(parts: Sequence[bytes], *values: bytes) -> bytes:
    """Splice pre-encoded values into an event split at its `_MARK_JSON` holes."""
    out = [parts[0]]
    for value, part in zip(values, parts[1:], strict=True):
        out += (value, part)
    return b"".join(out)


def _sse(obj: object, event: str | None = None) -> bytes:
    head = b"data: " if event is None else b"event: " + event.encode() + b"\ndata: "
    return head + orjson.dumps(obj) + b"\n\n"


def _usage(prompt: int, words: int, knobs: _Knobs) -> _Usage:
    return _Usage(prompt, words + knobs.reasoning, min(knobs.cached, prompt), knobs.reasoning)


def _chat_usage(u: _Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": u.prompt,
        "completion_tokens": u.completion,
        "total_tokens": u.prompt + u.completion,
        "prompt_tokens_details": {"cached_tokens": u.cached},
        "completion_tokens_details": {"reasoning_tokens": u.reasoning},
    }


def _responses_usage(u: _Usage) -> dict[str, Any]:
    return {
        "input_tokens": u.prompt,
        "output_tokens": u.completion,
        "total_tokens": u.prompt + u.completion,
        "input_tokens_details": {"cached_tokens": u.cached, "cache_write_tokens": 0},
        "output_tokens_details": {"reasoning_tokens": u.reasoning},
    }


def _output_text(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _error_type(status: int) -> str:
    named = {401: "authentication_error", 403: "permission_error", 404: "not_found_error"}
    named[429] = "requests"
    return named.get(status) or ("server_error" if status >= 500 else "invalid_request_error")


def _exact_cost(usage: _Usage) -> Decimal:
    return usage.prompt * COST_PER_PROMPT_TOKEN + usage.completion * COST_PER_COMPLETION_TOKEN


def _presented_key(request: web.Request) -> str | None:
    """The key of a request: `api-key` (Azure routes), else `Authorization: Bearer`."""
    if request.path.startswith("/openai/"):
        return request.headers.get("api-key")
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


def _azure_deployment(request: web.Request, body: object) -> str | None:
    """The deployment an Azure route names: in its path, or `model` (`/openai/responses`)."""
    name = request.match_info.get("deployment")
    if name is None and isinstance(body, dict):
        name = body.get("model")
    return name if isinstance(name, str) else None


def _vector(dims: int) -> list[float]:
    return [round(0.125 * (i + 1), 3) for i in range(dims)]


class FakeUpstream:
    """Deterministic OpenAI-compatible HTTP server (aiohttp) with live usage counters."""

    def __init__(
        self,
        *,
        latency_ms: float = 0,
        seed_model_suffix: str | None = None,
        deployments: dict[str, str] | None = None,
        require_key: str | None = None,
        report_cost: bool = False,
    ) -> None:
        """Set the default latency and an optional suffix appended to served model names.

        `deployments` (Azure deployment -> model) serves the Azure routes; `require_key` makes
        every request need that key (`api-key` on Azure routes, `Authorization: Bearer` on
        /v1); `report_cost` adds OpenRouter's `usage.cost` to every usage object.
        """
        self.latency_ms = latency_ms
        self.seed_model_suffix = seed_model_suffix
        self.deployments = dict(deployments or {})
        self.require_key = require_key
        self.report_cost = report_cost
        self._failures: collections.deque[tuple[int, str]] = collections.deque()
        self._header_delay = 0.0
        self.stats = FakeStats()
        self.requests: collections.deque[RecordedRequest] = collections.deque(
            maxlen=RECORDED_REQUESTS
        )
        self._ids = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self._base_url: str | None = None
        self._pieces = tuple(("" if i == 0 else " ") + f"tok{i}" for i in range(_PRECOMPUTED_WORDS))
        self._pieces_json = tuple(orjson.dumps(p) for p in self._pieces)
        self._vector = _vector(DEFAULT_EMBEDDING_DIMENSIONS)
        self._vector_b64 = base64.b64encode(struct.pack(f"<{len(self._vector)}f", *self._vector))
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "fake"} for m in MODELS]
        self._models_body = orjson.dumps({"object": "list", "data": data})

    def fail_next(self, status: int, count: int = 1, retry_after: str = "1") -> None:
        """Answer the next `count` requests with an OpenAI error (a 429 with `retry_after`)."""
        if not 400 <= status <= 599 or count < 0:
            raise ValueError(f"fail_next needs a 4xx/5xx status and count >= 0, got {status}")
        self._failures.extend([(status, retry_after)] * count)

    def delay_headers(self, seconds: float) -> None:
        """Hold back the response headers of every request this long (0: answer at once)."""
        if not seconds >= 0:
            raise ValueError(f"delay_headers needs seconds >= 0, got {seconds}")
        self._header_delay = seconds

    @property
    def base_url(self) -> str:
        """The base URL including "/v1"; only valid while started."""
        if self._base_url is None:
            raise RuntimeError("FakeUpstream is not started")
        return self._base_url

    def reset(self) -> None:
        """Zero the stats, forget the recorded requests, pending failures and header delay."""
        self.stats.clear()
        self.requests.clear()
        self._failures.clear()
        self._header_delay = 0.0

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen on host:port (0 = any free port) and return the base URL with "/v1"."""
        if self._runner is not None:
            raise RuntimeError("FakeUpstream is already started")
        app = web.Application(client_max_size=64 * 1024 * 1024)
        routes: list[tuple[str, Callable[[_Call], Awaitable[web.StreamResponse]]]] = [
            ("chat/completions", partial(self._generate, chat=True)),
            ("completions", partial(self._generate, chat=False)),
            ("embeddings", self._embeddings),
            ("responses", self._responses),
        ]
        for path, build in routes:
            metered = partial(self._metered, build=build)
            app.router.add_post("/v1/" + path, metered)
            app.router.add_post("/openai/deployments/{deployment}/" + path, metered)
        app.router.add_post("/openai/responses", partial(self._metered, build=self._responses))
        app.router.add_get("/__fake__/stats", self._stats_endpoint)
        app.router.add_post("/__fake__/reset", self._reset_endpoint)
        app.router.add_route("*", "/v1/{tail:.*}", self._plain)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        shown = f"[{host}]" if ":" in host else host
        self._base_url = f"http://{shown}:{runner.addresses[0][1]}/v1"
        return self._base_url

    async def stop(self) -> None:
        """Stop listening and close every connection."""
        runner, self._runner, self._base_url = self._runner, None, None
        if runner is not None:
            await runner.cleanup()

    # -- plumbing -------------------------------------------------------------

    def _account(self, model: str, usage: _Usage, sign: int = 1) -> None:
        self.stats.add(usage, sign)
        if self.report_cost:
            self.stats.cost_reported += sign * _exact_cost(usage)
        per_model = self.stats.by_model.setdefault(model, ModelStats())
        per_model.add(usage, sign)
        if per_model.requests == 0:  # a billing taken back
            del self.stats.by_model[model]

    def _error(
        self, status: int, message: str, retry_after: str = "1", code: str | None = None
    ) -> web.Response:
        """An OpenAI error body (a 429 carries `retry-after`), counted in `stats.errors`."""
        if status == 429:
            code = "rate_limit_exceeded"
        kind = "invalid_request_error" if code == "invalid_api_key" else _error_type(status)
        error = {"message": message, "type": kind, "code": code, "param": None}
        headers = {"retry-after": retry_after} if status == 429 else None
        return self._json_error(status, {"error": error}, headers)

    def _json_error(
        self, status: int, payload: object, headers: dict[str, str] | None = None
    ) -> web.Response:
        self.stats.errors += 1
        body = orjson.dumps(payload)
        return web.Response(body=body, status=status, content_type=_JSON, headers=headers)

    def _refusal(self, request: web.Request, body: object) -> web.Response | None:
        """Azure's 404s (no api-version, unknown deployment) and the 401 of a wrong key."""
        azure = request.path.startswith("/openai/")
        if azure and "api-version" not in request.query:
            return self._json_error(
                404, {"error": {"code": "404", "message": "Resource not found"}}
            )
        if self.require_key is not None and _presented_key(request) != self.require_key:
            return self._error(401, "Incorrect API key provided.", code="invalid_api_key")
        if azure and _azure_deployment(request, body) not in self.deployments:
            message = "The API deployment for this resource does not exist."
            return self._json_error(
                404, {"error": {"code": "DeploymentNotFound", "message": message}}
            )
        return None

    def _knobs(self, headers: CIMultiDictProxy[str]) -> _Knobs:
        def num(name: str, default: float = 0) -> int:
            return int(_num_knob(headers, "x-fake-" + name, default))

        def flag(name: str) -> bool:
            return headers.get("x-fake-" + name, "").strip().lower() not in _FALSY

        return _Knobs(
            _num_knob(headers, "x-fake-latency-ms", self.latency_ms) / 1000.0,
            _num_knob(headers, "x-fake-chunk-delay-ms", 0) / 1000.0,
            status if (status := num("status")) >= 400 else 0,
            headers.get("x-fake-retry-after", "1"),
            num("reset-after", -1),
            num("cached-tokens"),
            num("reasoning-tokens"),
            headers.get("x-fake-served-model"),
            flag("no-usage"),
            flag("endless"),
        )

    async def _begin(self, request: web.Request) -> tuple[object, _Knobs] | web.Response:
        """Count, record, read the knobs and wait the latency; or answer an error."""
        self.stats.received += 1
        raw = await request.read()
        try:
            body: object = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            body = _NOT_JSON
        headers = request.headers
        lowered = {k.lower(): v for k, v in headers.items()}
        recorded = None if body is _NOT_JSON else body
        self.requests.append(
            RecordedRequest(request.method, request.path, request.query_string, lowered, recorded)
        )
        refusal = self._refusal(request, body)
        if refusal is not None:
            return refusal
        try:
            knobs = self._knobs(headers)
        except _BadRequest as exc:
            return self._error(400, str(exc))
        if self._header_delay > 0:  # failures too are late: a slow first byte
            await asyncio.sleep(self._header_delay)
        if self._failures:
            status, retry_after = self._failures.popleft()
            return self._error(status, f"fake upstream error (fail_next {status})", retry_after)
        if knobs.latency_s > 0:
            await asyncio.sleep(knobs.latency_s)
        if knobs.status:
            message = f"fake upstream error (x-fake-status {knobs.status})"
            return self._error(knobs.status, message, knobs.retry_after)
        return body, knobs

    async def _metered(
        self, request: web.Request, build: Callable[[_Call], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """Common path of the metered endpoints (a plain request may be reset right away)."""
        begun = await self._begin(request)
        if isinstance(begun, web.Response):
            return begun
        body, knobs = begun
        try:
            if body is _NOT_JSON:
                raise _BadRequest("We could not parse the JSON body of your request.")
            if not isinstance(body, dict):
                raise _BadRequest("The request body must be a JSON object.")
            model = body.get("model")
            if request.path.startswith("/openai/"):  # Azure: the deployment's model
                model = self.deployments[_azure_deployment(request, body) or ""]
            if not isinstance(model, str) or not model:
                raise _BadRequest("You must provide a model parameter.")
            if knobs.served_model is not None:
                model = knobs.served_model
            elif self.seed_model_suffix:
                model += self.seed_model_suffix
            if body.get("stream") is not True and knobs.reset_after >= 0:
                self._reset_connection(request)
                return web.Response()
            return await build(_Call(request, body, knobs, model))
        except _BadRequest as exc:
            return self._error(400, str(exc))

    def _cost(self, usage: _Usage) -> dict[str, float]:
        """OpenRouter's `usage.cost`, when reporting it."""
        return {"cost": float(_exact_cost(usage))} if self.report_cost else {}

    def _text(self, words: int) -> str:
        return "".join(
            self._pieces[i] if i < _PRECOMPUTED_WORDS else f" tok{i}" for i in range(words)
        )

    def _piece_json(self, i: int) -> bytes:
        return self._pieces_json[i] if i < _PRECOMPUTED_WORDS else orjson.dumps(f" tok{i}")

    def _reset_connection(self, request: web.Request) -> None:
        """Close the connection abruptly (what was written so far is flushed first)."""
        self.stats.unbilled += 1
        if request.transport is not None:
            request.transport.close()

    async def _send(
        self, request: web.Request, payload: object, model: str, usage: _Usage
    ) -> web.StreamResponse:
        """Send a billed JSON body; take the billing back if it could not be written."""
        resp = web.Response(body=orjson.dumps(payload), content_type=_JSON)
        self._account(model, usage)
        try:
            await resp.prepare(request)
            await resp.write_eof()
        except BaseException as exc:
            self._account(model, usage, -1)
            self.stats.unbilled += 1
            if not isinstance(exc, ConnectionError):
                raise
        return resp

    async def _stream(self, c: _Call, usage: _Usage, words: int, s: _Stream) -> web.StreamResponse:
        """Write a stream event by event; bill once the usage event is written."""
        request, knobs, model = c.request, c.knobs, c.model
        resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        delay = knobs.chunk_delay_s
        if knobs.endless:
            delay = max(delay, _ENDLESS_MIN_DELAY_S)
        accounted = False
        try:
            await resp.prepare(request)
            for event in s.head:
                await resp.write(event)
            i = 0
            while True:
                if i == knobs.reset_after:
                    self._reset_connection(request)
                    return resp
                if i >= words and not knobs.endless:
                    break
                if i and delay:
                    await asyncio.sleep(delay)
                await resp.write(s.content(i))
                i += 1
            for event in s.tail:
                await resp.write(event)
            if s.usage_event is None:
                self.stats.unbilled += 1
            else:
                self._account(model, usage)
                try:
                    await resp.write(s.usage_event)
                except BaseException:
                    self._account(model, usage, -1)
                    raise
            accounted = True
            if s.end:
                await resp.write(s.end)
        except (ConnectionError, asyncio.CancelledError) as exc:
            if not accounted:
                self.stats.unbilled += 1
            if isinstance(exc, asyncio.CancelledError):
                raise
        return resp

    # -- endpoints ------------------------------------------------------------

    async def _generate(self, c: _Call, *, chat: bool) -> web.StreamResponse:
        """Chat completions (chat=True) or legacy completions."""
        body, knobs, model = c.body, c.knobs, c.model
        limit = _max_tokens(body, *(("max_completion_tokens",) if chat else ()), "max_tokens")
        words = DEFAULT_COMPLETION_TOKENS if limit is None else limit
        finish = "stop" if limit is None else "length"
        if chat:
            usage = _usage(_messages_tokens(body.get("messages")), words, knobs)
        else:
            usage = _usage(sum(_prompt_items(body.get("prompt"))), words, knobs)
        n, kind = next(self._ids), "chat.completion" if chat else "text_completion"
        base: dict[str, Any] = {"id": f"{'chatcmpl' if chat else 'cmpl'}-fake{n}", "object": kind}
        base |= {"created": int(time.time()), "model": model}
        if body.get("stream") is not True:
            text = self._text(words)
            choice: dict[str, Any] = {"index": 0, "logprobs": None, "finish_reason": finish}
            if chat:
                choice["message"] = {"role": "assistant", "content": text, "refusal": None}
            else:
                choice["text"] = text
            payload = {**base, "choices": [choice], "usage": _chat_usage(usage) | self._cost(usage)}
            return await self._send(c.request, payload, model, usage)
        opts = body.get("stream_options")
        with_usage = isinstance(opts, dict) and opts.get("include_usage") is True
        with_usage = with_usage and not knobs.no_usage
        base |= {"object": "chat.completion.chunk"} if chat else {}
        extra: dict[str, Any] = {"usage": None} if with_usage else {}

        def chunk(content: str | None, finish_reason: str | None, role: bool = False) -> bytes:
            choice: dict[str, Any] = {"index": 0}
            if chat:
                delta = {"role": "assistant"} if role else {}
                choice["delta"] = delta if content is None else {**delta, "content": content}
            else:
                choice["text"] = content or ""
            choice |= {"logprobs": None, "finish_reason": finish_reason}
            return b"data: " + orjson.dumps({**base, "choices": [choice], **extra}) + b"\n\n"

        first = chunk(_MARK, None, role=True).split(_MARK_JSON)
        later = chunk(_MARK, None).split(_MARK_JSON)

        def content(i: int) -> bytes:
            return _fill(first if i == 0 else later, self._piece_json(i))

        head = [chunk("", None, role=True)] if words == 0 and chat else []
        final = _sse({**base, "choices": [], "usage": _chat_usage(usage) | self._cost(usage)})
        stream = _Stream(head, content, [chunk(None, finish)], final if with_usage else None, _DONE)
        return await self._stream(c, usage, words, stream)

    async def _embeddings(self, c: _Call) -> web.StreamResponse:
        items = _prompt_items(c.body.get("input"))
        if not items:
            raise _BadRequest("input must be a non-empty string, list of strings or token ids")
        dims = c.body.get("dimensions")
        if dims is not None and (type(dims) is not int or not 0 < dims <= 4096):
            raise _BadRequest("dimensions must be an integer between 1 and 4096")
        vector = self._vector if dims is None else _vector(dims)
        encoded: object = vector
        if c.body.get("encoding_format") == "base64":
            packed = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)) if dims else None
            encoded = (packed or self._vector_b64).decode()
        usage = _Usage(sum(items), 0, 0, 0)
        data = [
            {"object": "embedding", "index": i, "embedding": encoded} for i in range(len(items))
        ]
        tokens = {"prompt_tokens": usage.prompt, "total_tokens": usage.prompt} | self._cost(usage)
        payload = {"object": "list", "data": data, "model": c.model, "usage": tokens}
        return await self._send(c.request, payload, c.model, usage)

    async def _responses(self, c: _Call) -> web.StreamResponse:
        body, knobs = c.body, c.knobs
        limit = _max_tokens(body, "max_output_tokens")
        words = DEFAULT_COMPLETION_TOKENS if limit is None else limit
        prompt = _messages_tokens(body.get("input"))
        if isinstance(body.get("instructions"), str):
            prompt += _messages_tokens(body["instructions"])
        usage = _usage(prompt, words, knobs)
        n, text = next(self._ids), self._text(words)
        item_id = f"msg_fake{n}"
        static = {"id": f"resp_fake{n}", "object": "response", "created_at": int(time.time())}
        static |= {"model": c.model, "parallel_tool_calls": True, "tool_choice": "auto"}
        static |= {"tools": [], "max_output_tokens": limit, "error": None}

        def response(status: str, output: list[Any], with_usage: bool) -> dict[str, Any]:
            billed = _responses_usage(usage) | self._cost(usage) if with_usage else None
            return {**static, "status": status, "output": output, "usage": billed}

        def message(status: str, text: str | None) -> dict[str, Any]:
            content = [] if text is None else [_output_text(text)]
            head = {"id": item_id, "type": "message", "status": status, "role": "assistant"}
            return {**head, "content": content}

        if body.get("stream") is not True:
            payload = response("completed", [message("completed", text)], True)
            return await self._send(c.request, payload, c.model, usage)
        ids = {"item_id": item_id, "output_index": 0, "content_index": 0}
        events: list[tuple[str, dict[str, Any]]] = [
            ("response.created", {"response": response("in_progress", [], False)}),
            ("response.in_progress", {"response": response("in_progress", [], False)}),
            (
                "response.output_item.added",
                {"output_index": 0, "item": message("in_progress", None)},
            ),
            ("response.content_part.added", {**ids, "part": _output_text("")}),
        ]
        head = [_sse({"type": t, "sequence_number": i, **e}, t) for i, (t, e) in enumerate(events)]
        kind = "response.output_text.delta"
        delta = {"type": kind, "sequence_number": _MARK, **ids, "delta": _MARK, "logprobs": []}
        parts = _sse(delta, kind).split(_MARK_JSON)

        def content(i: int) -> bytes:
            return _fill(parts, b"%d" % (len(head) + i), self._piece_json(i))

        done = message("completed", text)
        events = [
            ("response.output_text.done", {**ids, "text": text, "logprobs": []}),
            ("response.content_part.done", {**ids, "part": _output_text(text)}),
            ("response.output_item.done", {"output_index": 0, "item": done}),
            ("response.completed", {"response": response("completed", [done], not knobs.no_usage)}),
        ]
        seq = itertools.count(len(head) + words)
        tail = [_sse({"type": t, "sequence_number": next(seq), **e}, t) for t, e in events]
        usage_event = None if knobs.no_usage else tail.pop()
        return await self._stream(c, usage, words, _Stream(head, content, tail, usage_event, b""))

    async def _plain(self, request: web.Request) -> web.StreamResponse:
        """`GET /v1/models` lists the models; any other /v1 request echoes method and path."""
        begun = await self._begin(request)
        if isinstance(begun, web.Response):
            return begun
        if request.method == "GET" and request.path == "/v1/models":
            return web.Response(body=self._models_body, content_type=_JSON)
        payload = {"object": "fake", "path": request.path, "method": request.method}
        return web.Response(body=orjson.dumps(payload), content_type=_JSON)

    async def _stats_endpoint(self, request: web.Request) -> web.StreamResponse:
        return web.Response(body=orjson.dumps(self.stats, default=str), content_type=_JSON)

    async def _reset_endpoint(self, request: web.Request) -> web.StreamResponse:
        self.reset()
        return web.Response(body=orjson.dumps(self.stats, default=str), content_type=_JSON)


async def _serve(host: str, port: int, latency_ms: float) -> None:
    fake = FakeUpstream(latency_ms=latency_ms)
    url = await fake.start(host, port)
    print(f"fake upstream on {url}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await fake.stop()


def main(argv: list[str] | None = None) -> None:
    """Serve a fake upstream until SIGINT/SIGTERM: `python -m spendgate.fake_upstream`."""
    parser = argparse.ArgumentParser(
        prog="python -m spendgate.fake_upstream",
        description="Deterministic OpenAI-compatible fake upstream.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    args = parser.parse_args(argv)
    try:
        import uvloop  # optional: a faster loop for the standalone server
    except ImportError:
        asyncio.run(_serve(args.host, args.port, args.latency_ms))
    else:
        uvloop.run(_serve(args.host, args.port, args.latency_ms))


if __name__ == "__main__":
    main()
