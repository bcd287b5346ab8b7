"""InfluxDB fixtures: Debian's influxd (1.x) run as a child process on loopback ports.

Each server gets a config file, meta, data and WAL directories of its own in a temp dir, and
is killed at the end of its fixture. Without /usr/bin/influxd (scripts/install-influxdb.sh
installs it) the tests skip with the reason, except under `CI=true`, where they fail.
"""

import asyncio
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.services import unusable

INFLUXD = Path("/usr/bin/influxd")
START_TIMEOUT_SECONDS = 30.0

CONFIG = """\
reporting-disabled = true
reporting-enabled = false  # Debian's name for the same switch
bind-address = "127.0.0.1:{rpc_port}"

[meta]
  dir = "{root}/meta"
  logging-enabled = false

[data]
  dir = "{root}/data"
  wal-dir = "{root}/wal"
  query-log-enabled = false

[monitor]
  store-enabled = false

[http]
  bind-address = "127.0.0.1:{http_port}"
  auth-enabled = {auth}
  log-enabled = false

[logging]
  level = "error"
  suppress-logo = true
"""


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Influxd:
    """One influxd child process; `url` is its HTTP API."""

    def __init__(self, root: Path, *, http_port: int, auth: bool) -> None:
        self.root = root
        self.url = f"http://127.0.0.1:{http_port}"
        self.auth: tuple[str, str] | None = None  # set once an admin user exists
        root.mkdir(parents=True, exist_ok=True)
        config = root / "influxdb.conf"
        config.write_text(
            CONFIG.format(
                root=root,
                http_port=http_port,
                rpc_port=free_port(),
                auth="true" if auth else "false",
            )
        )
        self._log = (root / "influxd.log").open("wb")
        self.process = subprocess.Popen(
            [str(INFLUXD), "run", "-config", str(config)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    async def wait_until_up(self) -> None:
        """Poll GET /ping until it answers 204; fail with influxd's log if it does not."""
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        async with httpx.AsyncClient(timeout=2) as client:
            while time.monotonic() < deadline and self.process.poll() is None:
                try:
                    if (await client.get(f"{self.url}/ping")).status_code == 204:
                        return
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.05)
        self.stop()
        log = (self.root / "influxd.log").read_text(errors="replace")[-2000:]
        pytest.fail(f"influxd did not answer /ping at {self.url}:\n{log}")

    async def query(self, q: str, db: str | None = None, method: str = "GET") -> Any:
        """Run InfluxQL `q`; the JSON answer (nanosecond times). Fails on an error."""
        params = {"q": q, "epoch": "ns"} | ({"db": db} if db else {})
        async with httpx.AsyncClient(timeout=10, auth=self.auth) as client:
            if method == "GET":
                response = await client.get(f"{self.url}/query", params=params)
            else:
                response = await client.post(f"{self.url}/query", data=params)
        assert response.status_code == 200, response.text
        body = response.json()
        assert all("error" not in result for result in body["results"]), body
        return body

    async def rows(self, q: str, db: str) -> list[dict[str, Any]]:
        """The rows of every series `q` returns, as dicts with the series' tags merged in."""
        rows = []
        for series in (await self.query(q, db))["results"][0].get("series", []):
            tags = series.get("tags", {})
            for values in series["values"]:
                rows.append(tags | dict(zip(series["columns"], values, strict=True)))
        return rows

    def stop(self) -> None:
        """Kill the process and wait for it."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)
        self._log.close()


InfluxdFactory = Callable[..., Awaitable[Influxd]]


@pytest.fixture(scope="module")
def influxd_binary() -> Path:
    """/usr/bin/influxd; skips (fails under CI=true) when it is missing."""
    if not INFLUXD.exists():
        unusable(f"{INFLUXD} missing: run scripts/install-influxdb.sh (Debian's influxdb)")
    return INFLUXD


@pytest.fixture
async def start_influxd(influxd_binary: Path, tmp_path: Path) -> AsyncIterator[InfluxdFactory]:
    """Starts influxd servers: `await start_influxd(auth=..., port=...)`; kills them after."""
    servers: list[Influxd] = []

    async def start(*, auth: bool = False, port: int | None = None) -> Influxd:
        root = tmp_path / f"influxd-{len(servers)}"
        server = Influxd(root, http_port=port or free_port(), auth=auth)
        servers.append(server)
        await server.wait_until_up()
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
async def influxd(
    influxd_binary: Path, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Influxd]:
    """One influxd without auth, shared by the module's tests (each uses its own database)."""
    server = Influxd(tmp_path_factory.mktemp("influxd"), http_port=free_port(), auth=False)
    try:
        await server.wait_until_up()
        yield server
    finally:
        server.stop()
