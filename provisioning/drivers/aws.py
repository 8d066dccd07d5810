"""The AWS driver: a tenant's blueprint rendered to CloudFormation and deployed, in Livora's account or the client's.

Pattern B (pooled): the stack goes into Livora's own account with Livora's credentials.
Pattern A (dedicated): Livora assumes the client's role with the tenant's ExternalId, and first
checks the role's trust policy itself, because not every STS (e.g. a local stand-in) enforces it:
a role that does not require this tenant's ExternalId for Livora's principal is refused (the
confused-deputy guard), and no stack is created with it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import urllib.parse
from dataclasses import dataclass
from typing import Any

import aioboto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from provisioning.runner import StepContext, StepFailed, StepHandler
from tenant_templates import Catalog, Template

STACK_PREFIX = "livora-tenant-"
_DONE = re.compile(r"^(CREATE|UPDATE|IMPORT)_COMPLETE$")
_BAD = re.compile(r"(ROLLBACK|FAILED)")


@dataclass(frozen=True)
class AwsSettings:
    # An AWS-compatible endpoint (a local stand-in); empty: AWS itself.
    endpoint_url: str = ""
    region: str = "us-east-1"
    # The principal Livora assumes client roles as: what a Pattern A trust policy must name.
    principal_arn: str = ""
    # Container image of the cell (Pattern A compute).
    cell_image: str = "public.ecr.aws/livora/cell:latest"
    # Bucket (in Livora's account) that deprovisioning archives a tenant's lake bucket to.
    archive_bucket: str = ""
    # Seconds to wait for a stack to settle.
    stack_timeout: float = 1800.0
    poll_seconds: float = 2.0

    @classmethod
    def from_control_plane(cls, settings: Any) -> AwsSettings:
        return cls(
            endpoint_url=settings.aws_endpoint_url,
            region=settings.aws_region,
            principal_arn=settings.aws_principal_arn,
            cell_image=settings.aws_cell_image,
            archive_bucket=settings.aws_archive_bucket,
            stack_timeout=float(settings.aws_stack_timeout_seconds),
            poll_seconds=float(settings.aws_poll_seconds),
        )


def trust_policy(principal_arn: str, external_id: str) -> dict[str, Any]:
    """The exact trust policy a Pattern A client gives its role: only Livora, only with this ExternalId."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"AWS": principal_arn},
                "Action": "sts:AssumeRole",
                "Condition": {"StringEquals": {"sts:ExternalId": external_id}},
            }
        ],
    }


def stack_name(tenant_id: str) -> str:
    return STACK_PREFIX + re.sub(r"[^A-Za-z0-9-]", "-", tenant_id)


def _short(tenant_id: str) -> str:
    """A lower-case name part safe for S3 and Kinesis, unique per tenant."""
    readable = re.sub(r"[^a-z0-9]", "", tenant_id.lower())[-12:]
    return f"{readable}-{hashlib.sha256(tenant_id.encode()).hexdigest()[:8]}"


