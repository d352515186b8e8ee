"""Constructs on their own, in a bare Stack(): the options the session synth does not cover."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import aws_cdk as cdk
import pytest
from aws_cdk import aws_stepfunctions as sfn
from aws_cdk.assertions import Template

from infra.exceptions import WiringError
from infra.pipeline import select_substitutions
from infra.schedule import RetrainingSchedule

os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")


def test_a_disabled_schedule_is_deployed_disabled_with_its_input() -> None:
    stack = cdk.Stack()
    machine = sfn.StateMachine(stack, "M",
                               definition_body=sfn.DefinitionBody.from_chainable(sfn.Pass(stack, "P")))
    RetrainingSchedule(stack, "Schedule", state_machine=machine, expression="rate(7 days)",
                       time_zone="Europe/Paris", enabled=False,
                       execution_input={"fm": {"epochs": 5}, "data.prefix": "input/latest"})
    template = Template.from_stack(stack)
    (schedule,) = template.find_resources("AWS::Scheduler::Schedule").values()
    props = schedule["Properties"]
    assert props["State"] == "DISABLED"
    assert props["ScheduleExpression"] == "rate(7 days)"
    assert props["ScheduleExpressionTimezone"] == "Europe/Paris"
    assert json.loads(props["Target"]["Input"]) == {"fm": {"epochs": 5}, "data.prefix": "input/latest"}


def test_substitutions_are_exactly_the_placeholders_used() -> None:
    available = {"A": "1", "B": "2", "C": "3"}
    assert select_substitutions(["B", "A", "B"], available) == {"B": "2", "A": "1"}
    with pytest.raises(WiringError, match=r"\$\{Missing\} that the stack does not provide; it provides: A"):
        select_substitutions(["A", "Missing"], available)


def _stack() -> cdk.Stack:
    """A bare stack under cdk.json's feature flags (the constructs rely on some of them)."""
    from app import cdk_json_context

    flags = {k: v for k, v in cdk_json_context().items() if k.startswith("@aws-cdk")}
    return cdk.Stack(cdk.App(context=flags), "Test")


# --- the stack's name prefix scopes the SageMaker IAM (several stacks in one account) --------------

def _statements(template: Template) -> list[dict[str, object]]:
    return [s for policy in template.find_resources("AWS::IAM::Policy").values()
            for s in policy["Properties"]["PolicyDocument"]["Statement"]]


def _pipeline_and_role(name_prefix: str) -> Template:
    from aws_cdk import aws_lambda as lambda_
    from aws_cdk import aws_logs as logs

    from infra.images import BuiltinImages
    from infra.pipeline import PipelineStateMachine
    from infra.sagemaker_role import SageMakerExecutionRole
    from infra.storage import DataBucket

    stack = _stack()
    data = DataBucket(stack, "Data", run_retention_days=1, access_log_retention_days=1)
    role = SageMakerExecutionRole(stack, "SageMaker", data=data, images=BuiltinImages(stack, "Images"),
                                  name_prefix=name_prefix)
    definition = '{"StartAt": "P", "States": {"P": {"Type": "Pass", "End": true}}}'
    PipelineStateMachine(stack, "Pipeline", definition_json=definition, substitutions={},
                         functions=[lambda_.Function.from_function_arn(
                             stack, "F", "arn:aws:lambda:eu-west-1:123456789012:function:f")],
                         sagemaker_role=role.role, data=data,
                         name_prefix=name_prefix, log_retention=logs.RetentionDays.ONE_DAY)
    return Template.from_stack(stack)


def test_sagemaker_iam_is_scoped_on_the_stacks_name_prefix() -> None:
    statements = _statements(_pipeline_and_role("team-a"))
    text = json.dumps(statements)
    for kind in ("training-job", "processing-job", "transform-job", "model"):
        assert f":{kind}/team-a-*" in text, kind
    assert ":training-job/recpipe-" not in text
    (put_logs,) = [s for s in statements if s["Action"] == "logs:PutLogEvents"]
    assert json.dumps(put_logs["Resource"]).endswith(':log-group:/aws/sagemaker/*:log-stream:team-a-*"]]}')
    (list_tags,) = [s for s in statements if "sagemaker:ListTags" in json.dumps(s["Action"])]
    assert list_tags["Action"] == "sagemaker:ListTags" and list_tags["Resource"] == "*"


