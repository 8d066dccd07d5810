"""Enrichment with the real offline databases: geo (geoip2fast), user agents (ua-parser), UTM and referrer."""

from __future__ import annotations

import datetime as dt
import ipaddress
import sys
import types
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from data_plane.events import Event
from data_plane.pipeline.enrich import Enricher, EnrichmentPolicy
from data_plane.pipeline.geo import (
    MMDB_SETTING,
    GeoIP2FastLocator,
    IpAddress,
    MaxMindLocator,
    anonymize_ip,
    locate,
    open_geo_locator,
)
from data_plane.pipeline.traffic import describe_referrer, normalize_campaign
from data_plane.pipeline.user_agents import parse_user_agent
from kernel.errors import ConfigError

T0 = dt.datetime(2024, 3, 1, 12, tzinfo=dt.UTC)
CHROME_WINDOWS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36"
)
SAFARI_IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.1 Mobile/15E148 Safari/604.1"
)
GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"


@pytest.fixture(scope="module")
def geo() -> GeoIP2FastLocator:
    return GeoIP2FastLocator()


def page_event(context: dict[str, Any], **fields: Any) -> Event:
    return Event(
        message_id="m-1",
        tenant_id="ten_a",
        source_id="src",
        type=fields.pop("type", "page"),
        received_at=T0,
        timestamp=T0,
        anonymous_id="anon-1",
        context=context,
        **fields,
    )


# --- geo ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ip", "country"),
    [
        ("8.8.8.8", "US"),
        ("1.1.1.1", "AU"),
        ("81.2.69.160", "GB"),
        ("193.0.6.139", "NL"),
        ("2001:4860:4860::8888", "US"),
        ("2a00:1450:4001:80e::200e", "DE"),
        ("::ffff:8.8.8.8", "US"),
        (" 8.8.8.8 ", "US"),
    ],
)
def test_public_ips_get_their_country(geo: GeoIP2FastLocator, ip: str, country: str) -> None:
    found = locate(geo, ip)
    assert found is not None and found["country_code"] == country and found["source"] == "geoip2fast"
    assert set(found) == {"country_code", "country_name", "region", "city", "source"}


@pytest.mark.parametrize(
    "ip",
    [
        "10.1.2.3",
        "192.168.1.1",
        "172.16.0.1",
        "127.0.0.1",
        "::1",
        "fe80::1",
        "fc00::1",
        "100.64.0.1",
        "169.254.1.1",
        "203.0.113.5",
        "0.0.0.0",
        "224.0.0.1",
        "::ffff:10.0.0.1",
        "not-an-ip",
        "",
        None,
        8888,
    ],
)
def test_private_loopback_reserved_and_invalid_addresses_get_no_geo(geo: GeoIP2FastLocator, ip: object) -> None:
    assert locate(geo, ip) is None


@pytest.mark.parametrize(
    ("ip", "anonymised"),
    [
        ("8.8.8.8", "8.8.8.0"),
        ("81.2.69.160", "81.2.69.0"),
        ("2001:4860:4860::8888", "2001:4860:4860::"),
        ("2001:db8:1234:5678:9abc:def0:1234:5678", "2001:db8:1234::"),
        ("::ffff:1.2.3.4", "1.2.3.0"),
        ("not-an-ip", None),
        ("1.2.3.4:8080", None),
        (None, None),
    ],
)
def test_anonymize_ip(ip: object, anonymised: str | None) -> None:
    assert anonymize_ip(ip) == anonymised


@given(st.ip_addresses())
def test_anonymisation_zeroes_the_host_bits_and_is_idempotent(address: IpAddress) -> None:
    result = anonymize_ip(str(address))
    assert result is not None
    value = ipaddress.ip_address(result)
    mapped = getattr(address, "ipv4_mapped", None)
    original = mapped or address
    keep = 24 if original.version == 4 else 48
    host_bits = original.max_prefixlen - keep
    assert int(value) == (int(original) >> host_bits) << host_bits
    assert anonymize_ip(result) == result


def test_open_geo_locator_uses_the_bundled_database_by_default() -> None:
    assert isinstance(open_geo_locator(None), GeoIP2FastLocator)
    assert isinstance(open_geo_locator(""), GeoIP2FastLocator)


