"""The AWS driver's pure parts: every rendered template passes cfn-lint; the confused-deputy guard; plans."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from provisioning.drivers.aws import check_trust_policy, render, stack_name, trust_policy
from provisioning.plan import UNDO, plan, rollback_plan
from provisioning.runner import StepFailed
from tenant_templates import shipped

TENANT = "ten_01jc8y2m0f6q1w4x8k3d5r7t9v"
LIVORA = "arn:aws:iam::111122223333:root"
ROLE = "arn:aws:iam::444455556666:role/LivoraProvisioning"


def test_every_rendered_template_passes_cfn_lint(tmp_path: Path) -> None:
    catalog = shipped()
    files = []
    for template in catalog:
        for pattern in ("A", "B"):
            path = tmp_path / f"{template.name}-v{template.version}-{pattern}.json"
            path.write_text(json.dumps(render(template, TENANT, pattern), indent=1))
            files.append(str(path))
    lint = Path(sys.executable).with_name("cfn-lint")
    result = subprocess.run([str(lint), *files], capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(files) == 2 * sum(1 for _ in catalog)


def test_what_the_template_creates() -> None:
    template = shipped().get("ecommerce")
    pooled = render(template, TENANT, "B")
    types = {name: r["Type"] for name, r in pooled["Resources"].items()}
    assert types == {
        "LakeBucket": "AWS::S3::Bucket",
        "LakeBucketPolicy": "AWS::S3::BucketPolicy",
        "EventStream": "AWS::Kinesis::Stream",
        "CellCredential": "AWS::SecretsManager::Secret",
        "CellRole": "AWS::IAM::Role",
    }
    bucket = pooled["Resources"]["LakeBucket"]["Properties"]
    sse = bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]["ServerSideEncryptionByDefault"]
    assert sse == {"SSEAlgorithm": "AES256"}
    rule = bucket["LifecycleConfiguration"]["Rules"][0]
    assert rule["ExpirationInDays"] == template.resources.lake_retention_days == 730
    assert rule["Transitions"][0] == {"StorageClass": "STANDARD_IA", "TransitionInDays": 90}
    assert all(bucket["PublicAccessBlockConfiguration"].values())
    assert pooled["Resources"]["EventStream"]["Properties"]["ShardCount"] == template.resources.stream_partitions == 4
    dedicated = render(template, TENANT, "A")
    extra = {r["Type"] for n, r in dedicated["Resources"].items() if n not in pooled["Resources"]}
    assert {"AWS::ECS::Cluster", "AWS::ECS::TaskDefinition", "AWS::RDS::DBCluster", "AWS::EC2::VPC"} <= extra
    database = dedicated["Resources"]["CellDatabase"]["Properties"]
    assert database["StorageEncrypted"] is True and database["ManageMasterUserPassword"] is True
    assert stack_name(TENANT) == "livora-tenant-ten-01jc8y2m0f6q1w4x8k3d5r7t9v"


def test_the_trust_policy_livora_shows_passes_its_own_check() -> None:
    check_trust_policy(trust_policy(LIVORA, "livora-abc"), LIVORA, "livora-abc", ROLE)
    # IAM hands the document back URL-encoded; that is read too.
    from urllib.parse import quote

    check_trust_policy(quote(json.dumps(trust_policy(LIVORA, "livora-abc"))), LIVORA, "livora-abc", ROLE)


def _statement(**overrides: object) -> dict[str, object]:
    statement: dict[str, object] = {
        "Effect": "Allow",
        "Principal": {"AWS": LIVORA},
        "Action": "sts:AssumeRole",
        "Condition": {"StringEquals": {"sts:ExternalId": "livora-abc"}},
    }
    statement.update(overrides)
    return statement


@pytest.mark.parametrize(
    ("statements", "words"),
    [
        ([_statement(Condition={})], "without an ExternalId"),
        ([_statement(Condition={"StringEquals": {"sts:ExternalId": "livora-other"}})], "different ExternalId"),
        ([_statement(Principal={"AWS": "arn:aws:iam::999999999999:root"})], "does not trust Livora"),
        ([_statement(), _statement(Condition=None)], "without an ExternalId"),  # a second, open door
        ([_statement(Principal={"AWS": "*"}, Condition={})], "without an ExternalId"),
        ([_statement(Effect="Deny")], "does not trust Livora"),
    ],
)
def test_roles_livora_could_be_tricked_into_using_are_refused(statements: list[dict[str, object]], words: str) -> None:
    with pytest.raises(StepFailed, match=words):
        check_trust_policy({"Version": "2012-10-17", "Statement": statements}, LIVORA, "livora-abc", ROLE)


def test_plans_per_pattern_and_driver() -> None:
    assert plan("provision", pattern="B", driver="local") == [
        "place_cell",
        "create_space",
        "create_source",
        "store_starter_content",
        "activate",
    ]
    assert plan("provision", pattern="A", driver="aws")[:4] == [
        "place_cell",
        "verify_role",
        "deploy_stack",
        "record_outputs",
    ]
    assert "verify_role" not in plan("provision", pattern="B", driver="aws")
    assert plan("deprovision", pattern="A", driver="aws")[-3:] == ["delete_stack", "release_cell", "finish_deletion"]
    assert rollback_plan(["place_cell", "deploy_stack", "create_space"]) == [
        "remove_space",
        "delete_stack",
        "release_cell",
        "reset_tenant",
    ]
    assert set(UNDO) <= set(plan("provision", pattern="A", driver="aws"))
    with pytest.raises(ValueError):
        plan("teleport", pattern="B", driver="local")
