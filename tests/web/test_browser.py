"""The web console in a real browser: Debian's Chromium against a real gateway.

Each test signs in through the console's own forms, drives it as a person would, and checks
the result both on the page and behind it (the admin API, the openai SDK). The fixtures in
tests/web/conftest.py fail any test whose pages logged a console error, threw, or tried to
reach anything but 127.0.0.1. Screenshots of every page land in a temporary directory, or
in docs/screenshots/ with SPENDGATE_SCREENSHOTS=1 (`make screenshots`), so a test run leaves
the tree as it was.
"""

from __future__ import annotations

import json
import os
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

import openai
import pytest
from playwright.async_api import Locator, Page, Response, expect
from playwright.async_api import TimeoutError as PlaywrightTimeoutError

from spendgate.keys.material import display_key
from spendgate.ledger.events import UsageEvent
from tests.support import ADMIN_TOKEN

if TYPE_CHECKING:
    from tests.conftest import Gateway, GatewayFactory
    from tests.web.conftest import Browsing

pytestmark = pytest.mark.browser

README_SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
# USD per 1K tokens. "hello world" is 3 prompt tokens; max_tokens=10 bills 10 completion
# tokens: 0.23 USD a request on fake-gpt, 0.023 on fake-gpt-mini.
PRICING = json.dumps(
    {"fake-gpt": {"input": 10, "output": 20}, "fake-gpt-mini": {"input": 1, "output": 2}}
)
KEY_PATTERN = re.compile(r"sg-[A-Za-z0-9_-]{43}")
TOKEN_PATTERN = re.compile(r"sgt-[A-Za-z0-9_-]{43}")
SUBMIT = "button:not([type=button]):not([type=reset]), input[type=submit]"
CHART_TIMEOUT_MS = 20_000
# Plotly 7 (plotly.js 4.1) draws each bar as `g.trace.bars g.point > path` and a scatter
# trace's line as `g.trace.scatter path.js-line`, under the subplot in `g.cartesianlayer`
# (in `g.overplot > g.xy`: there is no `g.plot` layer any more; the legend's sample lines
# live elsewhere, in `g.legend`). A bar of zero height is drawn as "M0,0Z" and a line through
# one point as "Mx,y": only shapes with an area (bars) or a length (lines) count as marks.
BARS = ".cartesianlayer .trace.bars .point path"
LINES = ".cartesianlayer .trace.scatter path.js-line"
COUNT_MARKS = """([selector, kind]) => Array.from(document.querySelectorAll(selector))
    .filter((mark) => {
        if (kind === "line") return mark.getTotalLength() > 0;
        const box = mark.getBBox();
        return box.width > 0 && box.height > 0;
    }).length"""
ENOUGH_MARKS = f"([selector, kind, minimum]) => ({COUNT_MARKS})([selector, kind]) >= minimum"
CHARTS = ("#chart-cost-by-user", "#chart-daily-cost", "#chart-daily-by-user", "#chart-by-model")


# --- helpers -------------------------------------------------------------------------------


async def chat(gw: Gateway, key: str, model: str = "fake-gpt") -> None:
    """One billed chat request through the official SDK."""
    await gw.client(key).chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hello world"}], max_tokens=10
    )


def record_yesterday(gw: Gateway, user: str) -> None:
    """One fake-gpt request of `user` dated yesterday, through the gateway's ledger writer.

    Traffic happens today; a second day gives the daily charts two bars and their
    cumulative line a length (a line through one point draws nothing).
    """
    gw.runtime.writer.record(
        UsageEvent(
            request_id=f"yesterday-{user}",
            timestamp=datetime.now(UTC) - timedelta(days=1),
            user=user,
            key_id=None,
            model="fake-gpt",
            endpoint="chat/completions",
            method="POST",
            status=200,
            stream=False,
            prompt_tokens=3,
            completion_tokens=10,
            cached_tokens=0,
            reasoning_tokens=0,
            total_tokens=13,
            cost_usd=Decimal("0.23"),
            latency_ms=5,
        )
    )


async def submit(form: Locator) -> Response:
    """Click the form's submit button; the response the page lands on (after redirects)."""
    async with form.page.expect_navigation() as navigation:
        await form.locator(SUBMIT).first.click()
    response = await navigation.value
    assert response is not None
    return response


