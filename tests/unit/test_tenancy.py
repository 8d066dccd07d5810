"""The fail-closed tenant scope (kernel/tenancy.py) against real SQLite and PostgreSQL databases and the real models."""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import delete, exists, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import aliased

from control_plane.db.models import ApiKey, AuditEntry, Invite, Membership, Tenant, User
from kernel.db import create_engine, create_sessionmaker, utcnow
from kernel.tenancy import (
    TenantScopeError,
    current_tenant,
    dangerously_unscoped,
    install_tenant_guard,
    tenant_scope,
)

Run = Callable[[Awaitable[Any]], Any]

A, B = "ten_a", "ten_b"
# usr_both is a member of A and B, usr_a only of A, usr_b only of B.
MEMBERSHIPS = {
    "mem_a_both": (A, "usr_both"),
    "mem_a_only": (A, "usr_a"),
    "mem_b_both": (B, "usr_both"),
    "mem_b_only": (B, "usr_b"),
}
A_MEMBERSHIPS = {m for m, (t, _) in MEMBERSHIPS.items() if t == A}
# One invite per tenant, and one platform invite (tenant_id NULL) that only unscoped code may see.
INVITES = {"inv_a": A, "inv_b": B, "inv_platform": None}


@dataclass
class Db:
    sessionmaker: async_sessionmaker[AsyncSession]
    run: Run

    def session(self) -> AsyncSession:
        return self.sessionmaker()

    def all(self, statement: Any, scope: AbstractContextManager[Any] | None = None) -> list[tuple[Any, ...]]:
        """Rows of ``statement`` run under ``scope`` (default: no scope at all)."""

        async def go() -> list[tuple[Any, ...]]:
            async with self.session() as session:
                with scope or nullcontext():
                    return [tuple(row) for row in (await session.execute(statement)).all()]

        return self.run(go())

    def ids(self, model: Any) -> set[str]:
        return {row[0] for row in self.all(select(model.id), dangerously_unscoped())}


def _tenant(tenant_id: str) -> Tenant:
    return Tenant(
        id=tenant_id,
        name=f"Tenant {tenant_id}",
        slug=tenant_id.replace("_", "-"),
        plan="free",
        deployment_pattern="B",
        region="eu-west-1",
        template="base",
        status="active",
    )


def _invite(invite_id: str, tenant_id: str | None) -> Invite:
    return Invite(
        id=invite_id,
        tenant_id=tenant_id,
        email=f"{invite_id}@example.com",
        role="viewer",
        token_hash=invite_id.ljust(64, "0"),
        expires_at=utcnow() + dt.timedelta(days=1),
    )


@pytest.fixture
def db(database_url: str, aio: Run) -> Iterator[Db]:
    """Two tenants, three users, four memberships and three invites, written with the guard installed."""
    install_tenant_guard()
    engine = create_engine(database_url)
    sessionmaker = create_sessionmaker(engine)

    async def seed() -> None:
        async with sessionmaker() as session:
            with dangerously_unscoped():
                session.add_all([_tenant(A), _tenant(B)])
                session.add_all(User(id=u, email=f"{u}@example.com") for u in ("usr_both", "usr_a", "usr_b"))
                await session.flush()
                session.add_all(
                    Membership(id=m, tenant_id=t, user_id=u, role="viewer") for m, (t, u) in MEMBERSHIPS.items()
                )
                session.add_all(_invite(i, t) for i, t in INVITES.items())
                await session.commit()

    aio(seed())
    yield Db(sessionmaker, aio)
    aio(engine.dispose())


# --- no scope: fail closed ------------------------------------------------------------------------

WITHOUT_SCOPE = {
    "select entity": lambda: select(Membership),
    "select column": lambda: select(Membership.id),
    "aggregate": lambda: select(func.count(Membership.id)),
    "filter by id": lambda: select(Membership).where(Membership.id == "mem_a_only"),
    "join selecting both": lambda: select(User.id, Membership.id).join(Membership, Membership.user_id == User.id),
    "nullable tenant_id table": lambda: select(Invite),
    "orm update": lambda: update(Membership).values(role="admin"),
    "orm delete": lambda: delete(Membership),
}


