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
from data_plane.events import Event, encode_entry
from data_plane.ingest import schemas
from data_plane.ingest.ratelimit import MemoryBuckets, RateLimiter
from data_plane.settings import CellSettings
from data_plane.stream.log import LogStream
from data_plane.stream.port import MAX_PAYLOAD_BYTES, Record, Stream, partition_for
from data_plane.usage.ledger import UsageLedger, user_key
from kernel.errors import NotAuthenticated, PermissionDenied, QuotaExceeded, TooLarge, ValidationFailed

# Ids key the stream's partitions (with the tenant), which hold keys of at most 256 characters.
MAX_ID_LENGTH = 200
SINGLE_TYPES = ("track", "identify", "page", "screen", "group", "alias")
# The window an event's timestamp must fall in, around its receipt. Wider than any real backlog
# (an SDK's offline queue, an import of a decade of orders), narrow enough that every calendar
# computation downstream stays far from the ends of the datetime range.
TIMESTAMP_PAST = dt.timedelta(days=3653)  # 10 years
TIMESTAMP_FUTURE = dt.timedelta(days=1)
# Users whose partition and ledger key one ingest process remembers (~200 bytes each).
_KNOWN_USERS_MAX = 100_000
_message_decoder = msgspec.json.Decoder(schemas.Message)
_batch_decoder = msgspec.json.Decoder(schemas.Batch)
_raw_batch_decoder = msgspec.json.Decoder(schemas.RawBatch)


@dataclass(frozen=True)
class Request:
    """What the HTTP layer hands over: the raw request, nothing parsed yet."""

    body: bytes
    kind: str  # "batch" or one of SINGLE_TYPES
    authorization: str | None = None
    content_encoding: str | None = None
    origin: str | None = None
    client_ip: str | None = None


