"""Passwords (Argon2id) and bearer secrets (random, stored as SHA-256)."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import secrets
from collections.abc import Callable
from pathlib import Path

import anyio.to_thread
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from kernel.errors import ValidationFailed

MIN_PASSWORD = 12
MAX_PASSWORD = 256


def check_password_strength(password: str, email: str = "") -> None:
    if len(password) < MIN_PASSWORD:
        raise ValidationFailed(f"Choose a password of at least {MIN_PASSWORD} characters.", code="password_too_short")
    if len(password) > MAX_PASSWORD:
        raise ValidationFailed(f"Passwords are limited to {MAX_PASSWORD} characters.", code="password_too_long")
    if email and password.strip().lower() == email.strip().lower():
        raise ValidationFailed("The password must not be your email address.", code="password_too_weak")


class Passwords:
    """Argon2id hashing off the event loop (hashing is deliberately slow)."""

    def __init__(self, time_cost: int = 3, memory_kib: int = 65536) -> None:
        self._hasher = PasswordHasher(time_cost=time_cost, memory_cost=memory_kib, parallelism=1)
        # Verified against when the email is unknown, so both paths take the same time.
        self._decoy = self._hasher.hash(secrets.token_urlsafe(16))

    async def hash(self, password: str) -> str:
        return await anyio.to_thread.run_sync(self._hasher.hash, password)

    async def verify(self, password_hash: str | None, password: str) -> bool:
        def verify() -> bool:
            try:
                return self._hasher.verify(password_hash or self._decoy, password) and password_hash is not None
            except (VerificationError, InvalidHashError):
                return False

        return await anyio.to_thread.run_sync(verify)

    def needs_rehash(self, password_hash: str) -> bool:
        return self._hasher.check_needs_rehash(password_hash)


def new_token(prefix: str) -> str:
    """A bearer secret such as ``lvs_…``: 256 random bits, URL-safe."""
    return f"{prefix}_{secrets.token_urlsafe(32)}"


def token_hash(token: str) -> str:
    """SHA-256 hex of a high-entropy secret (a slow hash adds nothing for 256 random bits)."""
    return hashlib.sha256(token.encode()).hexdigest()


def previous_after_rotation(
    current_hash: str, grace_seconds: int, now: dt.datetime
) -> tuple[str | None, dt.datetime | None]:
    """On rotation, the old secret's hash and until when it stays valid: kept for the grace, else dropped."""
    if grace_seconds:
        return current_hash, now + dt.timedelta(seconds=grace_seconds)
    return None, None


def still_valid(current_hash: str, previous_valid_until: dt.datetime | None, digest: str, now: dt.datetime) -> bool:
    """A digest matched either the current secret, or the previous one inside its grace period."""
    return digest == current_hash or (previous_valid_until is not None and previous_valid_until > now)


def key_file(path: Path, generate: Callable[[], bytes]) -> bytes:
    """The key kept in ``path`` (stripped), created owner-only with ``generate()`` on first use.

    For the embedded single-host setup only. Two processes racing to create it: the first
    creator wins and both read its key.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "wb") as handle:
            handle.write(generate().strip() + b"\n")
    return path.read_bytes().strip()
