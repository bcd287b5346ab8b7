"""Admin API: users, keys and admin authentication, against a real gateway."""

import json
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import openai
import pytest

from tests.stacks import COVERING
from tests.support import ADMIN_TOKEN, assert_openai_error, parse_time

# Tests whose outcome depends on the database or the limit backend run on each of them.
across_stacks = pytest.mark.matrix(COVERING)

USER_FIELDS = {
    "name",
    "email",
    "budget_usd",
    "budget_period",
    "spend_usd",
    "balance_usd",
    "limits",
    "disabled",
    "created_at",
}
CREATED_KEY_FIELDS = {
    "id",
    "key",
    "user",
    "note",
    "display",
    "created_at",
    "expires_at",
    "models",
    "budget_usd",
    "limits",
}
LISTED_KEY_FIELDS = (CREATED_KEY_FIELDS - {"key"}) | {"revoked_at", "last_used_at"}
KEY_SHAPE = re.compile(r"^sg-[A-Za-z0-9_-]{32,}$")


async def chat(gateway, key):
    return await gateway.client(key).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=2
    )


async def create_key(gateway, **body):
    async with gateway.admin() as admin:
        response = await admin.post("/admin/keys", json=body)
    assert response.status_code == 201, response.text
    return response.json()


# users


@across_stacks
async def test_created_user_has_every_contract_field(gateway):
    body = {
        "name": "carol",
        "email": "carol@example.com",
        "budget_usd": 12.5,
        "budget_period": "weekly",
        "limits": {"requests_per_minute": 10, "tokens_per_day": 5000},
    }
    async with gateway.admin() as admin:
        response = await admin.post("/admin/users", json=body)
    assert response.status_code == 201, response.text
    user = response.json()
    assert set(user) >= USER_FIELDS
    assert user["name"] == "carol"
    assert user["email"] == "carol@example.com"
    assert Decimal(str(user["budget_usd"])) == Decimal("12.5")
    assert user["budget_period"] == "weekly"
    assert user["spend_usd"] == 0
    assert user["balance_usd"] is None
    assert user["limits"] == {"requests_per_minute": 10, "tokens_per_day": 5000}
    assert user["disabled"] is False
    assert abs(parse_time(user["created_at"]) - datetime.now(UTC)) < timedelta(minutes=5)


async def test_users_are_listed_and_looked_up_by_name(gateway):
    async with gateway.admin() as admin:
        for name in ("dora", "ed"):
            assert (await admin.post("/admin/users", json={"name": name})).status_code == 201
        listing = await admin.get("/admin/users")
        one = await admin.get("/admin/users/ed")
    assert listing.status_code == 200
    users = {user["name"]: user for user in listing.json()}
    assert {"dora", "ed"} <= set(users)
    assert all(set(user) >= USER_FIELDS for user in users.values())
    assert one.status_code == 200
    assert one.json() == users["ed"]


@across_stacks
async def test_creating_an_existing_user_is_a_conflict(gateway):
    async with gateway.admin() as admin:
        assert (await admin.post("/admin/users", json={"name": "fay"})).status_code == 201
        again = await admin.post("/admin/users", json={"name": "fay", "email": "f@x.io"})
    assert_openai_error(again, 409, "conflict")


@pytest.mark.parametrize(
    ("method", "body"), [("GET", None), ("PATCH", {"email": "ghost@example.com"})]
)
async def test_an_unknown_user_is_not_found(gateway, method, body):
    async with gateway.admin() as admin:
        response = await admin.request(method, "/admin/users/ghost", json=body)
    assert_openai_error(response, 404, "not_found")


@across_stacks
async def test_patch_changes_a_users_budget_email_and_limits(gateway):
    async with gateway.admin() as admin:
        await admin.post("/admin/users", json={"name": "gus", "budget_usd": 1})
        response = await admin.patch(
            "/admin/users/gus",
            json={
                "email": "gus@example.com",
                "budget_usd": "2.25",
                "budget_period": "daily",
                "limits": {"requests_per_hour": 7},
            },
        )
        fetched = await admin.get("/admin/users/gus")
    assert response.status_code == 200, response.text
    user = response.json()
    assert user["email"] == "gus@example.com"
    assert Decimal(str(user["budget_usd"])) == Decimal("2.25")
    assert user["budget_period"] == "daily"
    assert user["limits"] == {"requests_per_hour": 7}
    assert fetched.json() == user


