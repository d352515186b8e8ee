"""The CLI against a deployed stack: `--aws` on recommend, export, versions, rollback, unlock and status,
with moto's DynamoDB and Step Functions and the stack outputs from a stubbed CloudFormation client
(moto's CloudFormation needs extras this project does not install)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber
from moto import mock_aws
from typer.testing import CliRunner

from recpipe import tables
from recpipe.cli import app
from recpipe.executions.follow import snapshot
from recpipe.local.exceptions import TaskFailure
from recpipe.local.moto_hook import TaskCall, installed
from recpipe.remote import aws as remote
from recpipe.results import read
from tests.moto_executions import wait_for_executions
from tests.unit.local.test_cli_versions import put_lock, seed

REGION = "us-east-1"
TABLE = "rp-results"
ROLE = "arn:aws:iam::123456789012:role/r"
runner = CliRunner()


def _text(result: Any) -> str:
    return " ".join(result.output.split())


class Clients:
    """Stands in for ``recpipe.remote.aws.boto3_client``: moto for everything but CloudFormation,
    which answers DescribeStacks with ``outputs`` (or 'does not exist' when None)."""

    def __init__(self) -> None:
        self.outputs: dict[str, str] | None = {"TableName": TABLE}
        self.calls: list[tuple[str, str | None]] = []

    def __call__(self, service: str, region: str | None) -> Any:
        self.calls.append((service, region))
        if service != "cloudformation":
            return boto3.client(service, region_name=region)  # type: ignore[call-overload]
        cfn = boto3.client("cloudformation", region_name=region or REGION)
        stubber = Stubber(cfn)
        if self.outputs is None:
            stubber.add_client_error(
                "describe_stacks", "ValidationError", "Stack with id Recpipe does not exist"
            )
        else:
            stubber.add_response(
                "describe_stacks",
                {
                    "Stacks": [
                        {
                            "StackName": "Recpipe",
                            "CreationTime": "2025-01-01T00:00:00Z",
                            "StackStatus": "CREATE_COMPLETE",
                            "Outputs": [{"OutputKey": k, "OutputValue": v} for k, v in self.outputs.items()],
                        }
                    ]
                },
            )
        stubber.activate()
        return cfn


@pytest.fixture()
def deployed(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, Clients]]:
    """moto with the results table ``rp-results`` seeded like test_cli_versions' local one."""
    clients = Clients()
    monkeypatch.setattr(remote, "boto3_client", clients)
    with mock_aws():
        ddb = boto3.client("dynamodb", region_name=REGION)
        ddb.create_table(**tables.create_table_kwargs(TABLE))  # type: ignore[arg-type]
        seed(ddb, TABLE)
        yield ddb, clients


def test_recommend_and_export_read_the_table_named_by_the_stack(
    deployed: tuple[Any, Clients], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, clients = deployed
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["recommend", "1", "--json", "--aws", "--region", REGION])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {
        "user_id": "1",
        "run_id": "r2",
        "items": [
            {"item_id": "50", "score": 0.9},
            {"item_id": "7", "score": 0.5},
            {"item_id": "3", "score": None},
        ],
    }
    assert clients.calls == [("cloudformation", REGION), ("dynamodb", REGION)]

    out = tmp_path / "all.jsonl"
    exported = runner.invoke(
        app, ["export", "--out", str(out), "--aws", "--stack", "Recpipe", "--region", REGION]
    )
    assert exported.exit_code == 0, exported.output
    assert sorted(json.loads(line)["user_id"] for line in out.read_text().splitlines()) == ["1", "2"]
    assert not out.with_name("all.jsonl.partial").exists()
    streamed = runner.invoke(app, ["export", "--aws", "--table", TABLE, "--region", REGION])
    assert streamed.exit_code == 0, streamed.output
    assert {json.loads(line)["run_id"] for line in streamed.stdout.splitlines()} == {"r2"}

    unknown = runner.invoke(app, ["recommend", "404", "--aws", "--table", TABLE, "--region", REGION])
    assert unknown.exit_code == 2 and "Unknown user '404'" in _text(unknown)
    assert not (tmp_path / ".recpipe").exists()  # no local dynalite was started


