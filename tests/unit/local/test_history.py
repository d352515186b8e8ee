"""History folding: state runs per Map iteration (labelled by variant), retries, caught failures,
and where a failure started."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import boto3
from moto import mock_aws

from recpipe.executions.follow import snapshot
from recpipe.executions.history import ExecutionOutcome, StateRun, run_id_of, summarise_cause
from recpipe.local.exceptions import TaskFailure
from recpipe.local.moto_hook import TaskCall, installed
from tests.moto_executions import wait_for_executions

MAP_ASL: dict[str, Any] = {
    "StartAt": "Prepare",
    "States": {
        "Prepare": {
            "Type": "Pass",
            "Result": {"variants": [{"name": "eval"}, {"name": "serve"}]},
            "Next": "Models",
        },
        "Models": {
            "Type": "Map",
            "ItemsPath": "$.variants",
            "MaxConcurrency": 2,
            "Parameters": {"variant.$": "$$.Map.Item.Value"},
            "Iterator": {
                "StartAt": "Train",
                "States": {
                    "Train": {
                        "Type": "Task",
                        "Resource": "arn:aws:states:::sagemaker:createTrainingJob.sync",
                        "Parameters": {"variant.$": "$.variant.name"},
                        "ResultPath": "$.fm",
                        "Catch": [
                            {"ErrorEquals": ["States.ALL"], "ResultPath": "$.error", "Next": "Variant failed"}
                        ],
                        "Next": "Model",
                    },
                    "Model": {
                        "Type": "Task",
                        "Resource": "arn:aws:states:::sagemaker:createModel",
                        "Parameters": {"x": 1},
                        "End": True,
                    },
                    "Variant failed": {
                        "Type": "Fail",
                        "ErrorPath": "$.error.Error",
                        "CausePath": "$.error.Cause",
                    },
                },
            },
            "ResultPath": None,
            "Catch": [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.error", "Next": "Run failed"}],
            "Next": "Done",
        },
        "Done": {"Type": "Succeed"},
        "Run failed": {"Type": "Fail", "ErrorPath": "$.error.Error", "CausePath": "$.error.Cause"},
    },
}


def _execute(fail_variant: str | None) -> Any:
    def sagemaker(call: TaskCall) -> dict[str, Any]:
        if call.action == "createTrainingJob" and call.parameters["variant"] == fail_variant:
            raise TaskFailure(
                "States.TaskFailed",
                json.dumps({"TrainingJobName": "job-serve", "FailureReason": "ClientError: bad"}),
            )
        return {"ok": True}

    with mock_aws(), installed({"sagemaker": sagemaker}):
        sfn = boto3.client("stepfunctions", region_name="us-east-1")
        arn = sfn.create_state_machine(
            name="m", definition=json.dumps(MAP_ASL), roleArn="arn:aws:iam::123456789012:role/r"
        )["stateMachineArn"]
        execution = sfn.start_execution(stateMachineArn=arn, name="e", input="{}")["executionArn"]
        wait_for_executions(timeout_s=30)
        return snapshot(sfn, execution)


def test_states_inside_a_map_are_labelled_by_variant_and_closing_events_stay_at_the_map() -> None:
    outcome = _execute(None)
    assert outcome.status == "SUCCEEDED"
    labels = sorted(s.label for s in outcome.states)
    assert labels == sorted(
        ["Prepare", "Models", "Train [eval]", "Model [eval]", "Train [serve]", "Model [serve]", "Done"]
    )
    models = next(s for s in outcome.states if s.name == "Models")
    assert models.path == () and models.status == "succeeded" and models.ended is not None
    assert [s.label for s in outcome.states if not s.path][-1] == "Done"


def test_a_failure_inside_the_map_is_traced_to_the_task_that_started_it() -> None:
    outcome = _execute("serve")
    assert outcome.status == "FAILED"
    assert outcome.error == "States.TaskFailed"
    origin = outcome.failed_state
    assert origin is not None and origin.label == "Train [serve]" and origin.caught
    run_failed = next(s for s in outcome.states if s.name == "Run failed")
    assert run_failed.path == ()
    assert summarise_cause(outcome.cause) == "ClientError: bad (job job-serve)"
    again = StateRun.from_json(origin.to_json())
    assert (again.label, again.status, again.error) == ("Train [serve]", "failed", "States.TaskFailed")


def test_summarise_cause_reads_lambda_errors_and_keeps_plain_text() -> None:
    lam = 'Publish failed (ValueError): {"errorMessage": "no rows", "errorType": "ValueError"}'
    assert summarise_cause(lam) == "Publish failed (ValueError): ValueError: no rows"
    assert summarise_cause("plain words") == "plain words"
    assert summarise_cause(None) == ""


def _state(name: str, output: Any, *, status: str = "succeeded", path: tuple[int, ...] = ()) -> StateRun:
    return StateRun(name=name, type="Task", path=path, started=dt.datetime(2025, 1, 1, tzinfo=dt.UTC),
                    status=status, output=output)


def test_the_run_id_is_the_one_of_prepares_run_document_and_nowhere_else() -> None:
    prepared = _state("Prepare", {"run": {"run_id": "r-1", "variants": []}})
    decoy = _state("Plan", {"run_id": "other"})  # a run_id elsewhere is not the run's
    assert run_id_of(ExecutionOutcome(status="RUNNING", states=[decoy, prepared])) == "r-1"
    assert run_id_of(ExecutionOutcome(status="FAILED", states=[decoy])) is None
    failed = _state("Prepare", None, status="failed")
    assert run_id_of(ExecutionOutcome(status="FAILED", states=[failed])) is None
    nested = _state("Prepare", {"run": {"run_id": "inner"}}, path=(0,))  # a Map's own "Prepare"
    assert run_id_of(ExecutionOutcome(status="RUNNING", states=[nested])) is None
