"""Admin API: tracking tokens (create, list, get, patch, delete), against a real gateway."""

import re
from datetime import UTC, datetime, timedelta

import pytest

from spendgate.keys.material import hash_key
from tests.stacks import COVERING
from tests.support import assert_openai_error, parse_time

across_stacks = pytest.mark.matrix(COVERING)

CREATED_FIELDS = {"id", "token", "name", "user", "display", "active", "created_at"}
LISTED_FIELDS = CREATED_FIELDS - {"token"}
TOKEN_SHAPE = re.compile(r"^sgt-[A-Za-z0-9_-]{43}$")
BASE = "/admin/tracking-tokens"


@across_stacks
async def test_tracking_token_crud(gateway):
    async with gateway.admin() as admin:
        created = await admin.post(BASE, json={"name": "mobile app", "user": "tara"})
        unowned = await admin.post(BASE, json={"name": "batch"})
        assert created.status_code == 201, created.text
        assert unowned.status_code == 201, unowned.text
        token = created.json()
        assert set(token) >= CREATED_FIELDS
        assert TOKEN_SHAPE.match(token["token"]), token["token"]
        assert token["display"] == f"sgt-{token['token'][4:8]}…{token['token'][-4:]}"
        assert (token["name"], token["user"], token["active"]) == ("mobile app", "tara", True)
        assert isinstance(token["id"], int)
        assert abs(parse_time(token["created_at"]) - datetime.now(UTC)) < timedelta(minutes=5)
        assert unowned.json()["user"] is None
        assert unowned.json()["token"] != token["token"]

        # The unknown user was created, as POST /admin/keys does.
        assert (await admin.get("/admin/users/tara")).status_code == 200

        listing = await admin.get(BASE)
        assert listing.status_code == 200
        listed = listing.json()
        assert [entry["id"] for entry in listed] == [unowned.json()["id"], token["id"]]
        assert all(set(entry) >= LISTED_FIELDS and "token" not in entry for entry in listed)
        for secret in (token["token"], unowned.json()["token"]):
            assert secret not in listing.text and secret[4:] not in listing.text
        shown = {name: token[name] for name in LISTED_FIELDS}
        assert listed[1] == shown

        one = await admin.get(f"{BASE}/{token['id']}")
        assert one.status_code == 200 and one.json() == shown

        paused = await admin.patch(f"{BASE}/{token['id']}", json={"active": False})
        assert paused.status_code == 200, paused.text
        assert paused.json() == {**shown, "active": False}
        renamed = await admin.patch(
            f"{BASE}/{token['id']}", json={"active": True, "name": "mobile app v2"}
        )
        assert renamed.json() == {**shown, "name": "mobile app v2"}
        assert (await admin.get(f"{BASE}/{token['id']}")).json() == renamed.json()

        deleted = await admin.delete(f"{BASE}/{token['id']}")
        assert deleted.status_code == 200, deleted.text
        assert deleted.json() == {"deleted": True}
        assert_openai_error(await admin.get(f"{BASE}/{token['id']}"), 404, "not_found")
        assert_openai_error(await admin.delete(f"{BASE}/{token['id']}"), 404, "not_found")
        remaining = (await admin.get(BASE)).json()
        assert [entry["id"] for entry in remaining] == [unowned.json()["id"]]
    # Stored only as its hash: the runtime's store finds it by hash, never by the token.
    found = await gateway.runtime.tracking.find_by_hash(hash_key(unowned.json()["token"]))
    assert found is not None and found.id == unowned.json()["id"]


@pytest.mark.parametrize("target", ["999999", "9" * 30, "-1", "abc", "²"])
async def test_an_unknown_tracking_token_is_not_found(gateway, target):
    async with gateway.admin() as admin:
        assert (await admin.post(BASE, json={"name": "kept"})).status_code == 201
        responses = [
            await admin.get(f"{BASE}/{target}"),
            await admin.patch(f"{BASE}/{target}", json={"active": False}),
            await admin.delete(f"{BASE}/{target}"),
        ]
        listed = (await admin.get(BASE)).json()
    for response in responses:
        assert_openai_error(response, 404, "not_found")
    assert [(entry["name"], entry["active"]) for entry in listed] == [("kept", True)]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({}, "name"),
        ({"name": ""}, "name"),
        ({"name": "a/b"}, "name"),
        ({"name": "x" * 201}, "name"),
        ({"name": "ok", "user": "a/b"}, "user"),
        ({"name": "ok", "token": "sgt-chosen-by-me"}, "token"),
        ({"name": "ok", "active": False}, "active"),
    ],
    ids=["missing-name", "empty-name", "slash", "too-long", "bad-user", "own-token", "extra"],
)
async def test_invalid_tracking_token_bodies_are_400s(gateway, body, param):
    async with gateway.admin() as admin:
        response = await admin.post(BASE, json=body)
        listed = (await admin.get(BASE)).json()
    assert_openai_error(response, 400, "invalid_request", param)
    assert listed == []


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({}, None),
        ({"active": None}, "active"),
        ({"active": "perhaps"}, "active"),
        ({"name": ""}, "name"),
        ({"name": None}, "name"),
        ({"user": "someone-else"}, "user"),
    ],
    ids=["empty", "null-active", "not-bool", "empty-name", "null-name", "user"],
)
async def test_invalid_tracking_token_patches_are_400s_and_change_nothing(gateway, body, param):
    async with gateway.admin() as admin:
        created = (await admin.post(BASE, json={"name": "kept"})).json()
        response = await admin.patch(f"{BASE}/{created['id']}", json=body)
        after = (await admin.get(f"{BASE}/{created['id']}")).json()
    assert_openai_error(response, 400, "invalid_request", param)
    assert after == {name: created[name] for name in LISTED_FIELDS}


async def test_tracking_token_routes_need_the_admin_token(gateway):
    key = await gateway.new_key("uma")
    client = gateway.http()
    for headers in ({}, {"Authorization": f"Bearer {key}"}, {"X-Admin-Token": "wrong"}):
        for method, path, body in [
            ("POST", BASE, {"name": "intruder"}),
            ("GET", BASE, None),
            ("GET", f"{BASE}/1", None),
            ("PATCH", f"{BASE}/1", {"active": True}),
            ("DELETE", f"{BASE}/1", None),
        ]:
            response = await client.request(method, path, json=body, headers=headers)
            assert_openai_error(response, 401, "invalid_api_key")
    assert await gateway.runtime.tracking.list() == []
