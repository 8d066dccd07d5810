"""Small parts of analytics: cell tokens, the cell's credential checks, calendars, CSV and filters."""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from data_plane.analytics import calendar, export, schemas
from data_plane.analytics.auth import AnalyticsAuth
from data_plane.analytics.sql import check_filter
from data_plane.contract.keeper import ConfigKeeper, Directory
from data_plane.contract.schemas import ApiKeyGrant, CellConfig, Limits, TenantConfig
from data_plane.contract.tokens import public_key_text, sign, verify
from kernel.errors import NotAuthenticated, PermissionDenied, ValidationFailed

NOW = dt.datetime(2026, 7, 1, 12, tzinfo=dt.UTC)


def test_tokens_verify_only_with_their_key_and_while_current() -> None:
    key, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    token, claims = sign(key, tenant_id="ten_a", subject="usr_1", role="analyst", ttl_seconds=900, now=1000)
    assert verify(token, [public_key_text(key)], now=1500) == claims
    assert verify(token, [public_key_text(other), public_key_text(key)], now=1500) == claims
    assert verify(token, [public_key_text(other)], now=1500) is None
    assert verify(token, [public_key_text(key)], now=1900) is None  # expired
    assert verify(token, [public_key_text(key)], now=800) is None  # from the future
    payload, _, signature = token.partition(".")
    forged, _ = sign(other, tenant_id="ten_b", subject="usr_1", role="owner", ttl_seconds=900, now=1000)
    assert verify(forged.partition(".")[0] + "." + signature, [public_key_text(key)], now=1500) is None
    assert verify(payload + "." + forged.partition(".")[2], [public_key_text(key)], now=1500) is None
    assert verify("lvt_garbage", [public_key_text(key)], now=1500) is None
    assert verify("lvk_x", [public_key_text(key)], now=1500) is None


def keeper_with(config: CellConfig, tmp_path: Path) -> ConfigKeeper:
    class Never:
        async def fetch(self, version: str | None) -> None:
            return None

        async def close(self) -> None:
            return None

    keeper = ConfigKeeper(Never(), tmp_path / "config.json")  # type: ignore[arg-type]
    keeper.directory = Directory(config)
    return keeper


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def tenant(tenant_id: str, status: str = "active", keys: list[ApiKeyGrant] | None = None) -> TenantConfig:
    return TenantConfig(
        id=tenant_id,
        status=status,
        plan="growth",
        limits=Limits(),
        sources=[],
        api_keys=keys or [],  # type: ignore[arg-type]
    )


def test_the_cell_checks_keys_and_tokens_against_its_config(tmp_path: Path) -> None:
    signer = Ed25519PrivateKey.generate()
    grants = [
        ApiKeyGrant(
            id="key_1",
            secret_hashes=[digest("lvk_new"), digest("lvk_old")],
            scopes=["analytics:read"],
            previous_secret_hash=digest("lvk_old"),
            previous_valid_until=NOW + dt.timedelta(minutes=5),
        ),
        ApiKeyGrant(id="key_2", secret_hashes=[digest("lvk_gone")], scopes=["analytics:read"], expires_at=NOW),
    ]
    config = CellConfig(
        version="v1",
        generated_at=NOW,
        tenants=[
            tenant("ten_a", keys=grants),
            tenant(
                "ten_s",
                "suspended",
                [ApiKeyGrant(id="key_3", secret_hashes=[digest("lvk_s")], scopes=["analytics:read"])],
            ),
        ],
        token_keys=[public_key_text(signer)],
    )
    clock = [NOW]
    auth = AnalyticsAuth(keeper_with(config, tmp_path), clock=lambda: clock[0])
    reader = auth.authenticate("Bearer lvk_new")
    assert (reader.tenant.id, reader.kind, reader.id) == ("ten_a", "api_key", "key_1")
    assert auth.authenticate("Bearer lvk_old").id == "key_1"
    clock[0] = NOW + dt.timedelta(minutes=6)  # the rotated-out secret's grace is over
    with pytest.raises(NotAuthenticated):
        auth.authenticate("Bearer lvk_old")
    with pytest.raises(NotAuthenticated):
        auth.authenticate("Bearer lvk_gone")  # expired
    with pytest.raises(PermissionDenied):
        auth.authenticate("Bearer lvk_s")  # suspended tenant
    with pytest.raises(NotAuthenticated):
        auth.authenticate(None)
    with pytest.raises(NotAuthenticated):
        auth.authenticate("Basic bHZrX25ldzo=")
    token, _ = sign(
        signer, tenant_id="ten_a", subject="usr_1", role="analyst", ttl_seconds=900, now=clock[0].timestamp()
    )
    assert auth.authenticate(f"Bearer {token}").tenant.id == "ten_a"
    viewer, _ = sign(
        signer, tenant_id="ten_a", subject="usr_2", role="viewer", ttl_seconds=900, now=clock[0].timestamp()
    )
    with pytest.raises(PermissionDenied):
        auth.authenticate(f"Bearer {viewer}")
    stranger, _ = sign(
        signer, tenant_id="ten_zz", subject="usr_1", role="owner", ttl_seconds=900, now=clock[0].timestamp()
    )
    with pytest.raises(NotAuthenticated):
        auth.authenticate(f"Bearer {stranger}")  # a tenant this cell does not serve


@settings(max_examples=30, deadline=None)
@given(
    zone=st.sampled_from(["Europe/Paris", "America/Santiago", "Australia/Lord_Howe", "Asia/Kathmandu", "UTC"]),
    interval=st.sampled_from(["hour", "day", "week", "month"]),
    offsets=st.lists(st.integers(0, 40 * 86_400_000_000 - 1), min_size=1100, max_size=1200),
)
def test_fast_bucket_lookup_equals_a_binary_search(zone: str, interval: str, offsets: list[int]) -> None:
    first = dt.date(2022, 9, 1)
    grid = calendar.buckets(interval, first, first + dt.timedelta(days=39), calendar.zone(zone))  # type: ignore[arg-type]
    ts = grid.starts[0] + np.array(offsets, dtype=np.int64)
    ts = ts[ts < grid.end]
    assert np.array_equal(grid.index(ts), np.searchsorted(grid.starts, ts, side="right") - 1)


def test_time_zones_and_filters_are_checked() -> None:
    with pytest.raises(ValidationFailed) as caught:
        calendar.zone("Mars/Olympus")
    assert caught.value.code == "unknown_time_zone"
    for bad in ("../etc/passwd", "", " UTC"):
        with pytest.raises(ValidationFailed):
            calendar.zone(bad)
    for op, value in (("gt", "a"), ("lt", True), ("contains", 3.0), ("equals", None), ("is_set", "x")):
        with pytest.raises(ValidationFailed) as caught:
            check_filter(schemas.Filter(property="plan", op=op, value=value))  # type: ignore[arg-type]
        assert caught.value.code == "invalid_filter"


def test_csv_quotes_what_a_spreadsheet_would_run() -> None:
    result = schemas.TrendsResult(
        time_zone="UTC",
        interval="day",
        measure="events",
        series=[
            schemas.TrendSeries(
                breakdown="=HYPERLINK(1)", total=-2, points=[schemas.TrendPoint(start="2026-01-01", value=3)]
            )
        ],
    )
    assert export.trends(result).splitlines() == [
        "breakdown,start,events",
        "'=HYPERLINK(1),2026-01-01,3",
        "'=HYPERLINK(1),total,-2",
    ]
