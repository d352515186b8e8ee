"""The recpipe stack: composes the constructs, wires grants and substitutions, and exports outputs.

Environment-agnostic: nothing here depends on the account or region at synth time (the built-in
image URIs resolve through a region mapping at deploy time), so one template deploys anywhere.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aws_cdk import Annotations, CfnOutput, Stack
from aws_cdk import aws_logs as logs
from constructs import Construct

from infra.alerts import FailureAlerts
from infra.api import ReadApi
from infra.distributed_map import DistributedMaps
from infra.functions import PipelineFunctions
from infra.images import FM_IMAGE, KNN_IMAGE, PROCESSING_IMAGE, BuiltinImages
from infra.lambda_bundling import dependency_layer_code, directory_size, function_code, stage_function_code
from infra.lock_cleanup import LockCleanup
from infra.pipeline import PipelineStateMachine, select_substitutions
from infra.processing_code import ProcessingCode
from infra.sagemaker_role import SageMakerExecutionRole
from infra.schedule import RetrainingSchedule
from infra.settings import LOG_RETENTION_DAYS, RecpipeSettings
from infra.storage import DataBucket, ResultsTable
from recpipe.remote.aws import BUCKET_OUTPUT, STATE_MACHINE_OUTPUT, TABLE_OUTPUT

PROJECT_ROOT = Path(__file__).resolve().parent.parent

_RETENTION = dict(zip(LOG_RETENTION_DAYS, (
    "ONE_DAY", "THREE_DAYS", "FIVE_DAYS", "ONE_WEEK", "TWO_WEEKS", "ONE_MONTH", "TWO_MONTHS", "THREE_MONTHS",
    "FOUR_MONTHS", "FIVE_MONTHS", "SIX_MONTHS", "ONE_YEAR", "THIRTEEN_MONTHS", "EIGHTEEN_MONTHS", "TWO_YEARS",
    "THREE_YEARS", "FIVE_YEARS", "SIX_YEARS", "SEVEN_YEARS", "EIGHT_YEARS", "NINE_YEARS", "TEN_YEARS"),
    strict=True))


def log_retention(days: int) -> logs.RetentionDays:
    """The CloudWatch Logs retention enum member for a number of days."""
    return logs.RetentionDays[_RETENTION[days]]


@dataclass(frozen=True, kw_only=True)
class WorkflowArtifacts:
    """What the stack deploys from ``workflows/``: the ASL, its placeholders, the Lambda handlers
    and the processing code files."""

    definition_json: str
    placeholders: tuple[str, ...]
    handlers: Mapping[str, str]
    processing_files: Mapping[str, Path]

    @classmethod
    def load(cls) -> WorkflowArtifacts:
        # The committed ASL (statemachine.asl.json, kept equal to definition_json() by the workflows
        # tests) is read as text: building it anew would import the Data Science SDK (~10 s).
        from workflows import definition, processing

        return cls(
            definition_json=definition.ASL_PATH.read_text(encoding="utf-8"),
            placeholders=tuple(definition.PLACEHOLDERS),
            handlers=dict(definition.FUNCTIONS),
            processing_files={name: Path(path) for name, path in processing.code_files().items()},
        )


def function_arn_placeholder(name: str) -> str:
    return f"{name}FunctionArn"


class RecpipeStack(Stack):
    def __init__(self, scope: Construct, construct_id: str, *, settings: RecpipeSettings,
                 workflow: WorkflowArtifacts, cache_dir: Path, project_root: Path = PROJECT_ROOT,
                 **kwargs: Any) -> None:
        super().__init__(scope, construct_id, **kwargs)
        retention = log_retention(settings.log_retention_days)
        self.settings = settings

        self.data = DataBucket(self, "Data", run_retention_days=settings.run_retention_days,
                               access_log_retention_days=settings.access_log_retention_days,
                               run_output_prefixes=DistributedMaps.of(workflow.definition_json).result_prefixes)
        self.results = ResultsTable(self, "Results", existing_table_name=settings.existing_table_name)
        self.images = BuiltinImages(self, "Images")
        self.processing_code = ProcessingCode(self, "ProcessingCode", data=self.data,
                                              files=workflow.processing_files, cache_dir=cache_dir)

        staged_code = stage_function_code(project_root, cache_dir)
        code = function_code(staged_code)
        self.functions = PipelineFunctions(
            self, "Functions",
            handlers=workflow.handlers,
            code=code,
            dependencies=dependency_layer_code(cache_dir=cache_dir, bundle=settings.bundle_dependencies,
                                               function_code_bytes=directory_size(staged_code)),
            data=self.data,
            table=self.results.table,
            name_prefix=settings.name_prefix,
            pipeline_defaults=settings.pipeline_defaults,
            log_retention=retention,
            memory_mb=settings.function_memory_mb,
        )
        if not settings.bundle_dependencies:
            Annotations.of(self.functions.layer).add_warning_v2(
                "recpipe:placeholderLayer",
                "recpipe:bundleDependencies is false: the Lambda layer is a placeholder without numpy/scipy. "
                "Fine for tests; never deploy this assembly.")
        self.api = ReadApi(self, "Api", table=self.results.table, code=code, layer=self.functions.layer,
                           name_prefix=settings.name_prefix, log_retention=retention)
        self.sagemaker = SageMakerExecutionRole(self, "SageMaker", data=self.data, images=self.images,
                                                name_prefix=settings.name_prefix)

        available = {
            "SageMakerRoleArn": self.sagemaker.role.role_arn,
            "DataBucket": self.data.bucket.bucket_name,
            "ResultsTable": self.results.table.table_name,
            "FmImageUri": self.images.image_uri(FM_IMAGE),
            "KnnImageUri": self.images.image_uri(KNN_IMAGE),
            "ProcessingImageUri": self.images.image_uri(PROCESSING_IMAGE),
            **{function_arn_placeholder(name): fn.function_arn
               for name, fn in self.functions.functions.items()},
        }
        self.pipeline = PipelineStateMachine(
            self, "Pipeline",
            definition_json=workflow.definition_json,
            substitutions=select_substitutions(workflow.placeholders, available),
            functions=self.functions.functions.values(),
            sagemaker_role=self.sagemaker.role,
            name_prefix=settings.name_prefix,
            data=self.data,
            log_retention=retention,
        )
        # A run must not start before its processing code is in the bucket.
        self.pipeline.state_machine.node.add_dependency(self.processing_code.deployment)

        self.schedule = RetrainingSchedule(
            self, "Schedule",
            state_machine=self.pipeline.state_machine,
            expression=settings.schedule.expression,
            time_zone=settings.schedule.time_zone,
            enabled=settings.schedule.enabled,
            execution_input=settings.schedule.input,
        )
        self.alerts = FailureAlerts(self, "Alerts", state_machine=self.pipeline.state_machine,
                                    email=settings.alert_email)
        # A stopped, timed-out or runtime-failed execution skips its Catch: release its run lock from
        # its status change.
        self.lock_cleanup = LockCleanup(self, "LockCleanup", state_machine=self.pipeline.state_machine,
                                        release_function=self.functions.functions["Release"])
        self.alerts.notify(self.lock_cleanup.alarm)

        CfnOutput(self, BUCKET_OUTPUT, value=self.data.bucket.bucket_name,
                  description="Data bucket: upload interactions under input/interactions/")
        CfnOutput(self, TABLE_OUTPUT, value=self.results.table.table_name,
                  description="Results table (recpipe recommend USER_ID --aws)")
        CfnOutput(self, "ApiUrl", value=self.api.url,
                  description="Read API (IAM auth, SigV4): GET <url>recommendations/USER_ID?n=10, "
                              "GET <url>similar/ITEM_ID")
        CfnOutput(self, STATE_MACHINE_OUTPUT, value=self.pipeline.state_machine.state_machine_arn,
                  description="Pipeline state machine (recpipe run --aws --state-machine-arn ...)")
        CfnOutput(self, "AlertsTopicArn", value=self.alerts.topic.topic_arn,
                  description="SNS topic notified when a pipeline execution fails")
        CfnOutput(self, "SageMakerRoleArn", value=self.sagemaker.role.role_arn,
                  description="Execution role of the SageMaker jobs")
