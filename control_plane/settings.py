"""Control-plane settings; every field is read from ``LIVORA_<FIELD>``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import msgspec

from kernel.db import normalize_database_url
from kernel.errors import ConfigError
from kernel.settings import load_settings

Seconds = Annotated[int, msgspec.Meta(ge=1)]


class Settings(msgspec.Struct, kw_only=True, frozen=True):
    """Defaults give a working embedded system under ``./var``."""

    # Where the control plane keeps its state: sqlite+aiosqlite or postgresql+asyncpg.
    database_url: str = "sqlite+aiosqlite:///./var/livora.db"
    # Folder for embedded state (SQLite files, mail outbox).
    data_dir: str = "./var"
    # Interface and port `livora run` listens on.
    host: str = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 8000
    # Base URL people reach the platform at (links in mail); defaults to http://HOST:PORT.
    public_url: str = ""
    # Log level and format (json for machines, console for people).
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "console"] = "json"
    # Redis for shared counters and caches (required by the redis drivers), e.g. redis://127.0.0.1:6379/0.
    redis_url: str = ""
    # Key-value driver for login throttling and caches: memory (one process) or redis.
    kv_driver: str = "memory"
    # Prefix of every key this installation writes to Redis, so installations can share one.
    kv_prefix: str = "livora:"
    # Mail driver: outbox (JSON lines file under data_dir) or smtp.
    mail_driver: str = "outbox"
    mail_from: str = "Livora <no-reply@livora.localhost>"
    smtp_host: str = "127.0.0.1"
    smtp_port: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 25
    smtp_username: str = ""
    smtp_password: str = ""
    smtp_starttls: bool = False
    # Lifetime of a sign-in session (cookie and bearer token).
    session_ttl_seconds: Seconds = 7 * 24 * 3600
    # Lifetime of an invitation link.
    invite_ttl_seconds: Seconds = 7 * 24 * 3600
    # Mark the session cookie Secure (browsers still send it to http://127.0.0.1 and localhost).
    cookie_secure: bool = True
    # Failed sign-ins for one email within the window before it is locked.
    login_max_failures: Annotated[int, msgspec.Meta(ge=1)] = 5
    login_window_seconds: Seconds = 15 * 60
    # First lockout; each further failure while locked out doubles it, up to an hour.
    login_lockout_seconds: Seconds = 60
    # Argon2id cost (defaults: RFC 9106 low-memory profile). Lower only for tests.
    argon2_time_cost: Annotated[int, msgspec.Meta(ge=1)] = 3
    argon2_memory_kib: Annotated[int, msgspec.Meta(ge=1024)] = 65536
    # Shared secret a remote data-plane cell presents to pull its config (empty: no remote cell may).
    cell_secret: str = ""
    # Longest rotation grace period a caller may ask for when rotating an API key.
    api_key_max_grace_seconds: Seconds = 7 * 24 * 3600

    def __post_init__(self) -> None:
        # Validate eagerly so a bad URL stops start-up, not the first request.
        normalize_database_url(self.database_url)
        if self.kv_driver == "redis" and not self.redis_url:
            raise ConfigError("LIVORA_REDIS_URL", "required when LIVORA_KV_DRIVER=redis")

    @property
    def base_url(self) -> str:
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")

    @property
    def outbox_path(self) -> Path:
        return Path(self.data_dir) / "outbox.jsonl"

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        return load_settings(cls, **overrides)
