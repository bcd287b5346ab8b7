"""The proxy as plain ASGI: authenticate → admit → forward → relay → settle → record.

No framework validation layer sits on this path; each step is a typed call. Three relay
shapes: SSE streams (relayed event by event through the usage scanner), metered JSON
(buffered: the cost header needs the usage before the headers go out), and everything
else (passed through chunk by chunk).

A request that reached the upstream always ends in exactly one `Recorder.record` call:
on success, on upstream failure, and on client disconnect (from the drain task, or with
an estimate when the stream is aborted).
"""

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import aiohttp

from spendgate.errors import (
    GatewayError,
    InvalidRequest,
    RequestTooLarge,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from spendgate.keys.principals import Principal, PrincipalCache
from spendgate.keys.throttle import AuthThrottle
from spendgate.limits.admission import Admission, Admitted
from spendgate.metering.extract import read_usage
from spendgate.metering.sse import SSEUsageScanner
from spendgate.metrics import GatewayMetrics
from spendgate.money import format_usd
from spendgate.proxy.drains import DrainPool
from spendgate.proxy.headers import client_headers, read_request_headers
from spendgate.proxy.models import ModelList
from spendgate.proxy.paths import ProxyPath, check_query, parse_proxy_path
from spendgate.proxy.recorder import Outcome, Recorder
from spendgate.proxy.rewrite import PreparedRequest, dump_json, prepare_request
from spendgate.proxy.routing import Router, Upstream
from spendgate.proxy.upstream import UpstreamClient

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

log = logging.getLogger("spendgate.proxy")

_JSON_HEADERS = [(b"content-type", b"application/json")]
_CHUNK = 64 * 1024
_PATH_CACHE = 1024


class ClientGone(Exception):
    """The client disconnected before its request body arrived."""


class ProxyApp:
    """The ASGI app serving `/v1/*`."""

    def __init__(
        self,
        *,
        principals: PrincipalCache,
        admission: Admission,
        upstream: UpstreamClient,
        router: Router,
        models: ModelList,
        max_attempts: int,
        retry_backoff: float,
        recorder: Recorder,
        drains: DrainPool,
        metrics: GatewayMetrics,
        default_model: str | None,
        max_body_bytes: int,
        key_in_path: bool,
        drain_on_disconnect: bool,
        stream_max_seconds: float,
        auth_throttle: AuthThrottle,
    ) -> None:
        self._principals = principals
        self._admission = admission
        self._upstream = upstream
        self._router = router
        self._models = models
        self._max_attempts = max_attempts
        self._backoff = retry_backoff
        self._recorder = recorder
        self._drains = drains
        self._metrics = metrics
        self._default_model = default_model
        self._max_body = max_body_bytes
        self._key_in_path = key_in_path
        self._drain_on_disconnect = drain_on_disconnect
        self._stream_max = stream_max_seconds
        self._throttle = auth_throttle
        self._paths: dict[bytes, ProxyPath] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        metrics = self._metrics
        metrics.in_flight += 1
        try:
            await self._serve(scope, receive, send)
        finally:
            metrics.in_flight -= 1

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        request_id = self._recorder.new_request_id()
        id_header = (b"x-spendgate-request-id", request_id.encode())
        try:
            path = self._path(scope.get("raw_path") or scope["path"].encode())
            check_query(scope.get("query_string", b""))
            heads = read_request_headers(scope["headers"], ())
            principal = await self._principals.authenticate(path.key or heads.key)
            body = await self._read_body(receive, heads.content_length)
            end_user = heads.end_user
            prepared = prepare_request(
                path.endpoint,
                scope["method"],
                heads.content_type,
                body,
                default_model=self._default_model,
                end_user_header=end_user.decode("latin-1")[:200] if end_user else None,
            )
        except GatewayError as exc:
            if exc.status == 401:
                self._throttle.failed(scope)
            await send_error(send, exc, id_header)
            return
        except ClientGone:
            return
        if path.endpoint == "models" and prepared.method == "GET":
            await send_json(send, await self._models.answer(principal), id_header)
            return
        try:
            upstreams = self._router.route(prepared.model)
            admitted = await self._admission.admit(principal, prepared)
        except GatewayError as exc:
            self._recorder.record(
                request_id, principal, prepared, Outcome(exc.status, error_code=exc.code), started
            )
            await send_error(send, exc, id_header)
            return
        query = scope.get("query_string", b"")
        attempts = upstreams[: self._max_attempts]
        last = len(attempts) - 1
        for attempt, upstream in enumerate(attempts):
            target = upstream.target
            if attempt:
                await asyncio.sleep(self._backoff * 2 ** (attempt - 1))
            url = target.url_for(path.raw, query, prepared.model)
            try:
                body = _body_for(target.model_map, prepared)
            except InvalidRequest as exc:  # a body the mapping cannot rewrite
                outcome = Outcome(exc.status, error_code=exc.code)
                await self._finish(request_id, principal, prepared, admitted, outcome, started)
                await send_error(send, exc, id_header)
                return
            sent_at = time.perf_counter()
            try:
                response = await self._upstream.send(
                    target, prepared.method, url, [*heads.forward, *target.auth_headers], body
                )
            except GatewayError as exc:
                failure = "timeout" if exc.code == "upstream_timeout" else "connect_error"
                self._attempt_failed(upstream, failure, request_id, attempt < last)
                if attempt < last:
                    continue
                outcome = Outcome(exc.status, error_code=exc.code, upstream=upstream.name)
                outcome.provider = target.provider
                await self._finish(request_id, principal, prepared, admitted, outcome, started)
                await send_error(send, exc, id_header)
                return
            status = response.status
            if (status == 429 or status >= 500) and attempt < last:
                self._attempt_failed(upstream, _status_outcome(status), request_id, True)
                await _discard(response)
                continue
            if status == 429 or status >= 500:
                self._attempt_failed(upstream, _status_outcome(status), request_id, False)
            else:
                upstream.breaker.succeeded()
                self._metrics.attempt(upstream.name, "ok")
            break
        head = client_headers(response.raw_headers)
        head.append(id_header)
        head.extend(admitted.headers)
        head.append((b"x-spendgate-upstream", upstream.name.encode()))
        call = _Call(
            request_id, principal, prepared, admitted, started, response, head, upstream,
            upstream_seconds=time.perf_counter() - sent_at,
        )  # fmt: skip
        content_type = response.headers.get("content-type", "")
        if response.status < 400 and content_type.startswith("text/event-stream"):
            await self._relay_stream(call, send, receive)
        elif prepared.metered or response.status >= 400:
            await self._relay_buffered(call, send)
        else:
            await self._relay_passthrough(call, send)

    def _path(self, raw_path: bytes) -> ProxyPath:
        """The checked path, from a small cache: clients use a handful of paths."""
        path = self._paths.get(raw_path)
        if path is None:
            path = parse_proxy_path(raw_path, self._key_in_path)
            if path.key is None:  # never keep a key from the path in memory
                if len(self._paths) >= _PATH_CACHE:
                    self._paths.clear()
                self._paths[raw_path] = path
        return path

    async def _read_body(self, receive: Receive, declared: bytes | None) -> bytes:
        if declared is not None:
            try:
                if int(declared) > self._max_body:
                    raise RequestTooLarge(f"Request body is over {self._max_body} bytes.")
            except ValueError:
                raise InvalidRequest("Malformed Content-Length header.") from None
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        body: bytes = message.get("body", b"")
        if not message.get("more_body"):
            if len(body) > self._max_body:
                raise RequestTooLarge(f"Request body is over {self._max_body} bytes.")
            return body
        parts = [body]
        size = len(body)
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientGone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self._max_body:
                raise RequestTooLarge(f"Request body is over {self._max_body} bytes.")
            parts.append(chunk)
            if not message.get("more_body"):
                return b"".join(parts)

    async def _relay_buffered(self, call: "_Call", send: Send) -> None:
        response = call.response
        try:
            body = await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            response.close()
            await self._finish_call(call, Outcome(response.status, error_code="upstream_broken"))
            error = UpstreamUnavailable(f"The upstream response broke ({type(exc).__name__}).")
            await send_error(send, error, (b"x-spendgate-request-id", call.request_id.encode()))
            return
        finally:
            response.release()
        usage = read_usage(call.prepared.endpoint, body) if response.status < 400 else None
        _, cost = await self._finish_call(call, Outcome(response.status, usage=usage))
        head = call.head
        head.append((b"content-length", str(len(body)).encode()))
        if cost is not None:
            head.append((b"x-spendgate-cost-usd", format_usd(cost).encode()))
        await send({"type": "http.response.start", "status": response.status, "headers": head})
        await send({"type": "http.response.body", "body": body})

    async def _relay_passthrough(self, call: "_Call", send: Send) -> None:
        response = call.response
        head = call.head
        head.append((b"x-spendgate-cost-usd", b"0"))
        await send({"type": "http.response.start", "status": response.status, "headers": head})
        try:
            async for chunk in response.content.iter_chunked(_CHUNK):
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except (aiohttp.ClientError, TimeoutError):
            pass  # headers are out; all we can do is end the body
        finally:
            response.release()
        await send({"type": "http.response.body", "body": b""})
        await self._finish_call(call, Outcome(response.status))

    async def _relay_stream(self, call: "_Call", send: Send, receive: Receive) -> None:
        response = call.response
        scanner = SSEUsageScanner(
            call.prepared.endpoint, strip_usage_chunk=not call.prepared.client_wants_usage
        )
        await send({"type": "http.response.start", "status": response.status, "headers": call.head})
        # The request body is fully read, so the next receive() only returns on disconnect.
        disconnected = asyncio.ensure_future(receive())
        if not self._drain_on_disconnect:
            # Abort mode closes the upstream the moment the client leaves, not at the next
            # chunk: a model that is silent while it reasons is billed for that time.
            disconnected.add_done_callback(partial(_close_unless_cancelled, response))
        content = response.content
        # A stream that never ends is cut here. Chunks come at least every read timeout
        # (else aiohttp raises), so checking the clock per chunk bounds the stream's time.
        deadline = call.started + self._stream_max
        outcome_error = None
        try:
            while True:
                chunk = await content.readany()
                if not chunk:
                    break
                out = scanner.feed(chunk)
                if disconnected.done():
                    break
                now = time.perf_counter()
                if out:
                    if call.first_token_seconds is None:
                        call.first_token_seconds = now - call.started
                    await send({"type": "http.response.body", "body": out, "more_body": True})
                if now > deadline:
                    outcome_error = _stream_cut(call)
                    break
        except (aiohttp.ClientError, TimeoutError):
            response.close()
            outcome_error = "upstream_broken"
        if disconnected.done():  # the client left (in abort mode the read ended with it)
            await self._abandon(call, scanner, deadline)
            return
        disconnected.cancel()
        tail = scanner.finish()
        await send({"type": "http.response.body", "body": tail})
        response.release()
        await self._finish_call(call, _stream_outcome(response.status, scanner, outcome_error))

    async def _abandon(self, call: "_Call", scanner: SSEUsageScanner, deadline: float) -> None:
        """The client left mid-stream: drain the upstream for its usage, or abort."""
        if (
            scanner.usage is None
            and self._drain_on_disconnect
            and self._drains.try_start(self._drain(call, scanner, deadline))
        ):
            return
        call.response.close()
        await self._finish_call(
            call, _stream_outcome(call.response.status, scanner, "client_disconnected")
        )

    async def _drain(self, call: "_Call", scanner: SSEUsageScanner, deadline: float) -> None:
        content = call.response.content
        error = "client_disconnected"
        try:
            while scanner.usage is None:
                chunk = await content.readany()
                if not chunk:
                    break
                scanner.feed(chunk)
                if time.perf_counter() > deadline:
                    error = _stream_cut(call)
                    break
            scanner.finish()
        except (aiohttp.ClientError, TimeoutError):
            error = "upstream_broken"
        finally:
            call.response.close()
        await self._finish_call(call, _stream_outcome(call.response.status, scanner, error))

    def _attempt_failed(
        self, upstream: Upstream, outcome: str, request_id: str, falling_back: bool
    ) -> None:
        upstream.breaker.failed()
        self._metrics.attempt(upstream.name, outcome)
        log.warning(
            "%s: upstream %s failed (%s)%s", request_id, upstream.name, outcome,
            "; trying the next upstream" if falling_back else "",
        )  # fmt: skip

    async def _finish_call(self, call: "_Call", outcome: Outcome) -> tuple[Any, Any]:
        outcome.upstream = call.upstream.name
        outcome.provider = call.upstream.target.provider
        outcome.upstream_seconds = call.upstream_seconds
        outcome.first_token_seconds = call.first_token_seconds
        return await self._finish(
            call.request_id, call.principal, call.prepared, call.admitted, outcome, call.started
        )

    async def _finish(
        self,
        request_id: str,
        principal: Principal,
        prepared: PreparedRequest,
        admitted: Admitted,
        outcome: Outcome,
        started: float,
    ) -> tuple[Any, Any]:
        if outcome.usage is None:
            await self._recorder.prepare_estimate(prepared, outcome)
        usage, cost, at = self._recorder.record(request_id, principal, prepared, outcome, started)
        await self._admission.settle(principal, admitted, usage, cost, at)
        return usage, cost


@dataclass(slots=True)
class _Call:
    """One forwarded request whose response is being relayed."""

    request_id: str
    principal: Principal
    prepared: PreparedRequest
    admitted: Admitted
    started: float
    response: aiohttp.ClientResponse
    head: list[tuple[bytes, bytes]]
    upstream: Upstream
    upstream_seconds: float | None = None
    first_token_seconds: float | None = None


def _stream_outcome(status: int, scanner: SSEUsageScanner, error: str | None) -> Outcome:
    usage = scanner.usage
    return Outcome(
        status,
        usage=usage,
        completion_text=scanner.completion_text() if usage is None else "",
        error_code=error if usage is None else None,
    )


def _close_unless_cancelled(response: aiohttp.ClientResponse, done: "asyncio.Future[Any]") -> None:
    if not done.cancelled():
        response.close()


def _stream_cut(call: "_Call") -> str:
    """End a stream that ran past `SPENDGATE_STREAM_MAX_SECONDS`: the error code to record."""
    call.response.close()
    log.warning("%s: stream cut after the longest stream time", call.request_id)
    return UpstreamTimeout.code


def _body_for(model_map: Any, prepared: PreparedRequest) -> bytes:
    """The body for an upstream that knows the requested model by another name."""
    if model_map and prepared.model in model_map and prepared.json is not None:
        return dump_json({**prepared.json, "model": model_map[prepared.model]})
    return prepared.body


def _status_outcome(status: int) -> str:
    return "http_429" if status == 429 else "http_5xx"


async def _discard(response: aiohttp.ClientResponse) -> None:
    """Read a failed attempt's (small) answer so its connection goes back to the pool."""
    try:
        async with asyncio.timeout(5):
            await response.read()
    except (aiohttp.ClientError, TimeoutError):
        response.close()
    finally:
        response.release()


async def send_json(send: Send, body: bytes, *extra: tuple[bytes, bytes]) -> None:
    """Answer 200 with a JSON body the gateway made itself."""
    headers = [*_JSON_HEADERS, (b"content-length", str(len(body)).encode()), *extra]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def send_error(send: Send, error: GatewayError, *extra: tuple[bytes, bytes]) -> None:
    """Answer with the OpenAI-shaped error body of `error`."""
    body = error.body()
    headers = [*_JSON_HEADERS, (b"content-length", str(len(body)).encode()), *extra]
    headers.extend(error.headers)
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
