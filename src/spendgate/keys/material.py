"""Key material: `sg-` keys and `sgt-` tracking tokens, their stored hash and display form.

Both carry 256 bits of randomness, so a plain SHA-256 is the right hash: it is not
guessable, and lookups by hash never compare secret bytes (the lookup key is the digest).
"""

import hashlib
import hmac
import secrets

KEY_PREFIX = "sg-"
TRACKING_PREFIX = "sgt-"


def new_key() -> str:
    """A fresh gateway key: `sg-` and 43 URL-safe random characters."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def new_tracking_token() -> str:
    """A fresh tracking token (client-push ingestion): `sgt-` and 43 URL-safe characters."""
    return TRACKING_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    """The hex SHA-256 of a key: the only form the ledger stores."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def display_key(key: str) -> str:
    """The listing form `sg-abcd…wxyz` (a tracking token: `sgt-abcd…wxyz`)."""
    prefix = TRACKING_PREFIX if key.startswith(TRACKING_PREFIX) else KEY_PREFIX
    body = key.removeprefix(prefix)
    return f"{prefix}{body[:4]}…{body[-4:]}"


def looks_like_key(text: str) -> bool:
    """Whether `text` has the shape of a gateway key (not whether it is valid)."""
    return text.startswith(KEY_PREFIX) and len(text) >= len(KEY_PREFIX) + 32


def same_secret(given: str, expected: str) -> bool:
    """Constant-time comparison of two secrets."""
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), expected.encode("utf-8"))