async def fill_field(form: Locator, name: str, value: str) -> None:
    """Type into an input, or pick an option of a select, named `name` in `form`."""
    field = form.locator(f"[name={name}]")
    if await field.evaluate("element => element.tagName") == "SELECT":
        await field.select_option(value)
    else:
        await field.fill(value)


async def visit(page: Page, url: str) -> Response:
    """Open `url`; the final response."""
    response = await page.goto(url)
    assert response is not None
    return response


async def sign_in_admin(page: Page, gw: Gateway) -> None:
    """Sign in through form#admin-login with the admin token."""
    await visit(page, f"{gw.url}/ui/login")
    form = page.locator("form#admin-login")
    await form.locator("input[name=token]").fill(ADMIN_TOKEN)
    await submit(form)
    await expect(page).to_have_url(f"{gw.url}/ui/")


async def sign_in_user(page: Page, gw: Gateway, key: str) -> None:
    """Sign in through form#user-login with a gateway key."""
    await visit(page, f"{gw.url}/ui/login")
    form = page.locator("form#user-login")
    await form.locator("input[name=key]").fill(key)
    await submit(form)
    await expect(page).to_have_url(f"{gw.url}/ui/me")


async def shown_secret(page: Page, selector: str, pattern: re.Pattern[str]) -> str:
    """The secret shown once: the whole text of the `code` element `selector`."""
    shown = page.locator(f"code{selector}")
    await expect(shown).to_have_text(re.compile(rf"^\s*{pattern.pattern}\s*$"))
    return (await shown.inner_text()).strip()


async def expect_forbidden(page: Page, response: Response) -> None:
    """The console's refusal page: status 403 and an h1 saying Forbidden."""
    assert response.status == 403, f"{response.url} answered {response.status}"
    await expect(page.locator("h1")).to_have_text("Forbidden")


async def wait_for_marks(page: Page, chart: str, marks: str, minimum: int = 1) -> int:
    """Wait until `chart` has at least `minimum` drawn Plotly marks; how many it has."""
    selector = f"{chart} {marks}"
    kind = "line" if marks == LINES else "bar"
    try:
        await page.wait_for_function(
            ENOUGH_MARKS, arg=[selector, kind, minimum], timeout=CHART_TIMEOUT_MS
        )
    except PlaywrightTimeoutError:
        found = await page.locator(selector).count()
        pytest.fail(f"{selector}: fewer than {minimum} drawn marks ({found} shapes in the DOM)")
    return int(await page.evaluate(COUNT_MARKS, [selector, kind]))


async def admin_json(gw: Gateway, path: str) -> Any:
    """GET an admin API path; its JSON with exact decimals."""
    async with gw.admin() as admin:
        response = await admin.get(path)
    assert response.status_code == 200, response.text
    return json.loads(response.text, parse_float=Decimal)


async def user_exists(gw: Gateway, name: str) -> bool:
    async with gw.admin() as admin:
        response = await admin.get(f"/admin/users/{name}")
    assert response.status_code in (200, 404), response.text
    return response.status_code == 200


async def key_id_of(gw: Gateway, user: str) -> int:
    """The id of the user's only key."""
    keys = await admin_json(gw, f"/admin/keys?user={user}")
    assert len(keys) == 1, keys
    return int(keys[0]["id"])


# --- infrastructure ------------------------------------------------------------------------


async def test_chromium_loads_gateway_health_and_reaches_nothing_outside(
    gateway: Gateway, browsing: Browsing
) -> None:
    page = await browsing.new_page()
    response = await visit(page, f"{gateway.url}/health")
    assert response.status == 200
    assert json.loads(await response.text())["status"] == "ok"

    outside = "https://cdn.plot.ly/plotly-latest.min.js"
    outcome = await page.evaluate(
        "url => fetch(url).then(() => 'loaded', () => 'blocked')", outside
    )
    watch = browsing.watch(page)
    assert (outcome, watch.outside_requests) == ("blocked", [outside])
    watch.forget()  # provoked on purpose; every other test must end with nothing recorded


# --- keys ----------------------------------------------------------------------------------


