"""A seeded two-tenant world: every platform and tenant role, API keys, and their tokens."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from control_plane.api_keys.schemas import ApiKeyCreate
from control_plane.db.models import Membership, Tenant, User, UserSession
from control_plane.identity.secrets import new_token, token_hash
from control_plane.rbac.roles import API_KEY_SCOPES, PLATFORM_ROLES, TENANT_ROLES
from control_plane.runtime import Runtime
from control_plane.sources.schemas import SourceCreate
from kernel.db import new_id, utcnow
from kernel.tenancy import dangerously_unscoped, tenant_scope

PASSWORD = "correct horse battery staple"


@dataclass
class Actor:
    name: str
    token: str
    user_id: str | None = None
    email: str | None = None
    tenant_id: str | None = None

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@dataclass
class TenantWorld:
    id: str
    slug: str
    members: dict[str, Actor] = field(default_factory=dict)
    # "key_all": every scope; "key_read_tenant": tenant:read only.
    keys: dict[str, Actor] = field(default_factory=dict)
    key_ids: dict[str, str] = field(default_factory=dict)
    # A web source and its write key.
    source_id: str = ""
    write_key: str = ""


@dataclass
class World:
    runtime: Runtime
    platform: dict[str, Actor]
    a: TenantWorld
    b: TenantWorld
    outsider: Actor

    @classmethod
    async def seed(cls, runtime: Runtime) -> World:
        password_hash = await runtime.passwords.hash(PASSWORD)
        async with runtime.services() as services:
            db = services.db

            async def user(name: str, platform_role: str | None = None) -> Actor:
                email = f"{name}@example.com"
                user = User(
                    id=new_id("usr"), email=email, name=name, password_hash=password_hash, platform_role=platform_role
                )
                token = new_token("lvs")
                db.add(user)
                await db.flush()
                db.add(
                    UserSession(
                        id=new_id("ses"),
                        user_id=user.id,
                        token_hash=token_hash(token),
                        expires_at=utcnow() + dt.timedelta(hours=1),
                    )
                )
                return Actor(name=name, token=token, user_id=user.id, email=email)

            platform = {role: await user(role.replace("_", "-"), role) for role in PLATFORM_ROLES}
            outsider = await user("outsider")
            tenants = []
            for label in ("a", "b"):
                tenant = Tenant(
                    id=new_id("ten"),
                    name=f"Tenant {label.upper()}",
                    slug=f"tenant-{label}",
                    plan="growth",
                    deployment_pattern="B",
                    region="eu-west-1",
                    template="ecommerce",
                    status="active",
                )
                db.add(tenant)
                await db.flush()
                world = TenantWorld(id=tenant.id, slug=tenant.slug)
                for role in TENANT_ROLES:
                    actor = await user(f"{label}-{role}")
                    actor.tenant_id = tenant.id
                    with tenant_scope(tenant.id):
                        db.add(
                            Membership(id=new_id("mem"), tenant_id=tenant.id, user_id=actor.user_id or "", role=role)
                        )
                        await db.flush()
                    world.members[role] = actor
                tenants.append(world)
            with dangerously_unscoped():
                await db.commit()
            for world in tenants:
                for name, scopes in (("key_all", list(API_KEY_SCOPES)), ("key_read_tenant", ["tenant:read"])):
                    created = await services.api_keys.create(world.id, ApiKeyCreate(name=name, scopes=scopes), None)  # type: ignore[arg-type]
                    world.keys[name] = Actor(name=f"{world.slug}-{name}", token=created.secret, tenant_id=world.id)
                    world.key_ids[name] = created.api_key.id
                source = await services.sources.create(
                    world.id,
                    SourceCreate(name="website", kind="web", allowed_origins=["https://shop.example.com"]),
                    None,
                )
                world.source_id, world.write_key = source.source.id, source.write_key
        return cls(runtime=runtime, platform=platform, a=tenants[0], b=tenants[1], outsider=outsider)

    def actors(self) -> dict[str, Actor]:
        """Every principal by a stable name: platform roles, tenant A's roles and keys, an outsider."""
        named = {role: actor for role, actor in self.platform.items()}
        named.update({f"a:{role}": actor for role, actor in self.a.members.items()})
        named.update({f"a:{key}": actor for key, actor in self.a.keys.items()})
        named["outsider"] = self.outsider
        return named
