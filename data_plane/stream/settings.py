"""Stream settings, decoded from ``LIVORA_*`` environment variables with ``kernel.settings.load_settings``."""

from __future__ import annotations

import msgspec

from data_plane.stream.port import DEFAULT_PARTITIONS


class StreamSettings(msgspec.Struct, kw_only=True, frozen=True):
    # Which driver: log (embedded SQLite log), redis (Redis Streams) or kinesis (AWS cells).
    stream_driver: str = "log"
    # Partitions of the stream; fixed for its life (the drivers refuse a store made with another count).
    stream_partitions: int = DEFAULT_PARTITIONS
    # log: the SQLite file of the embedded log.
    stream_log_path: str = "var/stream/log.db"
    # redis: the server, shared with the other Redis-backed ports.
    redis_url: str | None = None
    # redis: prefix of the partition streams, the dead-letter stream and the meta hash.
    stream_redis_prefix: str = "livora:stream:"
    # redis: refuse to start unless the server has the append-only file on (set it in production).
    stream_redis_require_aof: bool = False
    # kinesis: the data stream; its open shards are the partitions.
    stream_kinesis_name: str = "livora-events"
    # kinesis: an endpoint other than AWS's (a moto server in tests).
    stream_kinesis_endpoint_url: str | None = None
    # kinesis: the AWS region; None takes it from the usual AWS configuration.
    stream_kinesis_region: str | None = None
    # kinesis: SQLite file of the consumer groups' positions, pending entries and dead letters.
    stream_kinesis_state_path: str = "var/stream/kinesis-state.db"
    # kinesis: create the data stream when it is missing (local runs; AWS cells get it provisioned).
    stream_kinesis_create: bool = False
