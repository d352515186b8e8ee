"""The pipeline state machine: the ``workflows/`` ASL deployed as is, with its placeholders filled.

``DefinitionBody.from_string`` grants nothing, so the role's policy is written out here and is
exactly what the definition's integrations need:

* ``.sync`` SageMaker jobs: create / describe / stop on ``training-job``, ``processing-job``,
  ``transform-job`` named ``<name prefix>-*``, plus CreateModel on ``model/<name prefix>-*``: the
  job names start with the stack's ``recpipe:namePrefix`` (Prepare reads it from
  ``RECPIPE_JOB_PREFIX``), so two stacks in one account cannot touch each other's jobs;
* ``sagemaker:ListTags`` on ``*``, as AWS's policy template for these integrations has it
  (Step Functions' "IAM policies for Amazon SageMaker AI"); it reads tags only;
* ``iam:PassRole`` on the SageMaker execution role only, to ``sagemaker.amazonaws.com`` only;
* ``events:PutTargets/PutRule/DescribeRule`` on the managed rules through which Step Functions
  learns that a job finished (``StepFunctionsGetEventsForSageMaker{Training,Processing,Transform}JobsRule``);
* ``lambda:InvokeFunction`` on the pipeline's own functions;
* for a Distributed Map, its child executions and its ItemReader/ResultWriter objects
  (``infra/distributed_map.py``, derived from the definition).

CDK adds the statements for CloudWatch Logs delivery (level ALL) and X-Ray tracing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from aws_cdk import RemovalPolicy, Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_stepfunctions as sfn
from constructs import Construct

from infra.distributed_map import DistributedMaps, grant_distributed_maps
from infra.exceptions import WiringError
from infra.nag import acknowledge, resource_finding
from infra.storage import DataBucket

SAGEMAKER_JOB_KINDS = {
    "training-job": "TrainingJob",
    "processing-job": "ProcessingJob",
    "transform-job": "TransformJob",
}
SAGEMAKER_EVENT_RULES = {
    "training-job": "StepFunctionsGetEventsForSageMakerTrainingJobsRule",
    "processing-job": "StepFunctionsGetEventsForSageMakerProcessingJobsRule",
    "transform-job": "StepFunctionsGetEventsForSageMakerTransformJobsRule",
}


def select_substitutions(placeholders: Iterable[str], available: Mapping[str, str]) -> dict[str, str]:
    """The values of exactly the placeholders the definition uses; an error naming any missing one."""
    wanted = list(dict.fromkeys(placeholders))
    missing = [name for name in wanted if name not in available]
    if missing:
        raise WiringError(
            f"The workflow definition uses placeholder(s) {', '.join('${' + m + '}' for m in missing)} that "
            f"the stack does not provide; it provides: {', '.join(sorted(available))}.")
    return {name: available[name] for name in wanted}


class PipelineStateMachine(Construct):
    def __init__(self, scope: Construct, construct_id: str, *, definition_json: str,
                 substitutions: Mapping[str, str], functions: Iterable[lambda_.IFunction],
                 sagemaker_role: iam.IRole, name_prefix: str, data: DataBucket,
                 log_retention: logs.RetentionDays) -> None:
        super().__init__(scope, construct_id)
        stack = Stack.of(self)
        machine_name = f"{name_prefix}-pipeline"
        self.log_group = logs.LogGroup(
            self, "Logs",
            log_group_name=f"/aws/vendedlogs/states/{machine_name}",
            retention=log_retention,
            removal_policy=RemovalPolicy.DESTROY,
        )
        self.role = iam.Role(
            self, "Role",
            assumed_by=iam.ServicePrincipal("states.amazonaws.com"),
            description="recpipe pipeline state machine",
        )
        # Every SageMaker job and model of a run is named "<name_prefix>-<run id>-..." (Prepare).
        job_names = f"{name_prefix}-*"
        statements: list[iam.PolicyStatement] = []
        for kind, name in SAGEMAKER_JOB_KINDS.items():
            arn = stack.format_arn(service="sagemaker", resource=kind, resource_name=job_names)
            statements.append(iam.PolicyStatement(
                sid=f"SageMaker{name}s",
                actions=[f"sagemaker:Create{name}", f"sagemaker:Describe{name}", f"sagemaker:Stop{name}"],
                resources=[arn]))
        statements.append(iam.PolicyStatement(
            sid="SageMakerModels",
            actions=["sagemaker:CreateModel"],
            resources=[stack.format_arn(service="sagemaker", resource="model", resource_name=job_names)]))
        statements.append(iam.PolicyStatement(
            sid="SageMakerListTags", actions=["sagemaker:ListTags"], resources=["*"]))
        statements.append(iam.PolicyStatement(
            sid="PassSageMakerRole",
            actions=["iam:PassRole"],
            resources=[sagemaker_role.role_arn],
            conditions={"StringEquals": {"iam:PassedToService": "sagemaker.amazonaws.com"}}))
        statements.append(iam.PolicyStatement(
            sid="SageMakerSyncEvents",
            actions=["events:PutTargets", "events:PutRule", "events:DescribeRule"],
            resources=[stack.format_arn(service="events", resource="rule", resource_name=rule)
                       for rule in SAGEMAKER_EVENT_RULES.values()]))
        statements.append(iam.PolicyStatement(
            sid="InvokePipelineFunctions",
            actions=["lambda:InvokeFunction"],
            resources=[function.function_arn for function in functions]))
        self.distributed_maps = DistributedMaps.of(definition_json)
        statements += grant_distributed_maps(self.role, self.distributed_maps,
                                             state_machine_name=machine_name, data=data, scope=self)
        self.policy = iam.Policy(self, "Policy", statements=statements, roles=[self.role])

        self.state_machine = sfn.StateMachine(
            self, "StateMachine",
            state_machine_name=machine_name,
            definition_body=sfn.DefinitionBody.from_string(definition_json),
            definition_substitutions=dict(substitutions),
            role=self.role,
            logs=sfn.LogOptions(destination=self.log_group, level=sfn.LogLevel.ALL,
                                include_execution_data=True),
            tracing_enabled=True,
        )
        # The state machine must not exist before its permissions do (the first execution would fail);
        # the role's default policy holds the Distributed Map's S3 and key grants.
        self.state_machine.node.add_dependency(self.policy, self.role)

        for kind in (*SAGEMAKER_JOB_KINDS, "model"):
            acknowledge(self, resource_finding(
                f"arn:<AWS::Partition>:sagemaker:<AWS::Region>:<AWS::AccountId>:{kind}/{job_names}"),
                f"SageMaker {kind} names are made per run ({name_prefix}-<run id>-...); the wildcard is "
                f"limited to this stack's '{name_prefix}-' prefix.")
        acknowledge(self, resource_finding("*"),
                    "Added by CDK for logging level ALL and X-Ray tracing: logs:*LogDelivery*, "
                    "logs:DescribeLogGroups/ResourcePolicies and xray:* telemetry actions support no "
                    "resource-level permissions; sagemaker:ListTags on '*' is AWS's documented policy "
                    "template for the .sync SageMaker integrations (read-only).")