def render(template: Template, tenant_id: str, pattern: str) -> dict[str, Any]:
    """The CloudFormation template of one tenant's resources (``pattern`` A adds compute and a database)."""
    short = _short(tenant_id)
    resources: dict[str, Any] = {
        "LakeBucket": {
            "Type": "AWS::S3::Bucket",
            "Properties": {
                "BucketName": f"livora-lake-{short}",
                "BucketEncryption": {
                    "ServerSideEncryptionConfiguration": [
                        {"ServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}, "BucketKeyEnabled": True}
                    ]
                },
                "PublicAccessBlockConfiguration": {
                    "BlockPublicAcls": True,
                    "BlockPublicPolicy": True,
                    "IgnorePublicAcls": True,
                    "RestrictPublicBuckets": True,
                },
                "VersioningConfiguration": {"Status": "Enabled"},
                "LifecycleConfiguration": {
                    "Rules": [
                        {
                            "Id": "events-retention",
                            "Status": "Enabled",
                            "Prefix": "tenants/",
                            "Transitions": [
                                {
                                    "StorageClass": "STANDARD_IA",
                                    "TransitionInDays": template.resources.lake_infrequent_access_days,
                                }
                            ],
                            "ExpirationInDays": template.resources.lake_retention_days,
                            "NoncurrentVersionExpiration": {"NoncurrentDays": 30},
                        },
                        {
                            "Id": "abort-incomplete-uploads",
                            "Status": "Enabled",
                            "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 7},
                        },
                    ]
                },
                "Tags": [{"Key": "livora:tenant", "Value": tenant_id}],
            },
        },
        "LakeBucketPolicy": {
            "Type": "AWS::S3::BucketPolicy",
            "Properties": {
                "Bucket": {"Ref": "LakeBucket"},
                "PolicyDocument": {
                    "Version": "2012-10-17",
                    "Statement": [
                        {
                            "Sid": "TlsOnly",
                            "Effect": "Deny",
                            "Principal": "*",
                            "Action": "s3:*",
                            "Resource": [
                                {"Fn::GetAtt": ["LakeBucket", "Arn"]},
                                {"Fn::Sub": "${LakeBucket.Arn}/*"},
                            ],
                            "Condition": {"Bool": {"aws:SecureTransport": "false"}},
                        }
                    ],
                },
            },
        },
        "EventStream": {
            "Type": "AWS::Kinesis::Stream",
            "Properties": {
                "Name": f"livora-events-{short}",
                "ShardCount": template.resources.stream_partitions,
                "RetentionPeriodHours": 24,
                "StreamEncryption": {"EncryptionType": "KMS", "KeyId": "alias/aws/kinesis"},
                "Tags": [{"Key": "livora:tenant", "Value": tenant_id}],
            },
        },
        "CellCredential": {
            "Type": "AWS::SecretsManager::Secret",
            "Properties": {
                "Name": f"livora/{short}/cell-credential",
                "Description": "The credential the tenant's cell presents to the Livora control plane.",
                "GenerateSecretString": {"PasswordLength": 48, "ExcludePunctuation": True},
            },
        },
        "CellRole": {
            "Type": "AWS::IAM::Role",
            "Properties": {
                "AssumeRolePolicyDocument": {
                    "Version": "2012-10-17",
                    "Statement": [
                        {
                            "Effect": "Allow",
                            "Principal": {"Service": "ecs-tasks.amazonaws.com"},
                            "Action": "sts:AssumeRole",
                        }
                    ],
                },
                "Policies": [
                    {
                        "PolicyName": "tenant-data",
                        "PolicyDocument": {
                            "Version": "2012-10-17",
                            "Statement": [
                                {
                                    "Effect": "Allow",
                                    "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"],
                                    "Resource": {"Fn::Sub": "${LakeBucket.Arn}/*"},
                                },
                                {
                                    "Effect": "Allow",
                                    "Action": ["s3:ListBucket"],
                                    "Resource": {"Fn::GetAtt": ["LakeBucket", "Arn"]},
                                },
                                {
                                    "Effect": "Allow",
                                    "Action": [
                                        "kinesis:PutRecord",
                                        "kinesis:PutRecords",
                                        "kinesis:GetRecords",
                                        "kinesis:GetShardIterator",
                                        "kinesis:DescribeStream",
                                        "kinesis:ListShards",
                                    ],
                                    "Resource": {"Fn::GetAtt": ["EventStream", "Arn"]},
                                },
                                {
                                    "Effect": "Allow",
                                    "Action": ["secretsmanager:GetSecretValue"],
                                    "Resource": {"Ref": "CellCredential"},
                                },
                            ],
                        },
                    }
                ],
                "Tags": [{"Key": "livora:tenant", "Value": tenant_id}],
            },
        },
    }
    outputs: dict[str, Any] = {
        "LakeBucketName": {"Value": {"Ref": "LakeBucket"}},
        "EventStreamName": {"Value": {"Ref": "EventStream"}},
        "EventStreamArn": {"Value": {"Fn::GetAtt": ["EventStream", "Arn"]}},
        "CellRoleArn": {"Value": {"Fn::GetAtt": ["CellRole", "Arn"]}},
        "CellCredentialArn": {"Value": {"Ref": "CellCredential"}},
    }
    parameters: dict[str, Any] = {}
    if pattern == "A":
        parameters["CellImage"] = {"Type": "String", "Description": "Container image of the Livora cell."}
        resources.update(_dedicated_cell(short))
        outputs.update(
            {
                "ClusterName": {"Value": {"Ref": "CellCluster"}},
                "TaskDefinitionArn": {"Value": {"Ref": "CellTask"}},
                # NOTE: a Ref, not the endpoint's GetAtt, which a local CloudFormation stand-in cannot resolve;
                # the endpoint is read from the cluster by its id.
                "DatabaseClusterId": {"Value": {"Ref": "CellDatabase"}},
            }
        )
    rendered: dict[str, Any] = {
        "AWSTemplateFormatVersion": "2010-09-09",
        "Description": f"Livora tenant {tenant_id}: {template.name} v{template.version}, pattern {pattern}",
        "Resources": resources,
        "Outputs": outputs,
    }
    if parameters:
        rendered["Parameters"] = parameters
    return rendered


