"""Auth tricks: path games, header case and duplicates, spoofed headers, the admin surface.

Requests go over raw sockets wherever an HTTP client would normalise what is sent (paths,
header case, repeated headers). The invariant behind every case: nothing reaches an admin
route without the admin token, the upstream never sees a path outside `/v1/` nor any of the
client's credentials, and credentials that disagree authenticate nobody.
"""

import ast
import asyncio
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

import spendgate
from spendgate.proxy.headers import client_headers
from tests.support import ADMIN_TOKEN, UPSTREAM_KEY, assert_openai_error

VICTIM = "victim-user-5c1e"  # a user whose name must never show up in a refused answer


@dataclass
class Answer:
    status: int
    headers: list[tuple[str, str]]
    data: bytes  # everything after the status line, headers included

    def header_values(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key == name]


async def exchange(url: str, target: str, headers: list[str], method: str = "GET") -> Answer:
    """Send one request exactly as written (no client-side normalisation); read to the end."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    lines = [f"{method} {target} HTTP/1.1", "Host: gateway.test", *headers, "Connection: close"]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 30)
    writer.close()
    await writer.wait_closed()
    head, _, _ = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parsed = [line.split(":", 1) for line in header_lines]
    return Answer(
        int(status_line.split(" ")[1]),
        [(name.strip().lower(), value.strip()) for name, value in parsed],
        data,
    )


def inside_v1(path: str) -> bool:
    """Whether a path the upstream saw stays under /v1/ by any server's reading of it."""
    if not path.startswith("/v1/"):
        return False
    for segment in path.removeprefix("/v1/").split("/"):
        stem = segment.split(";", 1)[0].strip(" ")
        if segment and not stem.strip("."):  # `..`, `...`, `..;x`, `.. `
            return False
    return "\\" not in path


# --- paths ------------------------------------------------------------------------------

REFUSED_PROXY_PATHS = [
    "/v1/..;/admin/users",
    "/v1/files/..;x/..;y/admin/users",
    "/v1/%2e%2e;/admin/users",
    "/v1/.%2e/admin/users",
    "/v1/...",
    "/v1/files/.../x",
    "/v1/..%20/admin/users",
    "/v1/%c0%ae%c0%ae/admin/users",  # overlong UTF-8 dots
    "/v1/%c0%af%c0%afadmin",  # overlong UTF-8 slash
    "/v1/%e0%80%ae%e0%80%ae/admin",
    "/v1/files%2f..%2f..%2fadmin%2fusers",
    "/v1/%252e%252e/admin/users",
    "/v1/%25252e%25252e/admin/users",
    "/v1/files%00/x",
    "/v1/files%0d%0aX-Injected:%201",
    "/v1/files\\..\\..\\admin",
    "/v1/%5c%5cevil.example/files",
    "/v1/%2fevil.example/files",
    "/v1//evil.example/files",
    "/v1%2ffiles",
    "/v1/./files",
]


@pytest.mark.parametrize("target", REFUSED_PROXY_PATHS)
async def test_proxy_path_tricks_are_refused_before_the_upstream(gateway, upstream, target):
    key = await gateway.new_key(VICTIM)
    answer = await exchange(gateway.url, target, [f"Authorization: Bearer {key}"])
    assert answer.status == 400, answer.data
    assert b'"invalid_request"' in answer.data
    assert VICTIM.encode() not in answer.data
    assert upstream.stats.received == 0


@pytest.mark.parametrize(
    ("target", "upstream_path"),
    [
        ("/v1", "/v1/"),
        ("/v1/files.", "/v1/files."),
        ("/v1/files;x", "/v1/files;x"),
        ("/v1/fi%6ces", "/v1/files"),
        ("/v1/files/", "/v1/files/"),
        ("http://evil.example/v1/files", "/v1/files"),  # absolute form: the host is ignored
        ("http://127.0.0.1:1/v1/files?x=1", "/v1/files"),
    ],
)
async def test_harmless_odd_paths_reach_the_upstream_under_v1(
    gateway, upstream, target, upstream_path
):
    key = await gateway.new_key(VICTIM)
    answer = await exchange(gateway.url, target, [f"Authorization: Bearer {key}"])
    assert answer.status == 200, answer.data
    (seen,) = upstream.requests
    assert seen.path == upstream_path and inside_v1(seen.path)
    assert seen.headers["host"] == upstream.base_url.removeprefix("http://").split("/")[0]


