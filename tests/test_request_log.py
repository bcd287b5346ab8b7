"""The request log: one JSON line per ledger row, on stderr and in a rotating log file.

A real `spendgate serve` process with SPENDGATE_LOG_PATH and a small rotation size; the lines
are compared with the ledger's CSV export row by row, and searched for every secret.
"""

import asyncio
import contextlib
import json
import signal
import sqlite3
import time
from decimal import Decimal
from pathlib import Path

import httpx
import openai
import pytest

from spendgate.fake_upstream import FakeUpstream
from tests.processes import clean_environment, free_port, serve
from tests.support import ADMIN_TOKEN

UPSTREAM_KEY = "sk-upstream-never-logged-5d1f"
PROMPT = "the secret prompt text 7f3a9c"
MAX_BYTES = 1024  # the minimum the setting allows


def request_lines(text: str) -> list[dict]:
    """The request log's lines among everything printed."""
    lines = []
    for line in text.splitlines():
        if line.startswith("{"):
            parsed = json.loads(line)  # every JSON-looking line must parse
            if parsed.get("event") == "request":
                lines.append(parsed)
    return lines


async def test_one_json_line_per_request_on_stderr_and_in_the_rotated_file(
    tmp_path: Path, upstream: FakeUpstream
):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "spendgate.log"
    env = clean_environment(
        tmp_path,
        SPENDGATE_DATABASE_URL=f"sqlite:///{tmp_path / 'ledger.db'}",
        SPENDGATE_UPSTREAM_BASE=upstream.base_url,
        SPENDGATE_UPSTREAM_API_KEY=UPSTREAM_KEY,
        SPENDGATE_ADMIN_TOKEN=ADMIN_TOKEN,
        SPENDGATE_PORT=str(port),
        SPENDGATE_LOG_PATH=str(log_path),
        SPENDGATE_LOG_MAX_BYTES=str(MAX_BYTES),
        SPENDGATE_LOG_BACKUPS="50",
        SPENDGATE_FLUSH_INTERVAL_MS="20",
    )
    admin_headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with serve(tmp_path, env) as served:
        await served.wait_for_output("listening")
        async with httpx.AsyncClient(base_url=url, headers=admin_headers, timeout=30) as admin:
            assert (await admin.post("/admin/users", json={"name": "lena"})).status_code == 201
            created = await admin.post(
                "/admin/keys", json={"user": "lena", "limits": {"requests_per_minute": 25}}
            )
            key = created.json()["key"]
            sdk = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)
            messages = [{"role": "user", "content": PROMPT}]
            try:
                for _ in range(20):
                    await sdk.chat.completions.create(model="gpt-4o-mini", messages=messages)
                # A batch written to an empty file never rotates it: wait for the first batch,
                # so the next one finds the file past its size and rotates.
                deadline = time.monotonic() + 30
                while not request_lines(_read(log_path)):
                    assert time.monotonic() < deadline, "no request line in the log file"
                    await asyncio.sleep(0.05)
                stream = await sdk.chat.completions.create(
                    model="gpt-4o-mini", messages=messages, stream=True
                )
                async for _ in stream:
                    pass
                await sdk.embeddings.create(model="text-embedding-3-small", input=PROMPT)
                for n in range(5):  # 3 more within the limit, then two refused
                    refused = pytest.raises(openai.RateLimitError)
                    with refused if n >= 3 else contextlib.nullcontext():
                        await sdk.chat.completions.create(model="gpt-4o-mini", messages=messages)
            finally:
                await sdk.close()
        served.process.send_signal(signal.SIGTERM)
        assert await served.process.wait() in (0, -signal.SIGTERM), served.printed()
    printed = served.printed()

    ledger_path = tmp_path / "ledger.db"
    rows = ledger_rows(ledger_path)
    assert len(rows) == 27  # 20 + stream + embeddings + 3 + 2 refused

    on_stderr = {line["request_id"]: line for line in request_lines(printed)}
    files = sorted(tmp_path.glob("spendgate.log*"))
    # lines are written in batches (every 200 ms) and the file rotates between batches
    assert len(files) >= 2, "the log file was never rotated"
    in_files = {
        line["request_id"]: line
        for path in files
        for line in request_lines(path.read_text(encoding="utf-8"))
    }
    assert set(on_stderr) == set(in_files) == set(rows)
    assert len(request_lines(printed)) == len(rows)  # one line each, no repeats

    for request_id, row in rows.items():
        line = in_files[request_id]
        assert line == on_stderr[request_id]
        assert line["user"] == row["user"] == "lena"
        assert line["key_display"] == row["key"] and line["key_display"].startswith("sg-")
        assert "…" in line["key_display"]  # the display form, never the key
        assert line["model"] == row["model"]
        assert line["status"] == int(row["status"])
        assert line["endpoint"] == row["endpoint"]
        for kind in ("prompt_tokens", "completion_tokens", "total_tokens", "latency_ms"):
            assert line[kind] == int(row[kind]), kind
        assert line["estimated"] == (row["estimated"] == "true")
        cost = Decimal(row["cost_usd"]) if row["cost_usd"] else None
        assert (None if line["cost_usd"] is None else Decimal(line["cost_usd"])) == cost
        assert line["level"] == "info" and line["timestamp"].endswith("Z")
    statuses = sorted(line["status"] for line in in_files.values())
    assert statuses.count(429) == 2
    assert {line["error_code"] for line in in_files.values() if line["status"] == 429} == {
        "rate_limit_exceeded"
    }

    everything = printed + "".join(path.read_text(encoding="utf-8") for path in files)
    for secret in (key, UPSTREAM_KEY, ADMIN_TOKEN, PROMPT):
        assert secret not in everything


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8") if path.exists() else ""


def ledger_rows(path: Path) -> dict[str, dict[str, str]]:
    """The ledger's rows by request id, read from the SQLite file after the gateway stopped."""

    with sqlite3.connect(path) as db:
        db.row_factory = sqlite3.Row
        found = db.execute(
            "SELECT request_id, user_name AS user, key_display AS key, model, endpoint, status,"
            " prompt_tokens, completion_tokens, total_tokens, latency_ms, estimated, cost_pico"
            " FROM usage_events"
        ).fetchall()
    rows = {}
    for row in found:
        values = {name: row[name] for name in row.keys()}  # noqa: SIM118
        pico = values.pop("cost_pico")
        values["cost_usd"] = "" if pico is None else str(Decimal(pico) / 10**12)
        values["estimated"] = "true" if values["estimated"] else "false"
        rows[values["request_id"]] = {k: str(v) for k, v in values.items()}
    return rows
