"""Opaque keyset cursors over (created_at, id)."""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import msgspec
from sqlalchemy import ColumnElement, Select, and_, or_

from kernel.errors import ValidationFailed

T = TypeVar("T")

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


def keyset(
    query: Select[Any],
    stamp: ColumnElement[Any],
    id_: ColumnElement[Any],
    cursor: str | None,
    *,
    newest_first: bool,
    limit: int,
) -> Select[Any]:
    """Order by (stamp, id), continue after ``cursor``, and fetch one row past the page (to know if more follow)."""
    if cursor:
        last_stamp, last_id = decode_cursor(cursor)
        if newest_first:
            query = query.where(or_(stamp < last_stamp, and_(stamp == last_stamp, id_ < last_id)))
        else:
            query = query.where(or_(stamp > last_stamp, and_(stamp == last_stamp, id_ > last_id)))
    order = (stamp.desc(), id_.desc()) if newest_first else (stamp.asc(), id_.asc())
    return query.order_by(*order).limit(limit + 1)


def page(rows: Sequence[T], limit: int, key: Callable[[T], tuple[dt.datetime, str]]) -> tuple[list[T], str | None]:
    """The page's rows and the cursor of the next page (None on the last), from a ``keyset`` result."""
    items = list(rows[:limit])
    return items, encode_cursor(*key(items[-1])) if len(rows) > limit and items else None
