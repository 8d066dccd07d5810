"""The event stream between ingestion and the pipeline: a port, its drivers and their settings."""

from data_plane.stream.drivers import create_stream, stream_drivers
from data_plane.stream.port import DeadLetter, Entry, Record, Stream, partition_for
from data_plane.stream.settings import StreamSettings

__all__ = [
    "DeadLetter",
    "Entry",
    "Record",
    "Stream",
    "StreamSettings",
    "create_stream",
    "partition_for",
    "stream_drivers",
]
