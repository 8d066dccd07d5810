"""The lake's event table: Arrow schema, events → table → Parquet bytes and back."""

from __future__ import annotations

import datetime as dt
import io
import math
from collections.abc import Sequence
from typing import Any

import msgspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from data_plane.events import Event

SCHEMA_VERSION = "1"
COMPRESSION = "zstd"
_TIMESTAMP = pa.timestamp("us", tz="UTC")

# NOTE: no column may be called ``date`` or ``hour``: those come from the hive partition path when
# the warehouse reads ``tenants/{tenant}/events/**/*.parquet``, and a clash would shadow them.
EVENT_SCHEMA = pa.schema(
    [
        pa.field("message_id", pa.string(), nullable=False),
        pa.field("tenant_id", pa.string(), nullable=False),
        pa.field("source_id", pa.string(), nullable=False),
        pa.field("type", pa.string(), nullable=False),
        pa.field("event", pa.string()),
        pa.field("name", pa.string()),
        pa.field("user_id", pa.string()),
        pa.field("anonymous_id", pa.string()),
        pa.field("group_id", pa.string()),
        pa.field("previous_id", pa.string()),
        pa.field("timestamp", _TIMESTAMP, nullable=False),
        pa.field("original_timestamp", _TIMESTAMP),
        pa.field("sent_at", _TIMESTAMP),
        pa.field("received_at", _TIMESTAMP, nullable=False),
        # Schemaless parts as JSON text: every tenant sends different keys, so typed columns would
        # mean a schema per tenant and rewrites on every new key; DuckDB and ClickHouse query JSON
        # text directly (``properties->>'plan'``). Always an object, "{}" when empty.
        pa.field("properties", pa.string(), nullable=False),
        pa.field("traits", pa.string(), nullable=False),
        pa.field("context", pa.string(), nullable=False),
        pa.field("integrations", pa.string(), nullable=False),
        # Flattened for analytics that would otherwise parse JSON on every row (see _session_id, _revenue).
        pa.field("session_id", pa.string()),
        pa.field("revenue", pa.float64()),
    ],
    metadata={"livora.lake.table": "events", "livora.lake.schema_version": SCHEMA_VERSION},
)
COLUMNS = tuple(EVENT_SCHEMA.names)

_encode_json = msgspec.json.Encoder().encode
_decode_json = msgspec.json.Decoder(dict[str, Any]).decode


def _json(value: dict[str, Any]) -> str:
    return _encode_json(value).decode()


def _session_id(event: Event) -> str | None:
    """``context.session_id`` (where the pipeline's sessionizer puts the session), else the SDK's
    ``context.sessionId``, else ``properties.session_id``; strings as they are, integers as decimal
    text, anything else is skipped. Same order as ``data_plane.pipeline.sessions``."""
    for source, field in (
        (event.context, "session_id"),
        (event.context, "sessionId"),
        (event.properties, "session_id"),
    ):
        value = source.get(field)
        if isinstance(value, bool):
            continue
        if isinstance(value, str) and value:
            return value
        if isinstance(value, int):
            return str(value)
    return None


def _revenue(event: Event) -> float | None:
    """``properties.revenue`` when it is a finite JSON number (not a numeric string, not a boolean)."""
    value = event.properties.get("revenue")
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _timestamps(values: list[dt.datetime | None]) -> pa.Array:
    """Aware datetimes become their UTC instant; naive ones are taken to be UTC already (as ``as_utc``)."""
    return pa.array(values, _TIMESTAMP)


def _json_column(values: list[dict[str, Any]]) -> pa.Array:
    return pa.array([_encode_json(value) for value in values], pa.binary()).cast(pa.string())


