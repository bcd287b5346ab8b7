"""(b) The ceiling for Python: a bare pass-through proxy, an aiohttp server with one pooled client.

Per request it does only what any metering gateway must: look the presented key up (sha256 in
a dict), swap it for the upstream key and drop hop-by-hop headers, forward, read the usage and
count tokens in memory. A JSON answer is parsed with orjson for its `usage`; an SSE answer is
relayed chunk by chunk as it arrives, and only the data line whose `"usage"` holds an object
is parsed. No database, no limits, no prices, no logging per request. A client that goes away
mid-stream does not stop the upstream read, so its usage is still counted (as spendgate does).

    python bench/passthrough.py --port 8001 --upstream http://127.0.0.1:8000/v1

The client key and the upstream key come from `--key`/`--upstream-key` or from the variables
BENCH_PASSTHROUGH_KEY / BENCH_PASSTHROUGH_UPSTREAM_KEY. `GET /__passthrough__/stats` shows
the counters.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import os
import signal
from dataclasses import asdict, dataclass

import aiohttp
import orjson
import uvloop
from aiohttp import web
from multidict import CIMultiDictProxy
from yarl import URL

# Not forwarded either way (RFC 9110 §7.6.1), plus what the proxy sets itself.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
REQUEST_DROP = HOP_BY_HOP | {"authorization", "host", "content-length"}
RESPONSE_DROP = HOP_BY_HOP | {"content-length", "date", "server"}
USAGE = b'"usage"'
MAX_PARTIAL_LINE = 1 << 20  # an unterminated SSE line longer than this is dropped, not held
STATS_PATH = "/__passthrough__/stats"


@dataclass(slots=True)
class Meter:
    """Token counts of the answers that carried a usage object."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def add(self, usage: dict[str, object]) -> None:
        """Count one usage object (chat/embeddings or Responses API field names)."""
        self.requests += 1
        self.prompt_tokens += _int(usage.get("prompt_tokens", usage.get("input_tokens")))
        self.completion_tokens += _int(usage.get("completion_tokens", usage.get("output_tokens")))


def _int(value: object) -> int:
    return value if isinstance(value, int) else 0


def usage_of(document: object) -> dict[str, object] | None:
    """The usage object of a JSON answer or SSE event (Responses API: under `response`)."""
    if not isinstance(document, dict):
        return None
    usage = document.get("usage")
    if usage is None and isinstance(response := document.get("response"), dict):
        usage = response.get("usage")
    return usage if isinstance(usage, dict) else None


class SseUsageScanner:
    """Finds usage objects in an SSE byte stream fed chunk by chunk, holding one partial line.

    Chunks are scanned for `"usage"`; only when its value starts with `{` is the enclosing
    `data:` line parsed. Chat streams repeat `"usage":null` in every chunk, which costs a find.
    """

    __slots__ = ("_partial",)

    def __init__(self) -> None:
        self._partial = b""

    def feed(self, chunk: bytes) -> list[dict[str, object]]:
        """The usage objects completed by this chunk (usually none)."""
        if self._partial:
            chunk = self._partial + chunk
        end = chunk.rfind(b"\n") + 1  # bytes after `end` are an unfinished line
        self._partial = chunk[end:] if len(chunk) - end <= MAX_PARTIAL_LINE else b""
        found: list[dict[str, object]] = []
        at = chunk.find(USAGE, 0, end)
        while at >= 0:
            value = at + len(USAGE)
            while chunk[value : value + 1] in (b" ", b":"):
                value += 1
            line_end = chunk.find(b"\n", at)
            if chunk[value : value + 1] == b"{":
                line = chunk[chunk.rfind(b"\n", 0, at) + 1 : line_end].rstrip(b"\r")
                if line.startswith(b"data:"):
                    usage = usage_of(orjson.loads(line[5:]))
                    if usage is not None:
                        found.append(usage)
            at = chunk.find(USAGE, line_end, end)
        return found


