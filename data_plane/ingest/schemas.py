"""Segment HTTP Tracking API messages, as SDKs send them (camelCase)."""

from __future__ import annotations

from typing import Any

import msgspec


class Message(msgspec.Struct, kw_only=True, rename="camel", omit_defaults=True):
    """One call. Fields are checked per type by ``validate``; unknown fields are ignored, as Segment does."""

    type: str | None = None
    message_id: str | None = None
    user_id: str | int | None = None
    anonymous_id: str | int | None = None
    event: str | None = None
    name: str | None = None
    group_id: str | int | None = None
    previous_id: str | int | None = None
    properties: dict[str, Any] | None = None
    traits: dict[str, Any] | None = None
    context: dict[str, Any] | None = None
    integrations: dict[str, Any] | None = None
    timestamp: str | None = None
    sent_at: str | None = None
    write_key: str | None = None
    # Segment's "category" of page calls.
    category: str | None = None


class Batch(msgspec.Struct, kw_only=True, rename="camel"):
    """A whole batch, decoded in one pass (the fast path)."""

    batch: list[Message]
    sent_at: str | None = None
    write_key: str | None = None
    context: dict[str, Any] | None = None
    integrations: dict[str, Any] | None = None


class RawBatch(msgspec.Struct, kw_only=True, rename="camel"):
    """The same batch with its events left undecoded: to measure each event and name the bad ones."""

    batch: list[msgspec.Raw]
    write_key: str | None = None
    sent_at: str | None = None
    write_key: str | None = None
    context: dict[str, Any] | None = None
    integrations: dict[str, Any] | None = None


class Accepted(msgspec.Struct, kw_only=True):
    """The answer to an accepted request: every event is durably on the stream."""

    success: bool = True
    accepted: int
    message_ids: list[str]
