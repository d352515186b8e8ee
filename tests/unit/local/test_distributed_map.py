"""Distributed Map in moto 5.2.5: what moto does by itself (pinned, so an upgrade that changes it fails
here loudly) and what the local engine makes of it (AWS's behaviour, recpipe.local.distributed_map)."""

from __future__ import annotations

import contextlib
import copy
import datetime
import json
import re
import time
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws

from recpipe.executions.follow import follow
from recpipe.local import distributed_map, moto_hook

ROLE = "arn:aws:iam::123456789012:role/test"
BUCKET = "dmap-test"
SHARDS = [{"shard": i} for i in range(5)]

# A child fails (Fail state) for the shards listed in the input's "fail" array.
MAP_ASL: dict[str, Any] = {
    "StartAt": "Publish",
    "States": {
        "Publish": {
            "Type": "Map",
            "ItemReader": {
                "Resource": "arn:aws:states:::s3:getObject",
                "ReaderConfig": {"InputType": "JSON"},
                "Parameters": {"Bucket.$": "$.bucket", "Key.$": "$.key"},
            },
            "MaxConcurrencyPath": "$.concurrency",
            "ToleratedFailureCount": 0,
            "ItemSelector": {"entry.$": "$$.Map.Item.Value", "fail.$": "$.fail", "run.$": "$.run"},
            "ItemProcessor": {
                "ProcessorConfig": {"Mode": "DISTRIBUTED", "ExecutionType": "STANDARD"},
                "StartAt": "Check",
                "States": {
                    "Check": {"Type": "Pass", "Parameters": {
                        "shard.$": "$.entry.shard", "run.$": "$.run",
                        "failing.$": "States.ArrayContains($.fail, $.entry.shard)"}, "Next": "Fails?"},
                    "Fails?": {"Type": "Choice", "Default": "Done", "Choices": [
                        {"Variable": "$.failing", "BooleanEquals": True, "Next": "Shard failed"}]},
                    "Shard failed": {"Type": "Fail", "Error": "ShardFailed", "Cause": "injected"},
                    "Done": {"Type": "Pass", "Parameters": {"shard.$": "$.shard", "rows": 10}, "End": True},
                },
            },
            "ResultPath": "$.map",
            "End": True,
        },
    },
}


def _asl(**changes: Any) -> dict[str, Any]:
    asl = copy.deepcopy(MAP_ASL)
    state = asl["States"]["Publish"]
    for key, value in changes.items():
        if value is None:
            state.pop(key, None)
        else:
            state[key] = value
    return asl


WRITER = {"Resource": "arn:aws:states:::s3:putObject", "Parameters": {"Bucket": BUCKET, "Prefix": "results"}}
CAUGHT = [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.error", "Next": "Caught"}]


@pytest.fixture()
def aws() -> Iterator[tuple[Any, Any]]:
    moto_hook.enable_execution()
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket=BUCKET)
        s3.put_object(Bucket=BUCKET, Key="shards.json", Body=json.dumps(SHARDS).encode())
        yield s3, boto3.client("stepfunctions", region_name="us-east-1")


def _run(sfn: Any, asl: dict[str, Any], fail: list[int]) -> dict[str, Any]:
    arn = sfn.create_state_machine(name=f"m{time.monotonic_ns()}", definition=json.dumps(asl),
                                   roleArn=ROLE)["stateMachineArn"]
    execution_input = {"bucket": BUCKET, "key": "shards.json", "concurrency": 2, "fail": fail, "run": "r1"}
    execution = sfn.start_execution(stateMachineArn=arn, name="e1", input=json.dumps(execution_input))
    follow(sfn, execution["executionArn"], poll_s=0.02, timeout_s=60)
    described: dict[str, Any] = sfn.describe_execution(executionArn=execution["executionArn"])
    return described


def _keys(s3: Any) -> list[str]:
    return sorted(o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="results/").get("Contents", []))


