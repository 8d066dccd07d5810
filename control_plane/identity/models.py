"""Identity tables beyond users and sessions: single-use password-reset tokens."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from kernel.db import Base, UTCDateTime, utcnow

# A reset belongs to a person, not to a tenant.
GLOBAL_TABLES = frozenset({"password_resets"})


class PasswordReset(Base):
    """A forgot-password token: we keep its SHA-256; it works once, until ``expires_at``."""

    __tablename__ = "password_resets"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    used_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    source_ip: Mapped[str | None] = mapped_column(String(64))
