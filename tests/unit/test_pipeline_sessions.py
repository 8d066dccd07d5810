"""Sessions: 30 minutes idle, 24 hours at most, SDK ids kept, deterministic ids; against reference loops."""

from __future__ import annotations

import datetime as dt
import itertools
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from data_plane.events import Event
from data_plane.pipeline.sessions import Sessionizer, sdk_session_id, session_id_for

T0 = dt.datetime(2024, 3, 1, 8, tzinfo=dt.UTC)
MINUTE = dt.timedelta(minutes=1)
IDLE, MAX = dt.timedelta(minutes=30), dt.timedelta(hours=24)


def event(minutes: float, n: int | str = 0, tenant: str = "ten_a", **fields: Any) -> Event:
    at = T0 + minutes * MINUTE
    return Event(
        message_id=f"m{n}",
        tenant_id=tenant,
        source_id="src",
        type="track",
        received_at=at,
        timestamp=at,
        anonymous_id="anon",
        **fields,
    )


def assign(sessionizer: Sessionizer, *minutes: float, profile: str = "p", tenant: str = "ten_a") -> list[str]:
    return [sessionizer.assign(tenant, profile, event(m, f"{tenant}-{m}-{i}", tenant)) for i, m in enumerate(minutes)]


def test_thirty_minutes_of_silence_ends_a_session() -> None:
    ids = assign(Sessionizer(), 0, 10, 39, 68.5, 98.5, 98.5)
    assert ids[0] == ids[1] == ids[2] == ids[3] == session_id_for("ten_a", "p", "m" + "ten_a-0-0")
    assert ids[4] != ids[3] and ids[4] == ids[5]  # exactly 30 minutes idle: a new session


def test_a_session_lasts_at_most_24_hours() -> None:
    minutes = [i * 20 for i in range(80)]  # never idle, 26 hours of activity
    ids = assign(Sessionizer(), *minutes)
    first_cut = minutes.index(24 * 60)
    assert len(set(ids[:first_cut])) == 1 and ids[first_cut] != ids[0]
    assert len(set(ids[first_cut:])) == 1


def test_idle_and_max_length_are_configurable() -> None:
    ids = assign(Sessionizer(idle=dt.timedelta(minutes=5), max_length=dt.timedelta(minutes=12)), 0, 4, 8.9, 12, 16)
    assert ids[0] == ids[1] == ids[2] != ids[3] == ids[4]
    with pytest.raises(ValueError):
        Sessionizer(idle=dt.timedelta(0))


@pytest.mark.parametrize(
    ("context", "properties", "expected"),
    [
        ({"session_id": "sdk-1"}, {}, "sdk-1"),
        ({"sessionId": 1709280000000}, {}, "1709280000000"),
        ({}, {"session_id": " s-9 "}, "s-9"),
        ({"session_id": "a", "sessionId": "b"}, {"session_id": "c"}, "a"),
        ({"session_id": ""}, {"session_id": "c"}, "c"),
        ({"session_id": True}, {}, None),
        ({"session_id": {"id": 1}}, {}, None),
        ({}, {}, None),
    ],
)
def test_sdk_session_ids_accepted(context: dict[str, Any], properties: dict[str, Any], expected: str | None) -> None:
    assert sdk_session_id(event(0, context=context, properties=properties)) == expected


def test_an_sdk_session_id_is_kept_and_server_events_near_it_join_it() -> None:
    sessionizer = Sessionizer()
    sdk = {"sessionId": 1709280000000}
    assert sessionizer.assign("ten_a", "p", event(0, 1, context=sdk)) == "1709280000000"
    # Kept even across what would be an idle gap: the SDK decides its own sessions.
    assert sessionizer.assign("ten_a", "p", event(50, 2, context=sdk)) == "1709280000000"
    assert sessionizer.assign("ten_a", "p", event(60, 3)) == "1709280000000"  # a server-side event
    assert sessionizer.assign("ten_a", "p", event(61, 4, properties={"session_id": "other"})) == "other"
    sessionized = sessionizer.sessionize(event(62, 5, context={"ip": "1.2.3.4"}), "p")
    assert sessionized.context == {"ip": "1.2.3.4", "session_id": "other"}


def test_late_events_join_a_session_they_fit_and_old_ones_open_their_own() -> None:
    sessionizer = Sessionizer()
    live = assign(sessionizer, 0, 20, 40)[0]
    assert assign(sessionizer, 10, -25)[0:2] == [live, live]  # inside, and within 30 minutes before it
    # An offline batch from yesterday: its first event opens a session, the rest join that one.
    offline = assign(sessionizer, -1440, -1430, -1420)
    assert len(set(offline)) == 1 and offline[0] != live
    assert assign(sessionizer, 60)[0] == live  # the live session carries on


def test_replaying_an_event_gives_the_same_session() -> None:
    sessionizer = Sessionizer()
    e = event(0, "x")
    assert sessionizer.assign("t", "p", e) == sessionizer.assign("t", "p", e) == session_id_for("t", "p", "mx")


def test_snapshot_and_restore_give_the_same_ids_as_an_uninterrupted_run() -> None:
    events = [event(m, i) for i, m in enumerate([0, 5, 50, 55, 100, 20, 300, 301, -90])]
    uninterrupted = Sessionizer()
    expected = [uninterrupted.assign("t", "p", e) for e in events]
    before = Sessionizer()
    ids = [before.assign("t", "p", e) for e in events[:4]]
    after = Sessionizer()
    after.restore(before.snapshot())
    ids += [after.assign("t", "p", e) for e in events[4:]]
    assert ids == expected