class _Refused(ValueError):
    """An event refused with its own code (a plain ValueError is ``invalid_event``)."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code


def _utc(value: str) -> dt.datetime:
    parsed = dt.datetime.fromisoformat(value)
    return parsed.replace(tzinfo=dt.UTC) if parsed.tzinfo is None else parsed.astimezone(dt.UTC)


def _id(value: str | int | None) -> str | None:
    if value is None:
        return None
    text = (value if type(value) is str else str(value)).strip()
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
    """One ingest process's side of the API: a request in, its events durably on the stream and counted."""

    def __init__(
        self,
        settings: CellSettings,
        keeper: ConfigKeeper,
        stream: Stream,
        buckets: RateLimiter | None = None,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
        ledger: UsageLedger | None = None,
    ) -> None:
        self.settings = settings
        self.keeper = keeper
        self.stream = stream
        self.ledger = ledger
        self.buckets = buckets or MemoryBuckets()
        self.clock = clock
        # On the embedded log with the ledger in the log's own file, the accepted count commits in
        # the append's transaction: one fsync per request (per group commit) for both.
        self._counts_with_append = (
            ledger is not None and isinstance(stream, LogStream) and ledger.path.resolve() == stream.path.resolve()
        )
        self._ledger_ready = False
        # (partition, ledger key) of recent users: two hashes each, and most requests come from
        # users seen moments before.
        self._users: dict[str, tuple[int, str]] = {}

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

    def _decode(self, body: bytes, kind: str) -> _Decoded:
        """The request's messages, decoded in one pass when nothing is wrong with them.

        Only a request with an event that cannot be decoded, or is too large, is decoded again
        event by event, to name each bad one.
        """
        limit = self.settings.max_event_bytes
        try:
            if kind != "batch":
                message = _message_decoder.decode(body)
                if len(body) > limit:
                    return _Decoded([None], None, None, {}, {}, [_too_large(0, message.message_id, limit)], True)
                return _Decoded([message], None, None, {}, {}, [], False)
            batch = _batch_decoder.decode(body)
        except msgspec.DecodeError as exc:
            if kind != "batch":
                return _Decoded([None], None, None, {}, {}, [_problem(0, None, "invalid_event", str(exc))], False)
            return self._decode_each(body, exc)
        # Only a body larger than the per-event limit can hold a too-large event; measuring the
        # events takes a scan of their spans, not a decode.
        if len(body) > limit and max((len(raw) for raw in _raw_batch_decoder.decode(body).batch), default=0) > limit:
            return self._decode_each(body, None)
        return _Decoded(
            batch.batch, batch.write_key, batch.sent_at, batch.context or {}, batch.integrations or {}, [], False
        )

    def _decode_each(self, body: bytes, error: msgspec.DecodeError | None) -> _Decoded:
        try:
            envelope = _raw_batch_decoder.decode(body)
        except msgspec.DecodeError as exc:
            raise ValidationFailed(f"The body is not a valid request: {error or exc}", code="invalid_json") from None
        limit = self.settings.max_event_bytes
        messages: list[schemas.Message | None] = []
        rejected: list[dict[str, Any]] = []
        too_large = False
        for index, raw in enumerate(envelope.batch):
            try:
                message = _message_decoder.decode(raw)
            except msgspec.DecodeError as exc:
                messages.append(None)
                rejected.append(_problem(index, None, "invalid_event", str(exc)))
                continue
            if len(raw) > limit:
                too_large = True
                messages.append(None)
                rejected.append(_too_large(index, message.message_id, limit))
                continue
            messages.append(message)
        if not rejected:
            # Every event is fine: what is wrong is the envelope (e.g. a `context` that is not an object).
            raise ValidationFailed(f"The body is not a valid request: {error}", code="invalid_json")
        # The request is refused with ``rejected`` (plus what validating the others finds).
        return _Decoded(messages, envelope.write_key, None, {}, {}, rejected, too_large)

    async def ingest(self, request: Request) -> schemas.Accepted:
        settings = self.settings
        received_at = self.clock()
        if len(request.body) > settings.max_request_bytes:
            raise TooLarge(f"Requests are limited to {settings.max_request_bytes} bytes.", code="request_too_large")
        body = _decompress(request.body, request.content_encoding, settings.max_request_bytes)
        decoded = self._decode(body, request.kind)
        messages, rejected = decoded.messages, decoded.rejected
        first = next((m for m in messages if m is not None), None)
        write_key = _basic_user(request.authorization) or decoded.write_key or (first.write_key if first else None)
        resolved = self.authenticate(write_key, request.origin, received_at)
        tenant = resolved.tenant
        if (until := tenant.quota_exceeded_until) is not None and until > received_at:
            retry = int((until - received_at).total_seconds()) + 1
            raise QuotaExceeded("The monthly quota is used up.", retry_after=retry, code="monthly_quota_exceeded")
        limit = min(tenant.limits.max_batch_events, settings.max_batch_events_ceiling)
        if len(messages) > limit:
            raise TooLarge(
                f"At most {limit} events per batch on this plan; send smaller batches.", code="too_many_events"
            )
        if not messages:
            raise ValidationFailed("The batch is empty.", code="empty_batch")
        stamp = _Stamp(
            kind=request.kind,
            resolved=resolved,
            received_at=received_at,
            low=received_at - TIMESTAMP_PAST,
            high=received_at + TIMESTAMP_FUTURE,
            sent_at=decoded.sent_at,
            context=decoded.context,
            integrations=decoded.integrations,
            client_ip=request.client_ip,
        )
        events: list[Event] = []
        for index, message in enumerate(messages):
            if message is None:
                continue
            try:
                events.append(_event(message, stamp))
            except _Refused as exc:
                rejected.append(_problem(index, message.message_id, exc.code, str(exc)))
            except ValueError as exc:
                rejected.append(_problem(index, message.message_id, "invalid_event", str(exc)))
        if rejected:
            _refuse(rejected, len(messages), decoded.too_large)
        limits = tenant.limits
        wait = await self.buckets.take(tenant.id, len(events), rate=limits.events_per_second, burst=limits.burst_events)
        if wait:
            raise QuotaExceeded(
                f"Over the workspace's limit of {limits.events_per_second} events per second; retry later.",
                retry_after=int(wait + 0.999),
                code="rate_limited",
            )
        records, keys = self._records(tenant.id, events)
        ledger = self.ledger
        if ledger is None:
            await self.stream.append(records)
        elif self._counts_with_append:
            assert isinstance(self.stream, LogStream)
            if not self._ledger_ready:
                # The ledger's tables must exist before the log's transaction writes to them.
                await ledger.open()
                self._ledger_ready = True
            new = ledger.new_users(tenant.id, received_at, keys)
            await self.stream.append(records, also=ledger.accepted_rows(tenant.id, received_at, len(events), new))
            ledger.counted(tenant.id, received_at, new)
        else:
            await self.stream.append(records)
            # Counted before the 202: what a client was told is accepted is always in the ledger.
            await ledger.accepted(tenant.id, received_at, len(events), keys)
        return schemas.Accepted(accepted=len(events), message_ids=[e.message_id for e in events])

    def _records(self, tenant_id: str, events: list[Event]) -> tuple[list[Record], set[str]]:
        """One record per partition the request's events fall in, in request order within it, and
        the ledger's keys of the users behind them."""
        partitions = self.stream.partitions
        known = self._users
        if len(known) > _KNOWN_USERS_MAX:
            known.clear()
        by_user: dict[str, tuple[int, str]] = {}
        groups: dict[int, list[Event]] = {}
        for event in events:
            user = event.partition_key
            found = by_user.get(user)
            if found is None:
                key = f"{tenant_id}/{user}"
                found = known.get(key)
                if found is None:
                    found = known[key] = (partition_for(key, partitions), user_key(tenant_id, user))
                by_user[user] = found
            partition = found[0]
            group = groups.get(partition)
            if group is None:
                groups[partition] = [event]
            else:
                group.append(event)
        records: list[Record] = []
        for group in groups.values():
            _group_records(tenant_id, group, records)
        return records, {found[1] for found in by_user.values()}


