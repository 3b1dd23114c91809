"""API tokens: 256 random bits, shown once, stored only as a SHA-256 hash.

A slow password hash buys nothing for a secret with 256 bits of entropy (nobody can guess it, and the
hash is not reversible), while a fast one keeps authentication off the hot path's budget. The visible
prefix (`gth_` and 8 characters) lets people tell their tokens apart in listings and logs.
"""

from __future__ import annotations

import hashlib
import secrets

TOKEN_SCHEME = "gth_"  # noqa: S105 - the public prefix of every token
PREFIX_LENGTH = len(TOKEN_SCHEME) + 8


def generate_token() -> str:
    return TOKEN_SCHEME + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def token_prefix(token: str) -> str:
    return token[:PREFIX_LENGTH]


def looks_like_token(value: str) -> bool:
    return value.startswith(TOKEN_SCHEME) and 40 <= len(value) <= 100
