"""No secret leaks: every answer, log line and database byte is searched for every secret.

A real `spendgate serve` process with the request log on, a log file, two upstreams (one on a
closed port), the admin token, an ingest key, self-service and keys in the path is driven
through every surface: the admin API, the proxy (plain, streamed, each metered endpoint,
every gateway error), `/me`, the public API, ingestion, metrics, health and the console.
Then it is stopped and the upstream keys, the admin token, the ingest key and every key and
tracking token issued are looked for in everything it said or wrote. The one place a key may
appear is the answer that created it; the database must hold its hash instead.
"""

import asyncio
import re
import secrets
import signal
import time
from pathlib import Path

import httpx

from spendgate.fake_upstream import FakeUpstream
from spendgate.keys.material import display_key, hash_key
from tests.processes import clean_environment, free_port, serve

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello there"}]}


def variants(secret: str) -> list[str]:
    """The secret and its middle (a truncated or partly masked copy is a leak too)."""
    return [secret, secret[8:-8]] if len(secret) >= 32 else [secret]


class Transcript:
    """Every answer the gateway gave, as text: status, headers and body."""

    def __init__(self) -> None:
        self.answers: list[str] = []
        self.creations: list[tuple[str, str]] = []  # (the secret created, the answer)

    def add(self, response: httpx.Response, created: str | None = None) -> httpx.Response:
        headers = "\n".join(f"{name}: {value}" for name, value in response.headers.multi_items())
        text = f"{response.status_code}\n{headers}\n\n{response.text}"
        if created is None:
            self.answers.append(text)
        else:
            self.creations.append((created, text))
        return response


async def test_no_secret_in_any_answer_log_line_or_database_file(
    tmp_path: Path, upstream: FakeUpstream
):
    upstream_key = "sk-fake-upstream-" + secrets.token_urlsafe(24)
    dead_key = "sk-dead-upstream-" + secrets.token_urlsafe(24)
    # `serve` wants the single-upstream key even when [[upstreams]] name their own (cli.py)
    env_key = "sk-env-upstream-" + secrets.token_urlsafe(24)
    admin_token = "admin-" + secrets.token_urlsafe(24)
    ingest_key = "ingest-" + secrets.token_urlsafe(24)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    config = tmp_path / "spendgate.toml"
    config.write_text(
        f"""
[[upstreams]]
name = "fake"
kind = "openai"
base_url = "{upstream.base_url}"
api_key_env = "SG_SCAN_FAKE_KEY"
models = ["gpt-*", "text-embedding-*"]

[[upstreams]]
name = "dead"
kind = "openai"
base_url = "http://127.0.0.1:{free_port()}/v1"
api_key_env = "SG_SCAN_DEAD_KEY"
models = ["dead-*"]
""",
        encoding="utf-8",
    )
    log_path = tmp_path / "spendgate.log"
    db_path = tmp_path / "ledger.db"
    env = clean_environment(
        tmp_path,
        SPENDGATE_CONFIG=str(config),
        SG_SCAN_FAKE_KEY=upstream_key,
        SG_SCAN_DEAD_KEY=dead_key,
        SPENDGATE_UPSTREAM_API_KEY=env_key,
        SPENDGATE_DATABASE_URL=f"sqlite:///{db_path}",
        SPENDGATE_ADMIN_TOKEN=admin_token,
        SPENDGATE_INGEST_KEY=ingest_key,
        SPENDGATE_PORT=str(port),
        SPENDGATE_LOG_PATH=str(log_path),
        SPENDGATE_REQUEST_LOG="true",
        SPENDGATE_KEY_IN_PATH="true",
        SPENDGATE_SELF_SERVICE="true",
        SPENDGATE_MAX_BODY_BYTES="16384",
        SPENDGATE_FLUSH_INTERVAL_MS="20",
        SPENDGATE_PRINCIPAL_REFRESH_SECONDS="0.2",
    )
    seen = Transcript()
    async with serve(tmp_path, env) as served:
        await served.wait_for_output("listening")
        async with (
            httpx.AsyncClient(base_url=url, timeout=30) as http,
            httpx.AsyncClient(base_url=url, timeout=30) as console,
            httpx.AsyncClient(base_url=url, timeout=30) as user_console,
        ):
            issued = await exercise(http, console, user_console, seen, admin_token, ingest_key)
        served.process.send_signal(signal.SIGTERM)
        assert await served.process.wait() in (0, -signal.SIGTERM), served.printed()
    printed = served.printed()

    keys, tokens = issued["keys"], issued["tracking_tokens"]
    assert len(keys) == 6 and len(tokens) == 1
    shared = {"upstream key": upstream_key, "dead upstream key": dead_key, "env key": env_key,
              "admin token": admin_token, "ingest key": ingest_key}  # fmt: skip
    every = shared | {f"key {n}": key for n, key in enumerate(keys)}
    every |= {f"tracking token {n}": token for n, token in enumerate(tokens)}

    # The answers: no secret at all, except a key in the answer that created it.
    for name, secret in every.items():
        for text in seen.answers:
            for form in variants(secret):
                assert form not in text, f"the {name} in an answer:\n{text[:2000]}"
    assert len(seen.creations) == len(keys) + len(tokens)
    for created, text in seen.creations:
        assert created in text  # by contract: shown once, here
        for name, secret in every.items():
            if secret != created:
                assert secret not in text, f"the {name} in the answer creating another key"

    # What the process printed and wrote to its log files.
    files = sorted(tmp_path.glob("spendgate.log*"))
    logged = printed + "".join(path.read_text(encoding="utf-8") for path in files)
    request_lines = [line for line in logged.splitlines() if '"event": "request"' in line
                     or '"event":"request"' in line]  # fmt: skip
    assert len(request_lines) >= 2 * 12, "the request log was not on: the scan saw nothing"
    for name, secret in every.items():
        for form in variants(secret):
            assert form not in logged, f"the {name} in the output or a log file"

    # The database file and its journal, byte for byte: hashes only.
    database = b"".join(
        path.read_bytes()
        for path in (db_path, Path(f"{db_path}-wal"), Path(f"{db_path}-shm"))
        if path.exists()
    )
    for name, secret in every.items():
        for form in variants(secret):
            assert form.encode() not in database, f"the {name} in the database file"
    for secret in [*keys, *tokens]:  # proof that the scan read the right file
        assert hash_key(secret).encode() in database
        assert display_key(secret).encode() in database


