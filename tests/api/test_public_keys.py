"""Self-service keys under /public/keys, against a real gateway."""

import re
from datetime import UTC, datetime, timedelta

import pytest

from spendgate.keys.material import display_key
from tests.support import assert_openai_error

KEY_SHAPE = re.compile(r"^sg-[A-Za-z0-9_-]{32,}$")
CREATED_FIELDS = {"user", "key", "display", "note", "created_at"}
LISTED_FIELDS = {"id", "display", "note", "created_at", "expires_at", "last_used_at"}
SSO = {
    "self_service": True,
    "self_service_trusted_only": True,
    "trusted_proxies": ["127.0.0.1/32"],
    "trusted_user_header": "X-Forwarded-User",
}


async def chat(gateway, key):
    return await gateway.client(key).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=2
    )


@pytest.mark.parametrize("body", [{"username": "ann"}, {}, {"username": "a/b", "x": 1}])
async def test_self_service_off_answers_404_to_both_routes(gateway, body):
    client = gateway.http()
    created = await client.post("/public/keys", json=body)
    listed = await client.get("/public/keys/ann")
    assert_openai_error(created, 404, "not_found")
    assert_openai_error(listed, 404, "not_found")
    assert await gateway.runtime.store.list_users() == []


async def test_a_self_service_key_works_and_is_listed_in_display_form(make_gateway, upstream):
    async with make_gateway(self_service=True) as gw:
        client = gw.http()
        response = await client.post("/public/keys", json={"username": "ann", "note": "laptop"})
        assert response.status_code == 201, response.text
        created = response.json()
        assert set(created) >= CREATED_FIELDS
        key = created["key"]
        assert KEY_SHAPE.match(key), key
        assert created["user"] == "ann" and created["note"] == "laptop"
        assert created["display"] == f"sg-{key[3:7]}…{key[-4:]}"

        completion = await chat(gw, key)
        assert completion.choices
        assert upstream.stats.requests == 1
        await gw.flush()

        listing = await client.get("/public/keys/ann")
        assert listing.status_code == 200, listing.text
        [entry] = listing.json()
        assert set(entry) >= LISTED_FIELDS
        assert entry["display"] == created["display"] and entry["note"] == "laptop"
        assert entry["last_used_at"] is not None
        assert key not in listing.text and key[3:] not in listing.text
        assert "key_hash" not in entry and "key" not in entry

        async with gw.admin() as admin:
            assert (await admin.get("/admin/users/ann")).status_code == 200
        assert (await client.get("/public/keys/nobody")).json() == []


async def test_revoked_and_expired_keys_are_not_listed(make_gateway):
    async with make_gateway(self_service=True) as gw:
        client = gw.http()
        response = await client.post("/public/keys", json={"username": "bea", "note": "k0"})
        assert response.status_code == 201, response.text
        revoked = response.json()
        kept = await gw.new_key("bea")
        await gw.new_key("bea", expires_at=datetime.now(UTC) - timedelta(seconds=1))
        async with gw.admin() as admin:
            assert (await admin.post(f"/admin/keys/{revoked['id']}/revoke")).status_code == 200
        listed = (await client.get("/public/keys/bea")).json()
    assert [entry["display"] for entry in listed] == [display_key(kept)]


async def test_without_an_identity_an_existing_user_gets_no_key(make_gateway):
    """Nobody is known to be who they say: a key only for a new name, never on another's budget."""
    async with make_gateway(self_service=True) as gw:
        client = gw.http()
        first = await client.post("/public/keys", json={"username": "eve"})
        again = await client.post("/public/keys", json={"username": "eve"})
        await gw.new_key("carol")
        theirs = await client.post("/public/keys", json={"username": "carol"})
        async with gw.admin() as admin:
            eve_keys = (await admin.get("/admin/keys", params={"user": "eve"})).json()
            carol_keys = (await admin.get("/admin/keys", params={"user": "carol"})).json()
    assert first.status_code == 201
    assert_openai_error(again, 403, "forbidden")
    assert_openai_error(theirs, 403, "forbidden")
    assert (len(eve_keys), len(carol_keys)) == (1, 1)


