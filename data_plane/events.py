"""The accepted event: what ingestion appends to the stream and every sink reads.

A stream entry carries the events of one request that fall in one partition, as a JSON array
(``encode_entry``); entries written before batching carry one JSON object. ``decode_entry``
reads both, so a stream written by an older cell drains unchanged.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

import msgspec

EventType = Literal["track", "identify", "page", "screen", "group", "alias"]


class Event(msgspec.Struct, kw_only=True, omit_defaults=True, frozen=True):
    """One event as accepted by a cell, in Segment's vocabulary (snake_case here).

    ``timestamp`` is corrected for client clock skew (``timestamp + received_at - sent_at``);
    the client's own value stays in ``original_timestamp``.
    """

    message_id: str
    tenant_id: str
    source_id: str
    type: EventType
    received_at: dt.datetime
    timestamp: dt.datetime
    original_timestamp: dt.datetime | None = None
    sent_at: dt.datetime | None = None
    # track: the event name; page and screen: the page or screen name.
    event: str | None = None
    name: str | None = None
    user_id: str | None = None
    anonymous_id: str | None = None
    group_id: str | None = None
    previous_id: str | None = None
    properties: dict[str, Any] = {}
    traits: dict[str, Any] = {}
    context: dict[str, Any] = {}
    integrations: dict[str, Any] = {}

    @property
    def partition_key(self) -> str:
        """Events of one person stay in order: keyed by user id, else anonymous id."""
        return self.user_id or self.anonymous_id or self.message_id


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Event)
_entry_decoder = msgspec.json.Decoder(list[Event] | Event)


def encode_event(event: Event) -> bytes:
    return _encoder.encode(event)


def decode_event(payload: bytes) -> Event:
    return _decoder.decode(payload)


def encode_entry(events: list[Event]) -> bytes:
    """One stream entry's payload: the events, in order, as one JSON array."""
    return _encoder.encode(events)


def decode_entry(payload: bytes) -> list[Event]:
    """The events of one stream entry: a JSON array, or one object (entries of older cells).

    Raises ``msgspec.DecodeError`` / ``ValidationError`` for a payload that is neither.
    """
    decoded = _entry_decoder.decode(payload)
    return decoded if isinstance(decoded, list) else [decoded]