@pytest.mark.parametrize(
    "target",
    [
        "/V1/files",  # paths are case-sensitive: not the proxy, and no API route either
        "//v1/files",
        "/%76%31/files",  # `/v1/files` encoded: the proxy only serves its literal prefix
    ],
)
async def test_near_miss_proxy_paths_are_not_forwarded(gateway, upstream, target):
    key = await gateway.new_key(VICTIM)
    answer = await exchange(gateway.url, target, [f"Authorization: Bearer {key}"])
    assert answer.status in (400, 404), answer.data
    assert upstream.stats.received == 0


ADMIN_PATH_TRICKS = [
    "/admin/users",
    "/admin/../admin/users",
    "/v1/../admin/users",
    "/v1/..;/admin/users",
    "//admin/users",
    "/admin//users",
    "/admin/./users",
    "/./admin/users",
    "/admin/users/.",
    "/admin/users;x",
    "/admin%2fusers",
    "/%61dmin/users",
    "/ADMIN/users",
    "/admin/users%00",
    "/admin/users%2e",
    "/admin/%c0%ae%c0%ae/admin/users",
    "/admin\\users",
    "/admin/users.",
    "http://evil.example/admin/users",
    "/admin/users?x=/../..",
    "/ui/../admin/users",
    "/me/../admin/users",
]


@pytest.mark.parametrize("credential", ["none", "gateway key", "wrong token"])
async def test_admin_path_tricks_never_reach_an_admin_route_without_the_token(
    make_gateway, upstream, credential
):
    async with make_gateway(auth_failures_per_minute=0) as gateway:
        key = await gateway.new_key(VICTIM)
        headers = {
            "none": [],
            "gateway key": [f"Authorization: Bearer {key}", f"X-Admin-Token: {key}"],
            "wrong token": [f"X-Admin-Token: {ADMIN_TOKEN}x"],
        }[credential]
        for target in ADMIN_PATH_TRICKS:
            answer = await exchange(gateway.url, target, headers)
            assert not 200 <= answer.status < 300, (target, answer.data)
            assert VICTIM.encode() not in answer.data, target
            assert answer.status in (307, 400, 401, 404), (target, answer.data)
        # the admin token does open the plain route: the refusals above are not a broken route
        answer = await exchange(gateway.url, "/admin/users", [f"X-Admin-Token: {ADMIN_TOKEN}"])
        assert answer.status == 200 and VICTIM.encode() in answer.data
        assert all(inside_v1(seen.path) for seen in upstream.requests)


async def test_a_trailing_slash_never_redirects_to_the_clients_host(gateway):
    for target in ("/admin/users/", "/me/", "/health/"):
        answer = await exchange(gateway.url, target, ["X-Forwarded-Host: evil.example"])
        location = " ".join(answer.header_values("location"))
        assert "gateway.test" not in location and "evil" not in location, (target, location)


# --- header case and duplicates -----------------------------------------------------------

K, K2, WRONG = "{k}", "{k2}", "sg-" + "w" * 43

PROXY_HEADER_CASES = [
    # (headers, accepted)
    ([f"AUTHORIZATION: Bearer {K}"], True),
    ([f"authorization: Bearer {K}"], True),
    ([f"Authorization: bearer {K}"], True),
    ([f"Authorization: BEARER {K}"], True),
    ([f"Authorization: Bearer  {K}"], True),
    ([f"Authorization: Bearer {K}  "], True),
    ([f"API-KEY: {K}"], True),
    ([f"X-Api-Key: {K}"], True),
    ([f"Authorization: Bearer {K}", f"Authorization: Bearer {K}"], True),
    ([f"Authorization: Bearer {K}", f"api-key: {K}", f"x-api-key: {K}"], True),
    ([f"Authorization: Bearer {K}", "Authorization: Bearer "], True),  # empty carries nothing
    ([f"Authorization: Bearer\t{K}"], False),
    ([f"Authorization: {K}"], False),
    (["Authorization: Bearer"], False),
    (["Authorization: Bearer "], False),
    (["Authorization:"], False),
    ([f"Authorization: Basic {K}"], False),
    ([f"Authorization: Basic {K}", f"api-key: {K}"], False),
    ([f"Authorization: Bearer {K}", f"Authorization: Bearer {WRONG}"], False),
    ([f"Authorization: Bearer {WRONG}", f"Authorization: Bearer {K}"], False),
    ([f"Authorization: Bearer {K}", f"Authorization: Bearer {K2}"], False),
    ([f"Authorization: Bearer {K}", f"api-key: {WRONG}"], False),
    ([f"api-key: {WRONG}", f"Authorization: Bearer {K}"], False),
    ([f"Authorization: Bearer {K}", f"x-api-key: {K2}"], False),
    ([f"api-key: {K}", f"x-api-key: {WRONG}"], False),
    ([f"api-key: {K}", f"api-key: {K2}"], False),
    ([f"Authorization: Bearer {K}", f"api-key: {K}", f"x-api-key: {K2}"], False),
    ([f"Authorization: Bearer {ADMIN_TOKEN}"], False),  # the admin token is no gateway key
    ([f"X-Admin-Token: {ADMIN_TOKEN}"], False),
]