async def test_a_disabled_user_gets_no_self_service_key(make_gateway):
    async with make_gateway(self_service=True) as gw:
        async with gw.admin() as admin:
            assert (await admin.post("/admin/users", json={"name": "dan"})).status_code == 201
            disabled = await admin.patch("/admin/users/dan", json={"disabled": True})
            assert disabled.status_code == 200
            response = await gw.http().post("/public/keys", json={"username": "dan"})
            keys = (await admin.get("/admin/keys", params={"user": "dan"})).json()
    assert_openai_error(response, 403, "forbidden")
    assert keys == []


@pytest.mark.parametrize(
    "username", ["", "a b", "a/b", "x" * 65, "ünï", "a\nb", "a:b", "<script>", "a" * 201]
)
async def test_a_malformed_username_is_a_400(make_gateway, username):
    async with make_gateway(self_service=True) as gw:
        response = await gw.http().post("/public/keys", json={"username": username})
        users = await gw.runtime.store.list_users()
    assert_openai_error(response, 400, "invalid_request", "username")
    assert users == []


@pytest.mark.parametrize("username", ["a", "x" * 64, "first.last@example.com", "ci_bot-2"])
async def test_well_formed_usernames_are_accepted(make_gateway, username):
    async with make_gateway(self_service=True) as gw:
        response = await gw.http().post("/public/keys", json={"username": username})
    assert response.status_code == 201, response.text
    assert response.json()["user"] == username


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"username": "ann", "budget_usd": 100}, "budget_usd"),
        ({"username": "ann", "note": "n" * 501}, "note"),
    ],
)
async def test_a_self_service_request_cannot_choose_more_than_a_note(make_gateway, body, param):
    async with make_gateway(self_service=True) as gw:
        response = await gw.http().post("/public/keys", json=body)
    assert_openai_error(response, 400, "invalid_request", param)


async def test_trusted_only_honours_the_trusted_header(make_gateway):
    async with make_gateway(**SSO) as gw:
        client = gw.http()
        as_ann = {"X-Forwarded-User": "ann"}
        created = await client.post("/public/keys", json={"username": "ann"}, headers=as_ann)
        assert created.status_code == 201, created.text
        await chat(gw, created.json()["key"])
        listed = await client.get("/public/keys/ann", headers=as_ann)
        assert [entry["display"] for entry in listed.json()] == [created.json()["display"]]

        for headers in ({"X-Forwarded-User": "bob"}, {}, {"X-Forwarded-User": ""}):
            other = await client.post("/public/keys", json={"username": "ann"}, headers=headers)
            assert_openai_error(other, 403, "forbidden")
            peek = await client.get("/public/keys/ann", headers=headers)
            assert_openai_error(peek, 403, "forbidden")
        for_bob = await client.post("/public/keys", json={"username": "bob"}, headers=as_ann)
        assert_openai_error(for_bob, 403, "forbidden")
        again = await client.post("/public/keys", json={"username": "ann"}, headers=as_ann)
        assert again.status_code == 201, again.text  # in their own name: more keys
        users = [user.name for user in await gw.runtime.store.list_users()]
    assert users == ["ann"]


async def test_the_trusted_header_is_ignored_from_an_untrusted_peer(make_gateway):
    async with make_gateway(**{**SSO, "trusted_proxies": ["10.0.0.0/8", "::1/128"]}) as gw:
        client = gw.http()
        as_ann = {"X-Forwarded-User": "ann"}
        created = await client.post("/public/keys", json={"username": "ann"}, headers=as_ann)
        listed = await client.get("/public/keys/ann", headers=as_ann)
        users = await gw.runtime.store.list_users()
    assert_openai_error(created, 403, "forbidden")
    assert_openai_error(listed, 403, "forbidden")
    assert users == []
