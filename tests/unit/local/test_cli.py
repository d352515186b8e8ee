"""The recpipe CLI with Typer's CliRunner: definition, --set validation, status, recommend, export,
and `run --aws` followed through moto's Step Functions backend."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws
from typer.testing import CliRunner

from recpipe import tables
from recpipe.cli import app
from recpipe.executions import records
from recpipe.local.dynamodb import client, ensure_table
from recpipe.local.moto_hook import installed

runner = CliRunner()


def test_definition_prints_the_asl_with_placeholders() -> None:
    result = runner.invoke(app, ["definition"])
    assert result.exit_code == 0, result.output
    asl = json.loads(result.stdout)
    assert asl["StartAt"] == "Prepare"
    assert "${DataBucket}" in result.stdout


@pytest.mark.parametrize(
    ("assignment", "message"),
    [
        ("fm.num_factor=3", "did you mean 'fm.num_factors'"),
        ("fm.num_factors=0", "'fm.num_factors' must be in [1, 1000], got 0"),
        ("fm.epochs", "expected key=value"),
    ],
)
def test_run_rejects_a_bad_set_before_starting_anything(
    tmp_path: Path, assignment: str, message: str
) -> None:
    result = runner.invoke(app, ["run", "--workdir", str(tmp_path), "--set", assignment])
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())
    assert not (tmp_path / "dynamodb").exists()


def _record(workdir: Path) -> None:
    records.save(
        workdir,
        {
            "execution_name": "local-1",
            "execution_arn": "arn:aws:states:us-east-1:123456789012:execution:m:local-1",
            "run_id": "run-1",
            "backend": "local",
            "status": "FAILED",
            "started": "2025-01-01T00:00:00+00:00",
            "stopped": "2025-01-01T00:00:09+00:00",
            "error": "TaskFailed",
            "cause": 'Process failed (States.TaskFailed): {"ProcessingJobName": "recpipe-run-1-processing", '
            '"FailureReason": "AlgorithmError: x.csv row 3: rating is not a number"}',
            "states": [
                {
                    "name": "Prepare",
                    "type": "Task",
                    "path": [],
                    "started": "2025-01-01T00:00:00+00:00",
                    "ended": "2025-01-01T00:00:01.500000+00:00",
                    "status": "succeeded",
                    "attempts": 1,
                },
                {
                    "name": "Process",
                    "type": "Task",
                    "path": [],
                    "started": "2025-01-01T00:00:01.500000+00:00",
                    "ended": "2025-01-01T00:00:05+00:00",
                    "status": "failed",
                    "caught": True,
                    "error": "States.TaskFailed",
                    "attempts": 1,
                },
            ],
        },
    )


def test_status_shows_each_state_with_its_outcome_and_the_readable_cause(tmp_path: Path) -> None:
    _record(tmp_path)
    result = runner.invoke(app, ["status", "--workdir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "Run run-1" in text and "FAILED" in text
    assert "AlgorithmError: x.csv row 3: rating is not a number (job recpipe-run-1-processing)" in text
    assert "Prepare" in text and "succeeded" in text and "1.5s" in text
    assert "failed (caught)" in text and "States.TaskFailed" in text
    assert runner.invoke(app, ["status", "run-1", "--workdir", str(tmp_path)]).exit_code == 0
    missing = runner.invoke(app, ["status", "nope", "--workdir", str(tmp_path)])
    assert missing.exit_code == 2
    assert "No local execution with run id 'nope'" in " ".join(missing.output.split())


@pytest.fixture()
def published(dynalite_endpoint: str) -> str:
    """A table (fresh name per test) with an active version r2 for users 1 and 2, and an old r1."""
    table = f"results-{abs(hash(dynalite_endpoint + str(id(object())))) % 10**8}"
    ensure_table(dynalite_endpoint, table)
    ddb = client(dynalite_endpoint)

    def put(key: dict[str, str], **attrs: Any) -> None:
        item = {k: {"S": v} for k, v in key.items()}
        for name, value in attrs.items():
            item[name] = {"S": value} if isinstance(value, str) else value
        ddb.put_item(TableName=table, Item=item)

    def items(*pairs: tuple[str, str]) -> dict[str, Any]:
        return {"L": [{"M": {"item_id": {"S": i}, "score": {"N": s}}} for i, s in pairs]}

    put(tables.ACTIVE_KEY, run_id="r2")
    put(
        tables.user_key("1", "r2"),
        user_id="1",
        run_id="r2",
        items=items(("50", "0.9"), ("7", "0.5"), ("3", "0.1")),
    )
    put(tables.user_key("2", "r2"), user_id="2", run_id="r2", items=items(("9", "0.8")))
    put(tables.user_key("1", "r1"), user_id="1", run_id="r1", items=items(("666", "1.0")))
    return table


def test_recommend_reads_the_active_version(tmp_path: Path, dynalite_endpoint: str, published: str) -> None:
    common = ["--workdir", str(tmp_path), "--dynamodb-endpoint", dynalite_endpoint, "--table", published]
    result = runner.invoke(app, ["recommend", "1", "--top", "2", "--json", *common])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {
        "user_id": "1",
        "run_id": "r2",
        "items": [{"item_id": "50", "score": 0.9}, {"item_id": "7", "score": 0.5}],
    }
    table = runner.invoke(app, ["recommend", "1", *common])
    assert table.exit_code == 0 and "50" in table.output and "0.9000" in table.output
    unknown = runner.invoke(app, ["recommend", "404", *common])
    assert unknown.exit_code == 2
    assert "Unknown user '404'" in unknown.output


def test_export_writes_every_user_of_the_active_version(
    tmp_path: Path, dynalite_endpoint: str, published: str
) -> None:
    out = tmp_path / "recs.jsonl"
    result = runner.invoke(
        app,
        [
            "export",
            "--out",
            str(out),
            "--workdir",
            str(tmp_path),
            "--dynamodb-endpoint",
            dynalite_endpoint,
            "--table",
            published,
        ],
    )
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["user_id"] for r in rows] == ["1", "2"]
    assert rows[0] == {
        "user_id": "1",
        "run_id": "r2",
        "items": [
            {"item_id": "50", "score": 0.9},
            {"item_id": "7", "score": 0.5},
            {"item_id": "3", "score": 0.1},
        ],
    }


def test_recommend_starts_and_stops_its_own_dynalite_when_no_endpoint_is_given(tmp_path: Path) -> None:
    result = runner.invoke(app, ["recommend", "1", "--workdir", str(tmp_path)])
    assert result.exit_code == 2
    assert "No version is published yet" in result.output
    assert (tmp_path / "dynamodb").is_dir()


def test_run_aws_starts_the_deployed_machine_and_follows_it(tmp_path: Path) -> None:
    asl = {
        "StartAt": "Prepare",
        "States": {
            "Prepare": {
                "Type": "Pass",
                "Result": {"run_id": "cli-run"},
                "ResultPath": "$.run",
                "Next": "Evaluate",
            },
            "Evaluate": {
                "Type": "Task",
                "Resource": "arn:aws:states:::lambda:invoke",
                "Parameters": {"FunctionName": "evaluate", "Payload.$": "$"},
                "ResultSelector": {"metrics.$": "$.Payload.metrics"},
                "ResultPath": "$.evaluation",
                "End": True,
            },
        },
    }

    def evaluate(call: Any) -> dict[str, Any]:
        assert call.parameters["Payload"]["fm.epochs"] == 3
        return {"Payload": {"metrics": {"ndcg_at_10": 0.25}}, "StatusCode": 200}

    with mock_aws(), installed({"lambda": evaluate}):
        sfn = boto3.client("stepfunctions", region_name="us-east-1")
        arn = sfn.create_state_machine(
            name="deployed", definition=json.dumps(asl), roleArn="arn:aws:iam::123456789012:role/r"
        )["stateMachineArn"]
        result = runner.invoke(
            app,
            [
                "run",
                "--aws",
                "--state-machine-arn",
                arn,
                "--set",
                "fm.epochs=3",
                "--workdir",
                str(tmp_path),
                "--poll-seconds",
                "0.05",
            ],
        )
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "started on AWS" in text
    assert "Prepare" in text and "Evaluate" in text and "succeeded" in text
    assert "Run cli-run succeeded" in text
    assert "0.2500" in text  # the metrics table
    record = records.load(tmp_path, "cli-run")
    assert record["backend"] == "aws" and record["status"] == "SUCCEEDED"
    assert [s["name"] for s in record["states"]] == ["Prepare", "Evaluate"]

