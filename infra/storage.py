"""The data bucket (with its access-log bucket) and the results table.

Bucket layout (``docs/ARCHITECTURE.md``)::

    input/...                    the data a run reads (data.prefix, default "input")
    code/processing/             the processing script (deployed by the stack)
    runs/<run_id>/...            everything a run writes; expires after run_retention_days

Both buckets are kept when the stack is destroyed (they hold data) and, like the table, have no
fixed physical name, so a later deploy creates new ones instead of failing on "already exists".
"""

from __future__ import annotations

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from constructs import Construct

from infra.nag import acknowledge, acknowledge_key_grant, logical_id, resource_finding
from recpipe import tables
from recpipe.runs import RUNS_PREFIX

INPUT_PREFIX = "input/"
CODE_PREFIX = "code/"
ACCESS_LOG_PREFIX = "data-bucket/"


class DataBucket(Construct):
    """The pipeline's bucket: KMS (customer key, rotated), TLS only, no public access, versioned,
    server access logs to a separate bucket, ``runs/`` expiring."""

    def __init__(self, scope: Construct, construct_id: str, *, run_retention_days: int,
                 access_log_retention_days: int, noncurrent_version_days: int = 30,
                 run_output_prefixes: tuple[str, ...] = ()) -> None:
        super().__init__(scope, construct_id)
        self.key = kms.Key(
            self, "Key",
            description="recpipe data bucket encryption",
            enable_key_rotation=True,
            removal_policy=RemovalPolicy.RETAIN,
        )
        # Server access logs cannot be delivered to an SSE-KMS bucket: this one uses SSE-S3.
        self.access_logs = s3.Bucket(
            self, "AccessLogs",
            encryption=s3.BucketEncryption.S3_MANAGED,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            enforce_ssl=True,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            lifecycle_rules=[
                s3.LifecycleRule(id="ExpireAccessLogs", expiration=Duration.days(access_log_retention_days),
                                 abort_incomplete_multipart_upload_after=Duration.days(1)),
            ],
            removal_policy=RemovalPolicy.RETAIN,
        )
        self.bucket = s3.Bucket(
            self, "Bucket",
            encryption=s3.BucketEncryption.KMS,
            encryption_key=self.key,
            bucket_key_enabled=True,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            enforce_ssl=True,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            versioned=True,
            server_access_logs_bucket=self.access_logs,
            server_access_logs_prefix=ACCESS_LOG_PREFIX,
            lifecycle_rules=[
                s3.LifecycleRule(id="ExpireRuns", prefix=RUNS_PREFIX,
                                 expiration=Duration.days(run_retention_days)),
                # What runs write outside runs/ (a Distributed Map's ResultWriter prefix) expires alike.
                *(s3.LifecycleRule(id=f"ExpireRunOutput{i}", prefix=prefix,
                                   expiration=Duration.days(run_retention_days))
                  for i, prefix in enumerate(p for p in run_output_prefixes
                                             if not p.startswith(RUNS_PREFIX))),
                s3.LifecycleRule(id="AbortIncompleteUploads",
                                 abort_incomplete_multipart_upload_after=Duration.days(7),
                                 noncurrent_version_expiration=Duration.days(noncurrent_version_days),
                                 expired_object_delete_marker=True),
            ],
            removal_policy=RemovalPolicy.RETAIN,
        )

    def arn_for(self, prefix: str) -> str:
        """``arn:...:bucket/<prefix>*``."""
        return self.bucket.arn_for_objects(f"{prefix}*")

    def prefix_finding(self, prefix: str) -> str:
        """The cdk-nag IAM5 finding of a grant on ``<prefix>*``."""
        return resource_finding(f"<{logical_id(self.bucket.node.default_child)}.Arn>/{prefix}*")  # type: ignore[arg-type]

    def acknowledge_prefix_grants(self, scope: Construct, prefixes: tuple[str, ...], who: str) -> None:
        for prefix in prefixes:
            acknowledge(scope, self.prefix_finding(prefix),
                        f"{who} reads/writes objects whose keys are only known at run time (run ids, "
                        f"shards); the grant is limited to the {prefix} prefix of the data bucket.")
        acknowledge_key_grant(scope, "the data bucket's key")

    def grant_prefixes(self, grantee: iam.IGrantable, *, read: tuple[str, ...] = (),
                       write: tuple[str, ...] = (), delete: tuple[str, ...] = ()) -> None:
        """Object read/write/delete on key prefixes only, listing restricted to those prefixes, and
        the key. (Deleting in this versioned bucket adds a delete marker; the noncurrent versions
        expire with the bucket's lifecycle rule.)"""
        principal = grantee.grant_principal
        if read:
            principal.add_to_principal_policy(iam.PolicyStatement(
                actions=["s3:GetObject"], resources=[self.arn_for(p) for p in read]))
        if write:
            principal.add_to_principal_policy(iam.PolicyStatement(
                actions=["s3:PutObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"],
                resources=[self.arn_for(p) for p in write]))
        if delete:
            principal.add_to_principal_policy(iam.PolicyStatement(
                actions=["s3:DeleteObject"], resources=[self.arn_for(p) for p in delete]))
        prefixes = sorted({*read, *write, *delete})
        if prefixes:
            principal.add_to_principal_policy(iam.PolicyStatement(
                actions=["s3:ListBucket"],
                resources=[self.bucket.bucket_arn],
                conditions={"StringLike": {"s3:prefix": [f"{p}*" for p in prefixes]}}))
        if write:
            self.key.grant_encrypt_decrypt(grantee)
        elif read:
            self.key.grant_decrypt(grantee)


class ResultsTable(Construct):
    """The results table of ``recpipe.tables`` (recommendations, versions, pointer, run lock).

    The stack keeps the table when it is destroyed (RETAIN and deletion protection: it holds the
    published versions), so it has no fixed physical name: a fixed name would make the next deploy
    fail with "already exists". CloudFormation names it; the ``TableName`` output carries the name.
    ``existing_table_name`` instead uses a table that already exists (e.g. the one a ``cdk destroy``
    retained): the stack then grants on it and creates none.
    """

    def __init__(self, scope: Construct, construct_id: str, *,
                 existing_table_name: str | None = None) -> None:
        super().__init__(scope, construct_id)
        self.table: dynamodb.ITable
        if existing_table_name:
            self.table = dynamodb.Table.from_table_name(self, "Table", existing_table_name)
            return
        self.table = dynamodb.Table(
            self, "Table",
            partition_key=dynamodb.Attribute(name=tables.PARTITION_KEY, type=dynamodb.AttributeType.STRING),
            sort_key=dynamodb.Attribute(name=tables.SORT_KEY, type=dynamodb.AttributeType.STRING),
            billing_mode=dynamodb.BillingMode.PAY_PER_REQUEST,
            point_in_time_recovery_specification=dynamodb.PointInTimeRecoverySpecification(
                point_in_time_recovery_enabled=True),
            encryption=dynamodb.TableEncryption.AWS_MANAGED,
            time_to_live_attribute=tables.TTL_ATTRIBUTE,
            deletion_protection=True,
            removal_policy=RemovalPolicy.RETAIN,
        )
