"""trusted_identity: the trusted user header, believed only from a trusted proxy."""

import pytest
from starlette.requests import Request

from spendgate.api.identity import trusted_identity
from spendgate.config import load_settings

HEADER = "X-Forwarded-User"


def settings(**overrides):
    values = {
        "_env_file": None,
        "trusted_user_header": HEADER,
        "trusted_proxies": ["127.0.0.1/32", "10.1.0.0/16", "fd00::/8"],
    }
    return load_settings(**{**values, **overrides})


def scope(peer="127.0.0.1", headers=((HEADER, "ann"),)):
    return {
        "type": "http",
        "method": "GET",
        "path": "/",
        "headers": [(name.lower().encode(), value.encode()) for name, value in headers],
        "client": None if peer is None else (peer, 51234),
    }


@pytest.mark.parametrize("peer", ["127.0.0.1", "10.1.255.7", "fd00::1", "::ffff:10.1.0.9"])
def test_the_header_from_a_trusted_proxy_is_the_identity(peer):
    assert trusted_identity(scope(peer), settings()) == "ann"


def test_a_request_or_its_scope_will_do():
    assert trusted_identity(Request(scope()), settings()) == "ann"


@pytest.mark.parametrize("peer", ["127.0.0.2", "10.2.0.1", "192.168.1.1", "::1", "fe80::1", None])
def test_the_header_from_anyone_else_is_ignored(peer):
    assert trusted_identity(scope(peer), settings()) is None


@pytest.mark.parametrize("peer", ["testclient", "/run/gateway.sock", ""])
def test_a_peer_that_is_no_address_is_not_trusted(peer):
    assert trusted_identity(scope(peer), settings()) is None


def test_nothing_is_trusted_without_the_header_setting_or_proxies():
    assert trusted_identity(scope(), settings(trusted_user_header=None)) is None
    assert trusted_identity(scope(), settings(trusted_proxies=[])) is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("  ann  ", "ann"),
        ("first.last@example.com", "first.last@example.com"),
        ("", None),
        ("   ", None),
        ("x" * 256, "x" * 256),
        ("x" * 257, None),
    ],
)
def test_the_value_is_stripped_and_bounded(value, expected):
    assert trusted_identity(scope(headers=[(HEADER, value)]), settings()) == expected


def test_the_header_name_is_matched_case_insensitively():
    found = trusted_identity(scope(headers=[("x-forwarded-user", "ann")]), settings())
    assert found == "ann"
    assert trusted_identity(scope(), settings(trusted_user_header="x-FORWARDED-user")) == "ann"


def test_another_header_or_two_copies_of_it_name_nobody():
    assert trusted_identity(scope(headers=[("X-Remote-User", "ann")]), settings()) is None
    twice = [(HEADER, "ann"), (HEADER, "root")]
    assert trusted_identity(scope(headers=twice), settings()) is None


def test_a_utf8_name_is_decoded():
    raw = scope(headers=[])
    raw["headers"] = [(HEADER.lower().encode(), "José".encode())]
    assert trusted_identity(raw, settings()) == "José"