async def test_admin_creates_a_key_sees_it_once_and_revokes_it(
    gateway: Gateway, browsing: Browsing, page: Page
) -> None:
    gw = gateway
    await sign_in_admin(page, gw)
    cookies = {cookie["name"]: cookie for cookie in await page.context.cookies()}
    session = cookies["spendgate_session"]
    assert (session["httpOnly"], session["sameSite"], session["path"]) == (True, "Strict", "/")

    await visit(page, f"{gw.url}/ui/users")
    form = page.locator("form#create-user")
    await fill_field(form, "name", "carol")
    await fill_field(form, "email", "carol@example.com")
    response = await submit(form)
    assert response.status == 200
    await expect(page).to_have_url(f"{gw.url}/ui/users/carol")
    assert (await admin_json(gw, "/admin/users/carol"))["email"] == "carol@example.com"

    await visit(page, f"{gw.url}/ui/keys")
    form = page.locator("form#create-key")
    await fill_field(form, "user", "carol")
    await fill_field(form, "note", "browser test key")
    response = await submit(form)
    assert response.status == 200
    key = await shown_secret(page, "#new-key", KEY_PATTERN)
    assert "once" in (await page.locator("body").inner_text()).lower()
    await page.locator("button#copy-key").click()
    # The copy is a promise: wait until the clipboard holds the key.
    await page.wait_for_function(
        "key => navigator.clipboard.readText().then(t => t === key)", arg=key
    )

    key_id = await key_id_of(gw, "carol")
    await visit(page, f"{gw.url}/ui/keys")
    assert key not in await page.content()
    row = page.locator(f'#keys-table tr[data-key-id="{key_id}"]')
    await expect(row.locator(".key-display")).to_have_text(display_key(key))
    await expect(row.locator(".key-status")).to_have_text("active")

    await chat(gw, key)  # the key shown works against /v1
    carol = await browsing.new_page()
    await sign_in_user(carol, gw, key)

    response = await submit(row.locator("form.revoke-key"))
    assert response.status == 200
    with pytest.raises(openai.AuthenticationError):
        await chat(gw, key)
    row = page.locator(f'#keys-table tr[data-key-id="{key_id}"]')
    await expect(row.locator(".key-status")).to_have_text("revoked")
    await expect(row.locator("form.revoke-key")).to_have_count(0)
    await visit(carol, f"{gw.url}/ui/me")  # a revoked key's session is signed out
    await expect(carol.locator("form#user-login")).to_be_visible()
    assert urlsplit(carol.url).path == "/ui/login"


# --- reports -------------------------------------------------------------------------------


async def test_reports_draw_every_chart_from_real_traffic(
    make_gateway: GatewayFactory, page: Page
) -> None:
    async with make_gateway(model_pricing_json=PRICING) as gw:
        alice, bob = await gw.new_key("alice"), await gw.new_key("bob")
        for _ in range(3):
            await chat(gw, alice)
        await chat(gw, bob)
        for _ in range(2):
            await chat(gw, bob, "fake-gpt-mini")
        record_yesterday(gw, "alice")
        await gw.flush()

        await sign_in_admin(page, gw)
        async with page.expect_response(re.compile(r"/ui/static/plotly\.min\.js")) as script:
            response = await visit(page, f"{gw.url}/ui/reports")
        assert response.status == 200
        plotly_js = await script.value  # the installed package's file, from the gateway
        assert (plotly_js.status, urlsplit(plotly_js.url).query) == (200, f"v={version('plotly')}")
        assert plotly_js.headers["cache-control"] == "public, max-age=31536000, immutable"

        assert await wait_for_marks(page, "#chart-cost-by-user", BARS, 2) == 2  # a bar a user
        assert await wait_for_marks(page, "#chart-daily-cost", BARS, 2) == 2  # two days
        assert await wait_for_marks(page, "#chart-daily-cost", LINES) == 1  # the cumulative
        assert await wait_for_marks(page, "#chart-daily-by-user", BARS, 3) == 3  # user × day
        assert await wait_for_marks(page, "#chart-by-model", BARS, 2) >= 2  # two models

        for user in ("alice", "bob"):
            for table in ("#table-cost-by-user", "#table-daily-by-user"):
                await expect(page.locator(f"{table} tr", has_text=user)).not_to_have_count(0)
        for model in ("fake-gpt", "fake-gpt-mini"):
            rows = page.locator("#table-by-model tbody tr").filter(
                has=page.get_by_text(model, exact=True)
            )
            await expect(rows).to_have_count(1)
        await expect(page.locator("#table-daily-cost tbody tr")).not_to_have_count(0)

        data = await page.request.get(f"{gw.url}/ui/reports/data")
        assert data.status == 200
        by_user = json.loads(await data.text(), parse_float=Decimal)["by_user"]
        costs = {row["user"]: Decimal(str(row["cost_usd"])) for row in by_user}
        assert costs == {"alice": Decimal("0.92"), "bob": Decimal("0.276")}  # 3 + 1 yesterday


