"""recpipe.remote.aws: names from stack outputs (botocore Stubber: moto's CloudFormation needs extras
this project does not install), executions by run id / name / ARN (moto's Step Functions), and
boto3 errors turned into messages."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import types
from collections.abc import Iterator
from typing import Any
from unittest import mock

import boto3
import pytest
from botocore.exceptions import NoCredentialsError, NoRegionError
from botocore.stub import Stubber
from moto import mock_aws
from moto.stepfunctions.parser import models as moto_sfn_models

from recpipe.remote import aws
from recpipe.remote.exceptions import AwsAccessError, ExecutionNotFoundError, StackOutputsError
from recpipe.runs import derive_run_id
from tests.moto_executions import wait_for_executions

REGION = "eu-west-1"
SM_ARN = f"arn:aws:states:{REGION}:123456789012:stateMachine:recpipe-pipeline"
START = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)


def stubbed_cloudformation(outputs: dict[str, str] | None, stack: str = "Recpipe") -> Any:
    """A CloudFormation client answering one DescribeStacks: ``outputs``, or 'does not exist' for None."""
    cfn = boto3.client("cloudformation", region_name=REGION, aws_access_key_id="x", aws_secret_access_key="x")
    stubber = Stubber(cfn)
    if outputs is None:
        stubber.add_client_error(
            "describe_stacks",
            "ValidationError",
            f"Stack with id {stack} does not exist",
            400,
            expected_params={"StackName": stack},
        )
    else:
        stubber.add_response(
            "describe_stacks",
            {
                "Stacks": [
                    {
                        "StackName": stack,
                        "CreationTime": "2025-01-01T00:00:00Z",
                        "StackStatus": "CREATE_COMPLETE",
                        "Outputs": [{"OutputKey": k, "OutputValue": v} for k, v in outputs.items()],
                    }
                ]
            },
            expected_params={"StackName": stack},
        )
    stubber.activate()
    return cfn


class Factory:
    """A client factory recording which services were asked for."""

    def __init__(self, cfn: Any = None) -> None:
        self.cfn = cfn
        self.calls: list[tuple[str, str | None]] = []

    def __call__(self, service: str, region: str | None) -> Any:
        self.calls.append((service, region))
        assert service == "cloudformation" and self.cfn is not None
        return self.cfn


def test_explicit_names_need_no_stack() -> None:
    factory = Factory()
    target = aws.resolve_target(
        table="t", state_machine_arn=SM_ARN, need_table=True, need_state_machine=True, client=factory
    )
    assert (target.table, target.state_machine_arn, target.region, target.stack) == (
        "t",
        SM_ARN,
        REGION,
        None,
    )
    assert factory.calls == []


def test_missing_names_come_from_the_default_stack_outputs() -> None:
    factory = Factory(stubbed_cloudformation({"TableName": "rp-results", "StateMachineArn": SM_ARN}))
    target = aws.resolve_target(need_table=True, want_state_machine=True, client=factory)
    assert (target.table, target.state_machine_arn, target.stack) == ("rp-results", SM_ARN, "Recpipe")
    assert target.region == REGION  # from the state machine ARN
    assert factory.calls == [("cloudformation", None)]


def test_a_wanted_state_machine_alone_reads_only_a_named_stack() -> None:
    assert aws.resolve_target(table="t", want_state_machine=True, client=Factory()).state_machine_arn is None
    factory = Factory(stubbed_cloudformation({"TableName": "x", "StateMachineArn": SM_ARN}, stack="Other"))
    target = aws.resolve_target(
        table="t", stack="Other", region="us-east-2", want_state_machine=True, client=factory
    )
    assert (target.table, target.state_machine_arn, target.region) == ("t", SM_ARN, "us-east-2")
    assert factory.calls == [("cloudformation", "us-east-2")]


@pytest.mark.parametrize(
    ("outputs", "kwargs", "message"),
    [
        (None, {"need_table": True}, "The CloudFormation stack 'Recpipe' does not exist"),
        (
            {"BucketName": "b"},
            {"need_table": True},
            "The CloudFormation stack 'Recpipe' has no output 'TableName' (its outputs: BucketName)",
        ),
        ({"TableName": "t"}, {"need_state_machine": True}, "Pass --state-machine-arn instead"),
    ],
)
def test_stack_problems_name_the_stack_and_the_option_to_pass(
    outputs: dict[str, str] | None, kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(StackOutputsError, match=message.replace("(", r"\(").replace(")", r"\)")):
        aws.resolve_target(client=Factory(stubbed_cloudformation(outputs)), **kwargs)


def test_other_cloudformation_errors_are_wrapped_with_the_call() -> None:
    cfn = boto3.client("cloudformation", region_name=REGION, aws_access_key_id="x", aws_secret_access_key="x")
    stubber = Stubber(cfn)
    stubber.add_client_error("describe_stacks", "AccessDenied", "not allowed", 403)
    stubber.activate()
    with pytest.raises(
        AwsAccessError,
        match="AWS refused reading the outputs of the CloudFormation stack "
        "'Recpipe': AccessDenied: not allowed",
    ):
        aws.stack_outputs(cfn, "Recpipe")


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (NoRegionError(), "No AWS region for x: pass --region"),
        (NoCredentialsError(), "No AWS credentials for x"),
    ],
)
def test_aws_errors_say_what_to_configure(error: Exception, message: str) -> None:
    with pytest.raises(AwsAccessError, match=message), aws.aws_errors("x"):
        raise error


def test_region_of_arn() -> None:
    assert aws.region_of_arn(SM_ARN) == REGION
    assert aws.region_of_arn("recpipe-results") is None
    assert aws.region_of_arn(None) is None
    assert aws.region_of_arn("arn:aws") is None


@pytest.fixture()
def machine() -> Iterator[tuple[Any, str, dict[str, str]]]:
    """(sfn client, state machine ARN, execution name -> ARN) with three finished executions."""
    # Executed for real (moto's default leaves every execution RUNNING), so each one ends SUCCEEDED.
    with mock_aws(config={"stepfunctions": {"execute_state_machine": True}}):
        sfn = boto3.client("stepfunctions", region_name=REGION)
        arn = sfn.create_state_machine(
            name="recpipe-pipeline",
            roleArn="arn:aws:iam::123456789012:role/r",
            definition=json.dumps({"StartAt": "P", "States": {"P": {"Type": "Pass", "End": True}}}),
        )["stateMachineArn"]
        names = ["weekly-1", "Manual_Run_2025-01", "weekly-2"]
        started = {}
        # A patched clock gives the executions distinct start dates (listed newest first) without
        # sleeping: moto's start_execution reads datetime.datetime.now.
        ticks = itertools.count()
        clock = types.SimpleNamespace(
            datetime=types.SimpleNamespace(now=lambda tz=None: START + dt.timedelta(seconds=next(ticks))),
            timezone=dt.timezone,
        )
        with mock.patch.object(moto_sfn_models, "datetime", clock):
            for name in names:
                started[name] = sfn.start_execution(stateMachineArn=arn, name=name)["executionArn"]
        wait_for_executions()
        yield sfn, arn, started


def test_find_execution_by_name_run_id_arn_or_newest(machine: tuple[Any, str, dict[str, str]]) -> None:
    sfn, arn, started = machine
    assert aws.find_execution(sfn, "weekly-1", arn) == started["weekly-1"]
    run_id = derive_run_id("Manual_Run_2025-01")
    assert run_id != "Manual_Run_2025-01"
    assert aws.find_execution(sfn, run_id, arn) == started["Manual_Run_2025-01"]
    assert aws.find_execution(sfn, started["weekly-1"], None) == started["weekly-1"]
    assert aws.find_execution(sfn, None, arn) == started["weekly-2"]
    assert aws.execution_status(sfn, arn, "weekly-2") == "SUCCEEDED"
    assert aws.execution_status(sfn, arn, "nope") is None


@pytest.mark.parametrize(
    ("ref", "use_machine", "message"),
    [
        (
            "nope",
            True,
            "No execution of .* has run id or name 'nope' \\(among the newest 3; latest: weekly-2",
        ),
        ("nope", False, "needs the state machine: pass --state-machine-arn ARN or --stack NAME"),
        (
            f"arn:aws:states:{REGION}:123456789012:execution:recpipe-pipeline:gone",
            False,
            "The execution .*:gone does not exist",
        ),
        (SM_ARN, False, "is not an execution ARN"),
    ],
)
def test_find_execution_errors(
    machine: tuple[Any, str, dict[str, str]], ref: str, use_machine: bool, message: str
) -> None:
    sfn, arn, _ = machine
    with pytest.raises(ExecutionNotFoundError, match=message):
        aws.find_execution(sfn, ref, arn if use_machine else None)