def test_maxmind_without_the_package_is_a_config_error_naming_the_setting(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "maxminddb", None)  # import now fails, installed or not
    with pytest.raises(ConfigError) as caught:
        open_geo_locator(str(tmp_path / "GeoLite2-City.mmdb"))
    assert caught.value.variable == MMDB_SETTING == "LIVORA_GEOIP_MMDB_PATH"
    assert "maxminddb" in caught.value.message


class _FakeReader:
    """Stands in for maxminddb's reader (a third-party package not installed here): GeoLite2 records."""

    RECORDS: dict[str, Any] = {
        "81.2.69.160": {
            "country": {"iso_code": "GB", "names": {"en": "United Kingdom"}},
            "subdivisions": [{"iso_code": "ENG", "names": {"en": "England"}}],
            "city": {"names": {"en": "London"}},
        },
        "9.9.9.9": {"registered_country": {"iso_code": "US", "names": {"en": "United States"}}},
        "8.8.4.4": {"continent": {"code": "NA"}},
    }

    def get(self, ip: str) -> Any:
        if ":" in ip:  # as maxminddb does for an IPv4-only database
            raise ValueError(f"cannot look up {ip} in an IPv4-only database")
        return self.RECORDS.get(ip)


def test_maxmind_records_map_to_the_same_geo_shape(monkeypatch, tmp_path: Path) -> None:
    fake = types.ModuleType("maxminddb")
    fake.open_database = lambda path: _FakeReader()  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "maxminddb", fake)
    with pytest.raises(ConfigError, match="no MaxMind database file"):
        open_geo_locator(str(tmp_path / "missing.mmdb"))
    (tmp_path / "city.mmdb").write_bytes(b"")
    locator = open_geo_locator(str(tmp_path / "city.mmdb"))
    assert isinstance(locator, MaxMindLocator)
    assert locate(locator, "81.2.69.160") == {
        "country_code": "GB",
        "country_name": "United Kingdom",
        "region": "ENG",
        "city": "London",
        "source": "maxmind",
    }
    assert locate(locator, "9.9.9.9") == {
        "country_code": "US",
        "country_name": "United States",
        "region": None,
        "city": None,
        "source": "maxmind",
    }
    assert locate(locator, "8.8.4.4") is None  # no country in the record
    assert locate(locator, "1.0.0.1") is None  # not in the database
    assert locate(locator, "10.0.0.1") is None  # private: never looked up
    assert locate(locator, "2001:4860:4860::8888") is None  # the reader refuses IPv6


# --- user agents --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("agent", "expected"),
    [
        (
            CHROME_WINDOWS,
            {"browser": "Chrome", "browser_version": "120.0.0", "os": "Windows", "os_version": "10"}
            | {"device_type": "desktop", "device_brand": None, "device_model": None, "is_bot": False},
        ),
        (
            SAFARI_IPHONE,
            {"browser": "Mobile Safari", "browser_version": "17.1", "os": "iOS", "os_version": "17.1"}
            | {"device_type": "mobile", "device_brand": "Apple", "device_model": "iPhone", "is_bot": False},
        ),
        (
            GOOGLEBOT,
            {"browser": "Googlebot", "browser_version": "2.1", "os": None, "os_version": None}
            | {"device_type": "bot", "device_brand": None, "device_model": None, "is_bot": True},
        ),
    ],
)
def test_real_user_agents(agent: str, expected: dict[str, Any]) -> None:
    assert parse_user_agent(agent) == expected


@pytest.mark.parametrize(
    ("agent", "browser", "os", "device_type"),
    [
        (
            "Mozilla/5.0 (iPad; CPU OS 16_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
            "Version/16.6 Mobile/15E148 Safari/604.1",
            "Mobile Safari",
            "iOS",
            "tablet",
        ),
        (
            "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
            "Chrome/120.0.6099.43 Mobile Safari/537.36",
            "Chrome Mobile",
            "Android",
            "mobile",
        ),
        (
            "Mozilla/5.0 (Linux; Android 13; SM-X700) AppleWebKit/537.36 (KHTML, like Gecko) "
            "Chrome/120.0.0.0 Safari/537.36",
            "Chrome",
            "Android",
            "tablet",
        ),
        (
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
            "Version/17.1 Safari/605.1.15",
            "Safari",
            "Mac OS X",
            "desktop",
        ),
        ("Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0", "Firefox", "Linux", "desktop"),
        ("Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)", "bingbot", None, "bot"),
        (
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/120.0.0.0 "
            "Safari/537.36",
            "HeadlessChrome",
            "Linux",
            "bot",
        ),
        (
            "Mozilla/5.0 (Linux; Android 9; CUBOT P30) AppleWebKit/537.36 (KHTML, like Gecko) "
            "Chrome/120.0.0.0 Mobile Safari/537.36",
            "Chrome Mobile",
            "Android",
            "mobile",
        ),
        ("curl/8.4.0", "curl", None, "other"),
    ],
)
def test_device_types(agent: str, browser: str, os: str | None, device_type: str) -> None:
    parsed = parse_user_agent(agent)
    assert parsed is not None
    assert (parsed["browser"], parsed["os"], parsed["device_type"]) == (browser, os, device_type)
    assert parsed["is_bot"] is (device_type == "bot")


