"""Profiles per tenant and the persistent identity graph behind them (SQLite file or PostgreSQL schema per tenant)."""

from data_plane.profiles.port import (
    ProfilesSettings,
    ProfileStore,
    create_profile_store,
    load_profiles_settings,
    profile_drivers,
)
from data_plane.profiles.schemas import MergeRecord, Profile, ProfilePage, RelinkRecord

__all__ = [
    "MergeRecord",
    "Profile",
    "ProfilePage",
    "ProfileStore",
    "ProfilesSettings",
    "RelinkRecord",
    "create_profile_store",
    "load_profiles_settings",
    "profile_drivers",
]