# --- moto by itself (no hook installed) --------------------------------------------------------------

def test_moto_runs_one_child_per_item_of_the_s3_json_array(aws: tuple[Any, Any]) -> None:
    _, sfn = aws
    out = _run(sfn, MAP_ASL, fail=[])
    assert out["status"] == "SUCCEEDED"
    assert json.loads(out["output"])["map"] == [{"shard": i, "rows": 10} for i in range(5)]


def test_moto_lets_a_failed_child_pass_and_the_map_succeed(aws: tuple[Any, Any]) -> None:
    """AWS fails the Map with States.ExceedToleratedFailureThreshold; moto 5.2.5 does not."""
    _, sfn = aws
    out = _run(sfn, MAP_ASL, fail=[3])
    assert out["status"] == "SUCCEEDED"
    assert json.loads(out["output"])["map"][3] is None


def test_moto_result_writer_writes_only_an_empty_manifest(aws: tuple[Any, Any]) -> None:
    s3, sfn = aws
    out = _run(sfn, _asl(ResultWriter=WRITER), fail=[])
    assert out["status"] == "SUCCEEDED"
    details = json.loads(out["output"])["map"]
    assert set(details) == {"MapRunArn", "ResultWriterDetails"}
    keys = _keys(s3)
    assert len(keys) == 1 and keys[0].endswith("/manifest.json")
    manifest = json.loads(s3.get_object(Bucket=BUCKET, Key=keys[0])["Body"].read())
    assert manifest["ResultFiles"] == {"FAILED": [], "PENDING": [], "SUCCEEDED": []}


def test_moto_evaluates_result_writer_paths_against_the_results(aws: tuple[Any, Any]) -> None:
    """Why the Publish Map's ResultWriter has a static Bucket/Prefix (workflows.definition)."""
    _, sfn = aws
    writer = {"Resource": "arn:aws:states:::s3:putObject",
              "Parameters": {"Bucket.$": "$.bucket", "Prefix": "results"}}
    out = _run(sfn, _asl(ResultWriter=writer), fail=[])
    assert out["status"] == "FAILED" and "The JSONPath '$.bucket' could not be found" in out["cause"]


# --- the local engine: AWS's behaviour -----------------------------------------------------------------

@contextlib.contextmanager
def engine() -> Iterator[None]:
    with moto_hook.installed({}):
        yield


def test_a_failed_child_fails_the_map_as_on_aws(aws: tuple[Any, Any]) -> None:
    _, sfn = aws
    with engine():
        out = _run(sfn, MAP_ASL, fail=[3])
    assert out["status"] == "FAILED"
    assert out["error"] == "States.ExceedToleratedFailureThreshold"
    assert out["cause"] == distributed_map.CAUSE


def test_the_maps_catch_receives_the_threshold_error(aws: tuple[Any, Any]) -> None:
    _, sfn = aws
    asl = _asl(Catch=CAUGHT, End=None, Next="Caught")
    asl["States"]["Caught"] = {"Type": "Pass", "End": True}
    with engine():
        out = _run(sfn, asl, fail=[0, 4])
    assert out["status"] == "SUCCEEDED"
    assert json.loads(out["output"])["error"]["Error"] == "States.ExceedToleratedFailureThreshold"


@pytest.mark.parametrize(("tolerance", "fail", "status"), [
    ({"ToleratedFailureCount": 1}, [2], "SUCCEEDED"),
    ({"ToleratedFailureCount": 1}, [1, 2], "FAILED"),
    # 1 of 5 is 20%: not more than 20%.
    ({"ToleratedFailureCount": None, "ToleratedFailurePercentage": 20.0}, [2], "SUCCEEDED"),
    ({"ToleratedFailureCount": None, "ToleratedFailurePercentage": 10.0}, [2], "FAILED"),
    ({"ToleratedFailureCount": None}, [2], "FAILED"),  # nothing declared: none tolerated
    ({"ToleratedFailureCount": 5, "ToleratedFailurePercentage": 10.0}, [2], "FAILED"),  # either threshold
])
def test_tolerated_failures_follow_aws(aws: tuple[Any, Any], tolerance: dict[str, Any], fail: list[int],
                                       status: str) -> None:
    _, sfn = aws
    with engine():
        assert _run(sfn, _asl(**tolerance), fail=fail)["status"] == status