@pytest.mark.parametrize("statement", WITHOUT_SCOPE.values(), ids=WITHOUT_SCOPE.keys())
def test_a_tenant_scoped_query_without_a_scope_raises(db: Db, statement: Callable[[], Any]) -> None:
    with pytest.raises(TenantScopeError):
        db.all(statement())
    assert db.ids(Membership) == set(MEMBERSHIPS), "a refused update/delete still changed rows"


def test_get_by_primary_key_without_a_scope_raises(db: Db) -> None:
    async def go() -> None:
        async with db.session() as session:
            await session.get(Membership, "mem_a_only")

    with pytest.raises(TenantScopeError):
        db.run(go())


def test_writing_a_tenant_scoped_row_without_a_scope_raises(db: Db) -> None:
    async def go() -> None:
        async with db.session() as session:
            session.add(Membership(id="mem_new", tenant_id=A, user_id="usr_b", role="viewer"))
            await session.flush()

    with pytest.raises(TenantScopeError):
        db.run(go())
    assert "mem_new" not in db.ids(Membership)


# --- inside tenant_scope(A): only A's rows ---------------------------------------------------------------


def test_select_sees_only_the_scoped_tenants_rows(db: Db) -> None:
    rows = db.all(select(Membership.id, Membership.tenant_id), tenant_scope(A))
    assert {r[0] for r in rows} == A_MEMBERSHIPS
    assert {r[1] for r in rows} == {A}
    assert db.all(select(func.count(Membership.id)), tenant_scope(A)) == [(len(A_MEMBERSHIPS),)]


def test_entities_come_back_only_for_the_scoped_tenant(db: Db) -> None:
    async def go() -> list[Membership]:
        async with db.session() as session:
            with tenant_scope(A):
                return list((await session.scalars(select(Membership))).all())

    loaded = db.run(go())
    assert {m.id for m in loaded} == A_MEMBERSHIPS
    assert {m.tenant_id for m in loaded} == {A}


def test_platform_rows_with_a_null_tenant_are_invisible_in_a_scope(db: Db) -> None:
    assert db.all(select(Invite.id), tenant_scope(A)) == [("inv_a",)]
    assert db.ids(Invite) == set(INVITES)


def test_another_tenants_row_is_not_found_by_filter_or_by_key(db: Db) -> None:
    assert db.all(select(Membership).where(Membership.id == "mem_b_only"), tenant_scope(A)) == []
    assert db.all(select(Membership.id).where(Membership.tenant_id == B), tenant_scope(A)) == []

    async def get() -> tuple[Any, Any]:
        async with db.session() as session:
            with tenant_scope(A):
                return await session.get(Membership, "mem_b_only"), await session.get(Membership, "mem_a_only")

    foreign, own = db.run(get())
    assert foreign is None
    assert own is not None and own.tenant_id == A


def test_joins_from_global_tables_are_limited_to_the_scope(db: Db) -> None:
    inner = select(User.id, Membership.id).join(Membership, Membership.user_id == User.id)
    assert set(db.all(inner, tenant_scope(A))) == {("usr_both", "mem_a_both"), ("usr_a", "mem_a_only")}
    outer = select(User.id, Membership.id).outerjoin(Membership, Membership.user_id == User.id)
    assert set(db.all(outer, tenant_scope(A))) == {
        ("usr_both", "mem_a_both"),
        ("usr_a", "mem_a_only"),
        ("usr_b", None),
    }


def test_joins_between_tenant_scoped_tables_and_aliases_are_limited_to_the_scope(db: Db) -> None:
    mine, other = aliased(Membership), aliased(Membership)
    # The same user's membership in another tenant: B's row must not join in, through either alias.
    across = (
        select(mine.id, other.id).join(other, mine.user_id == other.user_id).where(mine.tenant_id != other.tenant_id)
    )
    assert db.all(across, tenant_scope(A)) == []
    assert len(db.all(across, dangerously_unscoped())) == 2
    same = select(mine.id, other.id).join(other, mine.user_id == other.user_id)
    assert set(db.all(same, tenant_scope(A))) == {(m, m) for m in A_MEMBERSHIPS}
    invites = select(Membership.id, Invite.id).join(Invite, Invite.role == Membership.role)
    assert {r[1] for r in db.all(invites, tenant_scope(A))} == {"inv_a"}


