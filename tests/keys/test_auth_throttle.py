"""Failed authentications are throttled per client address (unit, then a real gateway)."""

from ipaddress import ip_network

import pytest

from spendgate.keys.throttle import AuthThrottle, client_address
from tests.support import ADMIN_TOKEN, assert_openai_error
from tests.web.test_console_http import post_login


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def scope(peer: str, forwarded: str | None = None) -> dict:
    headers = [(b"x-forwarded-for", forwarded.encode())] if forwarded else []
    return {"client": (peer, 5555), "headers": headers}


def test_an_address_is_blocked_past_its_rate_until_the_bucket_drains():
    clock = Clock()
    throttle = AuthThrottle(6, clock=clock)  # 6 failures held, one drained every 10 s
    for _ in range(6):
        throttle.failed(scope("10.0.0.1"))
    assert throttle.retry_after(scope("10.0.0.1")) is None
    throttle.failed(scope("10.0.0.1"))  # the 7th overflows
    assert throttle.retry_after(scope("10.0.0.1")) == pytest.approx(10)
    assert throttle.retry_after(scope("10.0.0.2")) is None  # another address is not touched
    assert throttle.blocked_addresses == 1
    clock.now += 9.9
    assert throttle.retry_after(scope("10.0.0.1")) == pytest.approx(0.1)
    clock.now += 0.2
    assert throttle.retry_after(scope("10.0.0.1")) is None
    throttle.failed(scope("10.0.0.1"))  # 5.99 drained back to... 6.99: blocked for 9.9 s
    assert throttle.retry_after(scope("10.0.0.1")) == pytest.approx(9.9)
    assert throttle.failures == 8 and throttle.refused == 3


def test_failures_spread_below_the_rate_never_block():
    clock = Clock()
    throttle = AuthThrottle(6, clock=clock)
    for _ in range(100):
        throttle.failed(scope("10.0.0.1"))
        clock.now += 10.5
    assert throttle.retry_after(scope("10.0.0.1")) is None
    assert not throttle.blocking


def test_zero_disables_the_throttle():
    throttle = AuthThrottle(0)
    for _ in range(1000):
        throttle.failed(scope("10.0.0.1"))
    assert throttle.retry_after(scope("10.0.0.1")) is None


def test_behind_a_trusted_proxy_the_forwarded_client_is_counted():
    trusted = [ip_network("10.0.0.0/8")]
    assert client_address(scope("10.1.1.1", "203.0.113.9"), trusted) == "203.0.113.9"
    # A client-written hop before the real one is ignored: the last untrusted hop counts.
    assert client_address(scope("10.1.1.1", "1.2.3.4, 203.0.113.9, 10.2.2.2"), trusted) == (
        "203.0.113.9"
    )
    # From an untrusted peer, the header is the client's own writing: the peer counts.
    assert client_address(scope("198.51.100.7", "203.0.113.9"), trusted) == "198.51.100.7"
    assert client_address(scope("10.1.1.1"), trusted) == "10.1.1.1"


async def test_a_gateway_blocks_an_address_that_keeps_failing(make_gateway, upstream):
    async with make_gateway(auth_failures_per_minute=6) as gw:
        key = await gw.new_key()
        http = gw.http()
        body = {"model": "gpt-4o-mini", "input": "x"}
        wrong = {"Authorization": "Bearer sg-wrong-key-wrong-key-wrong-key"}
        # Wrong gateway keys, a wrong admin token and a failed console sign-in all count.
        for _ in range(3):
            assert (await http.post("/v1/embeddings", json=body, headers=wrong)).status_code == 401
        admin_wrong = {"Authorization": "Bearer not-the-admin-token"}
        assert (await http.get("/admin/users", headers=admin_wrong)).status_code == 401
        assert (await http.get("/me", headers=wrong)).status_code == 401
        login = await post_login(http, token="guess")
        assert login.status_code == 401
        seventh = await http.post("/v1/embeddings", json=body, headers=wrong)
        assert seventh.status_code == 401
        # Blocked now: even the right key and the right admin token are refused, unread.
        before = upstream.stats.received
        refused = await http.post(
            "/v1/embeddings", json=body, headers={"Authorization": f"Bearer {key}"}
        )
        assert_openai_error(refused, 429, "rate_limit_exceeded")
        assert 1 <= int(refused.headers["retry-after"]) <= 10
        admin = await http.get("/admin/users", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        assert_openai_error(admin, 429, "rate_limit_exceeded")
        assert upstream.stats.received == before
        assert (await http.get("/health")).status_code == 200  # probes are never refused
        metrics = (await http.get("/metrics")).text
        assert "spendgate_auth_blocked_addresses 1.0" in metrics
        assert "spendgate_auth_refused_total 2.0" in metrics
        assert "spendgate_auth_failures_total 7.0" in metrics


async def test_behind_a_trusted_proxy_one_client_is_blocked_not_the_proxy(make_gateway, upstream):
    async with make_gateway(auth_failures_per_minute=3, trusted_proxies=["127.0.0.1/32"]) as gw:
        key = await gw.new_key()
        http = gw.http()
        body = {"model": "gpt-4o-mini", "input": "x"}
        attacker = {"X-Forwarded-For": "203.0.113.9", "Authorization": "Bearer sg-nope"}
        for _ in range(4):
            assert (
                await http.post("/v1/embeddings", json=body, headers=attacker)
            ).status_code == 401
        blocked = await http.post("/v1/embeddings", json=body, headers=attacker)
        assert blocked.status_code == 429
        other = {"X-Forwarded-For": "198.51.100.7", "Authorization": f"Bearer {key}"}
        assert (await http.post("/v1/embeddings", json=body, headers=other)).status_code == 200