# --- usage explorer ------------------------------------------------------------------------


async def test_usage_export_is_the_admin_csv_of_the_same_filters(
    make_gateway: GatewayFactory, page: Page
) -> None:
    async with make_gateway(model_pricing_json=PRICING) as gw:
        alice, bob = await gw.new_key("alice"), await gw.new_key("bob")
        for _ in range(2):
            await chat(gw, alice)
        for model in ("fake-gpt", "fake-gpt-mini", "fake-gpt"):
            await chat(gw, bob, model)
        await gw.flush()

        await sign_in_admin(page, gw)
        await visit(page, f"{gw.url}/ui/usage")
        await expect(page.locator("table#usage-table tbody tr")).to_have_count(5)
        form = page.locator("form#usage-filter")
        await fill_field(form, "user", "bob")
        await submit(form)
        await expect(page).to_have_url(re.compile(r"[?&]user=bob(&|$)"))
        await expect(page.locator("table#usage-table tbody tr")).to_have_count(3)

        export = page.locator("a#export-csv")
        href = await export.get_attribute("href")
        assert href is not None and href.startswith("/ui/usage.csv?"), href
        query = urlsplit(href).query
        filters = {name: value for name, value in parse_qsl(query) if value}
        shown = {
            name: value
            for name, value in parse_qsl(urlsplit(page.url).query)
            if value and name != "page"
        }
        assert filters == shown and filters["user"] == "bob"

        async with page.expect_download() as download_info:
            await export.click()
        download = await download_info.value
        exported = (await download.path()).read_bytes()
        async with gw.admin() as admin:
            expected = await admin.get(f"/admin/usage.csv?{query}")
        assert expected.status_code == 200
        assert exported == expected.content
        assert exported.count(b"\n") == 4 and b"alice" not in exported  # header + bob's 3


# --- self-service --------------------------------------------------------------------------


async def test_self_service_key_then_sign_in_shows_own_keys_spend_and_limits(
    make_gateway: GatewayFactory, page: Page
) -> None:
    async with make_gateway(self_service=True, model_pricing_json=PRICING) as gw:
        await visit(page, f"{gw.url}/request-key")
        await expect(page).to_have_url(f"{gw.url}/ui/request-key")
        form = page.locator("form#request-key")
        await fill_field(form, "username", "dana")
        await fill_field(form, "note", "from the browser")
        response = await submit(form)
        assert response.status == 200
        key = await shown_secret(page, "#new-key", KEY_PATTERN)
        await expect(page.locator("button#copy-key")).to_be_visible()
        keys = await admin_json(gw, "/admin/keys?user=dana")
        assert [(k["note"], k["display"]) for k in keys] == [("from the browser", display_key(key))]

        await chat(gw, key)
        await gw.flush()

        await sign_in_user(page, gw, key)
        await expect(page.locator("#my-spend")).to_contain_text("0.23")
        for part in ("#my-balance", "#my-budget", "table#my-limits", "table#my-usage"):
            await expect(page.locator(part)).to_be_visible()
        await expect(page.locator("table#my-keys")).to_contain_text(display_key(key))
        assert key not in await page.content()

        await expect_forbidden(page, await visit(page, f"{gw.url}/ui/users"))