def test_sessions_are_per_tenant_and_profile() -> None:
    sessionizer = Sessionizer()
    [a] = assign(sessionizer, 0, tenant="ten_a")
    [b] = assign(sessionizer, 0, tenant="ten_b")
    [c] = assign(sessionizer, 0, profile="q")
    assert len({a, b, c}) == 3


def test_rekey_carries_the_anonymous_session_over_a_login_merge() -> None:
    sessionizer = Sessionizer()
    [old] = assign(sessionizer, -3000, profile="user")
    [browsing] = assign(sessionizer, 0, profile="anon")
    sessionizer.rekey("ten_a", "anon", "user")
    assert assign(sessionizer, 10, profile="user") == [browsing]
    assert [s.id for s in sessionizer.sessions("ten_a", "user")] == [old, browsing]
    assert sessionizer.sessions("ten_a", "anon") == []
    sessionizer.rekey("ten_a", "user", "user")  # no-op
    assert len(sessionizer.sessions("ten_a", "user")) == 2


def test_only_recent_sessions_are_remembered_and_idle_profiles_can_be_evicted() -> None:
    sessionizer = Sessionizer(recent=2)
    assign(sessionizer, 0, 100, 200)
    assert [s.start for s in sessionizer.sessions("ten_a", "p")] == [
        int((T0 + 100 * MINUTE).timestamp() * 1e6),
        int((T0 + 200 * MINUTE).timestamp() * 1e6),
    ]
    # A late event older than everything still gets (and keeps) its own session for its neighbours.
    late = assign(sessionizer, -500, -490)
    assert late[0] == late[1]
    assign(sessionizer, 0, profile="q")
    assert sessionizer.evict(T0 + 150 * MINUTE) == 1  # "q" went quiet at 0; "p" was active at 200
    assert sessionizer.sessions("ten_a", "q") == [] and sessionizer.sessions("ten_a", "p")


# --- reference loops --------------------------------------------------------------------------


def classic(events: list[Event]) -> list[str]:
    """The textbook loop over events in timestamp order: new session on idle or max length."""
    ids, start, last, current = [], None, None, ""
    for e in events:
        t = e.timestamp
        if start is None or t - last >= IDLE or t - start >= MAX:
            start, current = t, session_id_for(e.tenant_id, "p", e.message_id)
        last = t
        ids.append(current)
    return ids


def intervals(events: list[Event]) -> list[str]:
    """The documented rule, naively: a list of [start, last] spans, unbounded, no cleverness."""
    spans: list[list[Any]] = []  # [id, start, last]
    ids = []
    for e in events:
        t, sdk = e.timestamp, sdk_session_id(e)
        if sdk is not None:
            span = next((s for s in spans if s[0] == sdk), None)
        else:
            fitting = [
                (s[1], i, s)
                for i, s in enumerate(spans)
                if (s[1] - t < IDLE and t - s[2] < IDLE) and max(s[2], t) - min(s[1], t) < MAX
            ]
            span = max(fitting, key=lambda f: (f[0], f[1]))[2] if fitting else None
        if span is None:
            span = [sdk or session_id_for(e.tenant_id, "p", e.message_id), t, t]
            spans.append(span)
        span[1], span[2] = min(span[1], t), max(span[2], t)
        ids.append(span[0])
    return ids


# Minutes on a coarse grid so ties and exact 30-minute gaps are common.
minutes = st.integers(min_value=0, max_value=200).map(lambda m: m * 5)


@settings(max_examples=200, deadline=None)
@given(st.lists(minutes, min_size=1, max_size=40))
def test_in_order_events_match_the_classic_loop(stamps: list[int]) -> None:
    events = [event(m, i) for i, m in enumerate(sorted(stamps))]
    sessionizer = Sessionizer()
    assert [sessionizer.assign("ten_a", "p", e) for e in events] == classic(events)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(minutes, st.sampled_from([None, None, None, "sdk-1", "sdk-2"])),
        min_size=1,
        max_size=40,
    )
)
def test_any_arrival_order_matches_the_interval_reference(draws: list[tuple[int, str | None]]) -> None:
    events = [event(m, i, context={"session_id": sdk} if sdk else {}) for i, (m, sdk) in enumerate(draws)]
    sessionizer = Sessionizer(recent=1000)
    ids = [sessionizer.assign("ten_a", "p", e) for e in events]
    assert ids == intervals(events)
    # Sessions the pipeline named itself hold no 30-minute gap and span less than 24 hours.
    for session in set(ids) - {"sdk-1", "sdk-2"}:
        times = sorted(e.timestamp for e, s in zip(events, ids, strict=True) if s == session)
        assert all(b - a < IDLE for a, b in itertools.pairwise(times))
        assert times[-1] - times[0] < MAX
        opener = next(e for e, s in zip(events, ids, strict=True) if s == session)
        assert session == session_id_for("ten_a", "p", opener.message_id)


@settings(max_examples=100, deadline=None)
@given(st.lists(minutes, min_size=2, max_size=30), st.data())
def test_a_restart_from_any_snapshot_gives_the_same_ids(stamps: list[int], data: st.DataObject) -> None:
    events = [event(m, i) for i, m in enumerate(stamps)]
    cut = data.draw(st.integers(min_value=0, max_value=len(events)))
    whole = Sessionizer()
    expected = [whole.assign("t", "p", e) for e in events]
    first = Sessionizer()
    ids = [first.assign("t", "p", e) for e in events[:cut]]
    second = Sessionizer()
    second.restore(first.snapshot())
    assert ids + [second.assign("t", "p", e) for e in events[cut:]] == expected
