"""The casbin enforcer behind every permission check."""

from __future__ import annotations

import logging
from functools import cache
from pathlib import Path

import casbin
from casbin.util import key_match

from control_plane.identity.principal import Principal

HERE = Path(__file__).parent
PLATFORM = "platform"


def tenant_domain(tenant_id: str) -> str:
    return f"tenant:{tenant_id}"


class Authorizer:
    """Answers "may this principal do ``act`` on ``obj`` in ``domain``?".

    Membership rows are the source of truth for who holds which role in which tenant;
    the casbin policy says what each role may do and how roles inherit. The caller passes
    the principal's role in the tenant at hand, so the answer never rests on a stale copy
    of memberships held in memory.
    """

    def __init__(self, model: Path = HERE / "model.conf", policy: Path = HERE / "policy.csv") -> None:
        # casbin logs its policy and every decision at INFO; our audit trail records what matters.
        logging.getLogger("casbin").setLevel(logging.WARNING)
        self.enforcer = casbin.Enforcer(str(model), str(policy))
        self.enforcer.add_named_domain_matching_func("g", key_match)

    def role_allows(self, role: str, domain: str, obj: str, act: str) -> bool:
        return bool(self.enforcer.enforce(role, domain, obj, act))

    def allows(self, principal: Principal, domain: str, obj: str, act: str, tenant_role: str | None = None) -> bool:
        if principal.kind == "api_key":
            return domain == tenant_domain(principal.tenant_id or "") and f"{obj}:{act}" in principal.scopes
        if principal.platform_role and self.role_allows(principal.platform_role, domain, obj, act):
            return True
        return tenant_role is not None and domain != PLATFORM and self.role_allows(tenant_role, domain, obj, act)


@cache
def default_authorizer() -> Authorizer:
    return Authorizer()
