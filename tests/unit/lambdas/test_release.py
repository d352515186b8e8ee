"""Release: the lock goes away only when this run owns it, whether the state machine asks (``run_id``)
or EventBridge reports a stopped, timed-out or failed execution."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws

from lambdas.release import handler
from recpipe.lambda_errors import InputError
from recpipe.results.lock import acquire_lock
from recpipe.runs import derive_run_id
from recpipe.tables import LOCK_KEY, TABLE_ENV, create_table_kwargs

TABLE = "results"


@pytest.fixture
def ddb(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.setenv(TABLE_ENV, TABLE)
    with mock_aws():
        client: Any = boto3.client("dynamodb")
        client.create_table(**create_table_kwargs(TABLE))
        yield client


def owner(ddb: Any) -> str | None:
    item = ddb.get_item(TableName=TABLE, Key={k: {"S": v} for k, v in LOCK_KEY.items()}).get("Item")
    return item["owner"]["S"] if item else None


def test_owner_releases(ddb: Any) -> None:
    acquire_lock(ddb, TABLE, "run-a", "run-a", now=1000.0)
    assert handler.lambda_handler({"run_id": "run-a"}, None, dynamodb=ddb) == {"released": True}
    assert owner(ddb) is None


def test_other_run_cannot_release(ddb: Any) -> None:
    acquire_lock(ddb, TABLE, "run-a", "run-a", now=1000.0)
    assert handler.lambda_handler({"run_id": "run-b"}, None, dynamodb=ddb) == {"released": False}
    assert owner(ddb) == "run-a"


def test_absent_lock_is_not_an_error(ddb: Any) -> None:
    assert handler.lambda_handler({"run_id": "run-a"}, None, dynamodb=ddb) == {"released": False}


@pytest.mark.parametrize("event", [{}, {"run_id": ""}, {"run_id": 3}])
def test_malformed_event(ddb: Any, event: dict[str, Any]) -> None:
    with pytest.raises(InputError, match="run_id"):
        handler.lambda_handler(event, None, dynamodb=ddb)


# --- stopped executions (EventBridge "Step Functions Execution Status Change") ------------------

MACHINE_ARN = "arn:aws:states:eu-west-1:123456789012:stateMachine:recpipe-pipeline"


def status_change(name: str, status: str) -> dict[str, Any]:
    """The event EventBridge delivers (the shape of the AWS documentation's example)."""
    return {
        "version": "0",
        "id": "315c1398-40ff-a850-213b-158f73e60175",
        "detail-type": "Step Functions Execution Status Change",
        "source": "aws.states",
        "account": "123456789012",
        "time": "2026-11-02T03:14:07Z",
        "region": "eu-west-1",
        "resources": [f"arn:aws:states:eu-west-1:123456789012:execution:recpipe-pipeline:{name}"],
        "detail": {
            "executionArn": f"arn:aws:states:eu-west-1:123456789012:execution:recpipe-pipeline:{name}",
            "stateMachineArn": MACHINE_ARN,
            "name": name,
            "status": status,
            "startDate": 1793589247000,
            "stopDate": 1793596447000,
            "input": "{}",
            "inputDetails": {"included": True},
            "output": None,
            "outputDetails": None,
            "error": None,
            "cause": None,
        },
    }


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    # Powertools' logger does not propagate to the root logger: listen on it directly.
    std_logger = logging.getLogger(handler.logger.service)
    std_logger.addHandler(caplog.handler)
    yield caplog
    std_logger.removeHandler(caplog.handler)


@pytest.mark.parametrize("status", ["ABORTED", "TIMED_OUT", "FAILED"])
def test_stopped_execution_releases_its_lock(ddb: Any, logs: pytest.LogCaptureFixture, status: str) -> None:
    acquire_lock(ddb, TABLE, "run-a", "run-a", now=1000.0)
    assert handler.lambda_handler(status_change("run-a", status), None, dynamodb=ddb) == {"released": True}
    assert owner(ddb) is None
    assert f"Execution run-a ended {status}; releasing the lock of run run-a" in logs.text


def test_stopped_execution_with_a_long_name_releases_the_derived_run(ddb: Any) -> None:
    name = "Manual_Retrain_2026-11-02T03:14:07.123Z_with-a-long-comment"
    run_id = derive_run_id(name)
    assert run_id != name
    acquire_lock(ddb, TABLE, run_id, name, now=1000.0)
    assert handler.lambda_handler(status_change(name, "ABORTED"), None, dynamodb=ddb) == {"released": True}
    assert owner(ddb) is None


def test_stopped_execution_leaves_another_runs_lock(ddb: Any) -> None:
    # e.g. a run stopped while Prepare was refusing it because run-a held the lock.
    acquire_lock(ddb, TABLE, "run-a", "run-a", now=1000.0)
    result = handler.lambda_handler(status_change("run-b", "ABORTED"), None, dynamodb=ddb)
    assert result == {"released": False}
    assert owner(ddb) == "run-a"


def test_failed_execution_whose_catch_released_the_lock_changes_nothing(ddb: Any) -> None:
    # Most FAILED runs ran their Catch (Release state) before the status change arrives; a newer run
    # may already hold the lock by then. Both deliveries (and EventBridge's retries) are harmless.
    acquire_lock(ddb, TABLE, "run-a", "run-a", now=1000.0)
    assert handler.lambda_handler({"run_id": "run-a"}, None, dynamodb=ddb) == {"released": True}
    event = status_change("run-a", "FAILED")
    assert handler.lambda_handler(event, None, dynamodb=ddb) == {"released": False}
    acquire_lock(ddb, TABLE, "run-b", "run-b", now=1001.0)
    assert handler.lambda_handler(event, None, dynamodb=ddb) == {"released": False}
    assert owner(ddb) == "run-b"


@pytest.mark.parametrize("status", ["SUCCEEDED", "RUNNING"])
def test_other_statuses_are_ignored(ddb: Any, logs: pytest.LogCaptureFixture, status: str) -> None:
    acquire_lock(ddb, TABLE, "run-a", "run-a", now=1000.0)
    result = handler.lambda_handler(status_change("run-a", status), None, dynamodb=ddb)
    assert result == {"released": False, "ignored": True}
    assert owner(ddb) == "run-a"
    assert f"Ignored: execution run-a ended {status}; only ABORTED, TIMED_OUT, FAILED" in logs.text


_MISSING = object()


@pytest.mark.parametrize(("key", "value", "message"), [
    ("detail-type", "Object Created",
     "detail-type 'Step Functions Execution Status Change' only, got 'Object Created'"),
    ("detail", None, "has no 'detail' object, got None"),
    ("detail", "ABORTED", "has no 'detail' object, got 'ABORTED'"),
    ("detail.name", _MISSING, r"'detail.name' must be a non-empty string, got None"),
    ("detail.name", "", r"'detail.name' must be a non-empty string, got ''"),
    ("detail.status", _MISSING, r"'detail.status' must be a non-empty string, got None"),
    ("detail.status", 3, r"'detail.status' must be a non-empty string, got 3"),
    ("detail.stateMachineArn", _MISSING, r"'detail.stateMachineArn' must be a non-empty string, got None"),
])
def test_malformed_status_change_event(ddb: Any, key: str, value: Any, message: str) -> None:
    event = status_change("run-a", "ABORTED")
    parent, _, field = key.rpartition(".")
    target = event[parent] if parent else event
    if value is _MISSING:
        del target[field]
    else:
        target[field] = value
    acquire_lock(ddb, TABLE, "run-a", "run-a", now=1000.0)
    with pytest.raises(InputError, match=message):
        handler.lambda_handler(event, None, dynamodb=ddb)
    assert owner(ddb) == "run-a"
