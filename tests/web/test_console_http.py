"""The web console over HTTP: real gateways on loopback sockets, driven with httpx.

Sign-in, session cookies, CSRF, roles and SSO are checked at the HTTP level here (the
browser tests in test_browser.py drive the same pages in Chromium). Numbers shown by the
console are checked against the admin API after real traffic through the openai SDK.
"""

import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from html.parser import HTMLParser
from importlib.metadata import version
from urllib.parse import parse_qsl, urlsplit

import httpx
import openai
import pytest
from starlette.requests import Request

from spendgate.keys.material import display_key, hash_key
from spendgate.ledger.events import UsageEvent
from spendgate.web.assets import plotly_js_path
from spendgate.web.session import (
    SESSION_COOKIE,
    Session,
    SessionCodec,
    is_https,
    session_secret,
)
from tests.support import ADMIN_TOKEN

# USD per 1K tokens. "hello world" is 3 prompt tokens; max_tokens=10 bills 10 completion
# tokens: 0.23 USD a request on fake-gpt, 0.023 on fake-gpt-mini.
PRICING = json.dumps(
    {"fake-gpt": {"input": 10, "output": 20}, "fake-gpt-mini": {"input": 1, "output": 2}}
)
SSO = {"trusted_proxies": ["127.0.0.1/32"], "trusted_user_header": "X-Forwarded-User"}
ADMIN_PAGES = (
    "/ui/reports",
    "/ui/usage",
    "/ui/usage.csv",
    "/ui/users",
    "/ui/users/alice",
    "/ui/keys",
    "/ui/keys/1",
    "/ui/tracking-tokens",
)


# --- a small HTML reader -------------------------------------------------------------------

VOID_TAGS = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "wbr"}


@dataclass
class Node:
    """An HTML element: tag, attributes, children (elements and text)."""

    tag: str
    attrs: dict[str, str]
    children: list["Node | str"] = field(default_factory=list)

    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text() for c in self.children)

    def all(self, tag: str | None = None, **attrs: str) -> list["Node"]:
        """Descendant elements with this tag and these attribute values (class_: a class)."""
        found = []
        for child in self.children:
            if isinstance(child, str):
                continue
            classes = child.attrs.get("class", "").split()
            if (tag is None or child.tag == tag) and all(
                value in classes if name == "class_" else child.attrs.get(name) == value
                for name, value in attrs.items()
            ):
                found.append(child)
            found += child.all(tag, **attrs)
        return found

    def one(self, tag: str | None = None, **attrs: str) -> "Node":
        found = self.all(tag, **attrs)
        assert len(found) == 1, f"{len(found)} × {tag} {attrs}"
        return found[0]


class _TreeBuilder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", {})
        self.open = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {name: value or "" for name, value in attrs})
        self.open[-1].children.append(node)
        if tag not in VOID_TAGS:
            self.open.append(node)

    def handle_endtag(self, tag: str) -> None:
        for depth in range(len(self.open) - 1, 0, -1):
            if self.open[depth].tag == tag:
                del self.open[depth:]
                return

    def handle_data(self, data: str) -> None:
        self.open[-1].children.append(data)


def html(response: httpx.Response) -> Node:
    """The page's element tree (the response must be an HTML page)."""
    assert response.headers["content-type"].startswith("text/html"), response.headers
    builder = _TreeBuilder()
    builder.feed(response.text)
    return builder.root


def rows(page: Node, table_id: str) -> list[Node]:
    """The `tbody tr` rows of table#table_id."""
    return page.one("table", id=table_id).one("tbody").all("tr")


def csrf_of(page: Node, form_id: str) -> str:
    token = page.one("form", id=form_id).one("input", name="csrf_token").attrs["value"]
    assert token
    return token


def exact_json(response: httpx.Response) -> object:
    assert response.status_code == 200, response.text
    return json.loads(response.text, parse_float=Decimal)


def set_cookie_attributes(response: httpx.Response, name: str) -> dict[str, str]:
    """The attributes of the Set-Cookie header for `name` (lower-cased names, value under '')."""
    for header in response.headers.get_list("set-cookie"):
        parts = [part.strip() for part in header.split(";")]
        cookie_name, _, value = parts[0].partition("=")
        if cookie_name == name:
            attributes = {"": value}
            for part in parts[1:]:
                key, _, attribute = part.partition("=")
                attributes[key.lower()] = attribute
            return attributes
    raise AssertionError(f"no Set-Cookie for {name}: {response.headers}")


def assert_forbidden(response: httpx.Response) -> Node:
    assert response.status_code == 403, (response.status_code, response.text[:300])
    page = html(response)
    assert page.one("h1").text().strip() == "Forbidden"
    return page


