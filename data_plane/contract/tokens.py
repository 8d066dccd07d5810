"""Cell tokens: short-lived, Ed25519-signed statements by the control plane that a person may read a
tenant's analytics on its cell. The control plane holds the private key; cells get the public keys in
their config, so they verify tokens with no call back (and keep doing so when the control plane is down).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import time
from collections.abc import Iterable

import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

TOKEN_PREFIX = "lvt"
TOKEN_VERSION = 1
# Roles whose holders may read analytics (tenant roles, then platform roles).
ANALYTICS_ROLES = frozenset({"owner", "admin", "analyst", "ops_admin", "ops_viewer"})
_CLOCK_SKEW = 60


class CellTokenClaims(msgspec.Struct, frozen=True, kw_only=True):
    v: int
    kid: str
    tenant_id: str
    # The user the token was issued to, and their role in the tenant (or their platform role).
    sub: str
    role: str
    iat: int
    exp: int


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def public_key_text(key: Ed25519PrivateKey) -> str:
    """The public half as the config carries it: raw 32 bytes, URL-safe base64."""
    return _b64(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))


def key_id(public_key: str) -> str:
    return hashlib.sha256(public_key.encode()).hexdigest()[:16]


def sign(
    key: Ed25519PrivateKey, *, tenant_id: str, subject: str, role: str, ttl_seconds: int, now: float | None = None
) -> tuple[str, CellTokenClaims]:
    issued = int(time.time() if now is None else now)
    claims = CellTokenClaims(
        v=TOKEN_VERSION,
        kid=key_id(public_key_text(key)),
        tenant_id=tenant_id,
        sub=subject,
        role=role,
        iat=issued,
        exp=issued + ttl_seconds,
    )
    payload = _b64(msgspec.json.encode(claims))
    signature = _b64(key.sign(f"{TOKEN_PREFIX}.{payload}".encode()))
    return f"{TOKEN_PREFIX}_{payload}.{signature}", claims


def verify(token: str, public_keys: Iterable[str], now: float | None = None) -> CellTokenClaims | None:
    """The claims of a well-signed, current token; None for anything else (no detail for forgers)."""
    if not token.startswith(f"{TOKEN_PREFIX}_") or len(token) > 4096:
        return None
    payload, _, signature = token[len(TOKEN_PREFIX) + 1 :].partition(".")
    try:
        claims = msgspec.json.decode(_unb64(payload), type=CellTokenClaims)
        raw_signature = _unb64(signature)
    except (msgspec.DecodeError, msgspec.ValidationError, binascii.Error, ValueError):
        return None
    if claims.v != TOKEN_VERSION:
        return None
    for text in public_keys:
        if key_id(text) != claims.kid:
            continue
        try:
            Ed25519PublicKey.from_public_bytes(_unb64(text)).verify(raw_signature, f"{TOKEN_PREFIX}.{payload}".encode())
        except (InvalidSignature, ValueError, binascii.Error):
            return None
        moment = time.time() if now is None else now
        if not claims.iat - _CLOCK_SKEW <= moment < claims.exp:
            return None
        return claims
    return None