# --- functions: memory per function, new functions get the default ---------------------------------

def _functions_stack(tmp_path: Path, handlers: dict[str, str], memory_mb: dict[str, int]) -> tuple[
        cdk.Stack, Template]:
    from aws_cdk import aws_lambda as lambda_
    from aws_cdk import aws_logs as logs

    from infra.functions import PipelineFunctions
    from infra.storage import DataBucket, ResultsTable

    (tmp_path / "layer").mkdir()
    (tmp_path / "layer" / "README").write_text("placeholder")
    stack = _stack()
    data = DataBucket(stack, "Data", run_retention_days=1, access_log_retention_days=1)
    table = ResultsTable(stack, "Results").table
    PipelineFunctions(stack, "Functions", handlers=handlers, code=lambda_.Code.from_inline("x = 1"),
                      dependencies=lambda_.Code.from_asset(str(tmp_path / "layer")), data=data, table=table,
                      name_prefix="recpipe", pipeline_defaults={}, log_retention=logs.RetentionDays.ONE_DAY,
                      memory_mb=memory_mb)
    return stack, Template.from_stack(stack)


def test_function_memory_setting_and_default_for_new_functions(tmp_path: Path) -> None:
    from infra.functions import DEFAULT_SPEC, FUNCTION_SPECS

    handlers = {"Plan": "lambdas.plan.handler.lambda_handler", "Repackage": "lambdas.repackage.handler.x",
                "Brandnew": "lambdas.brandnew.handler.lambda_handler"}
    stack, template = _functions_stack(tmp_path, handlers, {"Repackage": 6144})
    memory = {r["Properties"]["Handler"]: r["Properties"]["MemorySize"]
              for r in template.find_resources("AWS::Lambda::Function").values()}
    assert memory == {handlers["Plan"]: FUNCTION_SPECS["Plan"].memory_mb, handlers["Repackage"]: 6144,
                      handlers["Brandnew"]: DEFAULT_SPEC.memory_mb}
    assert DEFAULT_SPEC.memory_mb <= 3008
    assert all(spec.memory_mb <= 3008 for spec in FUNCTION_SPECS.values())
    # Above the new-account quota: a synth warning says what the deploy needs.
    annotations = cdk.assertions.Annotations.from_stack(stack)
    warnings = [m for m in annotations.find_warning("*", cdk.assertions.Match.any_value())
                if "recpipe:memoryAboveNewAccountQuota" in json.dumps(m.entry.data)]
    assert len(warnings) == 1 and "Repackage asks for 6144 MB" in json.dumps(warnings[0].entry.data)


def test_an_existing_table_is_used_not_created(tmp_path: Path) -> None:
    _, template = _functions_stack(tmp_path, {"Plan": "lambdas.plan.handler.lambda_handler"}, {})
    assert len(template.find_resources("AWS::DynamoDB::Table")) == 1
    from infra.storage import ResultsTable

    stack = _stack()
    results = ResultsTable(stack, "Results", existing_table_name="Recpipe-ResultsTable-OLD")
    assert stack.resolve(results.table.table_name) == "Recpipe-ResultsTable-OLD"
    from aws_cdk import aws_dynamodb as dynamodb

    assert not [c for c in stack.node.find_all() if isinstance(c, dynamodb.CfnTable)]


# --- a Distributed Map in the definition: child executions, ItemReader, ResultWriter ----------------

DISTRIBUTED_ASL = json.dumps({"StartAt": "Publish", "States": {"Publish": {
    "Type": "Map",
    "ItemReader": {"Resource": "arn:aws:states:::s3:getObject", "ReaderConfig": {"InputType": "JSON"},
                   "Parameters": {"Bucket.$": "$.run.publish.shards.Bucket",
                                  "Key.$": "$.run.publish.shards.Key"}},
    "ItemProcessor": {"ProcessorConfig": {"Mode": "DISTRIBUTED", "ExecutionType": "STANDARD"},
                      "StartAt": "Shard", "States": {"Shard": {"Type": "Pass", "End": True}}},
    "ResultWriter": {"Resource": "arn:aws:states:::s3:putObject",
                     "Parameters": {"Bucket": "${DataBucket}", "Prefix": "publish-results"}},
    "End": True}}})


