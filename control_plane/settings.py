"""Control-plane settings; every field is read from ``LIVORA_<FIELD>``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import msgspec

from kernel.db import normalize_database_url
from kernel.errors import ConfigError
from kernel.ports.jobs import jobs_drivers
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
    # Ed25519 seed (32 bytes, URL-safe base64) signing cell tokens for analytics; empty: with SQLite a key is
    # generated once into DATA_DIR/cell-token.key, with PostgreSQL cell tokens are refused until it is set.
    cell_token_key: str = ""
    # Lifetime of a cell token (a person's pass to a tenant's analytics on its cell).
    cell_token_ttl_seconds: Annotated[int, msgspec.Meta(ge=60, le=3600)] = 900
    # Fernet key(s) encrypting stored secrets (SSO client secrets); comma-separated, the first encrypts.
    # Empty: with SQLite a key is generated once into DATA_DIR/secret.key; with PostgreSQL it is required.
    secret_key: str = ""
    # Allow SSO issuers on http:// and on loopback or private addresses (local identity providers, tests).
    sso_allow_local_issuers: bool = False
    # How long a started SSO sign-in may take before its state expires.
    sso_login_ttl_seconds: Seconds = 600
    # Least time between two JWKS refetches caused by an unknown signing key (key rotation).
    sso_jwks_refresh_seconds: Seconds = 60
    # Billing: days an invoice stays a draft after its period ends (late usage is still taken), in seconds.
    billing_grace_seconds: Annotated[int, msgspec.Meta(ge=0)] = 3 * 24 * 3600
    # Billing: how often the control plane drafts, finalises and pushes invoices (0: never; use the CLI).
    billing_job_interval_seconds: Annotated[int, msgspec.Meta(ge=0)] = 300
    # Billing: prefixes of invoice and credit-note numbers (the sequences themselves have no gaps).
    billing_invoice_prefix: str = "LIV-"
    billing_credit_note_prefix: str = "LIVCN-"
    # Billing: a plan catalog file (JSON, like billing/plans.json) replacing the built-in plans; empty: built-in.
    billing_catalog_path: str = ""
    # Billing: payments driver, embedded (invoices payable locally) or stripe.
    billing_payments_driver: str = "embedded"
    # Stripe: secret API key, webhook signing secret, and API base URL (empty: Stripe itself).
    stripe_api_key: str = ""
    stripe_webhook_secret: str = ""
    stripe_api_base: str = ""

    # Jobs driver: memory (an in-process runner, the embedded mode) or redis (workers share a queue in Redis).
    jobs_driver: str = "memory"
    # Provisioning driver of new runs: local (spaces in cells) or aws (CloudFormation, then spaces in cells).
    provisioning_driver: str = "local"
    # Tries of a provisioning step before its run fails, and the first retry delay (doubling each time).
    provisioning_max_attempts: Annotated[int, msgspec.Meta(ge=1, le=100)] = 5
    provisioning_backoff_seconds: Annotated[float, msgspec.Meta(ge=0)] = 1.0
    # How long a process holds a run it executes without renewing; a crashed holder's runs resume after it.
    provisioning_lease_seconds: Annotated[float, msgspec.Meta(gt=0)] = 30.0
    # How long an API call that starts a run waits for it to finish before answering with its current state.
    provisioning_wait_seconds: Annotated[float, msgspec.Meta(ge=0, le=60)] = 5.0
    # URL of the built-in cell's internal API when it runs in another process (empty: in-process, all-in-one).
    builtin_cell_url: str = ""
    # Where SDKs send events to the built-in cell (the console's install snippets name it).
    builtin_cell_ingest_url: str = "http://127.0.0.1:8001"
    # A registered cell whose last config pull is older than this is not healthy (no new tenants go there).
    cell_heartbeat_seconds: Seconds = 120
    # AWS driver: endpoint (empty: AWS itself), region, and the principal Pattern A roles must trust.
    aws_endpoint_url: str = ""
    aws_region: str = "us-east-1"
    aws_principal_arn: str = ""
    # AWS driver: the bucket (in Livora's account) deprovisioning archives tenants' lake buckets to.
    aws_archive_bucket: str = ""
    # AWS driver: the cell's container image (Pattern A compute), and how long and how often to watch a stack.
    aws_cell_image: str = "public.ecr.aws/livora/cell:latest"
    aws_stack_timeout_seconds: Seconds = 1800
    aws_poll_seconds: Annotated[float, msgspec.Meta(gt=0)] = 2.0

    def __post_init__(self) -> None:
        # Validate eagerly so a bad URL stops start-up, not the first request.
        normalize_database_url(self.database_url)
        if self.kv_driver == "redis" and not self.redis_url:
            raise ConfigError("LIVORA_REDIS_URL", "required when LIVORA_KV_DRIVER=redis")
        if self.jobs_driver == "redis" and not self.redis_url:
            raise ConfigError("LIVORA_REDIS_URL", "required when LIVORA_JOBS_DRIVER=redis")
        if self.jobs_driver not in jobs_drivers.names:
            valid = ", ".join(jobs_drivers.names)
            raise ConfigError("LIVORA_JOBS_DRIVER", f"unknown jobs driver; valid drivers: {valid}")
        if self.provisioning_driver not in ("local", "aws"):
            raise ConfigError("LIVORA_PROVISIONING_DRIVER", "unknown provisioning driver; valid drivers: aws, local")
        if self.billing_payments_driver == "stripe" and not (self.stripe_api_key and self.stripe_webhook_secret):
            raise ConfigError("LIVORA_STRIPE_API_KEY", "and LIVORA_STRIPE_WEBHOOK_SECRET are required with Stripe")

    @property
    def base_url(self) -> str:
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")

    @property
    def outbox_path(self) -> Path:
        return Path(self.data_dir) / "outbox.jsonl"

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        return load_settings(cls, **overrides)
