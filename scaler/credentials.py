"""Bearer-token credentials, shared by the API's access control (`api.credentials`, scaler.auth) and
the alert receivers (`alerts.*.credentials`, scaler.alerts).

The secrets themselves are `{file: …}` / `{env: …}` references resolved when the config is loaded
(collectors.secrets). This module holds what both users of them need: the name pattern, the minimum
length, the load-time check that no two credentials share a secret, and a lookup that compares
SHA-256 digests in constant time. It never logs or returns a secret.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from typing import Annotated, TypeVar

from pydantic import Field, SecretStr

T = TypeVar("T")

# Names identify a sender in logs, events and metrics (never the secret).
CredentialName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
# Shorter tokens are guessable or typos (a truncated file); refused at load time.
MIN_TOKEN_CHARS = 16


def digest(secret: SecretStr | str | bytes) -> bytes:
    """SHA-256 of a secret: fixed-length values make a comparison's time independent of the
    presented secret's length and content."""
    if isinstance(secret, SecretStr):
        secret = secret.get_secret_value()
    return hashlib.sha256(secret if isinstance(secret, bytes) else secret.encode()).digest()


def check_token(token: SecretStr) -> None:
    """ValueError if a configured token is too short to be a real one."""
    if len(token.get_secret_value()) < MIN_TOKEN_CHARS:
        raise ValueError(f"token is shorter than {MIN_TOKEN_CHARS} characters")


def check_unique(names: Sequence[str], digests: Sequence[bytes]) -> None:
    """ValueError if two credentials share a name or a secret (the same secret under two names
    would make what a request may do depend on the order of the list)."""
    if len(set(names)) != len(names):
        raise ValueError("credential names must be unique")
    if len(set(digests)) != len(digests):
        raise ValueError("two credentials have the same secret")


def lookup(table: Sequence[tuple[bytes, T]], presented: bytes) -> T | None:
    """The entry whose digest is the presented secret's, comparing against every entry in
    constant time (no early exit: the time does not tell which entry matched)."""
    presented_digest = hashlib.sha256(presented).digest()
    found: T | None = None
    for expected, entry in table:
        if hmac.compare_digest(expected, presented_digest) and found is None:
            found = entry
    return found
