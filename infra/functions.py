"""The pipeline's Lambdas: one function per ``workflows.definition.FUNCTIONS`` entry.

All functions share one code asset (``lambdas/`` + the ``recpipe`` modules they import) and one
dependency layer (numpy, scipy, Powertools), and differ by handler, sizing and permissions.

Memory: every built-in size is at most 3,008 MB, because CloudFormation refuses more on an account
whose Lambda memory quota is still the reduced one of new accounts (and rolls the whole stack
back). The work is sharded so that this suffices whatever the user count: Repackage streams one
user shard at a time, each Publish child ranks one shard, Evaluate reads a bounded sample.
``recpipe:functionMemoryMb`` (cdk.json) overrides a size per function (docs/DEPLOY.md says when).

A name in ``FUNCTIONS`` without an entry in ``FUNCTION_SPECS`` still gets a function, with
``DEFAULT_SPEC`` (3,008 MB, read/write on ``runs/`` and the table) until it is given its own.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

from aws_cdk import Annotations, Duration, RemovalPolicy, Size
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from constructs import Construct

from infra.lambda_bundling import LAMBDA_ARCHITECTURE, LAMBDA_RUNTIME
from infra.nag import acknowledge, resource_finding
from infra.settings import NEW_ACCOUNT_MAX_MEMORY_MB
from infra.storage import INPUT_PREFIX, RUNS_PREFIX, DataBucket
from recpipe import runs, tables
from recpipe.results import shards

# The environment variable through which Prepare receives the deploy-time config defaults
# (lambdas.prepare.prepare.DEFAULTS_ENV; tests/infra checks they agree).
DEFAULTS_ENV = "RECPIPE_DEFAULTS"
# Publish children write their reports here (runs/<run_id>/publish/<kind>-<shard>.json).
PUBLISH_REPORTS = f"{RUNS_PREFIX}*/{shards.REPORTS_DIR}/"


@dataclass(frozen=True, kw_only=True)
class FunctionSpec:
    """Sizing and data access of one function."""

    memory_mb: int
    timeout_minutes: int
    ephemeral_mb: int = 512
    s3_read: tuple[str, ...] = ()
    s3_write: tuple[str, ...] = ()
    s3_delete: tuple[str, ...] = ()
    table_write: bool = False
    table_read: bool = False
    description: str = ""


FUNCTION_SPECS: dict[str, FunctionSpec] = {
    "Prepare": FunctionSpec(
        memory_mb=512, timeout_minutes=1, s3_read=(INPUT_PREFIX, RUNS_PREFIX), s3_write=(RUNS_PREFIX,),
        table_read=True, table_write=True,
        description="Validates the execution input, resolves the config, takes the run lock"),
    "Plan": FunctionSpec(
        memory_mb=1024, timeout_minutes=5, s3_read=(RUNS_PREFIX,),
        description="Reads the processing manifest, emits the FM and k-NN hyperparameters"),
    "Repackage": FunctionSpec(
        memory_mb=3008, timeout_minutes=15, ephemeral_mb=10240, s3_read=(RUNS_PREFIX,),
        s3_write=(RUNS_PREFIX,), s3_delete=(RUNS_PREFIX,),  # it deletes stale user shards of a retry
        description="FM model -> k-NN item vectors and sharded user vectors"),
    "Evaluate": FunctionSpec(
        memory_mb=3008, timeout_minutes=15, ephemeral_mb=4096, s3_read=(RUNS_PREFIX,),
        s3_write=(RUNS_PREFIX,), table_read=True,
        description="Holdout metrics of the eval variant and the quality-gate threshold"),
    # The Publish Map's child (one per shard of shards/serve.json) and the state after the Map.
    # PublishShard reads the active pointer when it begins the version (based_on_run_id).
    "PublishShard": FunctionSpec(
        memory_mb=3008, timeout_minutes=15, ephemeral_mb=2048, s3_read=(RUNS_PREFIX,),
        s3_write=(PUBLISH_REPORTS,), table_read=True, table_write=True,
        description="One shard: top-N per user (or similar items) into the results table, and its report"),
    "Commit": FunctionSpec(
        memory_mb=1024, timeout_minutes=5, s3_read=(RUNS_PREFIX,), table_read=True, table_write=True,
        description="Checks every shard reported, completes the version, flips the active pointer"),
    "Release": FunctionSpec(
        memory_mb=256, timeout_minutes=1, table_read=True, table_write=True,
        description="Releases the run lock"),
}
# A function added to the definition later gets this until it is given its own entry.
DEFAULT_SPEC = FunctionSpec(memory_mb=3008, timeout_minutes=15, ephemeral_mb=2048, s3_read=(RUNS_PREFIX,),
                            s3_write=(RUNS_PREFIX,), table_read=True, table_write=True,
                            description="recpipe pipeline step")


class PipelineFunctions(Construct):
    """The Lambdas the state machine invokes, by logical name (``self.functions["Prepare"]``)."""

    def __init__(self, scope: Construct, construct_id: str, *, handlers: Mapping[str, str],
                 code: lambda_.Code, dependencies: lambda_.Code, data: DataBucket, table: dynamodb.ITable,
                 name_prefix: str, pipeline_defaults: Mapping[str, object],
                 log_retention: logs.RetentionDays, memory_mb: Mapping[str, int] | None = None) -> None:
        super().__init__(scope, construct_id)
        self.layer = lambda_.LayerVersion(
            self, "Dependencies",
            code=dependencies,
            compatible_runtimes=[LAMBDA_RUNTIME],
            compatible_architectures=[LAMBDA_ARCHITECTURE],
            description="numpy, scipy and aws-lambda-powertools for the recpipe Lambdas",
        )
        memory = dict(memory_mb or {})
        self.functions: dict[str, lambda_.Function] = {}
        self.log_groups: dict[str, logs.LogGroup] = {}
        for name, handler in handlers.items():
            spec = FUNCTION_SPECS.get(name, DEFAULT_SPEC)
            size_mb = memory.get(name, spec.memory_mb)
            environment = {
                tables.TABLE_ENV: table.table_name,
                tables.BUCKET_ENV: data.bucket.bucket_name,
                "POWERTOOLS_LOG_LEVEL": "INFO",
            }
            if name == "Prepare":
                environment[DEFAULTS_ENV] = json.dumps(dict(pipeline_defaults), sort_keys=True)
                # Prepare names the run's SageMaker jobs "<prefix>-<run id>-..."; IAM is scoped on it.
                environment[runs.JOB_PREFIX_ENV] = name_prefix
            log_group = logs.LogGroup(
                self, f"{name}Logs", retention=log_retention, removal_policy=RemovalPolicy.DESTROY)
            role = iam.Role(
                self, f"{name}Role",
                assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
                description=f"recpipe {name} Lambda",
            )
            log_group.grant_write(role)
            function = lambda_.Function(
                self, name,
                function_name=f"{name_prefix}-{name.lower()}",
                description=spec.description,
                runtime=LAMBDA_RUNTIME,
                architecture=LAMBDA_ARCHITECTURE,
                handler=handler,
                code=code,
                layers=[self.layer],
                memory_size=size_mb,
                timeout=Duration.minutes(spec.timeout_minutes),
                ephemeral_storage_size=Size.mebibytes(spec.ephemeral_mb),
                environment=environment,
                role=role,
                log_group=log_group,
                tracing=lambda_.Tracing.ACTIVE,
            )
            if size_mb > NEW_ACCOUNT_MAX_MEMORY_MB:
                Annotations.of(function).add_warning_v2(
                    "recpipe:memoryAboveNewAccountQuota",
                    f"{name} asks for {size_mb} MB: the deploy fails unless the account's Lambda memory "
                    f"quota allows it (new accounts: {NEW_ACCOUNT_MAX_MEMORY_MB} MB; docs/DEPLOY.md).")
            data.grant_prefixes(function, read=spec.s3_read, write=spec.s3_write, delete=spec.s3_delete)
            if spec.table_read and spec.table_write:
                table.grant_read_write_data(function)
            elif spec.table_write:
                table.grant_write_data(function)
            elif spec.table_read:
                table.grant_read_data(function)
            self.functions[name] = function
            self.log_groups[name] = log_group
            prefixes = tuple(dict.fromkeys((*spec.s3_read, *spec.s3_write, *spec.s3_delete)))
            if prefixes:
                data.acknowledge_prefix_grants(role, prefixes, f"The {name} Lambda")

        acknowledge(self, "AwsSolutions-L1",
                    f"The functions run {LAMBDA_RUNTIME.name} on purpose: the dependency layer holds "
                    f"numpy/scipy wheels built for exactly this Python (infra/lambda_bundling.py); "
                    f"upgrade both together.")
        acknowledge(self, resource_finding("*"),
                    "Active X-Ray tracing: xray:PutTraceSegments and xray:PutTelemetryRecords support no "
                    "resource-level permissions (the only statement on '*').")