def assert_sent_to_sign_in(response: httpx.Response, path: str) -> None:
    assert response.status_code == 303, (response.status_code, response.text[:300])
    location = urlsplit(response.headers["location"])
    assert (location.path, dict(parse_qsl(location.query))) == ("/ui/login", {"next": path})


# --- signing in ----------------------------------------------------------------------------


async def post_login(http: httpx.AsyncClient, **fields: str) -> httpx.Response:
    """Open the sign-in page and post its form with `fields` (token= or key=, next=)."""
    page = html(await http.get("/ui/login"))
    form_id = "admin-login" if "token" in fields else "user-login"
    return await http.post("/ui/login", data={"csrf_token": csrf_of(page, form_id), **fields})


async def admin_session(gw) -> httpx.AsyncClient:
    http = gw.http()
    response = await post_login(http, token=ADMIN_TOKEN)
    assert response.status_code == 303 and response.headers["location"] == "/ui/"
    return http


async def user_session(gw, key: str) -> httpx.AsyncClient:
    http = gw.http()
    response = await post_login(http, key=key)
    assert response.status_code == 303 and response.headers["location"] == "/ui/me"
    return http


async def submit(http: httpx.AsyncClient, page_path: str, form_id: str, action: str, **fields):
    """Open `page_path`, then post to `action` with form#form_id's CSRF token and `fields`."""
    page = html(await http.get(page_path))
    return await http.post(action, data={"csrf_token": csrf_of(page, form_id), **fields})


async def chat(gw, key: str, model: str = "fake-gpt") -> None:
    await gw.client(key).chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hello world"}], max_tokens=10
    )


async def test_admin_signs_in_with_a_strict_expiring_session_cookie(gateway):
    http = gateway.http()
    refused = await http.get("/ui/")
    assert_sent_to_sign_in(refused, "/ui/")

    response = await post_login(http, token=ADMIN_TOKEN)
    assert response.status_code == 303 and response.headers["location"] == "/ui/"
    cookie = set_cookie_attributes(response, SESSION_COOKIE)
    assert "httponly" in cookie and cookie["samesite"].lower() == "strict"
    assert cookie["path"] == "/" and cookie["max-age"] == str(12 * 3600)  # session_hours=12
    assert "secure" not in cookie  # plain http: a Secure cookie would never come back

    overview = html(await http.get("/ui/"))
    for stat in ("stat-spend-today", "stat-spend-month", "stat-requests-today"):
        assert overview.one(id=stat)
    assert overview.one("form", id="logout")


async def test_the_session_lasts_session_hours(make_gateway):
    async with make_gateway(session_hours=0.5) as gw:
        response = await post_login(gw.http(), token=ADMIN_TOKEN)
        assert set_cookie_attributes(response, SESSION_COOKIE)["max-age"] == "1800"


async def test_the_cookie_is_secure_when_the_browser_came_over_https(gateway):
    http = gateway.http()
    page = html(await http.get("/ui/login"))
    response = await http.post(
        "/ui/login",
        data={"csrf_token": csrf_of(page, "admin-login"), "token": ADMIN_TOKEN},
        headers={"X-Forwarded-Proto": "https"},
    )
    assert response.status_code == 303
    assert "secure" in set_cookie_attributes(response, SESSION_COOKIE)


@pytest.mark.parametrize(
    ("scheme", "headers", "https"),
    [
        ("https", [], True),
        ("http", [], False),
        ("http", [(b"x-forwarded-proto", b"https")], True),
        ("http", [(b"x-forwarded-proto", b"http")], False),
    ],
)
def test_https_is_the_scheme_or_what_the_proxy_says(scheme, headers, https):
    scope = {"type": "http", "scheme": scheme, "method": "GET", "path": "/ui/login",
             "query_string": b"", "headers": headers, "server": ("gateway", 443)}  # fmt: skip
    assert is_https(Request(scope)) is https


async def test_user_signs_in_with_their_key_and_next_is_followed_only_locally(gateway):
    key = await gateway.new_key("alice")
    http = gateway.http()
    response = await post_login(http, key=key, next="/ui/me?tab=limits")
    assert response.status_code == 303 and response.headers["location"] == "/ui/me?tab=limits"
    assert "httponly" in set_cookie_attributes(response, SESSION_COOKIE)
    assert html(await http.get("/ui/me")).one("h1").text() == "alice"

    for elsewhere in ("//evil.example/ui/", "https://evil.example/", "/\\evil.example"):
        response = await post_login(gateway.http(), key=key, next=elsewhere)
        assert response.status_code == 303 and response.headers["location"] == "/ui/me"