async def exercise(
    http: httpx.AsyncClient,
    console: httpx.AsyncClient,
    user_console: httpx.AsyncClient,
    seen: Transcript,
    admin_token: str,
    ingest_key: str,
) -> dict[str, list[str]]:
    """Drive every surface of the gateway; return the keys and tracking tokens issued."""
    admin = {"X-Admin-Token": admin_token}

    async def call(method: str, path: str, **kwargs: object) -> httpx.Response:
        return seen.add(await http.request(method, path, **kwargs))  # type: ignore[arg-type]

    async def create_key(body: dict[str, object]) -> str:
        response = await http.post("/admin/keys", json=body, headers=admin)
        assert response.status_code == 201, response.text
        key = response.json()["key"]
        seen.add(response, created=key)
        return key

    # --- the admin API
    for body in ({"name": "ana", "email": "ana@example.com"}, {"name": "ben"}):
        assert (await call("POST", "/admin/users", json=body, headers=admin)).status_code == 201
    key = await create_key({"user": "ana", "note": "main"})
    narrow = await create_key({"user": "ana", "models": ["gpt-4o-mini"]})
    limited = await create_key({"user": "ben", "limits": {"requests_per_minute": 1}})
    revoked = await create_key({"user": "ben", "note": "to revoke"})
    listed = (await call("GET", "/admin/keys", headers=admin)).json()
    await call("PATCH", f"/admin/keys/{listed[0]['id']}", json={"note": "renamed"}, headers=admin)
    await call("GET", "/admin/users", headers=admin)
    await call("GET", "/admin/users/ana", headers=admin)
    await call("POST", "/admin/users/ana/credits", json={"amount_usd": 5}, headers=admin)
    # a full key in the path: the answer names it by its display form only
    assert (await call("POST", f"/admin/keys/{revoked}/revoke", headers=admin)).status_code == 200
    await call("GET", f"/admin/usage/{key}", headers=admin)
    await call("GET", "/admin/keys", headers={"X-Admin-Token": key})  # 401

    # --- the proxy: every metered endpoint, plain and streamed, and every error
    bearer = {"Authorization": f"Bearer {key}"}
    assert (await call("POST", "/v1/chat/completions", json=CHAT, headers=bearer)).is_success
    async with http.stream(
        "POST", "/v1/chat/completions", json={**CHAT, "stream": True}, headers=bearer
    ) as streamed:
        await streamed.aread()
        seen.add(streamed)
    embedding = {"model": "text-embedding-3-small", "input": "hello"}
    assert (await call("POST", "/v1/embeddings", json=embedding, headers=bearer)).is_success
    responses = {"model": "gpt-4o-mini", "input": "hello"}
    assert (await call("POST", "/v1/responses", json=responses, headers=bearer)).is_success
    async with http.stream(
        "POST", "/v1/responses", json={**responses, "stream": True}, headers={"api-key": key}
    ) as streamed:
        await streamed.aread()
        seen.add(streamed)
    await call("GET", "/v1/models", headers={"x-api-key": key})
    await call("GET", "/v1/files?limit=2", headers=bearer)
    relayed = await call(
        "POST", "/v1/chat/completions", json=CHAT, headers={**bearer, "x-fake-status": "500"}
    )
    assert relayed.status_code == 500
    statuses = {
        401: await call("GET", "/v1/models", headers={"Authorization": f"Bearer {revoked}"}),
        403: await call(
            "POST",
            "/v1/chat/completions",
            json={**CHAT, "model": "gpt-4o"},
            headers={"Authorization": f"Bearer {narrow}"},
        ),
        413: await call(
            "POST", "/v1/embeddings", json={**embedding, "input": "x" * 20_000}, headers=bearer
        ),
        502: await call(
            "POST", "/v1/chat/completions", json={**CHAT, "model": "dead-model"}, headers=bearer
        ),
        400: await call("GET", f"/v1/files?api_key={key}", headers=bearer),
    }
    within, over = [
        await call("POST", "/v1/chat/completions", json=CHAT, headers={"x-api-key": limited})
        for _ in range(2)
    ]
    statuses[200], statuses[429] = within, over
    for status, response in statuses.items():
        assert response.status_code == status, (status, response.text)
    conflicting = {"Authorization": f"Bearer {key}", "api-key": narrow}
    assert (await call("GET", "/v1/models", headers=conflicting)).status_code == 401
    # the key in the path, working, escaping and revoked
    assert (await call("POST", f"/{key}/v1/chat/completions", json=CHAT)).is_success
    assert (await call("GET", f"/{key}/v1/files/%2e%2e/admin")).status_code == 400
    assert (await call("GET", f"/{revoked}/v1/models")).status_code == 401

    # --- self, public and operations
    assert (await call("GET", "/me", headers=bearer)).status_code == 200
    await call("GET", "/me/usage?group_by=model", headers=bearer)
    public = await http.post("/public/keys", json={"username": "selfie", "note": "mine"})
    assert public.status_code == 201, public.text
    selfie = public.json()["key"]
    seen.add(public, created=selfie)
    await call("GET", "/public/keys/selfie")
    assert (
        await call("GET", "/v1/models", headers={"Authorization": f"Bearer {selfie}"})
    ).is_success

    # --- ingestion
    created = await http.post(
        "/admin/tracking-tokens", json={"name": "app", "user": "ana"}, headers=admin
    )
    assert created.status_code == 201, created.text
    tracking = created.json()["token"]
    seen.add(created, created=tracking)
    event = {"tracking_token": tracking, "model": "gpt-4o-mini", "prompt_tokens": 3,
             "completion_tokens": 5, "request_id": "app-1"}  # fmt: skip
    accepted = await call("POST", "/ingest", json=event, headers={"X-Ingest-Key": ingest_key})
    assert accepted.status_code == 202, accepted.text
    await call("POST", "/ingest", json=event, headers={"X-Ingest-Key": "wrong"})
    await call("POST", "/ingest", json={**event, "tracking_token": revoked},
               headers={"X-Ingest-Key": ingest_key})  # fmt: skip
    await call("GET", "/admin/tracking-tokens", headers=admin)

    # --- the ledger's reports, once every request is in it
    deadline = time.monotonic() + 30
    while True:
        usage = await call("GET", "/admin/usage?group_by=key", headers=admin)
        # 9 through `key` (not /v1/models, nor the 413: refused before admission), the 403,
        # the 200 and 429 of `limited`, the ingested event
        if usage.json()["totals"]["requests"] >= 13:
            break
        assert time.monotonic() < deadline, usage.text
        await asyncio.sleep(0.05)
    for path in ("/admin/usage?group_by=user", "/admin/usage.csv", "/admin/monitor", "/metrics"):
        assert (await call("GET", path, headers=admin)).status_code == 200, path
    for path in ("/health", "/ping", "/openapi.json"):
        await call("GET", path)

    # --- the console: an admin session, a user session, a failed sign-in
    await sign_in(console, seen, token=admin_token)
    for path in ("/ui/", "/ui/users", "/ui/users/ana", "/ui/keys", f"/ui/keys/{listed[0]['id']}",
                 "/ui/usage", "/ui/usage.csv", "/ui/reports", "/ui/reports/data",
                 "/ui/tracking-tokens"):  # fmt: skip
        assert seen.add(await console.get(path)).status_code == 200, path
    await sign_in(user_console, seen, key=key)
    assert seen.add(await user_console.get("/ui/me")).status_code == 200
    failed = await sign_in(user_console, seen, key=revoked, expect=401)
    assert "sign" in failed.text.lower()

    keys = [key, narrow, limited, revoked, selfie, await create_key({"user": "ben"})]
    return {"keys": keys, "tracking_tokens": [tracking]}


async def sign_in(
    client: httpx.AsyncClient, seen: Transcript, expect: int = 303, **fields: str
) -> httpx.Response:
    """Post the console's sign-in form (admin token or key) with its CSRF token."""
    page = seen.add(await client.get("/ui/login"))
    form_id = "admin-login" if "token" in fields else "user-login"
    form = re.search(rf'<form[^>]*id="{form_id}".*?</form>', page.text, re.DOTALL)
    assert form is not None, page.text
    csrf = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', form.group(0))
    assert csrf is not None, form.group(0)
    response = seen.add(
        await client.post("/ui/login", data={"csrf_token": csrf.group(1), **fields})
    )
    assert response.status_code == expect, response.text[:500]
    return response


def test_the_transcript_keeps_headers_and_bodies():
    """The scan is only as good as what it reads: headers and body are both in the text."""
    seen = Transcript()
    request = httpx.Request("GET", "http://x/")
    seen.add(httpx.Response(200, headers={"x-a": "in-a-header"}, text="in-the-body",
                            request=request))  # fmt: skip
    assert "in-a-header" in seen.answers[0] and "in-the-body" in seen.answers[0]
