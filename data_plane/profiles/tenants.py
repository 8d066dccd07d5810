"""Where one tenant's profiles live: a checked tenant id mapped to its SQLite file or PostgreSQL schema."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

# The lake's alphabet (``data_plane.lake.layout``), so any tenant the cell stores events for has profiles too.
_TENANT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
# Tenant ids that are already plain, lower-case PostgreSQL identifiers map to ``t_{id}`` unchanged.
_PLAIN = re.compile(r"[a-z0-9_]{1,61}")
PROFILES_FILE = "profiles.sqlite"


def check_tenant_id(tenant_id: object) -> str:
    """Return ``tenant_id`` if it is usable as a path segment and a schema name; raise ``ValueError`` otherwise.

    NOTE: no quote, dot, slash, space or NUL can pass, so no tenant id can reach into another
    tenant's folder or schema, or into SQL text.
    """
    if not isinstance(tenant_id, str) or not _TENANT_ID.fullmatch(tenant_id):
        raise ValueError(f"not a usable tenant id: {tenant_id!r}")
    return tenant_id


def schema_name(tenant_id: str) -> str:
    """The tenant's PostgreSQL schema: ``t_{tenant_id}`` when that is a plain lower-case identifier.

    Other ids (upper case, ``-``, or too long for 63 bytes) map to ``tx_{readable part}_{hash}``;
    the ``tx_`` prefix can never be produced by the plain form (which always starts ``t_``), and
    the hash keeps ``Acme`` and ``acme`` apart, so the mapping is one-to-one.
    """
    check_tenant_id(tenant_id)
    if _PLAIN.fullmatch(tenant_id):
        return f"t_{tenant_id}"
    readable = re.sub(r"[^a-z0-9_]", "_", tenant_id.lower())[:24]
    digest = hashlib.blake2b(tenant_id.encode(), digest_size=16).hexdigest()
    return f"tx_{readable}_{digest}"


def tenant_dir(root: Path, tenant_id: str) -> Path:
    """``{root}/tenants/{tenant_id}``: the folder other cell stores may share for this tenant."""
    return root / "tenants" / check_tenant_id(tenant_id)


def sqlite_path(root: Path, tenant_id: str) -> Path:
    """``{root}/tenants/{tenant_id}/profiles.sqlite``.

    CAUTION: on a case-insensitive file system (macOS default) ``Acme`` and ``acme`` share a folder;
    the control plane's ids are lower case, and PostgreSQL keeps them apart either way.
    """
    return tenant_dir(root, tenant_id) / PROFILES_FILE
