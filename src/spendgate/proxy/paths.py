"""Proxy paths: what is forwarded, and refusing anything that would leave `/v1/`."""

from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote_to_bytes

from spendgate.errors import InvalidRequest
from spendgate.keys.material import looks_like_key

_PREFIX = b"/v1/"


@dataclass(frozen=True, slots=True)
class ProxyPath:
    """The part of a request path after `/v1/`, raw (as forwarded) and decoded (as metered)."""

    raw: str
    endpoint: str
    key: str | None = None


def is_proxy_path(path: str, key_in_path: bool) -> bool:
    """Whether the (decoded) request path belongs to the proxy rather than the API."""
    if path.startswith("/v1/") or path == "/v1":
        return True
    if key_in_path and path.startswith("/sg-"):
        return "/v1/" in path or path.endswith("/v1")
    return False


def parse_proxy_path(raw_path: bytes, key_in_path: bool) -> ProxyPath:
    """Split and check a raw request path; `InvalidRequest` (400) on any escape attempt."""
    key: str | None = None
    if key_in_path and raw_path.startswith(b"/sg-"):
        slash = raw_path.find(b"/", 1)
        candidate = raw_path[1:slash].decode("latin-1") if slash > 0 else ""
        if not looks_like_key(candidate):
            raise InvalidRequest("Malformed key in path.")
        key = candidate
        raw_path = raw_path[slash:]
    if raw_path == b"/v1":
        raw_path = b"/v1/"
    if not raw_path.startswith(_PREFIX):
        raise InvalidRequest("Only paths under /v1/ are proxied.")
    rest = raw_path[len(_PREFIX) :]
    decoded = _fully_unquote(rest)
    if b"\\" in decoded or any(byte < 0x20 or byte == 0x7F for byte in decoded):
        raise InvalidRequest("Path contains forbidden characters.")
    try:
        # Not UTF-8 (an overlong `%c0%ae` is a dot to some decoders): refused, not guessed at.
        endpoint = decoded.decode("utf-8").rstrip("/")
    except UnicodeDecodeError:
        raise InvalidRequest("Path is not valid UTF-8.") from None
    segments = decoded.split(b"/")
    # A trailing slash is harmless; an empty segment anywhere else is `//`, which some
    # URL joiners read as a new host.
    inner = segments[:-1] if len(segments) > 1 and segments[-1] == b"" else segments
    if decoded and any(_escapes(segment) for segment in inner):
        raise InvalidRequest("Path escapes /v1/ after normalisation.")
    return ProxyPath(raw=rest.decode("latin-1"), endpoint=endpoint, key=key)


_KEY_PARAMETERS = frozenset({"api_key", "api-key", "apikey", "key", "access_token", "token"})


def check_query(query: bytes) -> None:
    """Refuse a key in the query string (400): URLs end up in access logs and histories."""
    if not query:
        return
    for name, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
        if name.lower() in _KEY_PARAMETERS or looks_like_key(value.strip()):
            raise InvalidRequest(
                "Send the key in the Authorization header, not in the URL.", param=name[:64]
            )


def _escapes(segment: bytes) -> bool:
    """Whether a decoded segment is empty or all dots, once `;params` and blanks are cut.

    Servers differ: Tomcat reads `..;x` as `..`, Windows drops trailing dots and blanks, so
    `...` and `.. ` can be `..` upstream. No API path has such a segment.
    """
    stem = segment.split(b";", 1)[0].strip(b" ")
    return not stem.strip(b".")


def _fully_unquote(raw: bytes) -> bytes:
    """Percent-decode until stable, so `%252e%252e` is seen as `..` too."""
    for _ in range(4):
        if b"%" not in raw:
            return raw
        decoded = unquote_to_bytes(raw)
        if decoded == raw:
            return raw
        raw = decoded
    raise InvalidRequest("Path is encoded too many times.")
