"""Every stream driver dead-letters an entry with a payload of the caller's choosing (the poison
events of a multi-event entry), and a replay appends exactly that payload."""

from __future__ import annotations

import pytest

from data_plane.stream.port import Record, Stream
from tests.contract.test_stream import backend, drain, moto_url, stream  # noqa: F401 (fixtures)

pytestmark = pytest.mark.anyio


async def test_a_dead_letter_keeps_the_payload_it_is_given_and_replays_it(stream: Stream) -> None:  # noqa: F811 (the fixture)
    await stream.append([Record("tenant-1/u", b'[{"n": 1}, {"n": 2}, {"n": 3}]')])
    (entry,) = await drain(stream, "g")
    dead_id = await stream.dead_letter("g", entry, "profile_refused: n=2", payload=b'[{"n": 2}]')
    assert dead_id is not None
    assert await stream.pending("g") == 0
    (letter,) = await stream.dead_letters()
    assert (letter.entry_id, letter.payload, letter.partition_key) == (entry.id, b'[{"n": 2}]', "tenant-1/u")
    assert await stream.replay([dead_id]) == 1
    (again,) = await drain(stream, "g")
    assert (again.payload, again.partition_key, again.partition) == (b'[{"n": 2}]', "tenant-1/u", entry.partition)


async def test_without_a_payload_the_entry_is_kept_as_it_was(stream: Stream) -> None:  # noqa: F811 (the fixture)
    await stream.append([Record("tenant-1/u", b"original")])
    (entry,) = await drain(stream, "g")
    assert await stream.dead_letter("g", entry, "undecodable") is not None
    (letter,) = await stream.dead_letters()
    assert letter.payload == b"original"