def _group_records(tenant_id: str, group: list[Event], into: list[Record]) -> None:
    payload = encode_entry(group)
    if len(payload) > MAX_PAYLOAD_BYTES and len(group) > 1:
        # A stream record holds at most MAX_PAYLOAD_BYTES: split, keeping the order.
        half = len(group) // 2
        _group_records(tenant_id, group[:half], into)
        _group_records(tenant_id, group[half:], into)
        return
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise TooLarge(f"An event is larger than {MAX_PAYLOAD_BYTES} bytes once stamped.", code="request_too_large")
    # Every event of the group hashes to this partition; the first one's key names it.
    into.append(Record(f"{tenant_id}/{group[0].partition_key}", payload))


@dataclass(frozen=True, slots=True)
class _Decoded:
    messages: list[schemas.Message | None]  # None: could not be decoded, or too large
    write_key: str | None
    sent_at: str | None
    context: dict[str, Any]
    integrations: dict[str, Any]
    rejected: list[dict[str, Any]]
    too_large: bool


def _too_large(index: int, message_id: str | None, limit: int) -> dict[str, Any]:
    return _problem(index, message_id, "event_too_large", f"larger than {limit} bytes")


def _refuse(rejected: list[dict[str, Any]], total: int, too_large: bool) -> None:
    rejected.sort(key=lambda r: r["index"])
    error = TooLarge if too_large else ValidationFailed
    raise error(
        f"{len(rejected)} of {total} events were rejected, so none was accepted; fix them and resend.",
        code="events_rejected",
        errors=rejected,
    )


@dataclass(frozen=True, slots=True)
class _Stamp:
    """What every event of one request is stamped with."""

    kind: str
    resolved: Resolved
    received_at: dt.datetime
    low: dt.datetime
    high: dt.datetime
    sent_at: str | None
    context: dict[str, Any]
    integrations: dict[str, Any]
    client_ip: str | None


def _when(value: str | None) -> dt.datetime | None:
    """An ISO 8601 date-time in UTC; None when absent; OverflowError when it has no UTC equivalent."""
    if not value:
        return None
    try:
        return _utc(value)
    except ValueError:
        raise ValueError("timestamp and sentAt must be ISO 8601 date-times") from None


def _timestamp(message: schemas.Message, stamp: _Stamp) -> tuple[dt.datetime, dt.datetime | None, dt.datetime | None]:
    """``(timestamp, original_timestamp, sent_at)``; ``_Refused`` when the event is outside the window."""
    low, high, received_at = stamp.low, stamp.high, stamp.received_at
    try:
        original = _when(message.timestamp)
    except OverflowError:
        original = None
        outside = True
    else:
        outside = original is not None and not low <= original <= high
    try:
        sent_at = _when(message.sent_at or stamp.sent_at)
    except OverflowError:
        sent_at = None  # an sentAt with no UTC equivalent says nothing about the client's clock
    if original is None and not outside:
        return received_at, None, sent_at
    timestamp = original
    if sent_at is not None and original is not None:
        # Client clocks drift: shift the event by how far the client's clock is off at sending,
        # unless that moves it out of the window (then the sentAt is what is absurd).
        try:
            corrected = original + (received_at - sent_at)
        except OverflowError:
            corrected = None
        if corrected is not None and low <= corrected <= high:
            timestamp = corrected
    if timestamp is None or not low <= timestamp <= high:
        raise _Refused(
            "timestamp_out_of_range",
            f"timestamp {message.timestamp!r} is outside the accepted window (10 years before to 1 day after "
            "the request's receipt, after correcting for the client's clock)",
        )
    return timestamp, original, sent_at


def _event(message: schemas.Message, stamp: _Stamp) -> Event:
    """Validate one message against Segment's rules and stamp it. Raises ValueError with the reason."""
    kind = stamp.kind
    type_ = kind if kind != "batch" else message.type
    if kind != "batch" and message.type not in (None, kind):
        raise ValueError(f"type {message.type!r} sent to the /v1/{kind} endpoint")
    if type_ not in SINGLE_TYPES:
        raise ValueError(f"type must be one of {', '.join(SINGLE_TYPES)}")
    user_id, anonymous_id = _id(message.user_id), _id(message.anonymous_id)
    previous_id, group_id = _id(message.previous_id), _id(message.group_id)
    if (
        len(user_id or "") > MAX_ID_LENGTH
        or len(anonymous_id or "") > MAX_ID_LENGTH
        or (previous_id is not None or group_id is not None)
    ):
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
    timestamp, original, sent_at = _timestamp(message, stamp)
    # The message's own dicts were just decoded for this event alone: they are ours to keep.
    own, shared = message.context, stamp.context
    if own:
        context = {**shared, **own} if shared else own
    else:
        context = dict(shared)
    if stamp.client_ip and "ip" not in context:
        context["ip"] = stamp.client_ip
    name = message.name
    if type_ == "page" and message.category and not name:
        name = message.category
    resolved = stamp.resolved
    return Event(
        message_id=(message.message_id or "").strip() or str(uuid.uuid4()),
        tenant_id=resolved.tenant.id,
        source_id=resolved.source.id,
        type=type_,  # type: ignore[arg-type]
        received_at=stamp.received_at,
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
        integrations={**stamp.integrations, **message.integrations} if message.integrations else stamp.integrations,
    )