def test_distributed_map_reads_off_the_definition() -> None:
    from infra.distributed_map import SHARD_LISTS, DistributedMaps
    from infra.exceptions import WiringError

    maps = DistributedMaps.of(DISTRIBUTED_ASL)
    assert maps == DistributedMaps(states=("Publish",), item_sources=(SHARD_LISTS,),
                                   result_prefixes=("publish-results/",))
    assert SHARD_LISTS == "runs/*/processed/shards/"
    assert DistributedMaps.of('{"StartAt": "P", "States": {"P": {"Type": "Pass", "End": true}}}') == \
        DistributedMaps()
    with pytest.raises(WiringError, match="'Publish' ResultWriter uses bucket 'elsewhere'"):
        DistributedMaps.of(DISTRIBUTED_ASL.replace('"${DataBucket}"', '"elsewhere"'))


def test_distributed_map_grants_of_the_state_machine_role() -> None:
    from aws_cdk import aws_lambda as lambda_
    from aws_cdk import aws_logs as logs

    from infra.pipeline import PipelineStateMachine
    from infra.storage import DataBucket

    stack = _stack()
    data = DataBucket(stack, "Data", run_retention_days=1, access_log_retention_days=1)
    machine = PipelineStateMachine(
        stack, "Pipeline", definition_json=DISTRIBUTED_ASL,
        substitutions={"DataBucket": data.bucket.bucket_name}, data=data, name_prefix="team-a",
        functions=[lambda_.Function.from_function_arn(
            stack, "F", "arn:aws:lambda:eu-west-1:123456789012:function:f")],
        sagemaker_role=iam_role(stack), log_retention=logs.RetentionDays.ONE_DAY)
    template = Template.from_stack(stack)
    role = stack.resolve(machine.role.role_arn)["Fn::GetAtt"][0]
    granted: dict[str, list[str]] = {}
    for policy in template.find_resources("AWS::IAM::Policy").values():
        if {"Ref": role} not in policy["Properties"]["Roles"]:
            continue
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
            actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
            resources = statement["Resource"]
            resources = resources if isinstance(resources, list) else [resources]
            for action in actions:
                granted.setdefault(action, []).extend(_text(r) for r in resources)
    machine_arn = "arn:${AWS::Partition}:states:${AWS::Region}:${AWS::AccountId}:stateMachine:team-a-pipeline"
    executions = "arn:${AWS::Partition}:states:${AWS::Region}:${AWS::AccountId}:execution:team-a-pipeline"
    assert granted["states:StartExecution"] == [machine_arn]
    for action in ("states:DescribeExecution", "states:StopExecution"):
        assert sorted(granted[action]) == [f"{executions}/*", f"{executions}:*"]
    assert granted["states:RedriveExecution"] == [f"{executions}/*"]
    bucket = _text(stack.resolve(data.bucket.bucket_arn))
    assert sorted(granted["s3:GetObject"]) == [f"{bucket}/publish-results/*",
                                               f"{bucket}/runs/*/processed/shards/*"]
    assert granted["s3:PutObject"] == [f"{bucket}/publish-results/*"]
    assert "s3:DeleteObject" not in granted
    assert any(a.startswith("kms:GenerateDataKey") for a in granted)  # the bucket is SSE-KMS


def iam_role(stack: cdk.Stack) -> Any:
    from aws_cdk import aws_iam as iam

    return iam.Role(stack, "SageMakerRole", assumed_by=iam.ServicePrincipal("sagemaker.amazonaws.com"))


def _text(resource: object) -> str:
    """A resolved ARN as text: Fn::Join -> "arn:${AWS::Partition}:...", GetAtt -> "${Id.Arn}"."""
    if isinstance(resource, str):
        return resource
    assert isinstance(resource, dict)
    if "Fn::Join" in resource:
        return "".join(_text(part) for part in resource["Fn::Join"][1])
    if "Ref" in resource:
        return "${" + resource["Ref"] + "}"
    if "Fn::GetAtt" in resource:
        logical, attribute = resource["Fn::GetAtt"]
        return "${" + logical + "." + attribute + "}"
    raise AssertionError(resource)