@pytest.mark.parametrize("period", ["daily", "weekly", "monthly", "total", None])
@across_stacks
async def test_a_users_spend_is_what_it_spent_this_period(gateway, period):
    async with gateway.admin() as admin:
        body = {"name": "ivan", "budget_usd": 9, "budget_period": period}
        assert (await admin.post("/admin/users", json=body)).status_code == 201
        key = (await admin.post("/admin/keys", json={"user": "ivan"})).json()["key"]
        raw = await gateway.client(key).chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "a b"}], max_tokens=3
        )
        await gateway.flush()
        user = json.loads((await admin.get("/admin/users/ivan")).text, parse_float=Decimal)
        listed = json.loads((await admin.get("/admin/users")).text, parse_float=Decimal)
    assert user["spend_usd"] == Decimal(raw.headers["x-spendgate-cost-usd"]) > 0
    assert listed == [user]


@across_stacks
async def test_disabling_a_user_refuses_its_keys_at_once(gateway, upstream):
    created = await create_key(gateway, user="hal")
    key = created["key"]
    await chat(gateway, key)
    async with gateway.admin() as admin:
        response = await admin.patch("/admin/users/hal", json={"disabled": True})
        assert response.status_code == 200, response.text
        assert response.json()["disabled"] is True
        with pytest.raises(openai.AuthenticationError) as refused:
            await chat(gateway, key)
        assert refused.value.status_code == 401
        assert refused.value.code == "invalid_api_key"
        enabled = await admin.patch("/admin/users/hal", json={"disabled": False})
        assert enabled.json()["disabled"] is False
    await chat(gateway, key)
    assert upstream.stats.requests == 2


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"name": "neg", "budget_usd": -1}, "budget_usd"),
        ({"name": "period", "budget_period": "yearly"}, "budget_period"),
        ({"name": "extra", "colour": "blue"}, "colour"),
        ({"name": "a/b"}, "name"),
        ({"name": ""}, "name"),
        ({"email": "nobody@example.com"}, "name"),
        ({"name": "lim", "limits": {"requests_per_minute": -5}}, "limits.requests_per_minute"),
        (
            {"name": "lim2", "limits": {"requests_per_fortnight": 5}},
            "limits.requests_per_fortnight",
        ),
    ],
    ids=[
        "negative-budget",
        "bad-period",
        "unknown-field",
        "slash-in-name",
        "empty-name",
        "missing-name",
        "negative-limit",
        "unknown-limit",
    ],
)
async def test_invalid_user_bodies_are_openai_shaped_400s(gateway, body, param):
    async with gateway.admin() as admin:
        response = await admin.post("/admin/users", json=body)
        listing = await admin.get("/admin/users")
    error = assert_openai_error(response, 400, "invalid_request", param)
    assert error["type"] == "invalid_request_error"
    assert listing.json() == []


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"budget_usd": -0.01}, "budget_usd"),
        ({"budget_period": "hourly"}, "budget_period"),
        ({"name": "renamed"}, "name"),
        ({"disabled": None}, "disabled"),
        ({"disabled": "perhaps"}, "disabled"),
    ],
)
async def test_invalid_user_patches_are_400s_and_change_nothing(gateway, body, param):
    async with gateway.admin() as admin:
        before = (await admin.post("/admin/users", json={"name": "ivy", "budget_usd": 3})).json()
        response = await admin.patch("/admin/users/ivy", json=body)
        after = (await admin.get("/admin/users/ivy")).json()
    assert_openai_error(response, 400, "invalid_request", param)
    assert after == before


async def test_malformed_json_body_is_a_400(gateway):
    async with gateway.admin() as admin:
        response = await admin.post(
            "/admin/users", content=b"{not json", headers={"content-type": "application/json"}
        )
    assert_openai_error(response, 400, "invalid_request")


# keys


@across_stacks
async def test_created_key_is_shown_once_with_its_fields(gateway):
    expires = "2099-01-02T03:04:05+00:00"
    created = await create_key(
        gateway,
        user="jo",
        note="ci runner",
        models=["gpt-4o*", "text-embedding-*"],
        expires_at=expires,
        budget_usd=5,
        limits={"tokens_per_minute": 1000},
    )
    assert set(created) >= CREATED_KEY_FIELDS
    key = created["key"]
    assert KEY_SHAPE.match(key), key
    assert created["display"] == f"sg-{key[3:7]}…{key[-4:]}"
    assert isinstance(created["id"], int)
    assert created["user"] == "jo"
    assert created["note"] == "ci runner"
    assert created["models"] == ["gpt-4o*", "text-embedding-*"]
    assert parse_time(created["expires_at"]) == parse_time(expires)
    assert Decimal(str(created["budget_usd"])) == 5
    assert created["limits"] == {"tokens_per_minute": 1000}
    assert abs(parse_time(created["created_at"]) - datetime.now(UTC)) < timedelta(minutes=5)
    second = await create_key(gateway, user="jo")
    assert second["key"] != key and second["id"] != created["id"]


