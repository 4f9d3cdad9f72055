"""Secrets handed out once and stored only as hashes.

Enrollment tokens, device secrets and API tokens are 256-bit random values, so
a plain SHA-256 is a sound at-rest hash (a slow KDF protects low-entropy
passwords, which these are not) and lets a lookup go by the hash index.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets


def new_secret(prefix: str) -> str:
    return f"{prefix}_{secrets.token_urlsafe(32)}"


def digest(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


def matches(value: str, stored_digest: str) -> bool:
    return hmac.compare_digest(digest(value), stored_digest)