@pytest.mark.parametrize("agent", [None, "", "   ", 42, {"ua": "x"}])
def test_no_user_agent_gives_nothing(agent: object) -> None:
    assert parse_user_agent(agent) is None


# --- campaign and referrer ----------------------------------------------------------------------


def test_campaign_fields_missing_from_the_sdk_come_from_the_page_url() -> None:
    url = "https://shop.example/x?UTM_Source=Google&utm_medium=CPC&utm_campaign=Spring+Sale&utm_term=shoes&q=1"
    assert normalize_campaign({"Source": " Newsletter ", "utm_content": "banner-2", "extra": 7}, url) == {
        "source": "newsletter",
        "content": "banner-2",
        "extra": "7",
        "medium": "cpc",
        "name": "Spring Sale",
        "term": "shoes",
    }
    assert normalize_campaign({"campaign": "Black Friday"}, None) == {"name": "Black Friday"}
    assert normalize_campaign(None, "https://shop.example/?utm_source=&ref=x") is None
    assert normalize_campaign("not a dict", "no url at all") is None


@given(
    st.dictionaries(st.text(max_size=12), st.one_of(st.none(), st.text(max_size=8), st.integers()), max_size=6),
    st.dictionaries(st.sampled_from(["utm_source", "UTM_MEDIUM", "utm_campaign", "utm_term", "x"]), st.text()),
)
def test_campaign_normalisation_is_idempotent_with_lowercase_keys(campaign: dict[str, Any], query) -> None:
    from urllib.parse import urlencode

    once = normalize_campaign(campaign, "https://example.com/?" + urlencode(query))
    assert normalize_campaign(once, None) == once
    if once:
        assert all(key == key.lower() and not key.startswith("utm_") for key in once)


@pytest.mark.parametrize(
    ("referrer", "page", "host", "kind"),
    [
        ("https://www.google.com/search?q=shoes", "https://shop.example/", "google.com", "search"),
        ("https://www.google.co.uk/", "https://shop.example/", "google.co.uk", "search"),
        ("https://www.bing.com/search?q=x", "https://shop.example/", "bing.com", "search"),
        ("https://duckduckgo.com/", "https://shop.example/", "duckduckgo.com", "search"),
        ("https://search.brave.com/search?q=x", None, "search.brave.com", "search"),
        ("https://yandex.com.tr/search", None, "yandex.com.tr", "search"),
        ("https://l.facebook.com/l.php?u=x", "https://shop.example/", "l.facebook.com", "social"),
        ("https://t.co/abc", "https://shop.example/", "t.co", "social"),
        ("https://m.youtube.com/watch", "https://shop.example/", "m.youtube.com", "social"),
        ("https://www.linkedin.com/feed/", "https://shop.example/", "linkedin.com", "social"),
        ("https://shop.example/cart", "https://www.shop.example/checkout", "shop.example", "internal"),
        ("https://blog.example.org/post", "https://shop.example/", "blog.example.org", "other"),
        ("https://google.evil.example/", "https://shop.example/", "google.evil.example", "other"),
        ("https://notgoogle.com/", "https://shop.example/", "notgoogle.com", "other"),
        ("https://fakefacebook.com/", "https://shop.example/", "fakefacebook.com", "other"),
        ("not a url", "https://shop.example/", None, "other"),
        (None, "https://shop.example/", None, "direct"),
        ("", "https://shop.example/", None, "direct"),
    ],
)
def test_referrer_host_and_type(referrer: str | None, page: str | None, host: str | None, kind: str) -> None:
    described = describe_referrer(referrer, page)
    assert (described["host"], described["type"]) == (host, kind)
    assert described["url"] == (referrer or None)


