"""Enrichment: one pure step that adds geo, parsed user agent, campaign and referrer to an event's context."""

from __future__ import annotations

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

    def __init__(self, geo: GeoLocator | None) -> None:
        self.geo = geo

    def enrich(self, event: Event, policy: EnrichmentPolicy = DEFAULT_POLICY) -> Event:
        context = dict(event.context)

        ip = context.get("ip")
        geo = locate(self.geo, ip) if self.geo is not None and ip is not None else None
        _put(context, "geo", geo)

        agent = context.get("user_agent", context.get("userAgent"))
        _put(context, "user_agent_parsed", parse_user_agent(agent))

        url, referrer = page_urls(event)
        _put(context, "campaign", normalize_campaign(context.get("campaign"), url))
        if url is not None or referrer is not None:
            context["referrer"] = {**_dict(context.get("referrer")), **describe_referrer(referrer, url)}

        if policy.anonymize_ip and "ip" in context:
            _put(context, "ip", anonymize_ip(ip))
        return msgspec.structs.replace(event, context=context)


def _put(context: dict[str, Any], key: str, value: object) -> None:
    if value is None:
        context.pop(key, None)
    else:
        context[key] = value
