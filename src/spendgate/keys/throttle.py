"""Failed sign-ins throttled per client address: guessing keys or the admin token stays slow.

Every wrong or missing credential (a gateway key on the proxy or `/me`, the admin token, the
ingest key, a console sign-in) counts against the client's address in a leaky bucket of
`SPENDGATE_AUTH_FAILURES_PER_MINUTE`: the bucket holds that many failures and drains at that
rate. A failure that overflows it blocks the address until the bucket is back under the
bound, so guesses cannot go faster than the configured rate. While blocked, every request
from the address is refused with 429 before any credential is looked at: answering a right
guess differently from a wrong one would let the guessing go on at full speed.

The address is the TCP peer's; behind a trusted proxy (`SPENDGATE_TRUSTED_PROXIES`) it is the
last `X-Forwarded-For` hop that is not one of those proxies. The counts are per process.
"""

import time
from collections.abc import Callable, Mapping, Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address
from typing import Any

Network = IPv4Network | IPv6Network
_MAX_ADDRESSES = 100_000  # addresses tracked at once; beyond, drained ones are forgotten


class AuthThrottle:
    """Counts failed authentications by client address and blocks the addresses that overflow."""

    def __init__(
        self,
        failures_per_minute: int,
        trusted_proxies: Sequence[Network] = (),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._burst = float(failures_per_minute)
        self._rate = failures_per_minute / 60.0  # failures drained per second
        self._trusted = tuple(trusted_proxies)
        self._clock = clock
        self._levels: dict[str, tuple[float, float]] = {}  # address -> (level, at)
        self._blocked: dict[str, float] = {}  # address -> blocked until (clock)
        self.failures = 0
        self.refused = 0

    @property
    def blocking(self) -> bool:
        """Whether any address is (or was until lately) blocked: the hot path's only check."""
        return bool(self._blocked)

    @property
    def blocked_addresses(self) -> int:
        """Addresses blocked now."""
        now = self._clock()
        return sum(1 for until in self._blocked.values() if until > now)

    def failed(self, scope: Mapping[str, Any]) -> None:
        """Count a failed authentication from the client of `scope`."""
        if self._rate <= 0:
            return
        address = client_address(scope, self._trusted)
        now = self._clock()
        level, at = self._levels.get(address, (0.0, now))
        level = max(0.0, level - (now - at) * self._rate) + 1.0
        self._levels[address] = (level, now)
        self.failures += 1
        if level > self._burst:
            self._blocked[address] = now + (level - self._burst) / self._rate
        if len(self._levels) > _MAX_ADDRESSES:
            self._forget_drained(now)

    def retry_after(self, scope: Mapping[str, Any]) -> float | None:
        """Seconds until the client of `scope` may try again, or None if it is not blocked."""
        address = client_address(scope, self._trusted)
        until = self._blocked.get(address)
        if until is None:
            return None
        wait = until - self._clock()
        if wait <= 0:
            del self._blocked[address]
            return None
        self.refused += 1
        return wait

    def _forget_drained(self, now: float) -> None:
        rate = self._rate
        self._levels = {
            a: (lv, at) for a, (lv, at) in self._levels.items() if lv > (now - at) * rate
        }
        self._blocked = {a: until for a, until in self._blocked.items() if until > now}


def client_address(scope: Mapping[str, Any], trusted_proxies: Sequence[Network]) -> str:
    """The client's address: the TCP peer, or behind trusted proxies the hop before them."""
    client = scope.get("client")
    peer = str(client[0]) if client else ""
    if not trusted_proxies or not is_trusted(peer, trusted_proxies):
        return peer
    hops: list[str] = []
    for name, value in scope.get("headers", ()):
        if name == b"x-forwarded-for":
            hops.extend(part.strip() for part in value.decode("latin-1").split(","))
    for hop in reversed(hops):
        if hop and not is_trusted(hop, trusted_proxies):
            return hop
    return peer


def is_trusted(address: str, trusted_proxies: Sequence[Network]) -> bool:
    """Whether `address` is in one of `trusted_proxies` (IPv4-mapped IPv6 read as IPv4)."""
    try:
        parsed: IPv4Address | IPv6Address = ip_address(address)
    except ValueError:  # a Unix socket path, a test client's made-up name, garbage
        return False
    if isinstance(parsed, IPv6Address) and parsed.ipv4_mapped is not None:
        parsed = parsed.ipv4_mapped
    return any(parsed in network for network in trusted_proxies)
