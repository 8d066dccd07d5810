"""User-agent strings parsed into browser, OS and device, with ua-parser's bundled regexes."""

from __future__ import annotations

import re
import threading
from typing import Any

import ua_parser

_CACHE_SIZE = 10_000
_lock = threading.Lock()
_parser: ua_parser.Parser | None = None

# ua-parser tags crawlers it knows as device "Spider"; the regex catches the many it does not.
# NOTE: "bot" alone is not enough: phone brands such as CUBOT end in it.
_BOT = re.compile(r"bot[/_;-]|crawl|spider|slurp|headless|\+https?://", re.IGNORECASE)
_DESKTOP_OS = {"Windows", "Mac OS X", "Linux", "Ubuntu", "Chrome OS", "Fedora", "Debian", "FreeBSD", "OpenBSD"}
_TABLET = re.compile(r"ipad|tablet|kindle|silk|playbook", re.IGNORECASE)


def _get_parser() -> ua_parser.Parser:
    # NOTE: our own parser, not ua_parser's global one, for a cache sized for a busy worker: the
    # pure-Python resolver takes milliseconds per new string, a cache hit microseconds. It picks
    # a faster resolver by itself when google-re2 or ua-parser-rs is installed.
    global _parser
    with _lock:
        if _parser is None:
            resolver = ua_parser.BestAvailableResolver(ua_parser.load_builtins())
            _parser = ua_parser.Parser(ua_parser.CachingResolver(resolver, ua_parser.Cache(_CACHE_SIZE)))
        return _parser


def _version(*parts: str | None) -> str | None:
    present = []
    for part in parts:
        if part is None:
            break
        present.append(part)
    return ".".join(present) or None


def parse_user_agent(value: object) -> dict[str, Any] | None:
    """Browser, OS and device of a user-agent string; ``None`` for an empty or non-string value.

    ``device_type`` is one of desktop, mobile, tablet, bot, other. Keys are always all present
    (``None`` when unknown) so lake columns are stable.
    """
    if not isinstance(value, str) or not value.strip():
        return None
    result = _get_parser().parse(value)
    browser, os, device = result.user_agent, result.os, result.device
    is_bot = (device is not None and device.family == "Spider") or bool(_BOT.search(value))
    os_family = os.family if os else None
    if is_bot:
        device_type = "bot"
    elif _TABLET.search(value) or (device is not None and "Tablet" in (device.brand or "")):
        device_type = "tablet"
    elif os_family == "Android" and "Mobile" not in value:
        # Android tablets leave "Mobile" out of the string (Google's own convention).
        device_type = "tablet"
    elif os_family in {"iOS", "Android"} or "Mobile" in value:
        device_type = "mobile"
    elif os_family in _DESKTOP_OS:
        device_type = "desktop"
    else:
        device_type = "other"
    brand = device.brand if device and device.brand and not device.brand.startswith(("Generic", "Spider")) else None
    return {
        "browser": browser.family if browser else None,
        "browser_version": _version(browser.major, browser.minor, browser.patch) if browser else None,
        "os": os_family,
        "os_version": _version(os.major, os.minor, os.patch) if os else None,
        "device_type": device_type,
        "device_brand": brand,
        "device_model": device.model if device and brand else None,
        "is_bot": is_bot,
    }