def test_the_result_writer_also_writes_the_succeeded_results(aws: tuple[Any, Any]) -> None:
    s3, sfn = aws
    with engine():
        out = _run(sfn, _asl(ResultWriter=WRITER), fail=[])
    assert out["status"] == "SUCCEEDED"
    keys = _keys(s3)
    assert [k.rsplit("/", 1)[1] for k in keys] == ["SUCCEEDED_0.json", "manifest.json"]
    records = json.loads(s3.get_object(Bucket=BUCKET, Key=keys[0])["Body"].read())
    assert sorted(json.loads(r["Output"])["shard"] for r in records) == list(range(5))
    assert {r["Status"] for r in records} == {"SUCCEEDED"}
    manifest = json.loads(s3.get_object(Bucket=BUCKET, Key=keys[1])["Body"].read())
    assert [f["Key"] for f in manifest["ResultFiles"]["SUCCEEDED"]] == [keys[0]]


def test_max_concurrency_path_is_read_from_the_input(aws: tuple[Any, Any]) -> None:
    _, sfn = aws
    with engine():
        out = _run(sfn, MAP_ASL, fail=[])
    runs = sfn.list_map_runs(executionArn=out["executionArn"])["mapRuns"]
    assert sfn.describe_map_run(mapRunArn=runs[0]["mapRunArn"])["maxConcurrency"] == 2


def test_leaving_the_engine_restores_moto(aws: tuple[Any, Any]) -> None:
    _, sfn = aws
    with engine():
        pass
    assert _run(sfn, MAP_ASL, fail=[3])["status"] == "SUCCEEDED"  # moto's own behaviour again


@pytest.mark.parametrize(("failed", "total", "count", "percentage", "exceeded"), [
    (0, 5, None, None, False),
    (1, 5, None, None, True),
    (1, 5, 1, None, False),
    (2, 5, 1, None, True),
    (1, 5, None, 20.0, False),
    (2, 5, None, 20.0, True),
    (1, 5, 3, 10.0, True),
    (0, 0, None, 0.0, False),
])
def test_threshold_rule(failed: int, total: int, count: int | None, percentage: float | None,
                        exceeded: bool) -> None:
    assert distributed_map.threshold_exceeded(failed, total, count=count, percentage=percentage) is exceeded


def test_a_moved_distributed_map_internal_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(distributed_map, "MOTO_METHODS",
                        (*distributed_map.MOTO_METHODS, (distributed_map._ITERATION,
                                                         "DistributedIterationComponent", "_no_such")))
    with pytest.raises(moto_hook.MotoInternalsError, match="has no method '_no_such'"):
        moto_hook.check_moto_internals()


def test_execution_start_time_reaches_tasks_as_aws_spells_it(aws: tuple[Any, Any]) -> None:
    _, sfn = aws
    asl = {"StartAt": "T", "States": {"T": {"Type": "Pass", "Parameters": {"t.$": "$$.Execution.StartTime"},
                                            "End": True}}}
    with engine():
        out = _run(sfn, asl, fail=[])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", json.loads(out["output"])["t"])


def test_aws_time() -> None:
    moment = datetime.datetime(2026, 3, 1, 11, 59, 30, 123456, tzinfo=datetime.UTC)
    assert distributed_map.aws_time(moment) == "2026-03-01T11:59:30.123Z"
    assert distributed_map.aws_time("2026-03-01T11:59:30.123Z") == "2026-03-01T11:59:30.123Z"
