"""Shared fixtures: a real fake upstream and real gateways on loopback sockets."""

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import uvicorn

from spendgate.app import SpendgateApp, create_app
from spendgate.config import Settings, load_settings
from spendgate.fake_upstream import FakeUpstream
from spendgate.keys.material import display_key, hash_key, new_key
from spendgate.server import uvicorn_config
from tests.support import ADMIN_TOKEN, UPSTREAM_KEY


@dataclass
class Gateway:
    """A running gateway: its address, admin token and runtime."""

    url: str
    app: SpendgateApp
    settings: Settings
    clients: list[Any] = field(default_factory=list)

    @property
    def runtime(self) -> Any:
        return self.app.runtime

    def admin(self) -> httpx.AsyncClient:
        """An HTTP client carrying the admin token (use with `async with`)."""
        return httpx.AsyncClient(
            base_url=self.url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30
        )

    def http(self) -> httpx.AsyncClient:
        """A plain HTTP client for the gateway, closed when the gateway stops."""
        client = httpx.AsyncClient(base_url=self.url, timeout=30)
        self.clients.append(client)
        return client

    def client(self, key: str, **kwargs: Any) -> openai.AsyncOpenAI:
        """An official SDK client for the gateway, closed when the gateway stops."""
        client = openai.AsyncOpenAI(
            base_url=f"{self.url}/v1", api_key=key, max_retries=0, timeout=30, **kwargs
        )
        self.clients.append(client)
        return client

    async def new_key(self, user: str = "alice", **fields: Any) -> str:
        key = new_key()
        await self.runtime.store.create_key(user, hash_key(key), display_key(key), **fields)
        self.runtime.principals.invalidate()
        return key

    async def flush(self) -> None:
        await self.runtime.drains.wait()
        await self.runtime.writer.flush()


@pytest.fixture(scope="session")
async def fake_upstream() -> AsyncIterator[FakeUpstream]:
    fake = FakeUpstream()
    await fake.start("127.0.0.1", 0)
    yield fake
    await fake.stop()


@pytest.fixture
def upstream(fake_upstream: FakeUpstream) -> FakeUpstream:
    """The session's fake upstream, with its counters zeroed for this test."""
    fake_upstream.reset()
    return fake_upstream


def gateway_settings(tmp_path: Path, **overrides: Any) -> Settings:
    """Settings isolated from the machine's .env files."""
    values: dict[str, Any] = {
        "_env_file": None,
        "database_url": f"sqlite:///{tmp_path}/ledger.db",
        "upstream_api_key": UPSTREAM_KEY,
        "admin_token": ADMIN_TOKEN,
        "flush_interval_ms": 20,
        "principal_refresh_seconds": 0.2,
    }
    values.update(overrides)
    return load_settings(**values)


@contextlib.asynccontextmanager
async def running_gateway(settings: Settings) -> AsyncIterator[Gateway]:
    """Serve a gateway with uvicorn on an ephemeral loopback port until the block ends."""
    app = create_app(settings)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn_config(app, "127.0.0.1", port))
    server.config.loop = "none"
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            await task
            raise RuntimeError("gateway did not start")
        await asyncio.sleep(0.01)
    gateway = Gateway(url=f"http://127.0.0.1:{port}", app=app, settings=settings)
    try:
        yield gateway
    finally:
        for client in gateway.clients:
            await (client.aclose() if isinstance(client, httpx.AsyncClient) else client.close())
        server.should_exit = True
        await task
        sock.close()


GatewayFactory = Callable[..., contextlib.AbstractAsyncContextManager[Gateway]]


@pytest.fixture
def make_gateway(tmp_path: Path, upstream: FakeUpstream) -> GatewayFactory:
    """Start a gateway with settings overrides: `async with make_gateway(**kw) as gw`."""

    def factory(**overrides: Any) -> contextlib.AbstractAsyncContextManager[Gateway]:
        overrides.setdefault("upstream_base", upstream.base_url)
        return running_gateway(gateway_settings(tmp_path, **overrides))

    return factory


@pytest.fixture
async def gateway(make_gateway: GatewayFactory) -> AsyncIterator[Gateway]:
    async with make_gateway() as gw:
        yield gw
