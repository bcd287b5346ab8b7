"""The upstreams: where each one is and how to call it, over one pooled aiohttp client.

aiohttp is used because it measured ~10x faster than httpx for this job (DESIGN.md). One
session (one connection pool) serves every upstream, created at start-up and closed at
shutdown; each upstream has its own timeouts. Connection and header-wait failures are mapped
to gateway errors here, at the boundary.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import quote

import aiohttp
from yarl import URL

from spendgate.errors import UpstreamTimeout, UpstreamUnavailable

UpstreamKind = Literal["openai", "azure", "openrouter", "generic"]

# genai-prices provider ids of the kinds that have one (a generic server has no price list).
PROVIDERS: dict[str, str | None] = {
    "openai": "openai",
    "azure": "azure",
    "openrouter": "openrouter",
    "generic": None,
}
# Azure serves these under /openai/deployments/{deployment}/…; everything else under /openai/…
AZURE_DEPLOYMENT_ENDPOINTS = frozenset(
    {
        "chat/completions",
        "completions",
        "embeddings",
        "audio/speech",
        "audio/transcriptions",
        "audio/translations",
        "images/generations",
    }
)


@dataclass(frozen=True, slots=True)
class UpstreamTarget:
    """Where and how to call one upstream."""

    name: str
    base_url: str
    api_key: str | None = field(repr=False)  # never in a repr, so never in a log line
    api_version: str | None = None
    kind: UpstreamKind = "openai"
    headers: tuple[tuple[str, str], ...] = ()  # extra headers (OpenRouter's HTTP-Referer, …)
    models: tuple[str, ...] = ("*",)  # globs of the models it serves
    model_map: Mapping[str, str] = field(default_factory=dict)  # requested -> its own name
    deployments: Mapping[str, str] = field(default_factory=dict)  # Azure: model -> deployment
    priority: int = 0
    weight: int = 1
    timeout: float | None = None  # seconds to the response headers; None: the default
    connect_timeout: float | None = None
    # The credentials the upstream receives instead of the client's, and extra headers:
    # built once here, not per request.
    auth_headers: tuple[tuple[str, str], ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "auth_headers", self._auth_headers())

    @property
    def provider(self) -> str | None:
        """The genai-prices provider id of this upstream's kind."""
        return PROVIDERS[self.kind]

    def _auth_headers(self) -> tuple[tuple[str, str], ...]:
        if not self.api_key:
            return self.headers
        if self.kind == "azure":
            return (("api-key", self.api_key), *self.headers)
        return (("Authorization", f"Bearer {self.api_key}"), *self.headers)

    def upstream_model(self, model: str) -> str:
        """The name this upstream knows `model` by."""
        return self.model_map.get(model, model)

    def url_for(self, raw_path: str, query: bytes, model: str | None) -> URL:
        """The upstream URL of a proxied path (after /v1/), api-version added if configured."""
        query_text = query.decode("latin-1")
        if self.api_version and b"api-version=" not in query:
            version = f"api-version={quote(self.api_version, safe='')}"
            query_text = f"{query_text}&{version}" if query_text else version
        base = self.base_url.rstrip("/")
        if self.kind != "azure":
            url = f"{base}/{raw_path}"
        else:
            endpoint = raw_path.split("?", 1)[0].rstrip("/")
            if model and endpoint in AZURE_DEPLOYMENT_ENDPOINTS:
                deployment = self.deployments.get(model) or self.upstream_model(model)
                url = f"{base}/openai/deployments/{quote(deployment, safe='')}/{raw_path}"
            else:
                url = f"{base}/openai/{raw_path}"
        if query_text:
            url = f"{url}?{query_text}"
        return URL(url, encoded=True)


class UpstreamClient:
    """Sends requests to the upstreams over one shared connection pool."""

    def __init__(
        self,
        *,
        connect_timeout: float,
        read_timeout: float,
        max_connections: int,
    ) -> None:
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._timeouts: dict[str, aiohttp.ClientTimeout] = {}
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        """Create the pooled session (call once, in the lifespan)."""
        connector = aiohttp.TCPConnector(
            limit=self._max_connections, limit_per_host=0, ttl_dns_cache=300
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(
                total=None, connect=self._connect_timeout, sock_read=self._read_timeout
            ),
            auto_decompress=True,
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=("User-Agent",),
        )

    async def close(self) -> None:
        """Close the pool."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _timeout(self, target: UpstreamTarget) -> aiohttp.ClientTimeout:
        timeout = self._timeouts.get(target.name)
        if timeout is None:
            timeout = self._timeouts[target.name] = aiohttp.ClientTimeout(
                total=None,
                connect=target.connect_timeout or self._connect_timeout,
                sock_read=target.timeout or self._read_timeout,
            )
        return timeout

    async def send(
        self,
        target: UpstreamTarget,
        method: str,
        url: URL,
        headers: list[tuple[str, str]],
        body: bytes,
    ) -> aiohttp.ClientResponse:
        """Send a request and wait for the response headers."""
        session = self._session
        if session is None:
            raise UpstreamUnavailable("The upstream client is not running.")
        try:
            return await session.request(
                method,
                url,
                headers=headers,
                data=body if body else None,
                allow_redirects=False,
                timeout=self._timeout(target),
            )
        except TimeoutError as exc:
            raise UpstreamTimeout(f"The upstream '{target.name}' did not answer in time.") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamUnavailable(
                f"The upstream '{target.name}' could not be reached ({type(exc).__name__})."
            ) from exc

    async def get_json(self, target: UpstreamTarget, url: URL) -> object:
        """GET a JSON document from an upstream (for the model list); raises on failure."""
        response = await self.send(target, "GET", url, list(target.auth_headers), b"")
        async with response:
            response.raise_for_status()
            return await response.json(content_type=None)
