"""Encryption at rest for stored secrets (SSO client secrets): Fernet, with key rotation."""

from __future__ import annotations

from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from sqlalchemy.engine import make_url

from control_plane.identity.secrets import key_file
from control_plane.settings import Settings
from kernel.errors import ConfigError, Unavailable

KEY_FILE = "secret.key"


class SecretBox:
    """Encrypts with the first key and decrypts with any, so keys can be rotated without downtime."""

    def __init__(self, keys: list[bytes]) -> None:
        if not keys:
            raise ValueError("at least one key")
        self._fernet = MultiFernet([Fernet(key) for key in keys])

    def encrypt(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode()).decode("ascii")

    def decrypt(self, token: str) -> str:
        try:
            return self._fernet.decrypt(token.encode("ascii")).decode()
        except InvalidToken:
            raise Unavailable(
                "A stored secret cannot be decrypted with LIVORA_SECRET_KEY: the key was changed without keeping "
                "the old one in the list. Restore it, or enter the connection's client secret again.",
                code="secret_undecryptable",
            ) from None

    def rotate(self, token: str) -> str:
        """Re-encrypt ``token`` under the current first key."""
        return self._fernet.rotate(token.encode("ascii")).decode("ascii")


def _parse_keys(value: str) -> list[bytes]:
    keys = [part.strip().encode("ascii") for part in value.split(",") if part.strip()]
    for key in keys:
        try:
            Fernet(key)
        except (ValueError, TypeError):
            raise ConfigError(
                "LIVORA_SECRET_KEY",
                "each key must be 32 bytes in URL-safe base64 (44 characters), e.g. the output of "
                '`python -c "from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())"`',
            ) from None
    return keys


def _embedded_key(path: Path) -> bytes:
    """Read the key file, creating it (owner-only) on first use."""
    key = key_file(path, Fernet.generate_key)
    try:
        Fernet(key)
    except (ValueError, TypeError):
        raise ConfigError(
            "LIVORA_SECRET_KEY", f"{path} holds no valid key; remove it or set LIVORA_SECRET_KEY"
        ) from None
    return key


def secret_box(settings: Settings) -> SecretBox:
    """The installation's box: ``LIVORA_SECRET_KEY``, or for the embedded SQLite setup a generated key file.

    Raises ``ConfigError`` with PostgreSQL and no key: several processes or hosts share that database,
    and a key generated on one of them could not be read by the others.
    """
    if settings.secret_key.strip():
        return SecretBox(_parse_keys(settings.secret_key))
    if make_url(settings.database_url).get_backend_name() != "sqlite":
        raise ConfigError(
            "LIVORA_SECRET_KEY",
            "required with a PostgreSQL database (every control-plane process needs the same key); generate one "
            'with `python -c "from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())"`',
        )
    return SecretBox([_embedded_key(Path(settings.data_dir) / KEY_FILE)])
