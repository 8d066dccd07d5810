"""Pure logic: the tenant lifecycle, cursors, slugs, ids, URL normalisation."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from control_plane.tenants.states import TRANSITIONS, check_transition
from kernel.db import new_id, normalize_database_url
from kernel.errors import Conflict, ValidationFailed
from kernel.pagination import decode_cursor, encode_cursor
from kernel.text import slugify

LIFECYCLE = [
    ("pending", "provisioning"),
    ("provisioning", "active"),
    ("active", "suspended"),
    ("suspended", "active"),
    ("suspended", "deleting"),
    ("pending", "deleting"),
    ("deleting", "deleted"),
    ("provisioning", "failed"),
    ("failed", "provisioning"),
    ("failed", "pending"),
    ("failed", "deleting"),
]


@pytest.mark.parametrize("current", sorted(TRANSITIONS))
@pytest.mark.parametrize("target", sorted(TRANSITIONS))
def test_only_the_lifecycle_transitions_are_legal(current, target):
    if (current, target) in LIFECYCLE:
        check_transition(current, target)
    else:
        with pytest.raises(Conflict) as caught:
            check_transition(current, target)
        assert caught.value.code == "illegal_transition" and current in caught.value.detail


@given(st.datetimes(timezones=st.just(dt.UTC)), st.text(min_size=1, max_size=40))
def test_cursor_round_trip(stamp, id_):
    assert decode_cursor(encode_cursor(stamp, id_)) == (stamp, id_)


@pytest.mark.parametrize("cursor", ["", "%%%", "bm90IGpzb24", "WzFd", "WyJ4IiwgInkiXQ"])
def test_bad_cursors_are_a_clear_400(cursor):
    with pytest.raises(ValidationFailed) as caught:
        decode_cursor(cursor)
    assert caught.value.code == "invalid_cursor"


@pytest.mark.parametrize(
    ("name", "slug"),
    [("Acme Inc.", "acme-inc"), ("  Café  Crème ", "cafe-creme"), ("日本", ""), ("a" * 100, "a" * 63), ("x--y", "x-y")],
)
def test_slugify(name, slug):
    assert slugify(name) == slug


@given(st.text())
def test_slugify_always_gives_a_dns_label_or_nothing(name):
    slug = slugify(name)
    assert len(slug) <= 63 and not slug.startswith("-") and not slug.endswith("-")
    assert all(c.isascii() and (c.isalnum() or c == "-") for c in slug)


def test_ids_are_prefixed_unique_and_time_ordered():
    ids = [new_id("ten") for _ in range(1000)]
    assert len(set(ids)) == 1000 and all(i.startswith("ten_") and len(i) == 30 for i in ids)
    earlier = new_id("x")
    import time

    time.sleep(0.002)
    assert new_id("x") > earlier


def test_database_urls_get_the_async_driver():
    assert normalize_database_url("postgres://u@h/db") == "postgresql+asyncpg://u@h/db"
    assert normalize_database_url("postgresql://u:p%40ss@h:5432/db").startswith("postgresql+asyncpg://u:p%40ss@h")
    assert normalize_database_url("sqlite:///./var/x.db") == "sqlite+aiosqlite:///./var/x.db"
