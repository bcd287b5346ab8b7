"""`spendgate serve --workers N`: worker processes on one socket, sharing limits through Redis.

Real processes over real sockets: the gateway runs as `python -m spendgate serve` against the
session's fake upstream, a SQLite ledger in tmp_path and (for several workers) Redis.
"""

import asyncio
import contextlib
import secrets
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx
import openai
import pytest

from spendgate.fake_upstream import FakeUpstream
from tests.processes import child_pids, clean_environment, free_port, serve
from tests.services import RedisServer
from tests.support import ADMIN_TOKEN

WORKERS = 3
PER_MINUTE = 20
REQUESTS = 60
MESSAGES = [{"role": "user", "content": "hello world"}]


def test_several_workers_without_redis_are_refused(tmp_path):
    env = clean_environment(
        tmp_path,
        SPENDGATE_DATABASE_URL=f"sqlite:///{tmp_path}/ledger.db",
        SPENDGATE_UPSTREAM_API_KEY="sk-test",
        SPENDGATE_PORT=str(free_port()),
    )
    result = subprocess.run(
        [sys.executable, "-m", "spendgate", "serve", "--workers", "2"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert "--workers 2" in result.stderr and "SPENDGATE_REDIS_URL" in result.stderr
    assert not (tmp_path / "ledger.db").exists()


async def chat(client: openai.AsyncOpenAI) -> tuple[str, str]:
    """One chat request: 'ok' or the error code, and the gateway's request id."""
    try:
        raw = await client.chat.completions.with_raw_response.create(
            model="fake-gpt",
            messages=MESSAGES,  # type: ignore[arg-type]
            max_tokens=10,
        )
    except openai.APIStatusError as exc:
        return str(exc.code), exc.response.headers["x-spendgate-request-id"]
    return "ok", raw.headers["x-spendgate-request-id"]


def ledger_rows(database: Path) -> dict[str, int]:
    """request id -> HTTP status of every row in the usage ledger."""
    with contextlib.closing(sqlite3.connect(database)) as conn:
        return dict(conn.execute("SELECT request_id, status FROM usage_events").fetchall())


@pytest.mark.services
async def test_workers_share_one_socket_and_one_rate_limit_and_stop_cleanly(
    tmp_path: Path, upstream: FakeUpstream, redis_server: RedisServer
) -> None:
    await redis_server.client()  # skips (fails under CI=true) when Redis does not answer
    prefix = f"sgtest-{secrets.token_hex(4)}"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    database = tmp_path / "ledger.db"
    env = clean_environment(
        tmp_path,
        SPENDGATE_DATABASE_URL=f"sqlite:///{database}",
        SPENDGATE_REDIS_URL=redis_server.url,
        SPENDGATE_REDIS_PREFIX=prefix,
        SPENDGATE_UPSTREAM_BASE=upstream.base_url,
        SPENDGATE_UPSTREAM_API_KEY="sk-test",
        SPENDGATE_ADMIN_TOKEN=ADMIN_TOKEN,
        SPENDGATE_HOST="127.0.0.1",
        SPENDGATE_PORT=str(port),
    )
    try:
        async with serve(tmp_path, env, "--workers", str(WORKERS)) as served:
            await served.wait_for_output("listening")
            workers = child_pids(served.process.pid)
            assert len(workers) == WORKERS, served.printed()

            headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
            async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as admin:
                user = await admin.post("/admin/users", json={"name": "wanda"})
                assert user.status_code == 201, user.text
                limits = {"requests_per_minute": PER_MINUTE}
                created = await admin.post("/admin/keys", json={"user": "wanda", "limits": limits})
                assert created.status_code == 201, created.text
            key = created.json()["key"]

            sdk = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=30)
            try:
                answers = await asyncio.gather(*(chat(sdk) for _ in range(REQUESTS)))
            finally:
                await sdk.close()
            outcomes = [outcome for outcome, _ in answers]
            assert outcomes.count("ok") == PER_MINUTE, outcomes
            assert outcomes.count("rate_limit_exceeded") == REQUESTS - PER_MINUTE, outcomes
            # A request id starts with its process's random prefix ("req_" + 12 hex digits):
            # several prefixes, several processes answered; at most one per worker.
            answered_by = {request_id[:16] for _, request_id in answers}
            assert 2 <= len(answered_by) <= WORKERS, answered_by

            served.process.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(served.process.wait(), 60) == 0, served.printed()
            assert not any(Path(f"/proc/{pid}").exists() for pid in workers)
            assert "Traceback" not in served.printed(), served.printed()
    finally:
        await redis_server.delete_keys(prefix)

    assert upstream.stats.received == PER_MINUTE
    rows = ledger_rows(database)
    # one row per request, written before the workers exited: the refused ones too
    assert set(rows) == {request_id for _, request_id in answers}
    assert list(rows.values()).count(200) == upstream.stats.received
    assert list(rows.values()).count(429) == REQUESTS - PER_MINUTE
