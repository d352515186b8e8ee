"""The pipeline's Lambdas: one function per ``workflows.definition.FUNCTIONS`` entry.

All functions share one code asset (``lambdas/`` + the ``recpipe`` modules they import) and one
dependency layer (numpy, scipy, Powertools), and differ by handler, sizing and permissions. Sizing
is for a catalogue of ~1M users: Repackage holds the FM factors and writes every user vector, and
Publish reads the whole transform output and writes one DynamoDB item per user, so both get the
maximum memory (10 GB, which also buys 6 vCPUs) and timeout (15 minutes).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

from aws_cdk import Duration, RemovalPolicy, Size
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from constructs import Construct

from infra.lambda_bundling import LAMBDA_ARCHITECTURE, LAMBDA_RUNTIME
from infra.nag import acknowledge, resource_finding
from infra.storage import INPUT_PREFIX, RUNS_PREFIX, DataBucket
from recpipe import tables

# The environment variable through which Prepare receives the deploy-time config defaults
# (lambdas.prepare.prepare.DEFAULTS_ENV; tests/infra checks they agree).
DEFAULTS_ENV = "RECPIPE_DEFAULTS"


@dataclass(frozen=True, kw_only=True)
class FunctionSpec:
    """Sizing and data access of one function."""

    memory_mb: int
    timeout_minutes: int
    ephemeral_mb: int = 512
    s3_read: tuple[str, ...] = ()
    s3_write: tuple[str, ...] = ()
    table_write: bool = False
    table_read: bool = False
    description: str = ""


FUNCTION_SPECS: dict[str, FunctionSpec] = {
    "Prepare": FunctionSpec(
        memory_mb=512, timeout_minutes=1, s3_read=(INPUT_PREFIX, RUNS_PREFIX), s3_write=(RUNS_PREFIX,),
        table_write=True,
        description="Validates the execution input, resolves the config, takes the run lock"),
    "Plan": FunctionSpec(
        memory_mb=1024, timeout_minutes=5, s3_read=(RUNS_PREFIX,),
        description="Reads the processing manifest, emits the FM and k-NN hyperparameters"),
    "Repackage": FunctionSpec(
        memory_mb=10240, timeout_minutes=15, ephemeral_mb=10240, s3_read=(RUNS_PREFIX,),
        s3_write=(RUNS_PREFIX,),
        description="FM model -> k-NN item vectors and sharded user vectors"),
    "Evaluate": FunctionSpec(
        memory_mb=4096, timeout_minutes=15, ephemeral_mb=4096, s3_read=(RUNS_PREFIX,),
        s3_write=(RUNS_PREFIX,), table_read=True,
        description="Holdout metrics of the eval variant and the quality-gate threshold"),
    "Publish": FunctionSpec(
        memory_mb=10240, timeout_minutes=15, ephemeral_mb=10240, s3_read=(RUNS_PREFIX,),
        s3_write=(RUNS_PREFIX,), table_write=True,
        description="Top-N per user into the results table, then flips the active version"),
    "Release": FunctionSpec(
        memory_mb=256, timeout_minutes=1, table_write=True,
        description="Releases the run lock"),
}
# A function added to the definition later gets this until it is given its own entry.
DEFAULT_SPEC = FunctionSpec(memory_mb=3008, timeout_minutes=15, ephemeral_mb=2048, s3_read=(RUNS_PREFIX,),
                            s3_write=(RUNS_PREFIX,), table_write=True,
                            description="recpipe pipeline step")


class PipelineFunctions(Construct):
    """The Lambdas the state machine invokes, by logical name (``self.functions["Prepare"]``)."""

    def __init__(self, scope: Construct, construct_id: str, *, handlers: Mapping[str, str],
                 code: lambda_.Code, dependencies: lambda_.Code, data: DataBucket, table: dynamodb.ITable,
                 name_prefix: str, pipeline_defaults: Mapping[str, object],
                 log_retention: logs.RetentionDays) -> None:
        super().__init__(scope, construct_id)
        self.layer = lambda_.LayerVersion(
            self, "Dependencies",
            code=dependencies,
            compatible_runtimes=[LAMBDA_RUNTIME],
            compatible_architectures=[LAMBDA_ARCHITECTURE],
            description="numpy, scipy and aws-lambda-powertools for the recpipe Lambdas",
        )
        self.functions: dict[str, lambda_.Function] = {}
        self.log_groups: dict[str, logs.LogGroup] = {}
        for name, handler in handlers.items():
            spec = FUNCTION_SPECS.get(name, DEFAULT_SPEC)
            environment = {
                tables.TABLE_ENV: table.table_name,
                tables.BUCKET_ENV: data.bucket.bucket_name,
                "POWERTOOLS_LOG_LEVEL": "INFO",
            }
            if name == "Prepare":
                environment[DEFAULTS_ENV] = json.dumps(dict(pipeline_defaults), sort_keys=True)
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
                memory_size=spec.memory_mb,
                timeout=Duration.minutes(spec.timeout_minutes),
                ephemeral_storage_size=Size.mebibytes(spec.ephemeral_mb),
                environment=environment,
                role=role,
                log_group=log_group,
                tracing=lambda_.Tracing.ACTIVE,
            )
            data.grant_prefixes(function, read=spec.s3_read, write=spec.s3_write)
            if spec.table_write:
                table.grant_read_write_data(function)
            elif spec.table_read:
                table.grant_read_data(function)
            self.functions[name] = function
            self.log_groups[name] = log_group
            prefixes = tuple(dict.fromkeys((*spec.s3_read, *spec.s3_write)))
            if prefixes:
                data.acknowledge_prefix_grants(role, prefixes, f"The {name} Lambda")

        acknowledge(self, "AwsSolutions-L1",
                    f"The functions run {LAMBDA_RUNTIME.name} on purpose: the dependency layer holds "
                    f"numpy/scipy wheels built for exactly this Python (infra/lambda_bundling.py); "
                    f"upgrade both together.")
        acknowledge(self, resource_finding("*"),
                    "Active X-Ray tracing: xray:PutTraceSegments and xray:PutTelemetryRecords support no "
                    "resource-level permissions (the only statement on '*').")