@pytest.mark.parametrize("field_name", ["token", "key"])
async def test_a_wrong_secret_is_401_and_never_echoed(gateway, field_name):
    await gateway.new_key("alice")
    wrong = "sg-" + "W" * 43 if field_name == "key" else "not-the-admin-token-1234"
    http = gateway.http()
    response = await post_login(http, **{field_name: wrong})
    assert response.status_code == 401
    assert html(response).one(class_="flash").attrs["class"].split() == ["flash", "error"]
    assert wrong not in response.text
    assert SESSION_COOKIE not in response.headers.get("set-cookie", "")
    assert_sent_to_sign_in(await http.get("/ui/keys"), "/ui/keys")


async def test_a_revoked_key_cannot_sign_in_and_its_session_ends(gateway):
    key = await gateway.new_key("alice")
    http = await user_session(gateway, key)
    assert (await http.get("/ui/me")).status_code == 200
    async with gateway.admin() as admin:
        revoked = await admin.post(f"/admin/keys/{key}/revoke")
        assert revoked.status_code == 200
    response = await http.get("/ui/me")
    assert_sent_to_sign_in(response, "/ui/me")
    assert set_cookie_attributes(response, SESSION_COOKIE)["max-age"] == "0"  # dropped
    assert (await post_login(gateway.http(), key=key)).status_code == 401


async def test_expired_forged_and_tampered_session_cookies_are_refused(gateway):
    max_age = 12 * 3600
    secret = session_secret(gateway.settings)

    def cookie_signed_at(clock: float, signing_secret: bytes = secret) -> str:
        codec = SessionCodec(signing_secret, max_age, clock=lambda: clock)
        return codec.dumps(Session("admin", "csrf-token", admin_tag=codec.admin_tag(ADMIN_TOKEN)))

    async def overview_with(cookie: str) -> httpx.Response:
        async with httpx.AsyncClient(base_url=gateway.url) as http:
            return await http.get("/ui/", headers={"cookie": f"{SESSION_COOKIE}={cookie}"})

    fresh = cookie_signed_at(time.time())
    assert (await overview_with(fresh)).status_code == 200  # the control: a good cookie works
    expired = cookie_signed_at(time.time() - max_age - 60)
    assert_sent_to_sign_in(await overview_with(expired), "/ui/")
    forged = cookie_signed_at(time.time(), b"another secret of 32 bytes......")
    assert_sent_to_sign_in(await overview_with(forged), "/ui/")

    real = (await admin_session(gateway)).cookies[SESSION_COOKIE]
    assert (await overview_with(real)).status_code == 200
    payload, _, rest = real.partition(".")
    flipped = payload[:-1] + ("A" if payload[-1] != "A" else "B")
    assert_sent_to_sign_in(await overview_with(f"{flipped}.{rest}"), "/ui/")


async def test_sign_out_ends_the_session(gateway):
    http = await admin_session(gateway)
    response = await submit(http, "/ui/", "logout", "/ui/logout")
    assert response.status_code == 303 and response.headers["location"] == "/ui/login"
    assert set_cookie_attributes(response, SESSION_COOKIE)["max-age"] == "0"
    assert_sent_to_sign_in(await http.get("/ui/users"), "/ui/users")


# --- roles ---------------------------------------------------------------------------------


async def test_a_user_is_refused_every_admin_page_and_sees_only_their_own_data(make_gateway):
    async with make_gateway(model_pricing_json=PRICING) as gw:
        alice, bob = await gw.new_key("alice", note="alice laptop"), await gw.new_key("bob")
        await chat(gw, alice)
        await chat(gw, bob)
        await chat(gw, bob)
        await gw.flush()
        http = await user_session(gw, alice)

        for path in (*ADMIN_PAGES, "/ui/reports/data"):
            page = assert_forbidden(await http.get(path))
            assert "bob" not in page.text(), path
        overview = await http.get("/ui/")
        assert overview.status_code == 303 and overview.headers["location"] == "/ui/me"
        refused = await http.get("/reports/data")
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "forbidden"

        me = await http.get("/ui/me")
        page = html(me)
        assert "bob" not in me.text and display_key(bob) not in me.text
        assert [row.all("td")[0].text() for row in rows(page, "my-keys")] == [display_key(alice)]
        spend = page.one(id="my-spend").all("dd")
        assert [Decimal(dd.attrs["data-usd"]) for dd in spend] == [Decimal("0.23")] * 3
        assert [row.all("td")[-1].text() for row in rows(page, "my-usage")] == ["$0.23"]
        assert [row.all("td")[-1].text() for row in rows(page, "table-my-daily")] == ["$0.23"]
        assert page.one(id="chart-my-daily").attrs["data-figure"]

        csrf = csrf_of(page, "logout")  # the user's own, valid token: the role refuses
        for path, fields in {
            "/ui/users": {"name": "intruder"},
            "/ui/keys": {"user": "intruder"},
            "/ui/users/bob/toggle": {"disabled": "true"},
            "/ui/tracking-tokens": {"name": "intruder"},
        }.items():
            assert_forbidden(await http.post(path, data={"csrf_token": csrf, **fields}))
        async with gw.admin() as admin:
            assert (await admin.get("/admin/users/intruder")).status_code == 404
            assert (await admin.get("/admin/users/bob")).json()["disabled"] is False


