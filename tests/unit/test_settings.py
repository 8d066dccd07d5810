"""Settings from LIVORA_* variables: a bad value names its variable; drivers by name."""

from __future__ import annotations

import pytest

from control_plane.runtime import Runtime
from control_plane.settings import Settings
from kernel.errors import ConfigError
from kernel.registry import DriverRegistry
from kernel.settings import load_settings


def test_defaults_are_the_embedded_system():
    settings = load_settings(Settings, environ={})
    assert settings.database_url.startswith("sqlite+aiosqlite:///")
    assert (settings.kv_driver, settings.mail_driver, settings.port) == ("memory", "outbox", 8000)
    assert settings.base_url == "http://127.0.0.1:8000"


def test_values_are_read_and_converted_from_the_environment():
    settings = load_settings(
        Settings,
        environ={
            "LIVORA_PORT": "9001",
            "LIVORA_COOKIE_SECURE": "false",
            "LIVORA_DATABASE_URL": "postgresql://u:p@db:5432/livora",
            "LIVORA_PUBLIC_URL": "https://livora.example.com/",
            "UNRELATED": "x",
        },
    )
    assert settings.port == 9001 and settings.cookie_secure is False
    assert settings.base_url == "https://livora.example.com"


@pytest.mark.parametrize(
    ("variable", "value", "fragment"),
    [
        ("LIVORA_PORT", "eighty", "Expected `int`"),
        ("LIVORA_PORT", "70000", "<= 65535"),
        ("LIVORA_LOG_LEVEL", "loud", "Invalid enum value 'loud'"),
        ("LIVORA_COOKIE_SECURE", "maybe", "Expected `bool`"),
        ("LIVORA_SESSION_TTL_SECONDS", "0", ">= 1"),
        ("LIVORA_DATABASE_URL", "mysql://x@y/z", "unsupported database"),
        ("LIVORA_DATABASE_URL", "::::", "not a database URL"),
    ],
)
def test_a_bad_value_names_its_variable(variable, value, fragment):
    with pytest.raises(ConfigError) as caught:
        load_settings(Settings, environ={variable: value})
    assert caught.value.variable == variable
    assert str(caught.value).startswith(f"{variable}: ") and fragment in str(caught.value)


def test_redis_driver_needs_a_url():
    with pytest.raises(ConfigError, match="LIVORA_REDIS_URL: required"):
        load_settings(Settings, environ={"LIVORA_KV_DRIVER": "redis"})


@pytest.mark.parametrize(
    ("field", "variable"), [("kv_driver", "LIVORA_KV_DRIVER"), ("mail_driver", "LIVORA_MAIL_DRIVER")]
)
def test_unknown_driver_stops_start_up_listing_the_valid_ones(field, variable, tmp_path):
    settings = Settings(data_dir=str(tmp_path), **{field: "carrier-pigeon"})
    with pytest.raises(ConfigError) as caught:
        Runtime.build(settings)
    assert caught.value.variable == variable and "valid drivers:" in str(caught.value)


def test_registry():
    registry: DriverRegistry[str] = DriverRegistry("greeting", "LIVORA_GREETING_DRIVER")
    registry.register("hello")(lambda name: f"hello {name}")
    assert registry.create("hello", "ops") == "hello ops"
    with pytest.raises(ValueError, match="registered twice"):
        registry.register("hello")(lambda: "again")
    with pytest.raises(ConfigError, match="unknown greeting driver 'bye'; valid drivers: hello"):
        registry.create("bye")


def test_every_setting_is_documented():
    from pathlib import Path

    import msgspec

    text = (Path(__file__).parents[2] / "docs" / "configuration.md").read_text()
    missing = [f.name for f in msgspec.structs.fields(Settings) if f"`LIVORA_{f.name.upper()}`" not in text]
    assert not missing, f"document these in docs/configuration.md: {missing}"
