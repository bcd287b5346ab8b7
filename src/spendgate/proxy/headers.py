"""Header handling: what crosses the gateway in each direction, precomputed once."""

from collections.abc import Iterable
from dataclasses import dataclass

# RFC 9110 §7.6.1 hop-by-hop headers, plus what the gateway itself sets or consumes.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
_NOT_FORWARDED_UP = HOP_BY_HOP | {
    b"host",
    b"content-length",
    b"authorization",
    b"api-key",
    b"x-api-key",
    b"x-admin-token",
    b"cookie",
    b"accept-encoding",
    b"expect",
}
_NOT_RELAYED_DOWN = HOP_BY_HOP | {
    b"content-length",
    b"content-encoding",
    b"set-cookie",
    b"date",
    b"server",
}


@dataclass(slots=True)
class RequestHeaders:
    """What the proxy reads from a request's headers, gathered in one pass over them."""

    key: str | None  # the gateway key (see `client_key` for the order of precedence)
    content_type: bytes | None
    content_length: bytes | None
    end_user: bytes | None  # X-User-Id
    forward: list[tuple[str, str]]  # fit to forward upstream, the upstream's auth added


def read_request_headers(
    headers: Iterable[tuple[bytes, bytes]], auth: tuple[tuple[str, str], ...]
) -> RequestHeaders:
    """One pass: the key, the headers the proxy needs, and those it forwards."""
    bearer = api_key = x_api_key = content_type = content_length = end_user = None
    forward: list[tuple[str, str]] = []
    for name, value in headers:
        lowered = name.lower()  # ASGI servers send lower-case names; this is cheap insurance
        if lowered == b"authorization":
            scheme, _, token = value.partition(b" ")
            if scheme.lower() == b"bearer" and token.strip():
                bearer = token.strip()
            continue
        if lowered == b"content-type":
            content_type = value if content_type is None else content_type
        elif lowered == b"content-length":
            content_length = value if content_length is None else content_length
        elif lowered == b"api-key":
            api_key = value.strip()
        elif lowered == b"x-api-key":
            x_api_key = value.strip()
        elif lowered == b"x-user-id" and end_user is None:
            end_user = value
        if lowered not in _NOT_FORWARDED_UP:
            forward.append((lowered.decode("latin-1"), value.decode("latin-1")))
    forward.extend(auth)
    found = bearer or api_key or x_api_key
    return RequestHeaders(
        found.decode("latin-1") if found else None,
        content_type,
        content_length,
        end_user,
        forward,
    )


def client_headers(upstream: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """Upstream response headers fit to relay to the client."""
    return [
        (name.lower(), value) for name, value in upstream if name.lower() not in _NOT_RELAYED_DOWN
    ]


def client_key(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The gateway key from `Authorization: Bearer`, else `api-key`, else `x-api-key`."""
    return read_request_headers(headers, ()).key