async def test_me_for_an_admin_links_to_the_admin_pages(gateway):
    http = await admin_session(gateway)
    page = html(await http.get("/ui/me"))
    assert page.one("h1").text() == "Administrator"
    assert page.one("a", class_="primary").attrs["href"] == "/ui/"
    assert not page.all(id="my-spend")


async def test_not_signed_in_every_page_leads_to_sign_in(gateway):
    http = gateway.http()
    for path in ("/ui/", "/ui/me", *ADMIN_PAGES, "/ui/usage?user=a&page=2"):
        assert_sent_to_sign_in(await http.get(path), path)
    refused = await http.get("/reports/data")
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
    assert (await http.get("/ui/reports/data")).status_code == 401  # data: no redirect


# --- SSO through the trusted header --------------------------------------------------------


async def test_the_trusted_header_from_a_trusted_proxy_signs_a_user_in(make_gateway):
    async with make_gateway(**SSO) as gw:
        key = await gw.new_key("alice")
        await gw.new_key("mallory")
        async with gw.admin() as admin:
            assert (await admin.patch("/admin/users/mallory", json={"disabled": True})).is_success
        http = gw.http()
        response = await http.get("/ui/me", headers={"X-Forwarded-User": "alice"})
        assert response.status_code == 200
        page = html(response)
        assert page.one("h1").text() == "alice"
        assert [row.all("td")[0].text() for row in rows(page, "my-keys")] == [display_key(key)]
        assert_forbidden(await http.get("/ui/users", headers={"X-Forwarded-User": "alice"}))

        for who in ("nobody", "mallory", ""):  # unknown, disabled, empty
            response = await http.get("/ui/me", headers={"X-Forwarded-User": who})
            assert_sent_to_sign_in(response, "/ui/me")


@pytest.mark.parametrize(
    "settings",
    [{}, {"trusted_user_header": "X-Forwarded-User", "trusted_proxies": ["10.0.0.0/8"]}],
    ids=["no trusted proxy", "peer not a trusted proxy"],
)
async def test_the_trusted_header_is_ignored_from_anyone_else(make_gateway, settings):
    async with make_gateway(**settings) as gw:
        await gw.new_key("alice")
        response = await gw.http().get("/ui/me", headers={"X-Forwarded-User": "alice"})
        assert_sent_to_sign_in(response, "/ui/me")


# --- CSRF ----------------------------------------------------------------------------------


async def _signed_in_forms(gw) -> tuple[httpx.AsyncClient, list[tuple[str, str, dict]]]:
    """An admin session and every signed-in POST form: (its page, its action, its fields)."""
    key = await gw.new_key("alice", note="original note")
    key_id = (await gw.runtime.store.find_key_by_hash(hash_key(key)))[0].id
    token = await gw.runtime.tracking.create("app", None, "0" * 64, "sgt-0000…0000")
    forms = [
        ("/ui/users", "/ui/users", {"name": "mallory"}),
        ("/ui/users/alice", "/ui/users/alice", {"email": "x@evil.example"}),
        ("/ui/users/alice", "/ui/users/alice/credits", {"amount_usd": "5"}),
        ("/ui/users/alice", "/ui/users/alice/toggle", {"disabled": "true"}),
        ("/ui/keys", "/ui/keys", {"user": "mallory"}),
        (f"/ui/keys/{key_id}", f"/ui/keys/{key_id}", {"note": "changed"}),
        ("/ui/keys", f"/ui/keys/{key_id}/revoke", {}),
        ("/ui/tracking-tokens", "/ui/tracking-tokens", {"name": "t"}),
        ("/ui/tracking-tokens", f"/ui/tracking-tokens/{token.id}/toggle", {"active": "false"}),
        ("/ui/tracking-tokens", f"/ui/tracking-tokens/{token.id}/delete", {}),
        ("/ui/", "/ui/logout", {}),
    ]
    return await admin_session(gw), forms


async def test_every_signed_in_form_refuses_a_missing_or_wrong_csrf_token(gateway):
    http, forms = await _signed_in_forms(gateway)
    good = csrf_of(html(await http.get("/ui/users")), "create-user")
    for _, action, fields in forms:
        for token in (None, "", good[:-2] + "xx", good + "x"):
            data = dict(fields) if token is None else {**fields, "csrf_token": token}
            page = assert_forbidden(await http.post(action, data=data))
            assert "CSRF" in page.one(class_="error").text(), action

    assert (await http.get("/ui/users")).status_code == 200  # still signed in: logout refused
    async with gateway.admin() as admin:
        assert (await admin.get("/admin/users/mallory")).status_code == 404
        alice = (await admin.get("/admin/users/alice")).json()
        assert (alice["email"], alice["disabled"], alice["balance_usd"]) == (None, False, None)
        (key,) = (await admin.get("/admin/keys?user=alice")).json()
        assert (key["note"], key["revoked_at"]) == ("original note", None)
        tokens = (await admin.get("/admin/tracking-tokens")).json()
        assert [(t["name"], t["active"]) for t in tokens] == [("app", True)]