def test_orm_update_and_delete_touch_only_the_scoped_tenants_rows(db: Db) -> None:
    async def go() -> tuple[int, int]:
        async with db.session() as session:
            with tenant_scope(A):
                updated = await session.execute(update(Membership).values(role="admin"))
                # usr_both is in both tenants: only A's membership may go.
                deleted = await session.execute(delete(Membership).where(Membership.user_id == "usr_both"))
                await session.commit()
                return updated.rowcount, deleted.rowcount

    assert db.run(go()) == (2, 1)
    rows = set(db.all(select(Membership.id, Membership.role), dangerously_unscoped()))
    assert rows == {("mem_a_only", "admin"), ("mem_b_both", "viewer"), ("mem_b_only", "viewer")}


def test_dangerously_unscoped_sees_every_tenant(db: Db) -> None:
    assert {r[0] for r in db.all(select(Membership.id), dangerously_unscoped())} == set(MEMBERSHIPS)
    assert {r[0] for r in db.all(select(Invite.id), dangerously_unscoped())} == set(INVITES)
    assert db.all(select(func.count(Membership.id)).where(Membership.tenant_id == B), dangerously_unscoped()) == [(2,)]


# --- writes inside a scope -----------------------------------------------------------------------------


def test_flushing_a_new_row_of_another_tenant_raises(db: Db) -> None:
    async def go() -> None:
        async with db.session() as session:
            with tenant_scope(A):
                session.add(Membership(id="mem_smuggled", tenant_id=B, user_id="usr_a", role="owner"))
                await session.flush()

    with pytest.raises(TenantScopeError, match=B):
        db.run(go())
    assert "mem_smuggled" not in db.ids(Membership)


def test_moving_a_loaded_row_to_another_tenant_raises(db: Db) -> None:
    async def go() -> None:
        async with db.session() as session:
            with tenant_scope(A):
                membership = (await session.scalars(select(Membership).where(Membership.id == "mem_a_only"))).one()
                membership.tenant_id = B
                await session.flush()

    with pytest.raises(TenantScopeError):
        db.run(go())
    assert db.all(select(Membership.tenant_id).where(Membership.id == "mem_a_only"), dangerously_unscoped()) == [(A,)]


def test_a_new_row_without_tenant_id_gets_the_scopes_tenant(db: Db) -> None:
    async def go() -> None:
        async with db.session() as session:
            with tenant_scope(A):
                session.add(Membership(id="mem_stamped", user_id="usr_b", role="viewer"))
                session.add(_invite("inv_stamped", None))
                session.add(
                    ApiKey(id="key_stamped", name="k", prefix="lvk_x", secret_hash="s" * 64, scopes=["tenant:read"])
                )
                session.add(AuditEntry(id="aud_stamped", actor_type="system", action="test.done", outcome="success"))
                await session.commit()

    db.run(go())
    for model, row_id in (
        (Membership, "mem_stamped"),
        (Invite, "inv_stamped"),
        (ApiKey, "key_stamped"),
        (AuditEntry, "aud_stamped"),
    ):
        assert db.all(select(model.tenant_id).where(model.id == row_id), dangerously_unscoped()) == [(A,)], model


def test_a_new_row_of_the_scoped_tenant_is_written(db: Db) -> None:
    async def go() -> None:
        async with db.session() as session:
            with tenant_scope(B):
                session.add(Membership(id="mem_b_new", tenant_id=B, user_id="usr_a", role="viewer"))
                await session.commit()

    db.run(go())
    assert ("mem_b_new",) in db.all(select(Membership.id), tenant_scope(B))
    assert ("mem_b_new",) not in db.all(select(Membership.id), tenant_scope(A))


# --- global tables need no scope ---------------------------------------------------------------------


