"""Header handling: what crosses the gateway in each direction, precomputed once."""

from collections.abc import Iterable
from dataclasses import dataclass

from spendgate.errors import InvalidAPIKey

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
    b"x-ingest-key",
    b"cookie",
    b"accept-encoding",
    b"expect",
}
_CREDENTIAL_HEADERS = frozenset({b"authorization", b"api-key", b"x-api-key"})
# The gateway's own headers: what a client or an upstream sends under this prefix could be
# mistaken for the gateway's word (a request id, a cost), so it never crosses.
_OWN_PREFIX = b"x-spendgate-"
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
    """One pass: the key, the headers the proxy needs, and those it forwards.

    `InvalidAPIKey` (401) when the credential headers disagree (see `client_key`).
    """
    credentials: set[bytes] = set()
    named: set[bytes] = set()  # headers `Connection` names: hop-by-hop too (RFC 9110 §7.6.1)
    content_type = content_length = end_user = None
    forward: list[tuple[str, str]] = []
    for name, value in headers:
        lowered = name.lower()  # ASGI servers send lower-case names; this is cheap insurance
        if lowered in _CREDENTIAL_HEADERS:
            credential = credential_value(lowered, value)
            if credential:  # an empty header (or bare `Bearer`) carries nothing
                credentials.add(credential)
            continue
        if lowered == b"connection":
            named.update(token.strip().lower() for token in value.split(b","))
        if lowered == b"content-type":
            content_type = value if content_type is None else content_type
        elif lowered == b"content-length":
            content_length = value if content_length is None else content_length
        elif lowered == b"x-user-id" and end_user is None:
            end_user = value
        if lowered not in _NOT_FORWARDED_UP and not lowered.startswith(_OWN_PREFIX):
            forward.append((lowered.decode("latin-1"), value.decode("latin-1")))
    if named:
        forward = [(name, value) for name, value in forward if name.encode("latin-1") not in named]
    forward.extend(auth)
    if len(credentials) > 1:
        # Which one is meant? Believing either would let a proxy in front, which checks
        # one header, and the gateway, which reads another, see two different callers.
        raise InvalidAPIKey("Conflicting API keys: send one key, in one header.")
    found = credentials.pop() if credentials else None
    return RequestHeaders(
        found.decode("latin-1") if found is not None else None,
        content_type,
        content_length,
        end_user,
        forward,
    )


def credential_value(name: bytes, value: bytes) -> bytes:
    """What a credential header carries: a bearer's token, or the whole value stripped.

    A non-bearer `Authorization` (`Basic …`, no scheme, a tab after `Bearer`) counts too,
    as a credential no key or token can equal (it starts with a line feed, which no header
    value holds): it is refused, and cannot be quietly outvoted by another header.
    """
    stripped = value.strip()
    if name != b"authorization" or not stripped:
        return stripped
    scheme, _, token = stripped.partition(b" ")
    return token.strip() if scheme.lower() == b"bearer" else b"\n" + stripped


def client_headers(upstream: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """Upstream response headers fit to relay to the client."""
    relayed = []
    for name, value in upstream:
        lowered = name.lower()
        if lowered not in _NOT_RELAYED_DOWN and not lowered.startswith(_OWN_PREFIX):
            relayed.append((lowered, value))
    return relayed


def client_key(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The gateway key from `Authorization: Bearer`, `api-key` or `x-api-key`, or None.

    Every credential header sent (each copy of a repeated one) must carry the same key;
    otherwise `InvalidAPIKey`, never one of them picked.
    """
    return read_request_headers(headers, ()).key