async def test_the_same_forms_with_their_token_do_change_things(gateway):
    http, forms = await _signed_in_forms(gateway)
    for page_path, action, fields in forms:
        (form,) = html(await http.get(page_path)).all("form", action=action, method="post")
        token = form.one("input", name="csrf_token").attrs["value"]
        response = await http.post(action, data={"csrf_token": token, **fields})
        assert response.status_code in (200, 303), (action, response.text[:300])
    async with gateway.admin() as admin:
        assert (await admin.get("/admin/users/mallory")).status_code == 200
        alice = (await admin.get("/admin/users/alice")).json()
        assert (alice["email"], alice["disabled"], alice["balance_usd"]) == (
            "x@evil.example", True, 5
        )  # fmt: skip
        (key,) = (await admin.get("/admin/keys?user=alice")).json()
        assert key["note"] == "changed" and key["revoked_at"] is not None
        assert [t["name"] for t in (await admin.get("/admin/tracking-tokens")).json()] == ["t"]
    assert_sent_to_sign_in(await http.get("/ui/users"), "/ui/users")  # signed out at the end


async def test_anonymous_forms_need_the_double_submit_cookie(make_gateway):
    async with make_gateway(self_service=True) as gw:
        for action, form_id, fields in (
            ("/ui/login", "admin-login", {"token": ADMIN_TOKEN}),
            ("/ui/request-key", "request-key", {"username": "dana"}),
        ):
            http = gw.http()
            page = await http.get(action)
            token = csrf_of(html(page), form_id)
            assert set_cookie_attributes(page, "spendgate_csrf")[""] == token
            for data in ({**fields}, {**fields, "csrf_token": "x" + token}):
                response = await http.post(action, data=data)
                assert "CSRF" in assert_forbidden(response).one(class_="error").text()
                assert SESSION_COOKIE not in response.headers.get("set-cookie", "")
            async with httpx.AsyncClient(base_url=gw.url) as cookieless:  # the field alone
                response = await cookieless.post(action, data={**fields, "csrf_token": token})
                assert_forbidden(response)
            response = await http.post(action, data={**fields, "csrf_token": token})
            assert response.status_code in (200, 303), response.text[:300]
        async with gw.admin() as admin:
            assert len((await admin.get("/admin/keys?user=dana")).json()) == 1


# --- reports, usage explorer and CSV -------------------------------------------------------


async def _traffic(gw) -> dict[str, str]:
    keys = {"alice": await gw.new_key("alice"), "bob": await gw.new_key("bob")}
    for _ in range(3):
        await chat(gw, keys["alice"])
    await chat(gw, keys["bob"])
    for _ in range(2):
        await chat(gw, keys["bob"], "fake-gpt-mini")
    await gw.flush()
    return keys


async def test_report_data_equals_the_admin_usage_report(make_gateway):
    async with make_gateway(model_pricing_json=PRICING) as gw:
        await _traffic(gw)
        async with gw.admin() as admin:
            by_token = exact_json(await admin.get("/reports/data"))
            usage = {
                group: exact_json(await admin.get(f"/admin/usage?group_by={group}"))
                for group in ("user", "day", "model")
            }
        http = await admin_session(gw)
        assert exact_json(await http.get("/ui/reports/data")) == by_token
        assert exact_json(await http.get("/reports/data")) == by_token

        assert {row["user"]: row["cost_usd"] for row in by_token["by_user"]} == {
            "alice": Decimal("0.69"), "bob": Decimal("0.276"),
        }  # fmt: skip
        assert by_token["by_user"] == [
            {name: g[name] for name in ("user", "requests", "total_tokens", "cost_usd")}
            for g in usage["user"]["groups"]
        ]
        assert [(d["day"], d["requests"], d["cost_usd"]) for d in by_token["daily"]] == [
            (g["day"], g["requests"], g["cost_usd"]) for g in usage["day"]["groups"]
        ]
        assert by_token["daily"][-1]["cumulative_cost_usd"] == usage["user"]["totals"]["cost_usd"]
        per_user: dict[str, Decimal] = {}
        for row in by_token["daily_by_user"]:
            per_user[row["user"]] = per_user.get(row["user"], Decimal(0)) + row["cost_usd"]
        assert per_user == {row["user"]: row["cost_usd"] for row in by_token["by_user"]}
        fields = ("model", "requests", "prompt_tokens", "completion_tokens", "total_tokens")
        assert [{f: m[f] for f in (*fields, "cost_usd")} for m in by_token["by_model"]] == [
            {f: g[f] for f in (*fields, "cost_usd")} for g in usage["model"]["groups"]
        ]
        assert by_token["totals"] == usage["model"]["totals"]

        page = html(await http.get("/ui/reports"))
        assert page.one("form", id="report-range")
        for name in ("cost-by-user", "daily-cost", "daily-by-user", "by-model"):
            layout = json.loads(page.one(id=f"chart-{name}").attrs["data-figure"])["layout"]
            titles = [layout[axis]["title"]["text"] for axis in ("xaxis", "yaxis")]
            assert all(titles) and any("(USD)" in title for title in titles), titles
            assert rows(page, f"table-{name}")
        table = {
            r.all("td")[0].text(): r.all("td")[-1].text() for r in rows(page, "table-cost-by-user")
        }
        assert table == {"alice": "$0.69", "bob": "$0.276"}


