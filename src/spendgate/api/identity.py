"""The trusted identity: the user an authenticating reverse proxy says is signed in.

The header is believed only when the immediate peer (the TCP connection's address, never a
forwarded-for header a client could write) is one of `SPENDGATE_TRUSTED_PROXIES`: anyone
else can send the same header.
"""

from collections.abc import Mapping
from typing import Any

from starlette.requests import HTTPConnection

from spendgate.config import Settings
from spendgate.keys.throttle import is_trusted

MAX_IDENTITY_LEN = 256


def trusted_identity(source: HTTPConnection | Mapping[str, Any], settings: Settings) -> str | None:
    """The trusted user header's value when the peer is a trusted proxy, else None.

    `source` is a request (or websocket) or its ASGI scope. The value is stripped; an empty
    one, one over 256 characters or a header sent twice (which copy is the proxy's?) is None.
    """
    header = settings.trusted_user_header
    if not header or not settings.trusted_proxies:
        return None
    scope = source.scope if isinstance(source, HTTPConnection) else source
    if not _peer_is_trusted(scope.get("client"), settings):
        return None
    name = header.strip().lower().encode("latin-1", "replace")
    values: list[bytes] = [v for k, v in scope.get("headers", ()) if k.lower() == name]
    if len(values) != 1:
        return None
    try:
        identity = values[0].decode("utf-8").strip()
    except UnicodeDecodeError:  # not UTF-8: HTTP's own latin-1
        identity = values[0].decode("latin-1").strip()
    if not identity or len(identity) > MAX_IDENTITY_LEN:
        return None
    return identity


def _peer_is_trusted(client: Any, settings: Settings) -> bool:
    return bool(client) and is_trusted(str(client[0]), settings.trusted_proxies)
