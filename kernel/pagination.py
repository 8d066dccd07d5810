"""Opaque keyset cursors over (created_at, id)."""

from __future__ import annotations

import base64
import datetime as dt

import msgspec

from kernel.errors import ValidationFailed

DEFAULT_LIMIT = 50
MAX_LIMIT = 200


def encode_cursor(created_at: dt.datetime, id_: str) -> str:
    raw = msgspec.json.encode([created_at.isoformat(), id_])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[dt.datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        stamp, id_ = msgspec.json.decode(raw, type=tuple[str, str])
        return dt.datetime.fromisoformat(stamp), id_
    except (ValueError, msgspec.DecodeError, TypeError):
        raise ValidationFailed(
            "The cursor is not one this API returned; pass next_cursor from the previous page unchanged.",
            code="invalid_cursor",
        ) from None