def _fill(headers: list[str], key: str, key2: str) -> list[str]:
    return [line.replace(K, key).replace(K2, key2) for line in headers]


@pytest.mark.parametrize(("headers", "accepted"), PROXY_HEADER_CASES)
async def test_proxy_credential_headers(make_gateway, upstream, headers, accepted):
    async with make_gateway(auth_failures_per_minute=0) as gateway:
        key, key2 = await gateway.new_key("alice"), await gateway.new_key("bob")
        sent = _fill(headers, key, key2)
        proxied = await exchange(gateway.url, "/v1/files", sent)
        me = await exchange(gateway.url, "/me", sent)
    if accepted:
        assert proxied.status == 200, proxied.data
        assert upstream.stats.received == 1
        assert me.status == 200 and b'"alice"' in me.data, me.data
    else:
        for answer in (proxied, me):
            assert answer.status == 401, answer.data
            assert b'"invalid_api_key"' in answer.data
            assert b"alice" not in answer.data and b"bob" not in answer.data
        assert upstream.stats.received == 0


ADMIN_HEADER_CASES = [
    ([f"X-Admin-Token: {ADMIN_TOKEN}"], True),
    ([f"x-admin-token: {ADMIN_TOKEN}"], True),
    ([f"X-ADMIN-TOKEN: {ADMIN_TOKEN}"], True),
    ([f"Authorization: Bearer {ADMIN_TOKEN}"], True),
    ([f"AUTHORIZATION: bearer {ADMIN_TOKEN}"], True),
    ([f"Authorization: Bearer  {ADMIN_TOKEN} "], True),
    ([f"X-Admin-Token: {ADMIN_TOKEN}", f"Authorization: Bearer {ADMIN_TOKEN}"], True),
    ([f"X-Admin-Token: {ADMIN_TOKEN}", "X-Admin-Token: wrong"], False),
    (["X-Admin-Token: wrong", f"X-Admin-Token: {ADMIN_TOKEN}"], False),
    ([f"Authorization: Bearer {ADMIN_TOKEN}", "Authorization: Bearer wrong"], False),
    (["Authorization: Bearer wrong", f"Authorization: Bearer {ADMIN_TOKEN}"], False),
    ([f"X-Admin-Token: {ADMIN_TOKEN}", "Authorization: Bearer wrong"], False),
    (["X-Admin-Token: wrong", f"Authorization: Bearer {ADMIN_TOKEN}"], False),
    ([f"X-Admin-Token: {ADMIN_TOKEN}", f"Authorization: Bearer {K}"], False),
    ([f"X-Admin-Token: {ADMIN_TOKEN}", f"Authorization: Basic {ADMIN_TOKEN}"], False),
    ([f"Authorization: Bearer\t{ADMIN_TOKEN}"], False),
    ([f"Authorization: {ADMIN_TOKEN}"], False),
    ([f"X-Admin-Token: {ADMIN_TOKEN[:-1]}"], False),
    ([f"X-Admin-Token: {ADMIN_TOKEN}x"], False),
    ([f"X-Admin-Token: {K}"], False),  # a gateway key is no admin token
    ([f"Authorization: Bearer {K}"], False),
    ([f"api-key: {ADMIN_TOKEN}"], False),
    (["X-Admin-Token: ", "Authorization: Bearer "], False),
]


@pytest.mark.parametrize(("headers", "accepted"), ADMIN_HEADER_CASES)
async def test_admin_credential_headers(make_gateway, headers, accepted):
    async with make_gateway(auth_failures_per_minute=0) as gateway:
        key = await gateway.new_key(VICTIM)
        answer = await exchange(gateway.url, "/admin/users", _fill(headers, key, key))
    if accepted:
        assert answer.status == 200 and VICTIM.encode() in answer.data, answer.data
    else:
        assert answer.status == 401 and b'"invalid_api_key"' in answer.data, answer.data
        assert VICTIM.encode() not in answer.data


# --- what the upstream receives -------------------------------------------------------------