async def test_report_range_defaults_to_the_last_30_days_and_is_validated(gateway):
    http = await admin_session(gateway)
    data = exact_json(await http.get("/ui/reports/data"))
    today = datetime.now(UTC).date()
    assert (data["start"], data["end"]) == (str(today - timedelta(days=29)), str(today))
    bad = await http.get("/ui/reports?start=2025-02-30")
    assert bad.status_code == 400 and "start" in html(bad).one(class_="error").text()


@pytest.mark.parametrize(
    "query", ["", "user=bob", "user=bob&model=fake-gpt-mini", "source=proxy&user=", "model=none"]
)
async def test_the_csv_export_is_byte_for_byte_the_admin_csv(make_gateway, query):
    async with make_gateway(model_pricing_json=PRICING) as gw:
        await _traffic(gw)
        http = await admin_session(gw)
        page = html(await http.get(f"/ui/usage?{query}"))
        href = page.one("a", id="export-csv").attrs["href"]
        assert href == f"/ui/usage.csv?{query}"
        exported = await http.get(href)
        async with gw.admin() as admin:
            expected = await admin.get(f"/admin/usage.csv?{query}")
        assert exported.status_code == expected.status_code == 200
        assert exported.content == expected.content
        assert exported.headers["content-type"] == expected.headers["content-type"]
        shown = len(rows(page, "usage-table"))
        assert exported.content.count(b"\n") == 1 + shown  # the header, then what is shown
        assert shown == {"": 6, "user=bob": 3, "user=bob&model=fake-gpt-mini": 2,
                         "source=proxy&user=": 6, "model=none": 0}[query]  # fmt: skip


async def test_the_usage_explorer_pages_newest_first_keeping_the_filters(gateway):
    start = datetime.now(UTC) - timedelta(minutes=10)
    for index in range(120):
        event = UsageEvent(
            request_id=f"req-{index:03}", timestamp=start + timedelta(seconds=index),
            user="pager" if index % 2 else "other", key_id=None, model="fake-gpt",
            endpoint="chat/completions", method="POST", status=200, stream=False,
            prompt_tokens=1, completion_tokens=1, cached_tokens=0, reasoning_tokens=0,
            total_tokens=2, cost_usd=Decimal("0.001"), latency_ms=5,
        )  # fmt: skip
        gateway.runtime.writer.record(event)
    await gateway.flush()
    http = await admin_session(gateway)

    async def page_of(url: str) -> tuple[list[str], Node]:
        page = html(await http.get(url))
        return [row.attrs["data-request-id"] for row in rows(page, "usage-table")], page

    seen, url = [], "/ui/usage"
    while url:
        ids, page = await page_of(url)
        assert len(ids) == (50 if len(seen) < 100 else 20)
        assert bool(page.all("a", id="prev-page")) == bool(seen)
        seen += ids
        following = page.all("a", id="next-page")
        url = following[0].attrs["href"] if following else ""
    assert seen == [f"req-{index:03}" for index in range(119, -1, -1)]

    ids, page = await page_of("/ui/usage?user=pager&page=2")
    assert ids == [f"req-{index:03}" for index in range(19, 0, -2)]  # 60 events: 50, then 10
    back = dict(parse_qsl(urlsplit(page.one("a", id="prev-page").attrs["href"]).query))
    assert back == {"user": "pager", "page": "1"}
    assert not page.all("a", id="next-page")
    assert (await http.get("/ui/usage?page=0")).status_code == 400


# --- console flows behind the forms --------------------------------------------------------


