"""The AWS driver end to end against moto in server mode: Pattern B stacks, Pattern A through the client's role.

NOTE: moto reports Secrets Manager secrets, RDS clusters and some other resources of a stack complete
without creating them, and its STS does not evaluate trust policies. Those are checked through the
rendered template (tests/unit/test_provisioning_aws.py) and through Livora's own trust-policy guard here.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import httpx
import msgspec
import pytest
from botocore.exceptions import ClientError

from control_plane.app import create_app
from control_plane.runtime import Runtime
from provisioning.drivers.aws import stack_name
from tests.support.moto import CLEARED_AWS, FAKE_AWS, REGION, MotoServer
from tests.support.provisioning import embedded_spaces, runs_of, wait_for_tenant
from tests.support.server import LiveServer

LIVORA = "arn:aws:iam::123456789012:root"
ARCHIVE = "livora-archive-tests"
URL = "/api/v1/tenants"


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    server = MotoServer().start()
    yield server
    server.stop()


@pytest.fixture
def aws(moto, monkeypatch) -> Any:
    for name in CLEARED_AWS:
        monkeypatch.delenv(name, raising=False)
    for name, value in FAKE_AWS.items():
        monkeypatch.setenv(name, value)
    s3 = boto3.client("s3", endpoint_url=moto.url, region_name=REGION)
    if ARCHIVE not in {b["Name"] for b in s3.list_buckets()["Buckets"]}:
        s3.create_bucket(Bucket=ARCHIVE)

    def client(service: str) -> Any:
        return boto3.client(service, endpoint_url=moto.url, region_name=REGION)

    return client


@pytest.fixture
def platform(settings, tmp_path, aws, moto) -> Iterator[httpx.Client]:
    settings = msgspec.structs.replace(
        settings,
        provisioning_driver="aws",
        aws_endpoint_url=moto.url,
        aws_region=REGION,
        aws_principal_arn=LIVORA,
        aws_archive_bucket=ARCHIVE,
        aws_poll_seconds=0.1,
        aws_stack_timeout_seconds=120,
        provisioning_backoff_seconds=0.1,
        provisioning_max_attempts=3,
        provisioning_wait_seconds=30,
    )
    runtime = Runtime.build(settings)
    runtime.provisioner.attach_builtin_cell(embedded_spaces(tmp_path / "builtin-cell"))
    live = LiveServer(create_app(settings, runtime)).start()
    with httpx.Client(base_url=live.url, timeout=60) as client:
        yield client
    live.stop()


def _outputs(aws: Any, tenant_id: str) -> dict[str, str]:
    [stack] = aws("cloudformation").describe_stacks(StackName=stack_name(tenant_id))["Stacks"]
    assert stack["StackStatus"] == "CREATE_COMPLETE", stack
    return {o["OutputKey"]: o["OutputValue"] for o in stack["Outputs"]}


def _stack_gone(aws: Any, tenant_id: str) -> bool:
    try:
        stacks = aws("cloudformation").describe_stacks(StackName=stack_name(tenant_id))["Stacks"]
    except ClientError as exc:
        return "does not exist" in str(exc)
    return all(s["StackStatus"] == "DELETE_COMPLETE" for s in stacks)


def test_pattern_b_creates_the_stack_records_its_outputs_and_deprovisioning_removes_it(platform, world, aws):
    ops = world.platform["ops_admin"].headers
    created = platform.post(URL, json={"name": "Pooled shop", "template": "ecommerce", "region": REGION}, headers=ops)
    tenant_id = created.json()["id"]
    assert wait_for_tenant(platform, tenant_id, ops, "active", "failed")["status"] == "active", runs_of(
        platform, tenant_id, ops
    )
    [run] = runs_of(platform, tenant_id, ops)
    assert [s["name"] for s in run["steps"]] == [
        "place_cell",
        "deploy_stack",
        "record_outputs",
        "create_space",
        "create_source",
        "store_starter_content",
        "activate",
    ]
    outputs = _outputs(aws, tenant_id)
    # The lake bucket: encrypted, private, with the template's lifecycle rules.
    bucket = outputs["LakeBucketName"]
    encryption = aws("s3").get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]
    assert encryption["Rules"][0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    # NOTE: moto's CloudFormation does not apply a bucket's LifecycleConfiguration: check the deployed template.
    deployed = aws("cloudformation").get_template(StackName=stack_name(tenant_id))["TemplateBody"]
    deployed = deployed if isinstance(deployed, dict) else json.loads(deployed)
    lifecycle = deployed["Resources"]["LakeBucket"]["Properties"]["LifecycleConfiguration"]["Rules"]
    rules = {r["Id"]: r for r in lifecycle}
    assert rules["events-retention"]["ExpirationInDays"] == 730
    assert rules["events-retention"]["Transitions"][0]["StorageClass"] == "STANDARD_IA"
    assert set(deployed["Resources"]) >= {"CellCredential", "CellRole", "EventStream", "LakeBucketPolicy"}
    # The event stream with the template's partitions, and the cell's role.
    stream = aws("kinesis").describe_stream_summary(StreamName=outputs["EventStreamName"])["StreamDescriptionSummary"]
    assert stream["OpenShardCount"] == 4
    role_name = outputs["CellRoleArn"].rsplit("/", 1)[-1]
    assert aws("iam").get_role(RoleName=role_name)["Role"]["Arn"] == outputs["CellRoleArn"]
    # The outputs are recorded on the cell (a pooled cell keeps them per tenant).
    placement = platform.get(f"{URL}/{tenant_id}/placement", headers=ops).json()
    cell = platform.get(f"/api/v1/cells/{placement['cell_id']}", headers=ops).json()
    assert cell["outputs"][tenant_id]["LakeBucketName"] == bucket
    assert cell["outputs"][tenant_id]["StackName"] == stack_name(tenant_id)

    # Something in the lake: deprovisioning empties the bucket and deletes the stack.
    aws("s3").put_object(Bucket=bucket, Key=f"tenants/{tenant_id}/events/x.parquet", Body=b"parquet")
    assert platform.post(f"{URL}/{tenant_id}/suspend", headers=ops).json()["status"] == "suspended"
    assert platform.delete(f"{URL}/{tenant_id}", headers=ops).json()["status"] == "deleted"
    deletion = runs_of(platform, tenant_id, ops)[0]
    removed = next(s for s in deletion["steps"] if s["name"] == "delete_stack")["outputs"]
    assert removed["deleted"] is True and removed["lake_objects_removed"] >= 1
    # The lake bucket's data went to the archive first, and the placement says where.
    assert removed["archived_objects"] == 1
    archived_key = (
        removed["archive_location"].removeprefix(f"s3://{ARCHIVE}/") + f"tenants/{tenant_id}/events/x.parquet"
    )
    assert aws("s3").get_object(Bucket=ARCHIVE, Key=archived_key)["Body"].read() == b"parquet"
    placement = platform.get(f"{URL}/{tenant_id}/placement", headers=ops).json()
    assert removed["archive_location"] in placement["archive_location"]
    assert _stack_gone(aws, tenant_id)
    assert bucket not in {b["Name"] for b in aws("s3").list_buckets()["Buckets"]}


def _client_role(aws: Any, name: str, policy: dict[str, Any]) -> str:
    # One moto server serves the module (both database backends): role names must not repeat.
    name = f"{name}-{uuid.uuid4().hex[:8]}"
    role = aws("iam").create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(policy))
    return str(role["Role"]["Arn"])


def test_pattern_a_through_the_clients_role_with_its_external_id(platform, world, aws):
    ops = world.platform["ops_admin"].headers
    tenant = platform.post(
        URL,
        json={"name": "Dedicated", "deployment_pattern": "A", "template": "saas", "region": REGION, "provision": False},
        headers=ops,
    ).json()
    tenant_id = tenant["id"]
    shown = platform.get(f"{URL}/{tenant_id}/trust-policy", headers=ops).json()
    assert shown["livora_principal"] == LIVORA and shown["external_id"].startswith("livora-")
    statement = shown["policy"]["Statement"][0]
    assert statement["Condition"] == {"StringEquals": {"sts:ExternalId": shown["external_id"]}}
    # The tenant's owner-to-be sees the same (admins of the tenant may read it; see the RBAC matrix).
    role_arn = _client_role(aws, "LivoraDedicated", shown["policy"])

    provisioned = platform.post(f"{URL}/{tenant_id}/provision", json={"role_arn": role_arn}, headers=ops)
    assert provisioned.status_code == 200, provisioned.text
    assert wait_for_tenant(platform, tenant_id, ops, "active", "failed")["status"] == "active", runs_of(
        platform, tenant_id, ops
    )
    run = runs_of(platform, tenant_id, ops)[0]
    steps = {s["name"]: s for s in run["steps"]}
    assert steps["verify_role"]["outputs"] == {"role_arn": role_arn, "account": "123456789012"}
    outputs = _outputs(aws, tenant_id)
    # The dedicated cell's compute: its ECS cluster exists (moto models it); its database is in the template.
    clusters = aws("ecs").describe_clusters(clusters=[outputs["ClusterName"]])["clusters"]
    assert clusters and clusters[0]["clusterName"].startswith("livora-cell-")
    placement = platform.get(f"{URL}/{tenant_id}/placement", headers=ops).json()
    cell = platform.get(f"/api/v1/cells/{placement['cell_id']}", headers=ops).json()
    assert (cell["pattern"], cell["dedicated_tenant_id"]) == ("A", tenant_id)
    assert cell["outputs"]["ClusterName"] == outputs["ClusterName"]
    assert placement["role_arn"] == role_arn

    assert platform.post(f"{URL}/{tenant_id}/suspend", headers=ops).json()["status"] == "suspended"
    assert platform.delete(f"{URL}/{tenant_id}", headers=ops).json()["status"] == "deleted"
    assert _stack_gone(aws, tenant_id)
    assert platform.get(f"/api/v1/cells/{cell['id']}", headers=ops).json()["status"] == "retired"


@pytest.mark.parametrize("case", ["no_external_id", "other_tenants_external_id", "missing_role"])
def test_a_role_without_this_tenants_external_id_never_gets_a_cell(platform, world, aws, case):
    ops = world.platform["ops_admin"].headers
    victim = platform.post(
        URL, json={"name": f"Victim {case}", "deployment_pattern": "A", "provision": False}, headers=ops
    ).json()
    victim_external = platform.get(f"{URL}/{victim['id']}/trust-policy", headers=ops).json()["external_id"]
    attacker = platform.post(
        URL, json={"name": f"Attacker {case}", "deployment_pattern": "A", "provision": False}, headers=ops
    ).json()
    open_policy = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Principal": {"AWS": LIVORA}, "Action": "sts:AssumeRole"}],
    }
    if case == "no_external_id":
        role_arn = _client_role(aws, f"Open{case}", open_policy)
        words = "without an ExternalId"
    elif case == "other_tenants_external_id":
        # The victim's role, trusted with the victim's ExternalId: the attacker names it as its own.
        policy = open_policy | {
            "Statement": [
                {**open_policy["Statement"][0], "Condition": {"StringEquals": {"sts:ExternalId": victim_external}}}
            ]
        }
        role_arn = _client_role(aws, f"Victim{case}", policy)
        words = "different ExternalId"
    else:
        role_arn = "arn:aws:iam::123456789012:role/NoSuchRole"
        words = "does not exist"
    response = platform.post(f"{URL}/{attacker['id']}/provision", json={"role_arn": role_arn}, headers=ops)
    assert response.status_code == 200, response.text
    failed = wait_for_tenant(platform, attacker["id"], ops, "failed")
    [run] = runs_of(platform, attacker["id"], ops)
    assert run["status"] == "failed" and words in run["error"] and "trust-policy" in run["error"]
    assert failed["status_reason"] == run["error"]
    step = next(s for s in run["steps"] if s["name"] == "verify_role")
    # Refused at once: retrying cannot fix a trust policy, the client admin must.
    assert (step["status"], step["attempts"]) == ("failed", 1)
    assert all(s["status"] == "pending" for s in run["steps"] if s["name"] in ("deploy_stack", "create_space"))
    assert _stack_gone(aws, attacker["id"])
