"""IP addresses: country (and city, with MaxMind) lookup from offline databases, and anonymisation."""

from __future__ import annotations

import ipaddress
import threading
from pathlib import Path
from typing import Any, Protocol

from kernel.errors import ConfigError

MMDB_SETTING = "LIVORA_GEOIP_MMDB_PATH"
# Country database covering IPv4 and IPv6, shipped inside the geoip2fast wheel (no download).
GEOIP2FAST_FILE = "geoip2fast-ipv6.dat.gz"

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_ip(value: object) -> IpAddress | None:
    """The address, with IPv4-mapped IPv6 (``::ffff:1.2.3.4``) unwrapped to IPv4; ``None`` if not an IP."""
    if not isinstance(value, str):
        return None
    try:
        address = ipaddress.ip_address(value.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def anonymize_ip(value: object) -> str | None:
    """IPv4 with the last octet zeroed (/24), IPv6 with the last 80 bits zeroed (/48).

    Anything that does not parse as an IP gives ``None``: when a tenant asked for anonymisation
    we drop a value we cannot vouch for rather than store it whole. IPv4-mapped IPv6 comes back
    as plain IPv4.
    """
    address = parse_ip(value)
    if address is None:
        return None
    prefix = 24 if address.version == 4 else 48
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False).network_address)


class GeoLocator(Protocol):
    """Looks up where a public IP is; ``None`` when the database does not know it."""

    source: str

    def lookup(self, address: IpAddress) -> dict[str, Any] | None: ...


def _geo(
    source: str, country_code: str, country_name: str | None, region: str | None = None, city: str | None = None
) -> dict[str, Any]:
    # Stable keys (None when unknown) so lake columns do not depend on which database answered.
    return {
        "country_code": country_code,
        "country_name": country_name or None,
        "region": region or None,
        "city": city or None,
        "source": source,
    }


_geoip2fast_lock = threading.Lock()
_geoip2fast: Any = None


class GeoIP2FastLocator:
    """Country lookups from the database shipped in the ``geoip2fast`` package.

    CAUTION: geoip2fast keeps its tables in module globals, so a process can hold one of its
    data files at a time; every locator shares one loaded instance (about 0.3 s to load).
    """

    source = "geoip2fast"

    def __init__(self) -> None:
        global _geoip2fast
        with _geoip2fast_lock:
            if _geoip2fast is None:
                from geoip2fast import GeoIP2Fast

                _geoip2fast = GeoIP2Fast(geoip2fast_data_file=GEOIP2FAST_FILE)
        self._db = _geoip2fast

    def lookup(self, address: IpAddress) -> dict[str, Any] | None:
        found = self._db.lookup(str(address))
        code = found.country_code
        # geoip2fast answers "--" for private or unknown networks and "" for invalid input.
        if len(code) != 2 or not code.isalpha() or found.is_private:
            return None
        return _geo(self.source, code.upper(), found.country_name)


class MaxMindLocator:
    """Country, region and city from a MaxMind (GeoLite2/GeoIP2) ``.mmdb`` file; needs ``maxminddb``."""

    source = "maxmind"

    def __init__(self, path: str) -> None:
        try:
            import maxminddb
        except ImportError:
            raise ConfigError(
                MMDB_SETTING,
                f"a MaxMind database is configured ({path}) but the 'maxminddb' package is not installed; "
                "install it or unset the setting to use the bundled geoip2fast country database",
            ) from None
        if not Path(path).is_file():
            raise ConfigError(MMDB_SETTING, f"no MaxMind database file at {path}")
        try:
            self._reader = maxminddb.open_database(path)
        except Exception as exc:  # the reader raises its own InvalidDatabaseError, ValueError or OSError
            raise ConfigError(MMDB_SETTING, f"cannot open MaxMind database {path}: {exc}") from None

    def lookup(self, address: IpAddress) -> dict[str, Any] | None:
        try:
            record = self._reader.get(str(address))
        except ValueError:  # an IPv6 address asked of an IPv4-only database
            return None
        if not isinstance(record, dict):
            return None
        # Anycast and some EU ranges only carry the registering country.
        country = record.get("country") or record.get("registered_country") or {}
        code = country.get("iso_code")
        if not code:
            return None
        subdivisions = record.get("subdivisions") or [{}]
        return _geo(
            self.source,
            code,
            (country.get("names") or {}).get("en"),
            subdivisions[0].get("iso_code"),
            ((record.get("city") or {}).get("names") or {}).get("en"),
        )


def open_geo_locator(mmdb_path: str | None = None) -> GeoLocator:
    """MaxMind when ``LIVORA_GEOIP_MMDB_PATH`` is set, else the bundled geoip2fast database."""
    return MaxMindLocator(mmdb_path) if mmdb_path else GeoIP2FastLocator()


def locate(locator: GeoLocator, value: object) -> dict[str, Any] | None:
    """Geo for a public address; private, loopback, reserved and unparsable ones get none."""
    address = parse_ip(value)
    if address is None or not address.is_global:
        return None
    return locator.lookup(address)
