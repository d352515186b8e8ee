"""The moto hook: Task dispatch, named errors as AWS names them, shortened Retry waits, and a loud
failure when moto's internals move."""

from __future__ import annotations

import importlib
import json
import time
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws

from recpipe.executions.follow import snapshot
from recpipe.local import moto_hook
from recpipe.local.exceptions import MotoInternalsError, TaskFailure
from recpipe.local.moto_hook import TaskCall, installed
from tests.moto_executions import wait_for_executions

ROLE = "arn:aws:iam::123456789012:role/test"


def test_moto_internals_the_hook_relies_on_are_where_it_expects() -> None:
    moto_hook.check_moto_internals()  # raises MotoInternalsError naming what moved
    factory = importlib.import_module(
        "moto.stepfunctions.parser.asl.component.state.exec.state_task.state_task_factory"
    )
    assert callable(factory.state_task_service_for)
    retrier = importlib.import_module("moto.stepfunctions.parser.asl.component.common.retry.retrier_decl")
    assert retrier.time is time


def test_a_moved_internal_is_reported_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        moto_hook,
        "MOTO_INTERNALS",
        (*moto_hook.MOTO_INTERNALS, ("moto.stepfunctions.parser.api", "NoSuchThing")),
    )
    with pytest.raises(MotoInternalsError, match="has no attribute 'NoSuchThing'"):
        moto_hook.check_moto_internals()


@pytest.fixture()
def sfn() -> Iterator[Any]:
    with mock_aws():
        yield boto3.client("stepfunctions", region_name="us-east-1")


