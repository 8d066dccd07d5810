"""The stream driver registry: ``LIVORA_STREAM_DRIVER`` picks log, redis or kinesis."""

from __future__ import annotations

from data_plane.stream.port import Stream
from data_plane.stream.settings import StreamSettings
from kernel.errors import ConfigError
from kernel.registry import DriverRegistry

stream_drivers: DriverRegistry[Stream] = DriverRegistry[Stream]("stream", "LIVORA_STREAM_DRIVER")

# NOTE: each factory imports its driver when called, so a cell on the embedded log never loads
# redis-py or botocore.


@stream_drivers.register("log")
def _log_driver(settings: StreamSettings) -> Stream:
    from data_plane.stream.log import LogStream

    return LogStream(settings.stream_log_path, partitions=settings.stream_partitions)


@stream_drivers.register("redis")
def _redis_driver(settings: StreamSettings) -> Stream:
    from data_plane.stream.redis_streams import RedisStream

    if not settings.redis_url:
        raise ConfigError("LIVORA_REDIS_URL", "a Redis URL is required when LIVORA_STREAM_DRIVER=redis")
    return RedisStream(
        settings.redis_url,
        prefix=settings.stream_redis_prefix,
        partitions=settings.stream_partitions,
        require_aof=settings.stream_redis_require_aof,
    )


@stream_drivers.register("kinesis")
def _kinesis_driver(settings: StreamSettings) -> Stream:
    from data_plane.stream.kinesis import KinesisStream

    return KinesisStream(
        settings.stream_kinesis_name,
        state_path=settings.stream_kinesis_state_path,
        partitions=settings.stream_partitions,
        endpoint_url=settings.stream_kinesis_endpoint_url,
        region_name=settings.stream_kinesis_region,
        create=settings.stream_kinesis_create,
    )


def create_stream(settings: StreamSettings) -> Stream:
    """The stream the settings describe; ``ConfigError`` names the variable to fix."""
    return stream_drivers.create(settings.stream_driver, settings)
