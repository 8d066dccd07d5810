"""Enrichment: one pure step that adds geo, parsed user agent, campaign and referrer to an event's context."""

from __future__ import annotations

import functools
from typing import Any

import msgspec

from data_plane.events import Event
from data_plane.pipeline.geo import GeoLocator, anonymize_ip, locate
from data_plane.pipeline.traffic import describe_referrer, normalize_campaign
from data_plane.pipeline.user_agents import parse_user_agent


class EnrichmentPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """Per-tenant choices, taken from the tenant's config."""

    # Store context.ip truncated (IPv4 /24, IPv6 /48); geo is still looked up from the full address.
    anonymize_ip: bool = False


DEFAULT_POLICY = EnrichmentPolicy()


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _string(value: object) -> str | None:
    return value if isinstance(value, str) and value.strip() else None


def page_urls(event: Event) -> tuple[str | None, str | None]:
    """(page URL, referrer URL): ``context.page`` first, then a page event's own properties."""
    page = _dict(event.context.get("page"))
    props = event.properties if event.type == "page" else {}
    return (
        _string(page.get("url")) or _string(props.get("url")),
        _string(page.get("referrer")) or _string(props.get("referrer")),
    )


class Enricher:
    """Adds to ``context`` (keys the pipeline owns; whatever an SDK sent under them is replaced):

    - ``geo``: ``{country_code, country_name, region, city, source}`` from ``context.ip``; absent
      for private, loopback, reserved or unknown addresses.
    - ``user_agent_parsed``: ``{browser, browser_version, os, os_version, device_type,
      device_brand, device_model, is_bot}`` from ``context.user_agent`` (or Segment's ``userAgent``).
    - ``campaign``: normalised (see ``traffic.normalize_campaign``), filled from the page URL.
    - ``referrer``: ``{url, host, type}`` when the event has a page URL or referrer; an SDK's own
      ``context.referrer`` object (mobile attribution) keeps its other keys.

    ``context.ip`` is anonymised last, when the tenant asked for it: geo needs the whole address
    to be accurate, and the full address never leaves this function, which is the usual practice
    (the stored event only ever holds the truncated one).
    """

    def __init__(self, geo: GeoLocator | None, *, cache_size: int = 65_536) -> None:
        self.geo = geo
        # Addresses, pages and referrers repeat across a busy tenant's events: each is worked out
        # once per worker (results are pure functions of their inputs, copied out of the cache).
        self._locate = functools.lru_cache(maxsize=cache_size)(self._locate_uncached)
        self._campaign = functools.lru_cache(maxsize=cache_size)(_url_campaign)
        self._referrer = functools.lru_cache(maxsize=cache_size)(describe_referrer)
        self._agent = functools.lru_cache(maxsize=cache_size)(parse_user_agent)

    def _locate_uncached(self, ip: str) -> dict[str, Any] | None:
        assert self.geo is not None
        return locate(self.geo, ip)

    def enrich(self, event: Event, policy: EnrichmentPolicy = DEFAULT_POLICY) -> Event:
        context = dict(event.context)

        ip = context.get("ip")
        geo = None
        if self.geo is not None and ip is not None:
            geo = self._locate(ip) if isinstance(ip, str) else locate(self.geo, ip)
        _put(context, "geo", dict(geo) if geo is not None else None)

        agent = context.get("user_agent", context.get("userAgent"))
        parsed = self._agent(agent) if isinstance(agent, str) else None
        _put(context, "user_agent_parsed", dict(parsed) if parsed is not None else None)

        url, referrer = page_urls(event)
        sent = context.get("campaign")
        if sent is None:
            campaign = self._campaign(url)
            _put(context, "campaign", dict(campaign) if campaign is not None else None)
        else:
            _put(context, "campaign", normalize_campaign(sent, url))
        if url is not None or referrer is not None:
            context["referrer"] = {**_dict(context.get("referrer")), **self._referrer(referrer, url)}

        if policy.anonymize_ip and "ip" in context:
            _put(context, "ip", anonymize_ip(ip))
        return msgspec.structs.replace(event, context=context)


def _url_campaign(url: str | None) -> dict[str, Any] | None:
    return normalize_campaign(None, url)


def _put(context: dict[str, Any], key: str, value: object) -> None:
    if value is None:
        context.pop(key, None)
    else:
        context[key] = value
