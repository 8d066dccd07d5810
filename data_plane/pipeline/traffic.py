"""Where a visit came from: UTM campaign fields and the referrer's host and type."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl, urlsplit

CAMPAIGN_FIELDS = ("source", "medium", "name", "term", "content")
# Grouping reports by source and medium only works when "Google" and "google " are one value.
_FOLDED_FIELDS = {"source", "medium"}
_MAX_VALUE = 500

# Search engines live on many country domains (google.co.uk, yandex.com.tr): match the brand label
# followed by a public suffix of one or two labels, so "google.evil.example" is not one.
_SEARCH = re.compile(
    r"(?:^|\.)(?:google|bing|yahoo|yandex|baidu|duckduckgo|ecosia|naver|seznam|qwant|startpage|ask)"
    r"\.(?:(?:co|com|ne|or|ac|org|gov)\.)?[a-z]{2,}$"
)
_SEARCH_HOSTS = {"search.brave.com", "search.aol.com", "kagi.com"}
# Registered domains (a host matches itself and its subdomains): l.facebook.com, m.youtube.com.
_SOCIAL_DOMAINS = {
    "facebook.com", "fb.com", "fb.me", "instagram.com", "twitter.com", "x.com", "t.co", "linkedin.com",
    "lnkd.in", "reddit.com", "pinterest.com", "youtube.com", "youtu.be", "tiktok.com", "snapchat.com",
    "threads.net", "mastodon.social", "bsky.app", "vk.com", "weibo.com", "quora.com", "tumblr.com",
    "whatsapp.com", "telegram.org", "t.me", "discord.com",
}  # fmt: skip


def _clean(value: object) -> str | None:
    if value is None or isinstance(value, bool | dict | list):
        return None
    text = str(value).strip()[:_MAX_VALUE]
    return text or None


def _campaign_key(key: str) -> str:
    key = key.strip().lower()
    key = key.removeprefix("utm_")
    return "name" if key == "campaign" else key


def normalize_campaign(campaign: object, page_url: str | None) -> dict[str, Any] | None:
    """``context.campaign`` with lowercase keys (``utm_`` prefix dropped, ``campaign`` -> ``name``),
    each of source/medium/name/term/content the SDK left out filled from the page URL's ``utm_*``
    query parameters. Source and medium are lowercased. ``None`` when there is nothing.
    """
    result: dict[str, Any] = {}
    if isinstance(campaign, dict):
        for key, value in campaign.items():
            if not isinstance(key, str):
                continue
            name, cleaned = _campaign_key(key), _clean(value)
            if cleaned is not None and name not in result:
                result[name] = cleaned
    if page_url:
        for key, value in parse_qsl(urlsplit(page_url).query, keep_blank_values=False):
            if not key.lower().startswith("utm_"):
                continue
            name, cleaned = _campaign_key(key), _clean(value)
            if name in CAMPAIGN_FIELDS and cleaned is not None and name not in result:
                result[name] = cleaned
    for name in _FOLDED_FIELDS & result.keys():
        if isinstance(result[name], str):
            result[name] = result[name].lower()
    return result or None


def host_of(url: str | None) -> str | None:
    """Lowercase host without a leading ``www.``; ``None`` when the URL has none."""
    if not url:
        return None
    try:
        host = urlsplit(url.strip()).hostname
    except ValueError:  # e.g. an unbalanced IPv6 bracket
        return None
    return host.removeprefix("www.") if host else None


def _is_social(host: str) -> bool:
    return any(host == domain or host.endswith("." + domain) for domain in _SOCIAL_DOMAINS)


def referrer_type(referrer_host: str | None, page_host: str | None) -> str:
    """direct (no referrer), internal (same host as the page), search, social or other."""
    if not referrer_host:
        return "direct"
    if page_host and referrer_host == page_host:
        return "internal"
    if referrer_host in _SEARCH_HOSTS or _SEARCH.search(referrer_host):
        return "search"
    if _is_social(referrer_host):
        return "social"
    return "other"


def describe_referrer(referrer_url: str | None, page_url: str | None) -> dict[str, Any]:
    """``{"url", "host", "type"}`` for the referrer of a page (``url``/``host`` ``None`` when direct).

    NOTE: "internal" compares hosts after dropping ``www.``; shop.example.com referring to
    example.com is "other", because telling sites apart needs the public-suffix list.
    """
    url = _clean(referrer_url)
    host = host_of(url)
    kind = "direct" if url is None else referrer_type(host, host_of(page_url)) if host else "other"
    return {"url": url, "host": host, "type": kind}
