"""Constructs on their own, in a bare Stack(): the options the session synth does not cover."""

from __future__ import annotations

import json
import os
from pathlib import Path

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


def test_the_default_name_prefix_is_the_local_job_prefix() -> None:
    # A stack deployed with the default recpipe:namePrefix names its jobs as a local run does.
    from infra.settings import CONTEXT_DEFAULTS
    from recpipe.runs import DEFAULT_JOB_PREFIX

    assert CONTEXT_DEFAULTS["recpipe:namePrefix"] == DEFAULT_JOB_PREFIX


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
                         sagemaker_role=role.role,
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
