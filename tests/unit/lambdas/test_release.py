"""Release: the lock goes away only when this run owns it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws

from lambdas.prepare.prepare import acquire_lock
from lambdas.release import handler
from recpipe.lambda_errors import InputError
from recpipe.tables import LOCK_KEY, TABLE_ENV, create_table_kwargs

TABLE = "results"


@pytest.fixture
def ddb(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
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