@across_stacks
async def test_creating_a_key_creates_its_user(gateway):
    created = await create_key(gateway, user="kim")
    async with gateway.admin() as admin:
        response = await admin.get("/admin/users/kim")
    assert response.status_code == 200
    assert response.json()["name"] == "kim"
    assert created["models"] is None and created["expires_at"] is None


async def test_label_is_accepted_instead_of_user(gateway):
    created = await create_key(gateway, label="legacy-app")
    assert created["user"] == "legacy-app"
    await chat(gateway, created["key"])


@pytest.mark.parametrize(
    "body",
    [
        {"note": "nobody's"},
        {"user": "a/b"},
        {"user": "lee", "budget_usd": -3},
        {"user": "lee", "expires_at": "next tuesday"},
        {"user": "lee", "models": "gpt-4o"},
        {"user": "lee", "secret": "x"},
    ],
    ids=["no-user", "slash", "negative-budget", "bad-expiry", "models-not-list", "unknown"],
)
async def test_invalid_key_bodies_are_400s(gateway, body):
    async with gateway.admin() as admin:
        response = await admin.post("/admin/keys", json=body)
        listing = await admin.get("/admin/keys")
    assert_openai_error(response, 400, "invalid_request")
    assert listing.json() == []


@across_stacks
async def test_key_listing_is_per_user_and_never_holds_the_key(gateway):
    mine = [await create_key(gateway, user="mia", note=f"n{i}") for i in range(2)]
    other = await create_key(gateway, user="ned")
    async with gateway.admin() as admin:
        filtered = await admin.get("/admin/keys", params={"user": "mia"})
        everything = await admin.get("/admin/keys")
    assert filtered.status_code == 200 and everything.status_code == 200
    listed = filtered.json()
    assert [entry["id"] for entry in listed] == [created["id"] for created in mine]
    for entry, created in zip(listed, mine, strict=True):
        assert set(entry) >= LISTED_KEY_FIELDS
        assert "key" not in entry
        assert entry["display"] == created["display"]
        assert entry["user"] == "mia" and entry["revoked_at"] is None
    assert {entry["id"] for entry in everything.json()} == {k["id"] for k in [*mine, other]}
    for created in [*mine, other]:
        secret = created["key"]
        assert secret not in filtered.text and secret not in everything.text
        assert secret[3:] not in everything.text


@across_stacks
async def test_last_used_at_is_set_by_a_request(gateway):
    created = await create_key(gateway, user="oli")
    await chat(gateway, created["key"])
    await gateway.flush()
    async with gateway.admin() as admin:
        [entry] = (await admin.get("/admin/keys", params={"user": "oli"})).json()
    assert entry["last_used_at"] is not None


@pytest.mark.parametrize("by", ["id", "key"])
@across_stacks
async def test_revoked_key_is_refused_at_once(gateway, by):
    created = await create_key(gateway, user="pam")
    keep = await create_key(gateway, user="pam")
    await chat(gateway, created["key"])
    target = str(created["id"]) if by == "id" else created["key"]
    async with gateway.admin() as admin:
        response = await admin.post(f"/admin/keys/{target}/revoke")
        listing = (await admin.get("/admin/keys", params={"user": "pam"})).json()
    assert response.status_code == 200, response.text
    assert response.json()["id"] == created["id"]
    assert response.json()["revoked_at"] is not None
    assert created["key"] not in response.text
    with pytest.raises(openai.AuthenticationError) as refused:
        await chat(gateway, created["key"])
    assert refused.value.status_code == 401
    assert refused.value.code == "invalid_api_key"
    revoked = {entry["id"]: entry["revoked_at"] for entry in listing}
    assert revoked[created["id"]] is not None and revoked[keep["id"]] is None
    await chat(gateway, keep["key"])


@pytest.mark.parametrize("target", ["999999", "sg-" + "x" * 40, "not-a-key", "9" * 30, "²", "-1"])
async def test_an_unknown_key_is_not_found(gateway, target):
    await create_key(gateway, user="pat")
    async with gateway.admin() as admin:
        revoke = await admin.post(f"/admin/keys/{target}/revoke")
        usage = await admin.get(f"/admin/usage/{target}")
        filtered = await admin.get("/admin/usage", params={"key": target})
    for response in (revoke, usage, filtered):
        assert_openai_error(response, 404, "not_found")


@pytest.mark.parametrize("target", ["999999", "9" * 30, "-1"])
async def test_patching_an_unknown_key_is_not_found(gateway, target):
    await create_key(gateway, user="pia")
    async with gateway.admin() as admin:
        response = await admin.patch(f"/admin/keys/{target}", json={"note": "x"})
    assert_openai_error(response, 404, "not_found")