def test_a_missing_table_or_stack_is_a_clear_error(deployed: tuple[Any, Clients]) -> None:
    _, clients = deployed
    missing = runner.invoke(app, ["recommend", "1", "--aws", "--table", "nope", "--region", REGION])
    assert missing.exit_code == 2
    assert "AWS refused using the results table 'nope': ResourceNotFoundException" in _text(missing)
    clients.outputs = None
    no_stack = runner.invoke(app, ["versions", "--aws", "--region", REGION])
    assert no_stack.exit_code == 2
    assert "The CloudFormation stack 'Recpipe' does not exist" in _text(no_stack)
    local_only = runner.invoke(app, ["export", "--aws", "--dynamodb-endpoint", "http://x"])
    assert local_only.exit_code == 2 and "--dynamodb-endpoint is local-only" in _text(local_only)


def test_versions_and_rollback_on_the_deployed_table(deployed: tuple[Any, Clients]) -> None:
    ddb, _ = deployed
    options = ["--aws", "--table", TABLE, "--region", REGION]
    listed = runner.invoke(app, ["versions", "--json", *options])
    assert listed.exit_code == 0, listed.output
    assert [(v["run_id"], v["active"]) for v in json.loads(listed.stdout)] == [
        ("r3", False),
        ("r2", True),
        ("r1", False),
        ("r0", False),
    ]

    rolled = runner.invoke(app, ["rollback", "r1", *options])
    assert rolled.exit_code == 0, rolled.output
    assert "previous active run: r2" in _text(rolled) and "new active run: r1" in _text(rolled)
    pointer = read.active_pointer(ddb, TABLE)
    assert pointer is not None and (pointer["run_id"], pointer["previous_run_id"]) == ("r1", "r2")

    refused = runner.invoke(app, ["rollback", "r3", *options])
    assert refused.exit_code == 2 and "in state 'writing'" in _text(refused)


STATUS_ASL: dict[str, Any] = {
    "StartAt": "Prepare",
    "States": {
        "Prepare": {
            "Type": "Pass",
            "Parameters": {"run_id.$": "$$.Execution.Name"},
            "ResultPath": "$.run",
            "Next": "Train",
        },
        "Train": {
            "Type": "Task",
            "Resource": "arn:aws:states:::lambda:invoke",
            "Parameters": {"FunctionName": "train", "Payload.$": "$"},
            "Catch": [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.error", "Next": "Run failed"}],
            "End": True,
        },
        "Run failed": {"Type": "Fail", "ErrorPath": "$.error.Error", "CausePath": "$.error.Cause"},
    },
}


@pytest.fixture()
def machine(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, str, Callable[[TaskCall], Any]]]:
    """A deployed-like state machine whose Train task runs ``handler[0]`` (replaceable per test)."""
    clients = Clients()
    monkeypatch.setattr(remote, "boto3_client", clients)
    handler: list[Callable[[TaskCall], Any]] = [lambda call: {"Payload": {}}]
    with mock_aws(), installed({"lambda": lambda call: handler[0](call)}):
        sfn = boto3.client("stepfunctions", region_name=REGION)
        arn = sfn.create_state_machine(
            name="recpipe-pipeline", definition=json.dumps(STATUS_ASL), roleArn=ROLE
        )["stateMachineArn"]
        clients.outputs = {"TableName": TABLE, "StateMachineArn": arn}
        boto3.client("dynamodb", region_name=REGION).create_table(**tables.create_table_kwargs(TABLE))  # type: ignore[arg-type]
        yield sfn, arn, handler  # type: ignore[misc]