async def test_trusted_only_self_service_takes_the_name_from_the_proxy(
    make_gateway: GatewayFactory, browsing: Browsing
) -> None:
    trusted = {
        "self_service": True,
        "self_service_trusted_only": True,
        "trusted_user_header": "X-Forwarded-User",
        "trusted_proxies": "127.0.0.1/32",
    }
    async with make_gateway(**trusted) as gw:
        stranger = await browsing.new_page()
        response = await visit(stranger, f"{gw.url}/ui/request-key")
        assert response.status == 403
        await expect(stranger.locator("form#request-key [type=submit]")).to_have_count(0)

        page = await browsing.new_page(extra_http_headers={"X-Forwarded-User": "gina"})
        await visit(page, f"{gw.url}/ui/request-key")
        form = page.locator("form#request-key")
        username = form.locator("[name=username]")
        await expect(username).to_have_value("gina")
        await expect(username).not_to_be_editable()  # readonly: the proxy names the user
        await fill_field(form, "note", "via sso")
        assert (await submit(form)).status == 200
        key = await shown_secret(page, "#new-key", KEY_PATTERN)
        keys = await admin_json(gw, "/admin/keys?user=gina")
        assert [k["display"] for k in keys] == [display_key(key)]

        # The proxy's name wins over a forged field; the (now existing) user needs no sign-in.
        await visit(page, f"{gw.url}/ui/request-key")
        await username.evaluate("input => { input.readOnly = false; input.value = 'hank' }")
        await submit(form)
        assert not await user_exists(gw, "hank")
        await visit(page, f"{gw.url}/ui/me")
        await expect(page).to_have_url(f"{gw.url}/ui/me")
        await expect(page.locator("table#my-keys")).to_contain_text(display_key(key))


async def test_request_key_page_is_absent_without_self_service(
    gateway: Gateway, page: Page
) -> None:
    response = await visit(page, f"{gateway.url}/ui/request-key")
    assert response.status == 404
    await expect(page.locator("form#request-key")).to_have_count(0)


# --- refusals ------------------------------------------------------------------------------


async def test_wrong_credentials_are_refused_with_a_flash(gateway: Gateway, page: Page) -> None:
    gw = gateway
    attempts = {
        "form#admin-login": ("token", "not-the-admin-token"),
        "form#user-login": ("key", "sg-" + "x" * 43),
    }
    for selector, (field, value) in attempts.items():
        await visit(page, f"{gw.url}/ui/login")
        form = page.locator(selector)
        await form.locator(f"input[name={field}]").fill(value)
        response = await submit(form)
        assert response.status == 401, (selector, response.status)
        await expect(page.locator(".flash.error")).to_be_visible()
        await visit(page, f"{gw.url}/ui/keys")
        await expect(page.locator("form#admin-login")).to_be_visible()  # still signed out

    await sign_in_admin(page, gw)
    assert (await visit(page, f"{gw.url}/ui/no-such-page")).status == 404


@pytest.mark.parametrize("tamper", ["removed", "altered"])
async def test_create_user_without_the_session_csrf_token_is_refused(
    gateway: Gateway, page: Page, tamper: str
) -> None:
    gw = gateway
    await sign_in_admin(page, gw)
    await visit(page, f"{gw.url}/ui/users")
    form = page.locator("form#create-user")
    token = form.locator("input[name=csrf_token]")
    await expect(token).to_have_count(1)
    if tamper == "removed":
        await page.evaluate(
            "() => document.querySelector('#create-user [name=csrf_token]').remove()"
        )
    else:
        value = await token.input_value()
        forged = value[:-1] + ("A" if not value.endswith("A") else "B")
        await page.evaluate(
            "forged => { document.querySelector('#create-user [name=csrf_token]').value = forged }",
            forged,
        )
    await fill_field(form, "name", "mallory")
    response = await submit(form)
    await expect_forbidden(page, response)
    await expect(page.locator(".error")).to_contain_text("CSRF")
    assert not await user_exists(gw, "mallory")

    # The same form, untouched, works: the refusal was the token's doing.
    await visit(page, f"{gw.url}/ui/users")
    await fill_field(form, "name", "mallory")
    await submit(form)
    await expect(page).to_have_url(f"{gw.url}/ui/users/mallory")
    assert await user_exists(gw, "mallory")