def _dedicated_cell(short: str) -> dict[str, Any]:
    """A Pattern A cell's compute (ECS on Fargate) and database (Aurora PostgreSQL Serverless v2) in its own VPC."""
    subnet = {
        "Type": "AWS::EC2::Subnet",
        "Properties": {"VpcId": {"Ref": "CellVpc"}, "CidrBlock": "", "AvailabilityZone": ""},
    }
    subnets = {}
    for index, name in enumerate(("CellSubnetA", "CellSubnetB")):
        subnets[name] = json.loads(json.dumps(subnet))
        subnets[name]["Properties"]["CidrBlock"] = f"10.42.{index}.0/24"
        subnets[name]["Properties"]["AvailabilityZone"] = {"Fn::Select": [index, {"Fn::GetAZs": ""}]}
    return {
        "CellVpc": {
            "Type": "AWS::EC2::VPC",
            "Properties": {"CidrBlock": "10.42.0.0/16", "EnableDnsHostnames": True, "EnableDnsSupport": True},
        },
        **subnets,
        "CellDatabaseSecurityGroup": {
            "Type": "AWS::EC2::SecurityGroup",
            "Properties": {
                "GroupDescription": "The cell database: PostgreSQL from inside the VPC only.",
                "VpcId": {"Ref": "CellVpc"},
                "SecurityGroupIngress": [
                    {"IpProtocol": "tcp", "FromPort": 5432, "ToPort": 5432, "CidrIp": "10.42.0.0/16"}
                ],
            },
        },
        "CellDatabaseSubnets": {
            "Type": "AWS::RDS::DBSubnetGroup",
            "Properties": {
                "DBSubnetGroupDescription": "Subnets of the cell database.",
                "SubnetIds": [{"Ref": "CellSubnetA"}, {"Ref": "CellSubnetB"}],
            },
        },
        "CellDatabase": {
            "Type": "AWS::RDS::DBCluster",
            "DeletionPolicy": "Snapshot",
            "UpdateReplacePolicy": "Snapshot",
            "Properties": {
                "Engine": "aurora-postgresql",
                "DatabaseName": "cell",
                "MasterUsername": "livora",
                "ManageMasterUserPassword": True,
                "StorageEncrypted": True,
                "DeletionProtection": False,
                "BackupRetentionPeriod": 7,
                "DBSubnetGroupName": {"Ref": "CellDatabaseSubnets"},
                "VpcSecurityGroupIds": [{"Ref": "CellDatabaseSecurityGroup"}],
                "ServerlessV2ScalingConfiguration": {"MinCapacity": 0.5, "MaxCapacity": 8},
            },
        },
        "CellCluster": {
            "Type": "AWS::ECS::Cluster",
            "Properties": {
                "ClusterName": f"livora-cell-{short}",
                "ClusterSettings": [{"Name": "containerInsights", "Value": "enabled"}],
            },
        },
        "CellLogs": {
            "Type": "AWS::Logs::LogGroup",
            "Properties": {"LogGroupName": f"/livora/cell/{short}", "RetentionInDays": 30},
        },
        "CellExecutionRole": {
            "Type": "AWS::IAM::Role",
            "Properties": {
                "AssumeRolePolicyDocument": {
                    "Version": "2012-10-17",
                    "Statement": [
                        {
                            "Effect": "Allow",
                            "Principal": {"Service": "ecs-tasks.amazonaws.com"},
                            "Action": "sts:AssumeRole",
                        }
                    ],
                },
                "ManagedPolicyArns": [
                    {"Fn::Sub": "arn:${AWS::Partition}:iam::aws:policy/service-role/AmazonECSTaskExecutionRolePolicy"}
                ],
            },
        },
        "CellTask": {
            "Type": "AWS::ECS::TaskDefinition",
            "Properties": {
                "Family": f"livora-cell-{short}",
                "RequiresCompatibilities": ["FARGATE"],
                "NetworkMode": "awsvpc",
                "Cpu": "1024",
                "Memory": "2048",
                "ExecutionRoleArn": {"Fn::GetAtt": ["CellExecutionRole", "Arn"]},
                "TaskRoleArn": {"Fn::GetAtt": ["CellRole", "Arn"]},
                "ContainerDefinitions": [
                    {
                        "Name": "cell",
                        "Image": {"Ref": "CellImage"},
                        "Essential": True,
                        "PortMappings": [{"ContainerPort": 8001, "Protocol": "tcp"}],
                        "Environment": [
                            {"Name": "LIVORA_LAKE_DRIVER", "Value": "s3"},
                            {"Name": "LIVORA_LAKE_BUCKET", "Value": {"Ref": "LakeBucket"}},
                            {"Name": "LIVORA_STREAM_DRIVER", "Value": "kinesis"},
                            {"Name": "LIVORA_STREAM_KINESIS_NAME", "Value": {"Ref": "EventStream"}},
                        ],
                        "Secrets": [{"Name": "LIVORA_CELL_SECRET", "ValueFrom": {"Ref": "CellCredential"}}],
                        "LogConfiguration": {
                            "LogDriver": "awslogs",
                            "Options": {
                                "awslogs-group": {"Ref": "CellLogs"},
                                "awslogs-region": {"Ref": "AWS::Region"},
                                "awslogs-stream-prefix": "cell",
                            },
                        },
                    }
                ],
            },
        },
    }


