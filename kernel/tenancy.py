"""Fail-closed tenant scope: tenant-scoped ORM queries without a tenant in context raise."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Final

from sqlalchemy import String, event
from sqlalchemy.orm import Mapped, ORMExecuteState, Session, mapped_column, with_loader_criteria
from sqlalchemy.sql.util import find_tables


class TenantScopeError(RuntimeError):
    """A tenant-scoped table was touched with no tenant in scope, or across tenants."""


class _Unscoped:
    def __repr__(self) -> str:
        return "<dangerously unscoped>"


UNSCOPED: Final = _Unscoped()
_scope: ContextVar[str | _Unscoped | None] = ContextVar("livora_tenant_scope", default=None)


class TenantScoped:
    """Mixin for tables whose rows belong to one tenant.

    A row's ``tenant_id`` may be NULL only for platform-level rows (e.g. an audit entry of
    an ops sign-in); those are visible only to ``dangerously_unscoped`` code.
    """

    tenant_id: Mapped[str | None] = mapped_column(String(40), index=True)


def current_tenant() -> str | None:
    """The tenant in scope, or None when unscoped or no scope is set."""
    value = _scope.get()
    return value if isinstance(value, str) else None


@contextmanager
def tenant_scope(tenant_id: str) -> Iterator[str]:
    """Limit every ORM query on tenant-scoped tables to ``tenant_id`` for the block."""
    if not tenant_id:
        raise TenantScopeError("tenant_scope() needs a tenant id")
    token = _scope.set(tenant_id)
    try:
        yield tenant_id
    finally:
        _scope.reset(token)


@contextmanager
def dangerously_unscoped() -> Iterator[None]:
    """Lift the tenant filter for the block: for ops views across tenants and token lookups.

    CAUTION: code inside sees every tenant's rows; it must filter or authorize on its own.
    """
    token = _scope.set(UNSCOPED)
    try:
        yield
    finally:
        _scope.reset(token)


def _scoped_tables() -> set[Any]:
    tables: set[Any] = set()
    pending: list[type] = [TenantScoped]
    while pending:
        for sub in pending.pop().__subclasses__():
            pending.append(sub)
            if (table := getattr(sub, "__table__", None)) is not None:
                tables.add(table)
    return tables


def _touches_tenant_scoped(state: ORMExecuteState) -> bool:
    """True when a tenant-scoped table appears anywhere: columns, joins, subqueries, CTEs."""
    if any(isinstance(m.class_, type) and issubclass(m.class_, TenantScoped) for m in state.all_mappers):
        return True
    scoped = _scoped_tables()
    found = find_tables(state.statement, include_joins=True, include_aliases=True, include_crud=True)
    return any(table in scoped for table in found)


def _criteria(tenant_id: str) -> Any:
    return with_loader_criteria(TenantScoped, lambda cls: cls.tenant_id == tenant_id, include_aliases=True)


def install_tenant_guard(session_class: type[Session] = Session) -> None:
    """Attach the scope hooks to every ORM session (idempotent)."""
    if event.contains(session_class, "do_orm_execute", _on_execute):
        return
    event.listen(session_class, "do_orm_execute", _on_execute)
    event.listen(session_class, "before_flush", _on_flush)


def _on_execute(state: ORMExecuteState) -> None:
    if not (state.is_select or state.is_update or state.is_delete):
        return
    if state.is_relationship_load or state.is_column_load:
        # The criteria added to the parent statement propagate to these loads.
        return
    if not _touches_tenant_scoped(state):
        return
    scope = _scope.get()
    if scope is UNSCOPED:
        return
    if scope is None:
        raise TenantScopeError("query on a tenant-scoped table with no tenant in scope")
    assert isinstance(scope, str)
    state.statement = state.statement.options(_criteria(scope))


def _on_flush(session: Session, _context: Any, _instances: Any) -> None:
    scope = _scope.get()
    for obj in [*session.new, *session.dirty]:
        if not isinstance(obj, TenantScoped) or scope is UNSCOPED:
            continue
        if scope is None:
            raise TenantScopeError(f"writing {type(obj).__name__} with no tenant in scope")
        if obj.tenant_id is None and obj in session.new:
            obj.tenant_id = scope
        elif obj.tenant_id != scope:
            raise TenantScopeError(f"writing {type(obj).__name__} of tenant {obj.tenant_id} inside tenant {scope}")