@pytest.mark.parametrize("tamper", ["altered field", "cookie cleared"])
async def test_sign_in_without_the_double_submit_csrf_token_is_refused(
    gateway: Gateway, page: Page, tamper: str
) -> None:
    gw = gateway
    await visit(page, f"{gw.url}/ui/login")
    form = page.locator("form#admin-login")
    if tamper == "altered field":
        await page.evaluate(
            "() => { const field = document.querySelector('#admin-login [name=csrf_token]');"
            " field.value = 'forged-' + field.value }"
        )
    else:
        await page.context.clear_cookies(name="spendgate_csrf")
    await form.locator("input[name=token]").fill(ADMIN_TOKEN)
    await expect_forbidden(page, await submit(form))
    await expect(page.locator(".error")).to_contain_text("CSRF")
    response = await visit(page, f"{gw.url}/ui/users")
    await expect(page).to_have_url(re.compile(r"/ui/login\?next="))  # still signed out
    assert response.status == 200

    await sign_in_admin(page, gw)  # a fresh form signs in


async def test_user_session_is_refused_by_every_admin_page(gateway: Gateway, page: Page) -> None:
    gw = gateway
    async with gw.admin() as admin:
        created = await admin.post(
            "/admin/users", json={"name": "frank", "email": "frank@example.com"}
        )
        assert created.status_code == 201, created.text
    await gw.new_key("frank", note="frank's secret project")
    frank_key_id = await key_id_of(gw, "frank")
    erin = await gw.new_key("erin")

    await sign_in_user(page, gw, erin)
    admin_pages = [
        "/ui/reports",
        "/ui/usage",
        "/ui/users",
        "/ui/users/frank",
        "/ui/keys",
        f"/ui/keys/{frank_key_id}",
        "/ui/tracking-tokens",
    ]
    for path in admin_pages:
        await expect_forbidden(page, await visit(page, f"{gw.url}{path}"))
        content = await page.content()
        assert "frank@example.com" not in content and "secret project" not in content, path
    await visit(page, f"{gw.url}/ui/")
    await expect(page).to_have_url(f"{gw.url}/ui/me")

    # Behind the pages: data endpoints and form posts with the user's own CSRF token.
    assert (await page.request.get(f"{gw.url}/ui/me", max_redirects=0)).status == 200
    for path in ("/ui/reports/data", "/ui/usage.csv", "/reports/data"):
        response = await page.request.get(f"{gw.url}{path}", max_redirects=0)
        assert response.status == 403, (path, response.status)
    csrf = await page.locator("form#logout input[name=csrf_token]").input_value()
    posts: dict[str, dict[str, str | float | bool]] = {
        "/ui/users": {"csrf_token": csrf, "name": "intruder"},
        "/ui/keys": {"csrf_token": csrf, "user": "intruder", "note": "x"},
    }
    for path, fields in posts.items():
        response = await page.request.post(f"{gw.url}{path}", form=fields, max_redirects=0)
        assert response.status == 403, (path, response.status)
    assert not await user_exists(gw, "intruder")


async def test_anonymous_visitor_is_sent_to_sign_in(gateway: Gateway, page: Page) -> None:
    for path in ("/ui/", "/ui/reports", "/ui/users", "/ui/keys", "/ui/me"):
        await visit(page, f"{gateway.url}{path}")
        await expect(page.locator("form#admin-login")).to_be_visible()
        landed = urlsplit(page.url)
        assert (landed.path, dict(parse_qsl(landed.query))) == ("/ui/login", {"next": path})


# --- screenshots ---------------------------------------------------------------------------