# --- trust policy guard ------------------------------------------------------------------------


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def check_trust_policy(document: Any, principal_arn: str, external_id: str, role_arn: str) -> None:
    """Refuse a role Livora could be tricked into using for another tenant (the confused deputy).

    Every statement that lets Livora's principal (or anyone) assume the role must require exactly
    this tenant's ExternalId; at least one such statement must exist.
    """
    if isinstance(document, str):
        document = json.loads(urllib.parse.unquote(document))
    statements = _as_list(document.get("Statement"))
    trusting = []
    for statement in statements:
        if statement.get("Effect") != "Allow":
            continue
        actions = [str(a) for a in _as_list(statement.get("Action"))]
        if not any(a in ("sts:AssumeRole", "sts:*", "*") for a in actions):
            continue
        principal = statement.get("Principal")
        aws = _as_list(principal.get("AWS")) if isinstance(principal, dict) else [principal]
        if principal_arn not in aws and "*" not in aws:
            continue
        trusting.append(statement)
    if not trusting:
        raise StepFailed(
            f"The role {role_arn} does not trust Livora's principal {principal_arn}. Update its trust policy to the "
            "one shown by GET /api/v1/tenants/{tenant_id}/trust-policy, then retry."
        )
    for statement in trusting:
        condition = statement.get("Condition") or {}
        required = [
            value
            for operator in ("StringEquals", "StringLike")
            for key, value in (condition.get(operator) or {}).items()
            if key.lower() == "sts:externalid"
        ]
        values = [str(v) for value in required for v in _as_list(value)]
        if not values:
            raise StepFailed(
                f"The role {role_arn} lets Livora assume it without an ExternalId condition, so any Livora customer "
                "could point Livora at it. Add the condition sts:ExternalId shown by "
                "GET /api/v1/tenants/{tenant_id}/trust-policy to its trust policy, then retry."
            )
        if values != [external_id]:
            raise StepFailed(
                f"The role {role_arn} requires a different ExternalId than this tenant's (perhaps another tenant's). "
                "Set its sts:ExternalId condition to exactly the one shown by "
                "GET /api/v1/tenants/{tenant_id}/trust-policy, then retry."
            )


