"""Profile aggregates without a database: what one event adds, how two profiles fold, where a tenant lives."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from data_plane.events import Event
from data_plane.profiles.state import ProfileState, from_us, to_us
from data_plane.profiles.tenants import check_tenant_id, schema_name, sqlite_path

T0 = dt.datetime(2024, 3, 1, 12, tzinfo=dt.UTC)


def event(type: str = "track", minute: int = 0, **fields: Any) -> Event:
    return Event(
        message_id=f"m{minute}",
        tenant_id="ten_a",
        source_id="s",
        type=type,  # type: ignore[arg-type]
        received_at=T0,
        timestamp=T0 + dt.timedelta(minutes=minute),
        **fields,
    )


def test_microseconds_round_trip_exactly() -> None:
    moment = dt.datetime(2031, 7, 4, 1, 2, 3, 456789, tzinfo=dt.UTC)
    assert from_us(to_us(moment)) == moment
    with pytest.raises(ValueError, match="timezone-aware"):
        to_us(dt.datetime(2024, 1, 1))


def test_traits_and_last_values_go_by_event_time_not_arrival() -> None:
    state = ProfileState("p")
    state.add(event("identify", 5, user_id="u", traits={"plan": "pro"}, context={"ip": "198.51.100.7"}))
    state.add(event("identify", 1, user_id="u", traits={"plan": "free", "name": "Ada"}, context={"ip": "10.0.0.1"}))
    state.add(event("track", 9, user_id="u", context={"geo": {"city": "Oslo"}}))
    state.add(event("track", 3, user_id="u", context={"geo": {"city": "Lima"}, "user_agent_parsed": {"os": "iOS"}}))
    assert state.traits == {"plan": "pro", "name": "Ada"}
    assert (state.last_ip, state.last_location, state.last_device) == ("198.51.100.7", {"city": "Oslo"}, {"os": "iOS"})
    assert (state.first_seen_us, state.last_seen_us) == (
        to_us(T0 + dt.timedelta(minutes=1)),
        to_us(T0 + dt.timedelta(minutes=9)),
    )
    assert state.event_count == 4 and state.counts["identify"] == 2 and state.counts["track"] == 2


def test_group_traits_stay_under_their_group() -> None:
    state = ProfileState("p")
    state.add(event("identify", 0, user_id="u", traits={"name": "Ada"}))
    state.add(event("group", 1, user_id="u", group_id="acme", traits={"name": "Acme", "plan": "team"}))
    state.add(event("group", 2, user_id="u", group_id="acme", traits={"plan": "enterprise"}))
    assert state.traits == {"name": "Ada"}
    assert state.groups == {"acme": {"name": "Acme", "plan": "enterprise"}}


def test_user_id_is_the_first_one_until_an_alias_renames_it() -> None:
    state = ProfileState("p")
    state.add(event("page", 0, anonymous_id="a"))
    assert state.user_id is None
    state.add(event("identify", 1, user_id="old", anonymous_id="a"))
    state.add(event("track", 2, user_id="other"))  # cannot happen through the graph; still not a rename
    assert state.user_id == "old"
    state.add(event("alias", 3, user_id="new", previous_id="old"))
    assert state.user_id == "new"


def test_fold_sums_counts_and_keeps_the_newer_value_of_each_key() -> None:
    survivor, merged = ProfileState("s"), ProfileState("m")
    survivor.add(event("identify", 4, user_id="u", traits={"plan": "pro", "seats": 3}, context={"ip": "10.0.0.4"}))
    merged.add(event("identify", 2, anonymous_id="a", traits={"plan": "free", "name": "Ada"}))
    merged.add(event("page", 8, anonymous_id="a", context={"ip": "10.0.0.8", "geo": {"city": "Oslo"}}))
    merged.add(event("group", 1, anonymous_id="a", group_id="g", traits={"size": 5}))
    survivor.fold(merged)
    assert survivor.traits == {"plan": "pro", "seats": 3, "name": "Ada"}
    assert survivor.groups == {"g": {"size": 5}}
    assert (survivor.last_ip, survivor.last_location) == ("10.0.0.8", {"city": "Oslo"})
    assert survivor.event_count == 4 and survivor.user_id == "u"
    assert (survivor.first_seen_us, survivor.last_seen_us) == (
        to_us(T0 + dt.timedelta(minutes=1)),
        to_us(T0 + dt.timedelta(minutes=8)),
    )


def test_ties_go_to_the_later_event_and_on_a_merge_to_the_survivor() -> None:
    state = ProfileState("p")
    state.add(event("identify", 0, user_id="u", traits={"plan": "a"}))
    state.add(event("identify", 0, user_id="u", traits={"plan": "b"}))
    assert state.traits == {"plan": "b"}
    other = ProfileState("o")
    other.add(event("identify", 0, anonymous_id="x", traits={"plan": "c"}))
    state.fold(other)
    assert state.traits == {"plan": "b"}


def test_a_profile_never_changes_an_events_values_in_place() -> None:
    # Values are shared with events, not copied: a newer value replaces a key whole.
    first = {"address": {"city": "Oslo"}}
    state = ProfileState("p")
    state.add(event("identify", 0, user_id="u", traits=first))
    state.add(event("identify", 1, user_id="u", traits={"address": {"city": "Lima"}}))
    assert state.traits == {"address": {"city": "Lima"}}
    assert first == {"address": {"city": "Oslo"}}


def test_tenant_storage_names() -> None:
    assert sqlite_path(Path("/var/cell"), "ten_a") == Path("/var/cell/tenants/ten_a/profiles.sqlite")
    assert schema_name("ten_a") == "t_ten_a"
    assert schema_name("Ten-A").startswith("tx_ten_a_") and schema_name("Ten-A") != schema_name("ten-a")
    assert len(schema_name("a" * 64)) <= 63
    for bad in ["", "..", "a/b", "a\x00", 'a"b', "a b", None, 42]:
        with pytest.raises(ValueError):
            check_tenant_id(bad)