def _run(sfn: Any, asl: dict[str, Any], execution_input: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    arn = sfn.create_state_machine(name=f"m{time.monotonic_ns()}", definition=json.dumps(asl), roleArn=ROLE)[
        "stateMachineArn"
    ]
    execution = sfn.start_execution(stateMachineArn=arn, name="e1", input=json.dumps(execution_input))
    wait_for_executions(timeout_s=30)
    outcome = snapshot(sfn, execution["executionArn"])
    return sfn.describe_execution(executionArn=execution["executionArn"]), outcome


DISPATCH_ASL: dict[str, Any] = {
    "StartAt": "Train",
    "States": {
        "Train": {
            "Type": "Task",
            "Resource": "arn:aws:states:::sagemaker:createTrainingJob.sync",
            "Parameters": {"TrainingJobName.$": "States.Format('job-{}', $.run)", "Static": "x"},
            "ResultSelector": {"artifact.$": "$.ModelArtifacts.S3ModelArtifacts"},
            "ResultPath": "$.fm",
            "Next": "Invoke",
        },
        "Invoke": {
            "Type": "Task",
            "Resource": "arn:aws:states:::lambda:invoke",
            "Parameters": {
                "FunctionName": "arn:aws:lambda:us-east-1:123456789012:function:f",
                "Payload": {"artifact.$": "$.fm.artifact"},
            },
            "ResultSelector": {"out.$": "$.Payload"},
            "ResultPath": "$.lambda",
            "End": True,
        },
    },
}


def test_task_states_are_dispatched_to_the_local_handlers_with_evaluated_parameters(sfn: Any) -> None:
    calls: list[TaskCall] = []

    def sagemaker(call: TaskCall) -> dict[str, Any]:
        calls.append(call)
        return {
            "TrainingJobStatus": "Completed",
            "ModelArtifacts": {"S3ModelArtifacts": f"s3://b/{call.parameters['TrainingJobName']}.tar.gz"},
        }

    def lam(call: TaskCall) -> dict[str, Any]:
        calls.append(call)
        return {"StatusCode": 200, "Payload": {"seen": call.parameters["Payload"]["artifact"]}}

    with installed({"sagemaker": sagemaker, "lambda": lam}):
        describe, outcome = _run(sfn, DISPATCH_ASL, {"run": 7})
    assert describe["status"] == "SUCCEEDED"
    assert json.loads(describe["output"]) == {
        "run": 7,
        "fm": {"artifact": "s3://b/job-7.tar.gz"},
        "lambda": {"out": {"seen": "s3://b/job-7.tar.gz"}},
    }
    assert [(c.service, c.action, c.sync, c.state_name) for c in calls] == [
        ("sagemaker", "createTrainingJob", True, "Train"),
        ("lambda", "invoke", False, "Invoke"),
    ]
    assert calls[0].parameters == {"TrainingJobName": "job-7", "Static": "x"}
    assert calls[0].execution_name == "e1"
    assert [s.name for s in outcome.states] == ["Train", "Invoke"]
    assert all(s.status == "succeeded" for s in outcome.states)


def _catching_asl(
    resource: str, error_equals: list[str], retry: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    task: dict[str, Any] = {
        "Type": "Task",
        "Resource": resource,
        "Parameters": {"x": 1},
        "Catch": [{"ErrorEquals": error_equals, "ResultPath": "$.error", "Next": "Caught"}],
        "Next": "Done",
    }
    if retry:
        task["Retry"] = retry
    return {
        "StartAt": "Work",
        "States": {"Work": task, "Caught": {"Type": "Pass", "End": True}, "Done": {"Type": "Succeed"}},
    }


@pytest.mark.parametrize(
    ("error", "error_equals"),
    [
        ("SageMaker.AmazonSageMakerException", ["SageMaker.AmazonSageMakerException"]),
        ("States.TaskFailed", ["States.TaskFailed"]),
        ("ValueError", ["ValueError"]),
        ("Lambda.Unknown", ["Lambda.Unknown"]),
        ("FooError", ["States.TaskFailed"]),  # as on AWS, States.TaskFailed matches any task error
        ("FooError", ["States.ALL"]),
    ],
)
def test_named_errors_are_matched_by_catch_as_on_aws(sfn: Any, error: str, error_equals: list[str]) -> None:
    def failing(call: TaskCall) -> Any:
        raise TaskFailure(error, f"cause of {error}")

    with installed({"sagemaker": failing}):
        describe, outcome = _run(
            sfn, _catching_asl("arn:aws:states:::sagemaker:createModel", error_equals), {}
        )
    assert describe["status"] == "SUCCEEDED"
    assert json.loads(describe["output"])["error"] == {"Error": error, "Cause": f"cause of {error}"}
    assert [s.name for s in outcome.states] == ["Work", "Caught"]
    work = outcome.states[0]
    assert (work.name, work.status, work.caught, work.error) == ("Work", "failed", True, error)


def test_an_error_not_in_error_equals_is_not_caught(sfn: Any) -> None:
    def failing(call: TaskCall) -> Any:
        raise TaskFailure("SageMaker.AmazonSageMakerException", "rejected")

    with installed({"sagemaker": failing}):
        describe, outcome = _run(
            sfn, _catching_asl("arn:aws:states:::sagemaker:createModel", ["OtherError"]), {}
        )
    assert describe["status"] == "FAILED"
    assert describe["error"] == "SageMaker.AmazonSageMakerException"
    assert [s.name for s in outcome.states] == ["Work"]


def test_retry_matches_the_name_and_its_waits_are_shortened(
    sfn: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    attempts: list[int] = []
    waits: list[tuple[float, float]] = []  # (the wait the Retry asked for, the scale applied to it)

    def flaky(call: TaskCall) -> Any:
        attempts.append(len(attempts))
        if len(attempts) < 3:
            raise TaskFailure("Lambda.ServiceException", "try again")
        return {"Payload": {"ok": True}, "StatusCode": 200}

    original_sleep = moto_hook._ScaledTime.sleep

    def recording_sleep(self: Any, seconds: float) -> None:
        waits.append((seconds, self.scale))
        original_sleep(self, seconds)

    monkeypatch.setattr(moto_hook._ScaledTime, "sleep", recording_sleep)
    # Real waits would be 10 s + 20 s; scaled by 0.01 they are 0.1 s + 0.2 s.
    retry = [
        {
            "ErrorEquals": ["Lambda.ServiceException"],
            "IntervalSeconds": 10,
            "MaxAttempts": 3,
            "BackoffRate": 2.0,
        }
    ]
    with installed({"lambda": flaky}, retry_scale=0.01):
        describe, outcome = _run(
            sfn, _catching_asl("arn:aws:states:::lambda:invoke", ["States.ALL"], retry), {}
        )
    assert describe["status"] == "SUCCEEDED"
    assert len(attempts) == 3
    # The backoff is the ASL's (10 s, then 10 x 2.0), each wait scaled: no wall-clock measurement.
    assert waits == [(10.0, 0.01), (20.0, 0.01)]
    assert outcome.states[0].attempts == 3


def test_the_hook_is_removed_on_exit() -> None:
    factory = importlib.import_module(
        "moto.stepfunctions.parser.asl.component.state.exec.state_task.state_task_factory"
    )
    retrier = importlib.import_module("moto.stepfunctions.parser.asl.component.common.retry.retrier_decl")
    before = factory.state_task_service_for
    with installed({"sagemaker": lambda call: {}}):
        assert factory.state_task_service_for is not before
        assert retrier.time is not time
    assert factory.state_task_service_for is before
    assert retrier.time is time