@across_stacks
async def test_patch_changes_a_keys_note_models_and_expiry(gateway):
    created = await create_key(gateway, user="quin", note="old")
    expires = "2098-06-30T12:00:00+00:00"
    async with gateway.admin() as admin:
        response = await admin.patch(
            f"/admin/keys/{created['id']}",
            json={"note": "new", "models": ["gpt-4o-mini"], "expires_at": expires},
        )
        [listed] = (await admin.get("/admin/keys", params={"user": "quin"})).json()
    assert response.status_code == 200, response.text
    patched = response.json()
    assert patched["note"] == "new"
    assert patched["models"] == ["gpt-4o-mini"]
    assert parse_time(patched["expires_at"]) == parse_time(expires)
    assert "key" not in patched and created["key"] not in response.text
    assert listed == patched
    await chat(gateway, created["key"])


@across_stacks
async def test_patching_expiry_into_the_past_refuses_the_key(gateway):
    created = await create_key(gateway, user="ray")
    await chat(gateway, created["key"])
    past = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
    async with gateway.admin() as admin:
        response = await admin.patch(f"/admin/keys/{created['id']}", json={"expires_at": past})
    assert response.status_code == 200, response.text
    with pytest.raises(openai.AuthenticationError):
        await chat(gateway, created["key"])


@pytest.mark.parametrize(
    "body", [{"key": "sg-forged"}, {"models": "*"}, {"budget_usd": -1}, {"user": "other"}]
)
async def test_invalid_key_patches_are_400s(gateway, body):
    created = await create_key(gateway, user="sue")
    async with gateway.admin() as admin:
        response = await admin.patch(f"/admin/keys/{created['id']}", json=body)
        [listed] = (await admin.get("/admin/keys", params={"user": "sue"})).json()
    assert_openai_error(response, 400, "invalid_request")
    assert {name: listed[name] for name in created if name != "key"} == {
        name: value for name, value in created.items() if name != "key"
    }


# admin authentication

ADMIN_ROUTES = [
    ("GET", "/admin/users"),
    ("POST", "/admin/users"),
    ("GET", "/admin/users/anyone"),
    ("GET", "/admin/keys"),
    ("POST", "/admin/keys"),
    ("POST", "/admin/keys/1/revoke"),
    ("GET", "/admin/usage"),
    ("GET", "/admin/usage.csv"),
    ("GET", "/admin/monitor"),
    ("DELETE", "/admin/usage?before=2000-01-01"),
]


async def test_admin_routes_refuse_a_request_without_a_token(gateway):
    client = gateway.http()
    for method, path in ADMIN_ROUTES:
        body = {"name": "intruder", "user": "intruder"} if method == "POST" else None
        response = await client.request(method, path, json=body)
        assert_openai_error(response, 401, "invalid_api_key")
    assert await gateway.runtime.store.list_users() == []


async def test_a_wrong_admin_token_is_refused(gateway):
    client = gateway.http()
    for headers in (
        {"Authorization": "Bearer wrong-token"},
        {"Authorization": f"Basic {ADMIN_TOKEN}"},
        {"Authorization": f"Bearer {ADMIN_TOKEN}x"},
        {"X-Admin-Token": ADMIN_TOKEN[:-1]},
    ):
        response = await client.get("/admin/users", headers=headers)
        assert_openai_error(response, 401, "invalid_api_key")


async def test_x_admin_token_header_is_accepted(gateway):
    client = gateway.http()
    created = await client.post(
        "/admin/users", json={"name": "tess"}, headers={"X-Admin-Token": ADMIN_TOKEN}
    )
    listed = await client.get("/admin/users", headers={"x-admin-token": ADMIN_TOKEN})
    assert created.status_code == 201, created.text
    assert [user["name"] for user in listed.json()] == ["tess"]


async def test_without_a_configured_admin_token_everyone_is_refused(make_gateway):
    async with make_gateway(admin_token=None) as gw:
        client = gw.http()
        for headers in (
            {"Authorization": f"Bearer {ADMIN_TOKEN}"},
            {"X-Admin-Token": ADMIN_TOKEN},
            {"Authorization": "Bearer"},
            {"X-Admin-Token": ""},
            {},
        ):
            response = await client.get("/admin/users", headers=headers)
            assert_openai_error(response, 401, "invalid_api_key")


async def test_a_gateway_key_is_not_an_admin_token(gateway):
    key = await gateway.new_key("uma")
    client = gateway.http()
    for headers in ({"Authorization": f"Bearer {key}"}, {"X-Admin-Token": key}):
        response = await client.get("/admin/keys", headers=headers)
        assert_openai_error(response, 401, "invalid_api_key")
        assert key not in response.text