async def test_the_upstream_never_receives_the_clients_credentials(make_gateway, upstream):
    async with make_gateway(key_in_path=True, ingest_key="ingest-secret-4c2b9") as gateway:
        key = await gateway.new_key("alice")
        credentials = [
            f"Authorization: Bearer {key}",
            f"api-key: {key}",
            f"X-API-KEY: {key}",
            f"X-Admin-Token: {ADMIN_TOKEN}",
            "X-Ingest-Key: ingest-secret-4c2b9",
            f"Cookie: spendgate_session={key}; other={ADMIN_TOKEN}",
            f"Proxy-Authorization: Bearer {key}",
            "X-Kept: kept-value",
        ]
        for target in ("/v1/files", f"/{key}/v1/files"):
            answer = await exchange(gateway.url, target, credentials)
            assert answer.status == 200, answer.data
        client = gateway.client(key, default_headers={"x-admin-token": ADMIN_TOKEN})
        stream = await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        async for _ in stream:
            pass
        await client.embeddings.create(model="text-embedding-3-small", input="hi")
    assert len(upstream.requests) == 4
    secrets = (key, ADMIN_TOKEN, "ingest-secret-4c2b9", key.removeprefix("sg-"))
    for seen in upstream.requests:
        assert seen.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
        for name in ("api-key", "x-api-key", "x-admin-token", "x-ingest-key", "cookie",
                     "proxy-authorization"):  # fmt: skip
            assert name not in seen.headers, (name, seen.path)
        everything = f"{seen.path}?{seen.query_string} {seen.headers} {seen.json}"
        for secret in secrets:
            assert secret not in everything
        assert inside_v1(seen.path)
    assert upstream.requests[0].headers["x-kept"] == "kept-value"


async def test_spoofed_gateway_and_hop_by_hop_headers_are_not_forwarded(gateway, upstream):
    key = await gateway.new_key("alice")
    answer = await exchange(
        gateway.url,
        "/v1/files",
        [
            f"Authorization: Bearer {key}",
            "X-Spendgate-Request-Id: req_forged",
            "X-Spendgate-Cost-Usd: -100",
            "x-spendgate-upstream: evil",
            "X-Forwarded-For: 203.0.113.7",
            "Host: evil.example",  # a second Host
            "Connection: x-hop-secret",
            "X-Hop-Secret: only-for-the-next-hop",
            "Keep-Alive: timeout=5",
            "TE: trailers",
            "Upgrade: websocket",
        ],
    )
    assert answer.status == 200, answer.data
    (seen,) = upstream.requests
    assert not [name for name in seen.headers if name.startswith("x-spendgate-")]
    for name in ("x-hop-secret", "keep-alive", "te", "upgrade"):
        assert name not in seen.headers, name
    assert "evil" not in seen.headers["host"]
    assert answer.header_values("x-spendgate-request-id") != ["req_forged"]
    assert len(answer.header_values("x-spendgate-request-id")) == 1
    assert len(answer.header_values("x-spendgate-cost-usd")) == 1
    assert answer.header_values("x-spendgate-cost-usd") != ["-100"]


def test_an_upstreams_own_gateway_headers_are_not_relayed():
    """An upstream (or another gateway in front of it) cannot speak in the gateway's name."""
    relayed = client_headers(
        [
            (b"X-Spendgate-Cost-Usd", b"0"),
            (b"x-spendgate-request-id", b"req_upstream"),
            (b"Content-Type", b"application/json"),
            (b"X-Request-Id", b"upstream-id"),
        ]
    )
    assert relayed == [(b"content-type", b"application/json"), (b"x-request-id", b"upstream-id")]


async def test_a_forwarded_for_header_does_not_dodge_the_failed_auth_throttle(
    make_gateway, upstream
):
    async with make_gateway(auth_failures_per_minute=3) as gateway:
        key = await gateway.new_key("alice")
        wrong = "Authorization: Bearer sg-" + "x" * 43
        for n in range(4):
            spoofed = [f"X-Forwarded-For: 198.51.100.{n}", f"X-Real-IP: 10.0.0.{n}"]
            answer = await exchange(gateway.url, "/v1/files", [*spoofed, wrong])
            assert answer.status == 401, answer.data
        spoofed = ["X-Forwarded-For: 192.0.2.99", "Forwarded: for=192.0.2.99"]
        answer = await exchange(
            gateway.url, "/v1/files", [*spoofed, f"Authorization: Bearer {key}"]
        )
        assert answer.status == 429 and b'"rate_limit_exceeded"' in answer.data
    assert upstream.stats.received == 0


