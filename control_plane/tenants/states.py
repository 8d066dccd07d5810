"""The tenant lifecycle: pending → provisioning → active ⇄ suspended → deleting → deleted, or provisioning → failed."""

from __future__ import annotations

from kernel.errors import Conflict

TRANSITIONS: dict[str, frozenset[str]] = {
    # A tenant that never got a data plane can be deleted straight away.
    "pending": frozenset({"provisioning", "deleting"}),
    "provisioning": frozenset({"active", "failed"}),
    "active": frozenset({"suspended"}),
    # Deletion goes through suspension, so traffic stops before data goes.
    "suspended": frozenset({"active", "deleting"}),
    "deleting": frozenset({"deleted"}),
    "deleted": frozenset(),
    # A provisioning run that failed: retried (provisioning), rolled back (pending), or given up (deleting).
    "failed": frozenset({"provisioning", "pending", "deleting"}),
}


def check_transition(current: str, target: str) -> None:
    """Raise 409 ``illegal_transition`` unless ``current → target`` is in the lifecycle."""
    if target not in TRANSITIONS.get(current, frozenset()):
        allowed = ", ".join(sorted(TRANSITIONS.get(current, ()))) or "none"
        raise Conflict(
            f"A {current} tenant cannot become {target}; from {current} it can become: {allowed}.",
            code="illegal_transition",
        )
