"""The Ed25519 key that signs cell tokens: ``LIVORA_CELL_TOKEN_KEY``, or a generated file for SQLite setups."""

from __future__ import annotations

import base64
import binascii
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from sqlalchemy.engine import make_url

from control_plane.identity.secrets import key_file
from control_plane.settings import Settings
from data_plane.contract.tokens import public_key_text
from kernel.errors import ConfigError

KEY_FILE = "cell-token.key"
VARIABLE = "LIVORA_CELL_TOKEN_KEY"


def _from_text(text: str, origin: str) -> Ed25519PrivateKey:
    try:
        seed = base64.urlsafe_b64decode(text.strip() + "=" * (-len(text.strip()) % 4))
        if len(seed) != 32:
            raise ValueError(len(seed))
        return Ed25519PrivateKey.from_private_bytes(seed)
    except (ValueError, binascii.Error):
        raise ConfigError(
            VARIABLE,
            f"{origin} must be 32 random bytes in URL-safe base64, e.g. the output of "
            '`python -c "import secrets, base64; print(base64.urlsafe_b64encode(secrets.token_bytes(32)).decode())"`',
        ) from None


def _embedded(path: Path) -> Ed25519PrivateKey:
    """Read the key file, creating it (owner-only) on first use."""

    def generate() -> bytes:
        seed = Ed25519PrivateKey.generate().private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        return base64.urlsafe_b64encode(seed)

    return _from_text(key_file(path, generate).decode(), str(path))


def signing_key(settings: Settings) -> Ed25519PrivateKey:
    """The installation's cell-token key. ``ConfigError`` with PostgreSQL and no key: every control-plane
    process must sign with the same key, and a file generated on one host is not on the others."""
    if settings.cell_token_key.strip():
        return _from_text(settings.cell_token_key, VARIABLE)
    if make_url(settings.database_url).get_backend_name() != "sqlite":
        raise ConfigError(VARIABLE, "required with a PostgreSQL database (every control-plane process signs alike)")
    return _embedded(Path(settings.data_dir) / KEY_FILE)


def public_keys(settings: Settings) -> list[str]:
    """What cells get to verify tokens with; empty (no token will verify) when no key can be had."""
    try:
        return [public_key_text(signing_key(settings))]
    except ConfigError:
        return []