def to_table(events: Sequence[Event]) -> pa.Table:
    """The events as rows of ``EVENT_SCHEMA``, in the given order, built column by column."""

    def column(name: str) -> list[Any]:
        return [getattr(event, name) for event in events]

    arrays = {
        "message_id": pa.array(column("message_id"), pa.string()),
        "tenant_id": pa.array(column("tenant_id"), pa.string()),
        "source_id": pa.array(column("source_id"), pa.string()),
        "type": pa.array(column("type"), pa.string()),
        "event": pa.array(column("event"), pa.string()),
        "name": pa.array(column("name"), pa.string()),
        "user_id": pa.array(column("user_id"), pa.string()),
        "anonymous_id": pa.array(column("anonymous_id"), pa.string()),
        "group_id": pa.array(column("group_id"), pa.string()),
        "previous_id": pa.array(column("previous_id"), pa.string()),
        "timestamp": _timestamps(column("timestamp")),
        "original_timestamp": _timestamps(column("original_timestamp")),
        "sent_at": _timestamps(column("sent_at")),
        "received_at": _timestamps(column("received_at")),
        "properties": _json_column(column("properties")),
        "traits": _json_column(column("traits")),
        "context": _json_column(column("context")),
        "integrations": _json_column(column("integrations")),
        "session_id": pa.array([_session_id(event) for event in events], pa.string()),
        "revenue": pa.array([_revenue(event) for event in events], pa.float64()),
    }
    return pa.Table.from_arrays([arrays[name] for name in COLUMNS], schema=EVENT_SCHEMA)


_OPTIONAL = ("original_timestamp", "sent_at", "event", "name", "user_id", "anonymous_id", "group_id", "previous_id")


def from_table(table: pa.Table) -> list[Event]:
    """Events back from lake rows (the flattened columns are derived, so they are dropped)."""
    events = []
    for row in conform(table).to_pylist():
        fields: dict[str, Any] = {
            "message_id": row["message_id"],
            "tenant_id": row["tenant_id"],
            "source_id": row["source_id"],
            "type": row["type"],
            "timestamp": row["timestamp"],
            "received_at": row["received_at"],
            "properties": _decode_json(row["properties"]),
            "traits": _decode_json(row["traits"]),
            "context": _decode_json(row["context"]),
            "integrations": _decode_json(row["integrations"]),
        }
        fields.update({name: row[name] for name in _OPTIONAL if row[name] is not None})
        events.append(Event(**fields))
    return events


def conform(table: pa.Table, columns: Sequence[str] = COLUMNS) -> pa.Table:
    """``table`` with exactly ``columns`` of the current schema: files of older schema versions gain
    the columns added since as nulls (or "{}" for the JSON columns), unknown columns are dropped."""
    schema = EVENT_SCHEMA if tuple(columns) == COLUMNS else pa.schema([EVENT_SCHEMA.field(name) for name in columns])
    if table.schema.equals(schema, check_metadata=False):
        return table.replace_schema_metadata(EVENT_SCHEMA.metadata)
    arrays = []
    for field in schema:
        if field.name in table.column_names:
            arrays.append(table.column(field.name).cast(field.type))
        elif field.type == pa.string() and not field.nullable:
            arrays.append(pa.array(["{}"] * table.num_rows, pa.string()))
        else:
            arrays.append(pa.nulls(table.num_rows, field.type))
    return pa.Table.from_arrays(arrays, schema=schema.with_metadata(EVENT_SCHEMA.metadata))


def sort_rows(table: pa.Table) -> pa.Table:
    """Rows in (timestamp, message_id) order: deterministic bytes, and tighter row-group statistics."""
    return table.take(pc.sort_indices(table, [("timestamp", "ascending"), ("message_id", "ascending")]))


def encode_parquet(table: pa.Table) -> bytes:
    """Parquet bytes, zstd-compressed; deterministic for a given table."""
    sink = pa.BufferOutputStream()
    pq.write_table(conform(table), sink, compression=COMPRESSION)
    return sink.getvalue().to_pybytes()


def decode_parquet(data: bytes, columns: Sequence[str] = COLUMNS) -> pa.Table:
    """A lake file's rows with ``columns`` (all by default), conformed to the current schema."""
    file = pq.ParquetFile(io.BytesIO(data))
    present = set(file.schema_arrow.names)
    return conform(file.read(columns=[name for name in columns if name in present]), columns)