class AwsDriver:
    name = "aws"

    def __init__(self, settings: AwsSettings, catalog: Catalog) -> None:
        self.settings = settings
        self.catalog = catalog
        self._session = aioboto3.Session()

    def _client(self, service: str, credentials: dict[str, str] | None = None) -> Any:
        options: dict[str, Any] = {
            "region_name": self.settings.region,
            "config": Config(retries={"max_attempts": 3, "mode": "standard"}),
        }
        if self.settings.endpoint_url:
            options["endpoint_url"] = self.settings.endpoint_url
        if credentials:
            options.update(
                aws_access_key_id=credentials["AccessKeyId"],
                aws_secret_access_key=credentials["SecretAccessKey"],
                aws_session_token=credentials["SessionToken"],
            )
        return self._session.client(service, **options)

    async def _principal(self) -> str:
        if self.settings.principal_arn:
            return self.settings.principal_arn
        async with self._client("sts") as sts:
            identity = await sts.get_caller_identity()
        return f"arn:aws:iam::{identity['Account']}:root"

    async def _assume(self, context: StepContext) -> dict[str, str]:
        role_arn, external_id = context.params.get("role_arn"), context.params.get("external_id")
        if not role_arn:
            raise StepFailed(
                "This Pattern A tenant has no role yet: create the role shown by "
                f"GET /api/v1/tenants/{context.tenant_id}/trust-policy in your AWS account, then "
                f"POST /api/v1/tenants/{context.tenant_id}/provision with its role_arn."
            )
        try:
            async with self._client("sts") as sts:
                assumed = await sts.assume_role(
                    RoleArn=role_arn, RoleSessionName=f"livora-{context.run_id}"[:64], ExternalId=external_id
                )
        except ClientError as exc:
            raise StepFailed(
                f"Livora could not assume {role_arn}: {exc.response['Error'].get('Message', exc)}. Check that the role "
                "exists and that its trust policy is the one shown by the trust-policy endpoint."
            ) from None
        credentials: dict[str, str] = assumed["Credentials"]
        return credentials

    async def _credentials(self, context: StepContext, pattern: str) -> dict[str, str] | None:
        return await self._assume(context) if pattern == "A" else None

    async def verify_role(self, context: StepContext) -> dict[str, Any]:
        """Assume the client's role with this tenant's ExternalId, then check its trust policy ourselves."""
        credentials = await self._assume(context)
        role_arn = str(context.params["role_arn"])
        role_name = role_arn.rsplit("/", 1)[-1]
        try:
            async with self._client("iam", credentials) as iam:
                role = (await iam.get_role(RoleName=role_name))["Role"]
        except ClientError as exc:
            if exc.response["Error"].get("Code") == "NoSuchEntity":
                raise StepFailed(
                    f"The role {role_arn} does not exist in your account. Create it with the trust policy shown by "
                    f"GET /api/v1/tenants/{context.tenant_id}/trust-policy, then retry."
                ) from None
            raise
        check_trust_policy(
            role["AssumeRolePolicyDocument"],
            await self._principal(),
            str(context.params.get("external_id")),
            role_arn,
        )
        return {"role_arn": role_arn, "account": role_arn.split(":")[4]}

    async def deploy_stack(self, context: StepContext) -> dict[str, Any]:
        """Create the tenant's stack, or update it to this template; wait until it settles; return its outputs."""
        pattern = str(context.params.get("pattern", "B"))
        template = self.catalog.get(context.template, context.template_version)
        body = json.dumps(render(template, context.tenant_id, pattern))
        name = stack_name(context.tenant_id)
        parameters = (
            [{"ParameterKey": "CellImage", "ParameterValue": self.settings.cell_image}] if pattern == "A" else []
        )
        credentials = await self._credentials(context, pattern)
        try:
            async with self._client("cloudformation", credentials) as cfn:
                stack = await self._describe(cfn, name)
                if stack is None or stack["StackStatus"] == "DELETE_COMPLETE":
                    await cfn.create_stack(
                        StackName=name,
                        TemplateBody=body,
                        Parameters=parameters,
                        Capabilities=["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM"],
                        Tags=[{"Key": "livora:tenant", "Value": context.tenant_id}],
                    )
                elif _DONE.match(stack["StackStatus"]) or stack["StackStatus"] == "UPDATE_ROLLBACK_COMPLETE":
                    try:
                        await cfn.update_stack(
                            StackName=name,
                            TemplateBody=body,
                            Parameters=parameters,
                            Capabilities=["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM"],
                        )
                    except ClientError as exc:
                        if "No updates are to be performed" not in str(exc):
                            raise
                # Otherwise a create or update is under way (a resumed run): wait for it.
                settled = await self._settle(cfn, name)
        except (ClientError, BotoCoreError) as exc:
            raise RuntimeError(f"CloudFormation: {exc}") from None
        outputs = {o["OutputKey"]: o["OutputValue"] for o in settled.get("Outputs", [])}
        return {
            "stack_name": name,
            "stack_id": settled["StackId"],
            "status": settled["StackStatus"],
            "outputs": outputs,
        }

    async def delete_stack(self, context: StepContext) -> dict[str, Any]:
        """Empty the lake bucket (its data was archived by export_space) and delete the tenant's stack."""
        pattern = str(context.params.get("pattern", "B"))
        name = stack_name(context.tenant_id)
        credentials = await self._credentials(context, pattern)
        try:
            async with self._client("cloudformation", credentials) as cfn:
                stack = await self._describe(cfn, name)
                if stack is None or stack["StackStatus"] == "DELETE_COMPLETE":
                    return {"stack_name": name, "deleted": False}
                outputs = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
                emptied, archive = 0, {}
                if outputs.get("LakeBucketName"):
                    archive = await self._archive(outputs["LakeBucketName"], credentials, context)
                    emptied = await self._empty_bucket(outputs["LakeBucketName"], credentials)
                await cfn.delete_stack(StackName=name)
                await self._settle(cfn, name, deleting=True)
        except (ClientError, BotoCoreError) as exc:
            raise RuntimeError(f"CloudFormation: {exc}") from None
        return {"stack_name": name, "deleted": True, "lake_objects_removed": emptied, **archive}

    async def _archive(self, bucket: str, credentials: dict[str, str] | None, context: StepContext) -> dict[str, Any]:
        """Copy the lake bucket's objects to Livora's archive bucket before the stack (and its bucket) goes."""
        prefix = f"archives/tenants/{context.tenant_id}/{context.run_id}/lake/"
        copied = size = 0
        async with self._client("s3", credentials) as source, self._client("s3") as target:
            try:
                paginator = source.get_paginator("list_objects_v2")
                async for found in paginator.paginate(Bucket=bucket):
                    for item in found.get("Contents", []):
                        if not self.settings.archive_bucket:
                            raise StepFailed(
                                f"The lake bucket {bucket} holds data and LIVORA_AWS_ARCHIVE_BUCKET is not set: "
                                "set it so the data is archived before the stack is deleted, then retry."
                            )
                        body = await (await source.get_object(Bucket=bucket, Key=item["Key"]))["Body"].read()
                        await target.put_object(
                            Bucket=self.settings.archive_bucket,
                            Key=prefix + item["Key"],
                            Body=body,
                            ServerSideEncryption="AES256",
                        )
                        copied, size = copied + 1, size + len(body)
            except ClientError as exc:
                if exc.response["Error"].get("Code") != "NoSuchBucket":
                    raise
        if not copied:
            return {"archived_objects": 0}
        location = f"s3://{self.settings.archive_bucket}/{prefix}"
        return {"archive_location": location, "archived_objects": copied, "archived_bytes": size}

    async def _empty_bucket(self, bucket: str, credentials: dict[str, str] | None) -> int:
        removed = 0
        async with self._client("s3", credentials) as s3:
            try:
                paginator = s3.get_paginator("list_object_versions")
                async for found in paginator.paginate(Bucket=bucket):
                    keys = [
                        {"Key": v["Key"], "VersionId": v["VersionId"]}
                        for v in [*found.get("Versions", []), *found.get("DeleteMarkers", [])]
                    ]
                    if keys:
                        await s3.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
                        removed += len(keys)
            except ClientError as exc:
                if exc.response["Error"].get("Code") != "NoSuchBucket":
                    raise
        return removed

    async def _describe(self, cfn: Any, name: str) -> dict[str, Any] | None:
        try:
            stacks = (await cfn.describe_stacks(StackName=name))["Stacks"]
        except ClientError as exc:
            if "does not exist" in str(exc):
                return None
            raise
        return stacks[0] if stacks else None

    async def _settle(self, cfn: Any, name: str, *, deleting: bool = False) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.stack_timeout
        while True:
            stack = await self._describe(cfn, name)
            if stack is None:
                if deleting:
                    return {"StackStatus": "DELETE_COMPLETE"}
                raise RuntimeError(f"stack {name} vanished")
            status = stack["StackStatus"]
            if deleting and status == "DELETE_COMPLETE":
                return stack
            if not deleting and _DONE.match(status):
                return stack
            if (status.endswith("_COMPLETE") and _BAD.search(status)) or status.endswith("_FAILED"):
                reason = stack.get("StackStatusReason") or status
                raise RuntimeError(f"stack {name} is {status}: {reason}")
            if loop.time() > deadline:
                raise RuntimeError(f"stack {name} still {status} after {self.settings.stack_timeout:.0f} s")
            await asyncio.sleep(self.settings.poll_seconds)

    def handlers(self) -> dict[str, StepHandler]:
        return {"verify_role": self.verify_role, "deploy_stack": self.deploy_stack, "delete_stack": self.delete_stack}