def test_global_tables_work_without_a_scope(db: Db) -> None:
    assert current_tenant() is None
    assert {r[0] for r in db.all(select(User.id))} == {"usr_both", "usr_a", "usr_b"}
    assert {r[0] for r in db.all(select(Tenant.id))} == {A, B}

    async def write() -> None:
        async with db.session() as session:
            session.add(User(id="usr_new", email="new@example.com"))
            await session.execute(update(Tenant).where(Tenant.id == B).values(status="suspended"))
            user = await session.get(User, "usr_a")
            assert user is not None
            user.name = "Renamed"
            await session.commit()

    db.run(write())
    assert db.all(select(Tenant.status).where(Tenant.id == B)) == [("suspended",)]
    assert db.all(select(User.name).where(User.id == "usr_a")) == [("Renamed",)]
    assert ("usr_new",) in db.all(select(User.id))


def test_global_tables_inside_a_scope_are_not_filtered(db: Db) -> None:
    assert {r[0] for r in db.all(select(Tenant.id), tenant_scope(A))} == {A, B}
    assert len(db.all(select(User.id), tenant_scope(A))) == 3


# --- the scope itself ----------------------------------------------------------------------------------


def test_scopes_nest_and_are_restored() -> None:
    assert current_tenant() is None
    with tenant_scope(A):
        assert current_tenant() == A
        with tenant_scope(B):
            assert current_tenant() == B
        with dangerously_unscoped():
            assert current_tenant() is None
        assert current_tenant() == A
    assert current_tenant() is None


def test_an_empty_tenant_id_is_refused() -> None:
    with pytest.raises(TenantScopeError), tenant_scope(""):
        pass


# --- statement shapes beyond a top-level entity -------------------------------------------------------------
#
# Each shape reads memberships in a way application code plausibly writes (a total for a page, "users who
# belong", a per-user count). Fail-closed means: with no scope it raises; inside tenant_scope(A) it sees A only.

USERS_OF_A = {("usr_both",), ("usr_a",)}
SHAPES: dict[str, tuple[Callable[[], Any], Any]] = {
    "join selecting only the global table": (
        lambda: select(User.id).join(Membership, Membership.user_id == User.id),
        USERS_OF_A,
    ),
    "count over select_from": (lambda: select(func.count()).select_from(Membership), [(2,)]),
    "IN subquery": (
        lambda: select(User.id).where(User.id.in_(select(Membership.user_id))),
        USERS_OF_A,
    ),
    "EXISTS": (
        lambda: select(User.id).where(exists().where(Membership.user_id == User.id)),
        USERS_OF_A,
    ),
    "scalar subquery": (
        lambda: select(
            User.id, select(func.count(Membership.id)).where(Membership.user_id == User.id).scalar_subquery()
        ),
        {("usr_both", 1), ("usr_a", 1), ("usr_b", 0)},
    ),
    "derived table": (lambda: select(select(Membership.user_id).subquery().c.user_id), USERS_OF_A),
    "CTE": (lambda: select(select(Membership.user_id).cte("m").c.user_id), USERS_OF_A),
}


def _as_compared(rows: list[tuple[Any, ...]], expected: Any) -> Any:
    return set(rows) if isinstance(expected, set) else rows


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPES.keys())
def test_other_statement_shapes_are_scoped_too(db: Db, shape: str) -> None:
    statement, expected_in_a = SHAPES[shape]
    scoped = _as_compared(db.all(statement(), tenant_scope(A)), expected_in_a)
    try:
        unscoped_rows: Any = db.all(statement())
    except TenantScopeError:
        unscoped_rows = TenantScopeError
    problems = []
    if scoped != expected_in_a:
        problems.append(f"inside tenant_scope(A) it returned {scoped}, expected A's rows only: {expected_in_a}")
    if unscoped_rows is not TenantScopeError:
        problems.append(f"with no scope it returned {unscoped_rows} instead of raising TenantScopeError")
    assert not problems, f"{shape} over a TenantScoped table: " + "; ".join(problems)


def test_raw_sql_is_not_covered_by_design(db: Db) -> None:
    """Documented limit (ARCHITECTURE.md): raw SQL takes the tenant explicitly; the guard neither filters nor raises."""
    rows = db.all(sa.text("SELECT id FROM memberships WHERE tenant_id = :t").bindparams(t=B))
    assert {r[0] for r in rows} == {"mem_b_both", "mem_b_only"}
