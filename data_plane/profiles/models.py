"""The tables of one tenant's profile store, defined once and created per SQLite file or PostgreSQL schema."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB

from kernel.db import NAMING_CONVENTION, UTCDateTime

# NOTE: no table has a tenant_id column: a tenant's rows live in its own file or schema, so the
# storage itself is the scope. PostgreSQL reaches a tenant's schema through
# ``schema_translate_map={None: schema}``; these tables are defined without a schema for that.
metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)

Json = sa.JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")
# SQLite only auto-increments an INTEGER PRIMARY KEY (the rowid alias).
Serial = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

EVENT_TYPES = ("track", "page", "screen", "identify", "group", "alias")

profiles = sa.Table(
    "profiles",
    metadata,
    sa.Column("profile_id", sa.String, primary_key=True),
    # The id the profile is known by (see README); every user id is in ``identities``.
    sa.Column("user_id", sa.String, nullable=True),
    sa.Column("traits", Json, nullable=False),
    # group id -> that group's traits (group calls describe an account, not the person).
    sa.Column("groups", Json, nullable=False),
    sa.Column("first_seen", UTCDateTime, nullable=False),
    sa.Column("last_seen", UTCDateTime, nullable=False),
    sa.Column("event_count", sa.BigInteger, nullable=False),
    *(sa.Column(f"{kind}_count", sa.BigInteger, nullable=False) for kind in EVENT_TYPES),
    sa.Column("last_location", Json, nullable=True),
    sa.Column("last_device", Json, nullable=True),
    sa.Column("last_ip", sa.String, nullable=True),
    # Event time (microseconds) behind each last-write-wins value: traits, groups, last_*.
    sa.Column("stamps", Json, nullable=False),
)

# The identity graph: every known identifier points at its live profile.
identities = sa.Table(
    "identities",
    metadata,
    sa.Column("kind", sa.String(16), primary_key=True),  # "user" | "anonymous"
    sa.Column("identifier", sa.String, primary_key=True),
    sa.Column("profile_id", sa.String, nullable=False, index=True),
)

merges = sa.Table(
    "merges",
    metadata,
    sa.Column("seq", Serial, primary_key=True, autoincrement=True),
    sa.Column("from_profile", sa.String, nullable=False),
    sa.Column("into_profile", sa.String, nullable=False, index=True),
    sa.Column("reason", sa.String(16), nullable=False),
    sa.Column("at", UTCDateTime, nullable=False),
    # Indexed: a redelivered event gets back the merges and re-links it caused the first time.
    sa.Column("message_id", sa.String, nullable=True, index=True),
)

relinks = sa.Table(
    "relinks",
    metadata,
    sa.Column("seq", Serial, primary_key=True, autoincrement=True),
    sa.Column("anonymous_id", sa.String, nullable=False),
    sa.Column("from_profile", sa.String, nullable=False, index=True),
    sa.Column("to_profile", sa.String, nullable=False, index=True),
    sa.Column("at", UTCDateTime, nullable=False),
    # Indexed: a redelivered event gets back the merges and re-links it caused the first time.
    sa.Column("message_id", sa.String, nullable=True, index=True),
)

# A merged-away profile id -> the live profile it resolves to now (kept flat: chains are collapsed).
redirects = sa.Table(
    "redirects",
    metadata,
    sa.Column("profile_id", sa.String, primary_key=True),
    sa.Column("into_profile", sa.String, nullable=False, index=True),
)

# Messages already applied, checked in the same transaction: a redelivered event changes nothing.
applied_messages = sa.Table(
    "applied_messages",
    metadata,
    sa.Column("message_id", sa.String, primary_key=True),
    sa.Column("profile_id", sa.String, nullable=False),
    sa.Column("received_at", UTCDateTime, nullable=False, index=True),
)

# Each profile's recent sessions (the sessionizer's state), so sessions continue across restarts.
profile_sessions = sa.Table(
    "profile_sessions",
    metadata,
    sa.Column("profile_id", sa.String, primary_key=True),
    sa.Column("state", sa.LargeBinary, nullable=False),
)