@pytest.mark.timeout(300)
async def test_screenshots_of_every_page(
    make_gateway: GatewayFactory, browsing: Browsing, tmp_path: Path
) -> None:
    shots = README_SCREENSHOTS if os.environ.get("SPENDGATE_SCREENSHOTS") == "1" else tmp_path
    shots.mkdir(parents=True, exist_ok=True)
    async with make_gateway(self_service=True, model_pricing_json=PRICING) as gw:
        async with gw.admin() as admin:
            for body in (
                {"name": "alice", "email": "alice@example.com", "budget_usd": "50",
                 "budget_period": "monthly",
                 "limits": {"requests_per_minute": 60, "tokens_per_day": 100000}},
                {"name": "bob", "email": "bob@example.com", "budget_usd": "20",
                 "budget_period": "daily"},
            ):  # fmt: skip
                assert (await admin.post("/admin/users", json=body)).status_code == 201
            credit = {"amount_usd": "25", "note": "initial top-up"}
            assert (await admin.post("/admin/users/alice/credits", json=credit)).status_code == 200
        alice = await gw.new_key("alice", note="laptop")
        bob = await gw.new_key("bob", note="ci runner")
        for _ in range(4):
            await chat(gw, alice)
        for model in ("fake-gpt-mini", "fake-gpt", "fake-gpt-mini"):
            await chat(gw, bob, model)
        record_yesterday(gw, "alice")
        await gw.flush()
        alice_key_id = await key_id_of(gw, "alice")

        async def shoot(page: Page, name: str) -> None:
            problems = browsing.problems()
            assert problems == [], f"{name}: {problems}"
            await page.screenshot(path=shots / f"{name}.png", full_page=True)

        async def open_ok(page: Page, path: str) -> None:
            response = await visit(page, f"{gw.url}{path}")
            assert response.status == 200, f"{path} answered {response.status}"

        visitor = await browsing.new_page()
        await open_ok(visitor, "/ui/login")
        await expect(visitor.locator("form#admin-login")).to_be_visible()
        await shoot(visitor, "login")
        await open_ok(visitor, "/ui/request-key")
        await expect(visitor.locator("form#request-key")).to_be_visible()
        await shoot(visitor, "request-key")

        admin_page = await browsing.new_page()
        await sign_in_admin(admin_page, gw)
        await expect(admin_page.locator("table#top-users")).to_contain_text("alice")
        await expect(admin_page.locator("table#recent-requests tbody tr")).not_to_have_count(0)
        await expect(admin_page.locator("#stat-requests-today")).to_contain_text("7")
        await shoot(admin_page, "overview")

        await open_ok(admin_page, "/ui/reports")
        for chart in CHARTS:
            await wait_for_marks(admin_page, chart, BARS)
        await shoot(admin_page, "reports")

        await open_ok(admin_page, "/ui/usage")
        await expect(admin_page.locator("table#usage-table tbody tr")).to_have_count(8)
        await shoot(admin_page, "usage")

        await open_ok(admin_page, "/ui/users")
        await expect(admin_page.locator('#users-table tr[data-user="alice"]')).to_be_visible()
        await shoot(admin_page, "users")

        await open_ok(admin_page, "/ui/users/alice")
        await expect(admin_page.locator("form#edit-user")).to_be_visible()
        await expect(admin_page.locator("table#credit-ledger")).to_contain_text("initial top-up")
        await shoot(admin_page, "user-detail")

        await open_ok(admin_page, "/ui/keys")
        form = admin_page.locator("form#create-key")
        await fill_field(form, "user", "bob")
        await fill_field(form, "note", "screenshot key")
        assert (await submit(form)).status == 200
        await shown_secret(admin_page, "#new-key", KEY_PATTERN)
        await shoot(admin_page, "keys-new-key")

        await open_ok(admin_page, "/ui/keys")
        await expect(admin_page.locator("#keys-table tr[data-key-id]")).to_have_count(3)
        await shoot(admin_page, "keys")

        await open_ok(admin_page, f"/ui/keys/{alice_key_id}")
        await expect(admin_page.locator("form#edit-key")).to_be_visible()
        await shoot(admin_page, "key-edit")

        await open_ok(admin_page, "/ui/tracking-tokens")
        form = admin_page.locator("form#create-tracking-token")
        await fill_field(form, "name", "batch-jobs")
        await fill_field(form, "user", "alice")
        assert (await submit(form)).status == 200
        token = await shown_secret(admin_page, "#new-token", TOKEN_PATTERN)
        await expect(admin_page.locator("button#copy-token")).to_be_visible()
        await expect(admin_page.locator("#snippet")).to_contain_text("/ingest")
        await expect(admin_page.locator("#snippet")).to_contain_text(token)
        await expect(admin_page.locator("#tracking-tokens-table tr[data-token-id]")).to_have_count(
            1
        )
        await shoot(admin_page, "tracking-tokens")

        user_page = await browsing.new_page()
        await sign_in_user(user_page, gw, alice)
        await expect(user_page.locator("#my-spend")).to_contain_text("0.92")  # 4 × 0.23
        await wait_for_marks(user_page, "#chart-my-daily", BARS)
        await shoot(user_page, "me")

    written = sorted(path.stem for path in shots.glob("*.png"))
    assert set(written) >= {
        "login", "request-key", "overview", "reports", "usage", "users", "user-detail",
        "keys-new-key", "keys", "key-edit", "tracking-tokens", "me",
    }  # fmt: skip