async def test_a_key_created_in_the_console_is_shown_once_and_works(make_gateway):
    async with make_gateway(model_pricing_json=PRICING) as gw:
        http = await admin_session(gw)
        response = await submit(
            http, "/ui/keys", "create-key", "/ui/keys", user="carol", note="ci",
            models="fake-gpt*", budget_usd="5", budget_period="daily", requests_per_minute="60",
        )  # fmt: skip
        assert response.status_code == 200
        key = html(response).one("code", id="new-key").text()
        assert html(response).one("button", id="copy-key")
        await chat(gw, key)
        listing = await http.get("/ui/keys")
        assert key not in listing.text
        (row,) = rows(html(listing), "keys-table")
        assert row.one(class_="key-display").text() == display_key(key)
        assert row.one(class_="key-status").text() == "active"
        async with gw.admin() as admin:
            (created,) = (await admin.get("/admin/keys?user=carol")).json()
        assert (created["note"], created["models"], created["budget_usd"]) == (
            "ci",
            ["fake-gpt*"],
            5,
        )
        assert created["limits"] == {"requests_per_minute": 60}
        assert row.attrs["data-key-id"] == str(created["id"])


async def test_revoking_in_the_console_stops_the_key_at_v1(gateway):
    key = await gateway.new_key("alice")
    await chat(gateway, key)
    http = await admin_session(gateway)
    page = html(await http.get("/ui/keys"))
    (row,) = rows(page, "keys-table")
    form = row.one("form", class_="revoke-key")
    response = await http.post(
        form.attrs["action"],
        data={
            "csrf_token": form.one("input", name="csrf_token").attrs["value"],
            "next": "/ui/keys",
        },
    )
    assert response.status_code == 303 and response.headers["location"] == "/ui/keys"
    with pytest.raises(openai.AuthenticationError):
        await chat(gateway, key)
    (row,) = rows(html(await http.get("/ui/keys")), "keys-table")
    assert row.one(class_="key-status").text() == "revoked" and not row.all("form")


async def test_users_budgets_limits_and_credits_through_the_console(gateway):
    http = await admin_session(gateway)
    response = await submit(
        http, "/ui/users", "create-user", "/ui/users", name="carol", email="c@example.com",
        budget_usd="20", budget_period="weekly", tokens_per_day="1000",
    )  # fmt: skip
    assert response.status_code == 303 and response.headers["location"] == "/ui/users/carol"
    response = await submit(
        http, "/ui/users/carol", "edit-user", "/ui/users/carol", email="c@example.com",
        budget_usd="", requests_per_hour="10",
    )  # fmt: skip
    assert response.status_code == 303
    for amount, note in (("25", "invoice 41"), ("-2.5", "refund")):
        response = await submit(
            http, "/ui/users/carol", "add-credits", "/ui/users/carol/credits",
            amount_usd=amount, note=note,
        )  # fmt: skip
        assert response.status_code == 303
    async with gateway.admin() as admin:
        carol = exact_json(await admin.get("/admin/users/carol"))
    assert (carol["budget_usd"], carol["limits"], carol["balance_usd"]) == (
        None, {"requests_per_hour": 10}, Decimal("22.5"),
    )  # fmt: skip
    page = html(await http.get("/ui/users/carol"))
    ledger = [[td.text() for td in row.all("td")[1:3]] for row in rows(page, "credit-ledger")]
    assert ledger == [["-$2.50", "refund"], ["$25.00", "invoice 41"]]
    assert page.one(id="user-balance").attrs["data-usd"] == "22.5"
    users = html(await http.get("/ui/users"))
    assert users.one("table", id="users-table").one("tr", **{"data-user": "carol"})

    refused = await submit(http, "/ui/users", "create-user", "/ui/users", name="carol")
    assert (
        refused.status_code == 409 and "already exists" in html(refused).one(class_="flash").text()
    )
    bad = await submit(http, "/ui/users", "create-user", "/ui/users", name="dave", budget_usd="x")
    assert bad.status_code == 400 and "budget_usd" in html(bad).one(class_="flash").text()


async def test_tracking_tokens_through_the_console(gateway):
    http = await admin_session(gateway)
    response = await submit(
        http, "/ui/tracking-tokens", "create-tracking-token", "/ui/tracking-tokens",
        name="batch", user="alice",
    )  # fmt: skip
    assert response.status_code == 200
    page = html(response)
    token = page.one("code", id="new-token").text()
    assert token.startswith("sgt-") and page.one("button", id="copy-token")
    snippet = page.one("pre", id="snippet").text()
    assert token in snippet and f"{gateway.url}/ingest" in snippet
    listing = await http.get("/ui/tracking-tokens")
    assert token not in listing.text
    (row,) = rows(html(listing), "tracking-tokens-table")
    assert row.one(class_="token-status").text() == "active"
    toggle = row.one("form", class_="toggle-token")
    fields = {node.attrs["name"]: node.attrs["value"] for node in toggle.all("input")}
    assert (await http.post(toggle.attrs["action"], data=fields)).status_code == 303
    (row,) = rows(html(await http.get("/ui/tracking-tokens")), "tracking-tokens-table")
    assert row.one(class_="token-status").text() == "inactive"
    async with gateway.admin() as admin:
        (listed,) = (await admin.get("/admin/tracking-tokens")).json()
        assert (listed["name"], listed["user"], listed["active"]) == ("batch", "alice", False)


