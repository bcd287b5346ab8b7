"""Header handling: what crosses the gateway in each direction, precomputed once."""

from collections.abc import Iterable

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


def upstream_headers(
    client_headers: Iterable[tuple[bytes, bytes]], auth: tuple[tuple[str, str], ...]
) -> list[tuple[str, str]]:
    """Client headers fit to forward: no hop-by-hop, none of the client's credentials."""
    out = [
        (name.decode("latin-1"), value.decode("latin-1"))
        for name, value in client_headers
        if name.lower() not in _NOT_FORWARDED_UP
    ]
    out.extend(auth)
    return out


def client_headers(upstream: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """Upstream response headers fit to relay to the client."""
    return [
        (name.lower(), value) for name, value in upstream if name.lower() not in _NOT_RELAYED_DOWN
    ]


def find_header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """The first value of a (lower-case) header name."""
    for key, value in headers:
        if key == name or key.lower() == name:
            return value
    return None


def client_key(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The gateway key from `Authorization: Bearer`, `api-key` or `x-api-key`."""
    bearer = api_key = x_api_key = None
    for name, value in headers:
        lowered = name.lower()
        if lowered == b"authorization":
            scheme, _, token = value.partition(b" ")
            if scheme.lower() == b"bearer" and token.strip():
                bearer = token.strip()
        elif lowered == b"api-key":
            api_key = value.strip()
        elif lowered == b"x-api-key":
            x_api_key = value.strip()
    found = bearer or api_key or x_api_key
    return found.decode("latin-1") if found else None