async def test_a_trusted_user_header_from_an_untrusted_peer_signs_nobody_in(make_gateway):
    async with make_gateway(trusted_user_header="X-Forwarded-User") as gateway:
        await gateway.new_key("alice")
        answer = await exchange(gateway.url, "/ui/", ["X-Forwarded-User: alice"])
        assert answer.status == 303 and "/ui/login" in " ".join(answer.header_values("location"))
        me = await exchange(gateway.url, "/me", ["X-Forwarded-User: alice"])
        assert me.status == 401


# --- no admin surface without a token -------------------------------------------------------


async def admin_operations(gateway) -> list[tuple[str, str]]:
    """Every (method, path) of the API under /admin, from the app's own OpenAPI spec."""
    spec = (await gateway.http().get("/openapi.json")).json()
    operations = [
        (method.upper(), re.sub(r"\{[^}]+\}", "x", path))
        for path, item in spec["paths"].items()
        if path.startswith("/admin")
        for method in item
        if method in ("get", "post", "put", "patch", "delete")
    ]
    assert len(operations) >= 15, operations  # the spec was read, not an empty list
    return operations


@pytest.mark.parametrize("configured", [False, True])
async def test_no_admin_route_answers_without_the_admin_token(make_gateway, configured):
    token = ADMIN_TOKEN if configured else None
    async with make_gateway(admin_token=token, auth_failures_per_minute=0) as gateway:
        key = await gateway.new_key(VICTIM)
        http = gateway.http()
        attempts = [{}, {"Authorization": f"Bearer {key}"}, {"X-Admin-Token": key}]
        if not configured:  # with no token set, not even a guess of one opens anything
            attempts += [{"X-Admin-Token": ADMIN_TOKEN}, {"Authorization": f"Bearer {ADMIN_TOKEN}"}]
            attempts += [{"X-Admin-Token": ""}, {"Authorization": "Bearer None"}]
        for method, path in await admin_operations(gateway):
            for headers in attempts:
                body = {} if method in ("POST", "PATCH", "PUT") else None
                response = await http.request(method, path, headers=headers, json=body)
                assert_openai_error(response, 401, "invalid_api_key")
                assert VICTIM not in response.text


# --- timing-safe comparisons ----------------------------------------------------------------

_SECRET_NAME = re.compile(r"(^|_)(token|secret|password|csrf|key_hash|token_hash|digest)($|_)")
_NOT_SECRET = re.compile(r"_(id|ids|count|type|name|kind|prefix)$")


def _secret_names(node: ast.expr) -> list[str]:
    """The secret-looking names an operand is (a name or attribute, possibly called)."""
    while isinstance(node, ast.Call):
        node = node.func
    name = node.id if isinstance(node, ast.Name) else getattr(node, "attr", None)
    if name is None or _NOT_SECRET.search(name) or not _SECRET_NAME.search(name.lower()):
        return []
    return [name]


def _is_sql_column(node: ast.expr) -> bool:
    """`Model.column`: SQLAlchemy builds SQL from it; nothing is compared in Python."""
    return (
        isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id[:1].isupper()
    )


def plain_secret_comparisons(source: str) -> list[str]:
    """`==`/`!=` comparisons of a token, secret or key hash (not against a literal or SQL)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Compare):
            continue
        operands = [node.left, *node.comparators]
        for op, left, right in zip(node.ops, operands[:-1], operands[1:], strict=True):
            if not isinstance(op, ast.Eq | ast.NotEq):
                continue
            if any(
                isinstance(side, ast.Constant) or _is_sql_column(side) for side in (left, right)
            ):
                continue
            if _secret_names(left) or _secret_names(right):
                found.append(f"{node.lineno}: {ast.unparse(node)}")
    return found


def test_the_secret_comparison_check_finds_what_it_looks_for():
    flagged = plain_secret_comparisons(
        "if given == settings.admin_token: pass\n"
        "ok = key_hash != hash_key(key)\n"
        "same = session.csrf == form_csrf\n"
        "ok = request.headers.get('x') == runtime.secret()\n"
    )
    assert len(flagged) == 4, flagged
    assert not plain_secret_comparisons(
        "q = select(ApiKey).where(ApiKey.key_hash == key_hash)\n"
        "ok = hmac.compare_digest(given, token)\n"
        "empty = token == ''\n"
        "same = total_tokens == prompt_tokens + completion_tokens\n"
        "same = event.token_id == token_id\n"
    )


def test_every_secret_comparison_in_the_source_is_constant_time():
    root = Path(spendgate.__file__).parent
    found = [
        f"{path.relative_to(root)}:{line}"
        for path in sorted(root.rglob("*.py"))
        for line in plain_secret_comparisons(path.read_text(encoding="utf-8"))
    ]
    assert not found, "compare secrets with hmac.compare_digest (keys.material.same_secret)"