# --- the enrichment step ------------------------------------------------------------------------


class RecordingLocator:
    """A GeoLocator (our own port) that remembers which address it was asked about."""

    source = "recording"

    def __init__(self) -> None:
        self.asked: list[str] = []

    def lookup(self, address: IpAddress) -> dict[str, Any] | None:
        self.asked.append(str(address))
        return {"country_code": "ZZ", "country_name": None, "region": None, "city": None, "source": self.source}


def test_enrich_adds_geo_user_agent_campaign_and_referrer(geo: GeoIP2FastLocator) -> None:
    event = page_event(
        {
            "ip": "8.8.8.8",
            "userAgent": SAFARI_IPHONE,
            "page": {
                "url": "https://shop.example/p?utm_source=Google&utm_medium=cpc",
                "referrer": "https://www.google.com/",
            },
            "campaign": {"Name": "Spring"},
            "geo": {"country_code": "FR"},  # the pipeline owns context.geo
        }
    )
    enriched = Enricher(geo).enrich(event)
    context = enriched.context
    assert context["geo"]["country_code"] == "US"
    assert context["user_agent_parsed"]["device_type"] == "mobile"
    assert context["campaign"] == {"name": "Spring", "source": "google", "medium": "cpc"}
    assert context["referrer"] == {"url": "https://www.google.com/", "host": "google.com", "type": "search"}
    assert context["ip"] == "8.8.8.8"
    assert event.context["geo"] == {"country_code": "FR"} and "user_agent_parsed" not in event.context
    assert enriched.message_id == event.message_id and enriched.timestamp == event.timestamp


def test_geo_comes_from_the_full_ip_and_only_the_anonymised_one_is_stored() -> None:
    locator = RecordingLocator()
    event = page_event({"ip": "81.2.69.160", "user_agent": CHROME_WINDOWS})
    enriched = Enricher(locator).enrich(event, EnrichmentPolicy(anonymize_ip=True))
    assert locator.asked == ["81.2.69.160"]
    assert enriched.context["ip"] == "81.2.69.0" and enriched.context["geo"]["country_code"] == "ZZ"
    assert enriched.context["user_agent_parsed"]["browser"] == "Chrome"
    # Without the policy the address is kept whole.
    assert Enricher(locator).enrich(event).context["ip"] == "81.2.69.160"


def test_an_unparsable_ip_is_dropped_when_the_tenant_wants_anonymisation(geo: GeoIP2FastLocator) -> None:
    event = page_event({"ip": "8.8.8.8, 10.0.0.1"})
    assert "ip" not in Enricher(geo).enrich(event, EnrichmentPolicy(anonymize_ip=True)).context
    assert Enricher(geo).enrich(event).context["ip"] == "8.8.8.8, 10.0.0.1"


def test_private_ips_get_no_geo_and_server_events_get_no_referrer(geo: GeoIP2FastLocator) -> None:
    event = page_event({"ip": "10.0.0.7", "geo": {"country_code": "FR"}}, type="track", event="Order Completed")
    enriched = Enricher(geo).enrich(event)
    assert enriched.context == {"ip": "10.0.0.7"}


def test_page_properties_stand_in_for_context_page(geo: GeoIP2FastLocator) -> None:
    event = page_event(
        {"referrer": {"type": "dataxu", "id": "123"}},
        properties={"url": "https://shop.example/?utm_campaign=Launch", "referrer": "https://t.co/x"},
    )
    context = Enricher(geo).enrich(event).context
    assert context["campaign"] == {"name": "Launch"}
    # A mobile SDK's attribution object keeps its other keys.
    assert context["referrer"] == {"type": "social", "id": "123", "url": "https://t.co/x", "host": "t.co"}


def test_a_page_without_referrer_is_direct_and_no_geo_locator_is_fine() -> None:
    context = Enricher(None).enrich(page_event({"ip": "8.8.8.8", "page": {"url": "https://shop.example/"}})).context
    assert context == {
        "ip": "8.8.8.8",
        "page": {"url": "https://shop.example/"},
        "referrer": {"url": None, "host": None, "type": "direct"},
    }