class Passthrough:
    """The proxy: `start()` listens, `stop()` closes the server and the upstream pool."""

    def __init__(self, upstream_base: str, upstream_key: str, keys: dict[str, str]) -> None:
        """`upstream_base` ends in "/v1"; `keys` maps a client's name to its key."""
        self._origin = upstream_base.rstrip("/").removesuffix("/v1")
        self._upstream_auth = f"Bearer {upstream_key}"
        self._names = {hashlib.sha256(key.encode()).digest(): name for name, key in keys.items()}
        self.meters = {name: Meter() for name in keys}
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self._base_url: str | None = None

    @property
    def base_url(self) -> str:
        """The base URL including "/v1"; only valid while started."""
        if self._base_url is None:
            raise RuntimeError("Passthrough is not started")
        return self._base_url

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Open the upstream pool, listen on host:port (0: any) and return the base URL."""
        connector = aiohttp.TCPConnector(limit=1000, limit_per_host=0)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=300),
            auto_decompress=False,  # bytes pass through, content-encoding stays true
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=("User-Agent", "Accept-Encoding"),
        )
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get(STATS_PATH, self._stats)
        app.router.add_route("*", "/v1/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=5)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        self._base_url = f"http://{host}:{self._runner.addresses[0][1]}/v1"
        return self._base_url

    async def stop(self) -> None:
        """Stop listening (in-flight requests get a few seconds) and close the pool."""
        self._base_url = None
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    def totals(self) -> Meter:
        """The sum of every client's meter."""
        total = Meter()
        for meter in self.meters.values():
            total.requests += meter.requests
            total.prompt_tokens += meter.prompt_tokens
            total.completion_tokens += meter.completion_tokens
        return total

    async def _stats(self, request: web.Request) -> web.Response:
        by_key = {name: asdict(meter) for name, meter in self.meters.items()}
        body = {**asdict(self.totals()), "by_key": by_key}
        return web.Response(body=orjson.dumps(body), content_type="application/json")

    def _meter_for(self, authorization: str) -> Meter | None:
        scheme, _, key = authorization.partition(" ")
        if scheme.lower() != "bearer":
            return None
        name = self._names.get(hashlib.sha256(key.strip().encode()).digest())
        return None if name is None else self.meters[name]

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        meter = self._meter_for(request.headers.get("Authorization", ""))
        if meter is None:
            return _error(401, "invalid_api_key", "Incorrect API key provided.")
        assert self._session is not None
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in REQUEST_DROP]
        headers.append(("Authorization", self._upstream_auth))
        body = await request.read()
        url = URL(self._origin + request.raw_path, encoded=True)
        try:
            async with self._session.request(
                request.method, url, data=body or None, headers=headers
            ) as upstream:
                if upstream.content_type == "text/event-stream":
                    return await _relay_stream(request, upstream, meter)
                payload = await upstream.read()
                if upstream.status < 300 and upstream.content_type == "application/json":
                    usage = usage_of(orjson.loads(payload))
                    if usage is not None:
                        meter.add(usage)
                return web.Response(
                    body=payload, status=upstream.status, headers=_response_headers(upstream)
                )
        except (aiohttp.ClientError, TimeoutError) as exc:
            return _error(502, "upstream_error", f"upstream failed: {type(exc).__name__}")


async def _relay_stream(
    request: web.Request, upstream: aiohttp.ClientResponse, meter: Meter
) -> web.StreamResponse:
    """Relay SSE chunks as they arrive; after a client disconnect keep reading for the usage."""
    response = web.StreamResponse(status=upstream.status, headers=_response_headers(upstream))
    scanner = SseUsageScanner()
    client_gone = False
    try:
        await response.prepare(request)
    except ConnectionError:
        client_gone = True
    async for chunk in upstream.content.iter_any():
        for usage in scanner.feed(chunk):
            meter.add(usage)
        if not client_gone:
            try:
                await response.write(chunk)
            except ConnectionError:
                client_gone = True
    if not client_gone:
        with contextlib.suppress(ConnectionError):
            await response.write_eof()
    return response


def _response_headers(upstream: aiohttp.ClientResponse) -> list[tuple[str, str]]:
    headers: CIMultiDictProxy[str] = upstream.headers
    return [(k, v) for k, v in headers.items() if k.lower() not in RESPONSE_DROP]


def _error(status: int, code: str, message: str) -> web.Response:
    error = {"message": message, "type": "invalid_request_error", "code": code, "param": None}
    return web.Response(
        body=orjson.dumps({"error": error}), status=status, content_type="application/json"
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: any free port")
    parser.add_argument("--upstream", required=True, help="upstream base URL, ending in /v1")
    parser.add_argument("--key", default=os.environ.get("BENCH_PASSTHROUGH_KEY"))
    parser.add_argument(
        "--upstream-key", default=os.environ.get("BENCH_PASSTHROUGH_UPSTREAM_KEY", "sk-upstream")
    )
    args = parser.parse_args()
    if not args.key:
        parser.error("give the client key with --key or BENCH_PASSTHROUGH_KEY")
    return args


async def serve(args: argparse.Namespace) -> None:
    """Run until SIGTERM or SIGINT."""
    proxy = Passthrough(args.upstream, args.upstream_key, {"bench": args.key})
    url = await proxy.start(args.host, args.port)
    print(f"passthrough listening on {url}", flush=True)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    try:
        await stopping.wait()
    finally:
        await proxy.stop()


if __name__ == "__main__":
    uvloop.run(serve(parse_args()))
