"""Small text helpers."""

from __future__ import annotations

import re
import unicodedata

_NON_SLUG = re.compile(r"[^a-z0-9]+")


def slugify(value: str, max_length: int = 63) -> str:
    """``"Acme Café, Inc."`` → ``"acme-cafe-inc"`` (DNS-label safe)."""
    ascii_value = unicodedata.normalize("NFKD", value).encode("ascii", "ignore").decode()
    return _NON_SLUG.sub("-", ascii_value.lower()).strip("-")[:max_length].rstrip("-")
