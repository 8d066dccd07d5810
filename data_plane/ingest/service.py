"""Accepting events: authenticate the write key, check limits, validate, stamp, append durably."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from data_plane.contract.keeper import ConfigKeeper, Resolved
from data_plane.events import Event, encode_event
from data_plane.ingest import schemas
from data_plane.ingest.ratelimit import TokenBuckets
from data_plane.settings import CellSettings
from data_plane.stream.port import Record, Stream
from data_plane.usage.ledger import UsageLedger, user_key
from kernel.errors import NotAuthenticated, PermissionDenied, QuotaExceeded, TooLarge, ValidationFailed

# Ids key the stream's partitions (with the tenant), which hold keys of at most 256 characters.
MAX_ID_LENGTH = 200
SINGLE_TYPES = ("track", "identify", "page", "screen", "group", "alias")
_message_decoder = msgspec.json.Decoder(schemas.Message)
_batch_decoder = msgspec.json.Decoder(schemas.Batch)


@dataclass(frozen=True)
class Request:
    """What the HTTP layer hands over: the raw request, nothing parsed yet."""

    body: bytes
    kind: str  # "batch" or one of SINGLE_TYPES
    authorization: str | None = None
    content_encoding: str | None = None
    origin: str | None = None
    client_ip: str | None = None


def _utc(value: str) -> dt.datetime:
    parsed = dt.datetime.fromisoformat(value)
    return parsed.replace(tzinfo=dt.UTC) if parsed.tzinfo is None else parsed.astimezone(dt.UTC)


def _id(value: str | int | None) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _decompress(body: bytes, encoding: str | None, limit: int) -> bytes:
    if not encoding or encoding.lower() == "identity":
        return body
    if encoding.lower() not in ("gzip", "deflate"):
        raise ValidationFailed(
            f"Content-Encoding {encoding!r} is not supported; send gzip.", code="unsupported_encoding"
        )
    # Bounded inflate: a small bomb must not become a large allocation.
    inflater = zlib.decompressobj(wbits=31 if encoding.lower() == "gzip" else 15)
    try:
        data = inflater.decompress(body, limit + 1)
    except zlib.error:
        raise ValidationFailed("The body is not valid gzip.", code="invalid_encoding") from None
    if len(data) > limit or inflater.unconsumed_tail:
        raise TooLarge(f"The request is larger than {limit} bytes once decompressed.", code="request_too_large")
    return data


def _basic_user(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, _, _ = base64.b64decode(value.strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return user or None


def _problem(index: int, message_id: str | None, code: str, detail: str) -> dict[str, Any]:
    return {"index": index, "message_id": message_id, "code": code, "detail": detail}


class Ingestor:
    def __init__(
        self,
        settings: CellSettings,
        keeper: ConfigKeeper,
        stream: Stream,
        buckets: TokenBuckets | None = None,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
        ledger: UsageLedger | None = None,
    ) -> None:
        self.settings = settings
        self.keeper = keeper
        self.stream = stream
        self.ledger = ledger
        self.buckets = buckets or TokenBuckets()
        self.clock = clock

    def authenticate(self, write_key: str | None, origin: str | None, now: dt.datetime) -> Resolved:
        if not write_key:
            raise NotAuthenticated(
                "Send the source's write key as the HTTP Basic user name (or `writeKey` in the body).",
                code="missing_write_key",
            )
        resolved = self.keeper.directory.resolve(hashlib.sha256(write_key.encode()).hexdigest(), now)
        if resolved is None:
            raise NotAuthenticated("The write key is unknown or was revoked.", code="invalid_write_key")
        status = resolved.tenant.status
        if status == "suspended":
            raise PermissionDenied("This workspace is suspended; events are not accepted.", code="tenant_suspended")
        if status != "active":
            raise PermissionDenied(
                f"This workspace is {status}; events are not accepted yet.", code="tenant_not_active"
            )
        if origin is not None and origin != "null":
            source = resolved.source
            if source.kind != "web":
                raise PermissionDenied(
                    "This write key belongs to a server or mobile source; browsers must use a web source's key.",
                    code="origin_not_allowed",
                )
            if origin not in source.allowed_origins:
                raise PermissionDenied(
                    f"The origin {origin} is not allowed for this source.", code="origin_not_allowed"
                )
        return resolved

    async def ingest(self, request: Request) -> schemas.Accepted:
        settings = self.settings
        received_at = self.clock()
        if len(request.body) > settings.max_request_bytes:
            raise TooLarge(f"Requests are limited to {settings.max_request_bytes} bytes.", code="request_too_large")
        body = _decompress(request.body, request.content_encoding, settings.max_request_bytes)
        batch_context: dict[str, Any] = {}
        batch_integrations: dict[str, Any] = {}
        batch_sent_at: str | None = None
        try:
            if request.kind == "batch":
                envelope = _batch_decoder.decode(body)
                raws = [bytes(raw) for raw in envelope.batch]
                body_key = envelope.write_key
                batch_context = envelope.context or {}
                batch_integrations = envelope.integrations or {}
                batch_sent_at = envelope.sent_at
            else:
                raws = [body]
                body_key = None
        except msgspec.DecodeError as exc:
            raise ValidationFailed(f"The body is not a valid request: {exc}", code="invalid_json") from None
        messages: list[schemas.Message | None] = []
        rejected: list[dict[str, Any]] = []
        too_large = False
        for index, raw in enumerate(raws):
            try:
                message = _message_decoder.decode(raw)
            except msgspec.DecodeError as exc:
                messages.append(None)
                rejected.append(_problem(index, None, "invalid_event", str(exc)))
                continue
            if len(raw) > settings.max_event_bytes:
                too_large = True
                messages.append(None)
                rejected.append(
                    _problem(
                        index, message.message_id, "event_too_large", f"larger than {settings.max_event_bytes} bytes"
                    )
                )
                continue
            messages.append(message)
        first = next((m for m in messages if m is not None), None)
        write_key = _basic_user(request.authorization) or body_key or (first.write_key if first else None)
        resolved = self.authenticate(write_key, request.origin, received_at)
        if (until := resolved.tenant.quota_exceeded_until) is not None and until > received_at:
            retry = int((until - received_at).total_seconds()) + 1
            raise QuotaExceeded("The monthly quota is used up.", retry_after=retry, code="monthly_quota_exceeded")
        limit = min(resolved.tenant.limits.max_batch_events, settings.max_batch_events_ceiling)
        if len(raws) > limit:
            raise TooLarge(
                f"At most {limit} events per batch on this plan; send smaller batches.", code="too_many_events"
            )
        if not raws:
            raise ValidationFailed("The batch is empty.", code="empty_batch")
        events: list[Event] = []
        for index, message in enumerate(messages):
            if message is None:
                continue
            try:
                events.append(
                    self._event(
                        message,
                        request.kind,
                        resolved,
                        received_at,
                        batch_sent_at,
                        batch_context,
                        batch_integrations,
                        request.client_ip,
                    )
                )
            except ValueError as exc:
                rejected.append(_problem(index, message.message_id, "invalid_event", str(exc)))
        if rejected:
            rejected.sort(key=lambda r: r["index"])
            error = TooLarge if too_large else ValidationFailed
            raise error(
                f"{len(rejected)} of {len(raws)} events were rejected, so none was accepted; fix them and resend.",
                code="events_rejected",
                errors=rejected,
            )
        limits = resolved.tenant.limits
        wait = self.buckets.take(
            resolved.tenant.id, len(events), rate=limits.events_per_second, burst=limits.burst_events
        )
        if wait:
            raise QuotaExceeded(
                f"Over the workspace's limit of {limits.events_per_second} events per second; retry later.",
                retry_after=int(wait + 0.999),
                code="rate_limited",
            )
        await self.stream.append(
            [Record(f"{event.tenant_id}/{event.partition_key}", encode_event(event)) for event in events]
        )
        if self.ledger is not None:
            # Counted before the 202: what a client was told is accepted is always in the ledger.
            tenant_id = resolved.tenant.id
            await self.ledger.accepted(
                tenant_id, received_at, len(events), {user_key(tenant_id, e.partition_key) for e in events}
            )
        return schemas.Accepted(accepted=len(events), message_ids=[e.message_id for e in events])

    def _event(
        self,
        message: schemas.Message,
        kind: str,
        resolved: Resolved,
        received_at: dt.datetime,
        batch_sent_at: str | None,
        batch_context: dict[str, Any],
        batch_integrations: dict[str, Any],
        client_ip: str | None,
    ) -> Event:
        """Validate one message against Segment's rules and stamp it. Raises ValueError with the reason."""
        type_ = kind if kind != "batch" else message.type
        if kind != "batch" and message.type not in (None, kind):
            raise ValueError(f"type {message.type!r} sent to the /v1/{kind} endpoint")
        if type_ not in SINGLE_TYPES:
            raise ValueError(f"type must be one of {', '.join(SINGLE_TYPES)}")
        user_id, anonymous_id = _id(message.user_id), _id(message.anonymous_id)
        previous_id, group_id = _id(message.previous_id), _id(message.group_id)
        for label, value in (
            ("userId", user_id),
            ("anonymousId", anonymous_id),
            ("previousId", previous_id),
            ("groupId", group_id),
        ):
            if value is not None and len(value) > MAX_ID_LENGTH:
                raise ValueError(f"{label} is longer than {MAX_ID_LENGTH} characters")
        if type_ == "alias":
            if not (user_id and previous_id):
                raise ValueError("alias needs userId and previousId")
        elif not (user_id or anonymous_id):
            raise ValueError("userId or anonymousId is required")
        if type_ == "track" and not (message.event and message.event.strip()):
            raise ValueError("track needs an event name")
        if type_ == "group" and not group_id:
            raise ValueError("group needs a groupId")
        try:
            original = _utc(message.timestamp) if message.timestamp else None
            sent_raw = message.sent_at or batch_sent_at
            sent_at = _utc(sent_raw) if sent_raw else None
        except ValueError:
            raise ValueError("timestamp and sentAt must be ISO 8601 date-times") from None
        # Client clocks drift: shift the event by how far the client's clock is off at sending.
        if original is not None and sent_at is not None:
            timestamp = original + (received_at - sent_at)
        else:
            timestamp = original or received_at
        context = {**batch_context, **(message.context or {})}
        if client_ip and "ip" not in context:
            context["ip"] = client_ip
        name = message.name
        if type_ == "page" and message.category and not name:
            name = message.category
        return Event(
            message_id=(message.message_id or "").strip() or str(uuid.uuid4()),
            tenant_id=resolved.tenant.id,
            source_id=resolved.source.id,
            type=type_,  # type: ignore[arg-type]
            received_at=received_at,
            timestamp=timestamp,
            original_timestamp=original,
            sent_at=sent_at,
            event=message.event.strip() if message.event else None,
            name=name,
            user_id=user_id,
            anonymous_id=anonymous_id,
            group_id=group_id,
            previous_id=previous_id,
            properties=message.properties or {},
            traits=message.traits or {},
            context=context,
            integrations={**batch_integrations, **(message.integrations or {})},
        )
