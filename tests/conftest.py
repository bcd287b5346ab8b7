"""Shared fixtures: a real fake upstream, real gateways on loopback sockets, real servers.

Gateway tests marked `pytest.mark.matrix` run once per stack (tests/stacks.py); the servers
behind the stacks and the ledger tests are in tests/services.py.
"""

import asyncio
import contextlib
import secrets
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
from tests.services import RedisServer, ServerDatabases, wipe_database
from tests.stacks import DEFAULT, STACKS, Stack, stack_params
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
        await self.runtime.principals.changed()  # as the admin API does
        return key

    async def flush(self) -> None:
        await self.runtime.drains.wait()
        await self.runtime.writer.flush()


@pytest.fixture(scope="session")
async def fake_upstream() -> AsyncIterator[FakeUpstream]:
    """One fake upstream on a loopback port for the whole session."""
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
    """Settings isolated from the machine's .env files; an override naming no setting raises."""
    # Settings ignores unknown fields, so a misspelt override would silently do nothing.
    unknown = {name for name in overrides if not name.startswith("_")} - set(Settings.model_fields)
    if unknown:
        raise TypeError(f"Settings has no field {', '.join(sorted(unknown))}")
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


@pytest.fixture(scope="session")
async def server_databases() -> AsyncIterator[ServerDatabases]:
    """Scratch databases created on first use, dropped at the end of the session."""
    databases = ServerDatabases()
    yield databases
    await databases.drop_all()


@pytest.fixture(scope="session")
async def redis_server() -> AsyncIterator[RedisServer]:
    """The Redis server, pinged on first use; its client is closed at the end of the session."""
    server = RedisServer()
    yield server
    await server.close()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run gateway tests marked `matrix` once per stack: all, or those the marker names."""
    marker = metafunc.definition.get_closest_marker("matrix")
    if marker is not None and "stack" in metafunc.fixturenames:
        stacks = marker.args[0] if marker.args else STACKS
        metafunc.parametrize("stack", stack_params(stacks), indirect=True)


@pytest.fixture
def stack(request: pytest.FixtureRequest) -> Stack:
    """The test's stack: the parametrised one under `pytest.mark.matrix`, else sqlite+memory."""
    return getattr(request, "param", DEFAULT)


@pytest.fixture
async def stack_settings(
    stack: Stack, server_databases: ServerDatabases, redis_server: RedisServer
) -> AsyncIterator[dict[str, Any]]:
    """Settings overrides putting a gateway on the test's stack (none for sqlite+memory).

    A server database is emptied first (the gateway migrates it at start); a Redis stack gets
    a key prefix of its own, whose keys are deleted after the test.
    """
    overrides: dict[str, Any] = {}
    if stack.database != "sqlite":
        overrides["database_url"] = await server_databases.url_for(stack.database)
        await wipe_database(overrides["database_url"])
    if stack.limits == "memory":
        yield overrides
        return
    await redis_server.client()  # skips (fails on CI) when Redis does not answer
    prefix = f"sgtest-{secrets.token_hex(4)}"
    yield {**overrides, "redis_url": redis_server.url, "redis_prefix": prefix}
    await redis_server.delete_keys(prefix)


GatewayFactory = Callable[..., contextlib.AbstractAsyncContextManager[Gateway]]


@pytest.fixture
def make_gateway(
    tmp_path: Path, upstream: FakeUpstream, stack_settings: dict[str, Any]
) -> GatewayFactory:
    """Starts gateways on the test's stack: `async with make_gateway(**overrides) as gw`."""

    def factory(**overrides: Any) -> contextlib.AbstractAsyncContextManager[Gateway]:
        settings = {"upstream_base": upstream.base_url, **stack_settings, **overrides}
        return running_gateway(gateway_settings(tmp_path, **settings))

    return factory


@pytest.fixture
async def gateway(make_gateway: GatewayFactory) -> AsyncIterator[Gateway]:
    """A gateway on the test's stack with the default test settings."""
    async with make_gateway() as gw:
        yield gw
