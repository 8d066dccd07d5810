"""Which steps each tenant operation takes, for a deployment pattern and a driver: template → resources."""

from __future__ import annotations

from typing import Literal

Operation = Literal["provision", "upgrade", "suspend", "resume", "deprovision", "rollback"]

# Steps that leave something behind, and the step that takes it away again (rollback runs these, newest first).
UNDO: dict[str, str] = {
    "place_cell": "release_cell",
    "deploy_stack": "delete_stack",
    "create_space": "remove_space",
    "create_source": "revoke_sources",
    "store_starter_content": "clear_starter_content",
}


def plan(operation: str, *, pattern: str, driver: str) -> list[str]:
    """The ordered step names of ``operation``; every step is idempotent, so a run can resume anywhere."""
    aws = driver == "aws"
    if operation == "provision":
        return [
            "place_cell",
            *(["verify_role"] if aws and pattern == "A" else []),
            *(["deploy_stack", "record_outputs"] if aws else []),
            "create_space",
            "create_source",
            "store_starter_content",
            "activate",
        ]
    if operation == "upgrade":
        return [
            *(["verify_role"] if aws and pattern == "A" else []),
            *(["deploy_stack", "record_outputs"] if aws else []),
            "create_space",
            "store_starter_content",
            "record_template",
        ]
    if operation == "suspend":
        return ["suspend_tenant"]
    if operation == "resume":
        return ["check_space", "resume_tenant"]
    if operation == "deprovision":
        return [
            "begin_deletion",
            "export_space",
            "revoke_sources",
            "remove_space",
            *(["delete_stack"] if aws else []),
            "release_cell",
            "finish_deletion",
        ]
    raise ValueError(f"no plan for operation {operation!r}")


def rollback_plan(succeeded: list[str]) -> list[str]:
    """Undo what a failed provisioning run created, newest first, then put the tenant back to ``pending``."""
    return [UNDO[name] for name in reversed(succeeded) if name in UNDO] + ["reset_tenant"]
