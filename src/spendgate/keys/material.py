"""Key material: `sg-` keys from `secrets`, their stored hash and their display form.

Keys carry 256 bits of randomness, so a plain SHA-256 is the right hash: it is not
guessable, and lookups by hash never compare secret bytes (the lookup key is the digest).
"""

import hashlib
import hmac
import secrets

KEY_PREFIX = "sg-"


def new_key() -> str:
    """A fresh gateway key: `sg-` and 43 URL-safe random characters."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    """The hex SHA-256 of a key: the only form the ledger stores."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def display_key(key: str) -> str:
    """The listing form `sg-abcd…wxyz`."""
    body = key.removeprefix(KEY_PREFIX)
    return f"{KEY_PREFIX}{body[:4]}…{body[-4:]}"


def looks_like_key(text: str) -> bool:
    """Whether `text` has the shape of a gateway key (not whether it is valid)."""
    return text.startswith(KEY_PREFIX) and len(text) >= len(KEY_PREFIX) + 32


def same_secret(given: str, expected: str) -> bool:
    """Constant-time comparison of two secrets."""
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), expected.encode("utf-8"))
