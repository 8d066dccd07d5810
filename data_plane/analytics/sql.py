"""SQL fragments over the warehouse's ``events`` table: property filters, event conditions, breakdowns."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from data_plane.analytics.schemas import Filter
from kernel.errors import ValidationFailed

NUMERIC = "('BIGINT', 'UBIGINT', 'DOUBLE')"
Fragment = tuple[str, list[Any]]


def path(prop: str) -> str:
    """A JSON path to the top-level property ``prop`` (any name without quotes or backslashes)."""
    return f'$."{prop}"'


def check_filter(item: Filter) -> None:
    value, op = item.value, item.op
    number = isinstance(value, int | float) and not isinstance(value, bool)
    wrong = (
        (op in ("equals", "not_equals") and value is None)
        or (op == "contains" and not isinstance(value, str))
        or (op in ("gt", "lt") and not number)
        or (op in ("is_set", "is_not_set") and value is not None)
    )
    if wrong:
        wanted = {
            "equals": "a string, number or boolean",
            "not_equals": "a string, number or boolean",
            "contains": "a string",
            "gt": "a number",
            "lt": "a number",
            "is_set": "no value",
            "is_not_set": "no value",
        }[op]
        raise ValidationFailed(
            f"The filter on {item.property!r} with `{op}` takes {wanted}.",
            code="invalid_filter",
            errors=[{"property": item.property, "op": op, "message": f"`{op}` takes {wanted}"}],
        )


def _equals(prop: str, value: str | float | bool) -> Fragment:
    where = path(prop)
    if isinstance(value, bool):
        return (
            "(json_type(properties, ?) = 'BOOLEAN' AND json_extract_string(properties, ?) = ?)",
            [where, where, "true" if value else "false"],
        )
    if isinstance(value, str):
        return (
            "(json_type(properties, ?) = 'VARCHAR' AND json_extract_string(properties, ?) = ?)",
            [where, where, value],
        )
    return (
        f"(json_type(properties, ?) IN {NUMERIC} AND TRY_CAST(json_extract(properties, ?) AS DOUBLE) = ?)",
        [where, where, float(value)],
    )


def filter_sql(item: Filter) -> Fragment:
    check_filter(item)
    where = path(item.property)
    op, value = item.op, item.value
    if op == "equals":
        assert value is not None
        return _equals(item.property, value)
    if op == "not_equals":
        assert value is not None
        sql, params = _equals(item.property, value)
        return f"(NOT coalesce({sql}, false))", params
    if op == "contains":
        return (
            "(json_type(properties, ?) = 'VARCHAR' AND contains(json_extract_string(properties, ?), ?))",
            [where, where, value],
        )
    if op in ("gt", "lt"):
        sign = ">" if op == "gt" else "<"
        return (
            f"(json_type(properties, ?) IN {NUMERIC} AND TRY_CAST(json_extract(properties, ?) AS DOUBLE) {sign} ?)",
            [where, where, float(value)],  # type: ignore[arg-type]
        )
    present = "(coalesce(json_type(properties, ?), 'NULL') <> 'NULL')"
    return (present if op == "is_set" else f"(NOT {present})"), [where]


def all_of(filters: Sequence[Filter], *, name: str | None = None) -> Fragment:
    """The events named ``name`` (any when None) that meet every filter; always a boolean, never NULL."""
    parts: list[str] = []
    params: list[Any] = []
    if name is not None:
        parts.append("(name = ?)")
        params.append(name)
    for item in filters:
        sql, more = filter_sql(item)
        parts.append(f"coalesce({sql}, false)")
        params += more
    return (" AND ".join(parts) if parts else "true"), params


def breakdown_sql(prop: str) -> Fragment:
    """The property as text: strings as they are, other JSON values as JSON text, NULL when unset or null."""
    where = path(prop)
    return (
        "(CASE WHEN coalesce(json_type(properties, ?), 'NULL') = 'NULL' THEN NULL "
        "ELSE json_extract_string(properties, ?) END)",
        [where, where],
    )


def number_sql(prop: str) -> Fragment:
    """The property as a DOUBLE when it is a JSON number, else NULL."""
    where = path(prop)
    return (
        f"(CASE WHEN json_type(properties, ?) IN {NUMERIC} THEN TRY_CAST(json_extract(properties, ?) AS DOUBLE) END)",
        [where, where],
    )