def _fail_training(call: TaskCall) -> Any:
    raise TaskFailure(
        "States.TaskFailed",
        json.dumps(
            {
                "TrainingJobName": "recpipe-weekly-1-serve-fm",
                "FailureReason": "ClientError: the train channel is empty",
            }
        ),
    )


def test_status_aws_shows_the_execution_state_by_state(machine: tuple[Any, str, Any]) -> None:
    sfn, arn, handler = machine
    handler[0] = _fail_training
    execution = sfn.start_execution(stateMachineArn=arn, name="weekly-1")["executionArn"]
    wait_for_executions(timeout_s=20)
    assert snapshot(sfn, execution).status == "FAILED"

    by_stack = runner.invoke(app, ["status", "weekly-1", "--aws", "--region", REGION], env={"COLUMNS": "200"})
    assert by_stack.exit_code == 0, by_stack.output
    text = _text(by_stack)
    assert "Run weekly-1 (execution weekly-1, aws): FAILED" in text
    assert "ClientError: the train channel is empty (job recpipe-weekly-1-serve-fm)" in text
    assert (
        "Prepare" in text
        and "succeeded" in text
        and "failed (caught)" in text
        and "States.TaskFailed" in text
    )
    assert f"Execution ARN: {execution}" in text

    by_arn = runner.invoke(app, ["status", execution, "--aws"], env={"COLUMNS": "200"})
    assert by_arn.exit_code == 0, by_arn.output
    assert "Run weekly-1 (execution weekly-1, aws): FAILED" in _text(by_arn)
    latest = runner.invoke(app, ["status", "--aws", "--state-machine-arn", arn])
    assert latest.exit_code == 0 and "execution weekly-1" in _text(latest)

    unknown = runner.invoke(app, ["status", "weekly-9", "--aws", "--state-machine-arn", arn])
    assert unknown.exit_code == 2 and "has run id or name 'weekly-9'" in _text(unknown)


def test_unlock_aws_refuses_while_the_owner_runs_and_releases_after(machine: tuple[Any, str, Any]) -> None:
    sfn, arn, handler = machine
    gate = threading.Event()
    handler[0] = lambda call: (gate.wait(20), {"Payload": {}})[1]
    sfn.start_execution(stateMachineArn=arn, name="weekly-2")
    ddb = boto3.client("dynamodb", region_name=REGION)
    put_lock(ddb, TABLE, "weekly-2")
    try:
        running = runner.invoke(app, ["unlock", "--aws", "--region", REGION])
        assert running.exit_code == 2
        text = _text(running)
        assert "held by run weekly-2" in text and "is RUNNING" in text and "is still running" in text
        unknown = runner.invoke(app, ["unlock", "--aws", "--table", TABLE, "--region", REGION])
        assert unknown.exit_code == 2 and "the state machine is not known" in _text(unknown)
        assert read.lock_item(ddb, TABLE) is not None
    finally:
        gate.set()
    wait_for_executions(timeout_s=20)
    released = runner.invoke(app, ["unlock", "--aws", "--table", TABLE, "--state-machine-arn", arn])
    assert released.exit_code == 0, released.output
    assert "ended SUCCEEDED" in _text(released) and "Lock of run weekly-2 released." in _text(released)
    assert read.lock_item(ddb, TABLE) is None


def test_run_aws_without_a_state_machine_or_stack_says_what_to_pass(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    clients = Clients()
    clients.outputs = None
    monkeypatch.setattr(remote, "boto3_client", clients)
    result = runner.invoke(app, ["run", "--aws", "--region", REGION, "--workdir", str(tmp_path)])
    assert result.exit_code == 2
    assert "stack 'Recpipe' does not exist" in _text(result) and "--state-machine-arn" in _text(result)
    clients.outputs = {"TableName": TABLE}
    no_output = runner.invoke(app, ["run", "--aws", "--region", REGION, "--workdir", str(tmp_path)])
    assert no_output.exit_code == 2 and "has no output 'StateMachineArn'" in _text(no_output)