# --- self-service --------------------------------------------------------------------------


async def test_self_service_off_is_404_and_the_short_path_leads_there(gateway):
    http = gateway.http()
    response = await http.get("/request-key")
    assert response.status_code == 303 and response.headers["location"] == "/ui/request-key"
    for response in (
        await http.get("/ui/request-key"),
        await http.post("/ui/request-key", data={"username": "x"}),  # 404, not a CSRF 403
    ):
        assert response.status_code == 404
        assert not html(response).all("form", id="request-key")


async def test_self_service_key_is_shown_once_and_works(make_gateway):
    async with make_gateway(self_service=True) as gw:
        http = gw.http()
        response = await submit(
            http, "/ui/request-key", "request-key", "/ui/request-key", username="dana",
            note="notebook",
        )  # fmt: skip
        assert response.status_code == 200
        key = html(response).one("code", id="new-key").text()
        await chat(gw, key)
        bad = await submit(
            http, "/ui/request-key", "request-key", "/ui/request-key", username="a b"
        )
        assert bad.status_code == 400 and html(bad).one(class_="flash").text()


async def test_trusted_only_self_service_is_for_the_trusted_identity(make_gateway):
    async with make_gateway(self_service=True, self_service_trusted_only=True, **SSO) as gw:
        anonymous = await gw.http().get("/ui/request-key")
        assert "signed in" in assert_forbidden(anonymous).one(class_="error").text()

        http = httpx.AsyncClient(base_url=gw.url, headers={"X-Forwarded-User": "erin"})
        gw.clients.append(http)
        page = html(await http.get("/ui/request-key"))
        username = page.one("form", id="request-key").one("input", name="username")
        assert username.attrs["value"] == "erin" and "readonly" in username.attrs
        token = csrf_of(page, "request-key")
        other = await http.post("/ui/request-key", data={"csrf_token": token, "username": "frank"})
        assert other.status_code == 403
        response = await http.post(
            "/ui/request-key", data={"csrf_token": token, "username": "erin"}
        )
        assert response.status_code == 200
        async with gw.admin() as admin:
            assert [k["user"] for k in (await admin.get("/admin/keys")).json()] == ["erin"]


# --- static files and errors ---------------------------------------------------------------


async def test_plotly_is_the_installed_package_file_with_a_long_cache(gateway):
    http = await admin_session(gateway)
    page = html(await http.get("/ui/reports"))
    scripts = [node.attrs["src"] for node in page.all("script") if "src" in node.attrs]
    (plotly,) = [src for src in scripts if "plotly.min.js" in src]
    assert plotly == f"/ui/static/plotly.min.js?v={version('plotly')}"
    assert all(src.startswith("/ui/static/") for src in scripts)  # nothing from elsewhere
    expected = plotly_js_path().read_bytes()
    anonymous = gateway.http()  # static files need no session
    for encoding in ("gzip", "identity"):
        response = await anonymous.get(plotly, headers={"accept-encoding": encoding})
        assert response.status_code == 200
        assert response.headers["cache-control"] == "public, max-age=31536000, immutable"
        assert response.headers["content-type"].startswith("text/javascript")
        assert response.content == expected, encoding
    for node in page.all("link", rel="stylesheet"):
        assert (await anonymous.get(node.attrs["href"])).status_code == 200
    assert (await anonymous.get("/ui/static/nope.js")).status_code == 404


async def test_unknown_console_paths_are_html_404_pages_and_reports_lead_there(gateway):
    http = gateway.http()
    for path in ("/ui/nope", "/ui/static/../console.py", "/ui/keys/abc"):
        response = await http.get(path)
        if path == "/ui/keys/abc":  # behind sign-in first
            assert_sent_to_sign_in(response, path)
            continue
        assert response.status_code == 404
        assert html(response).one("h1").text() == "Not Found"
    admin = await admin_session(gateway)
    assert (await admin.get("/ui/keys/abc")).status_code == 404
    assert (await admin.get("/ui/users/nobody")).status_code == 404
    response = await http.get("/reports")
    assert response.status_code == 303 and response.headers["location"] == "/ui/reports"
    api = await http.get("/admin/nothing-here")  # the API's errors stay JSON
    assert api.status_code == 404 and api.json()["error"]["code"] == "not_found"
