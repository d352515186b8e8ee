"""dynalite: started on a free loopback port, data kept on disk, stopped by PID."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from recpipe import tables
from recpipe.local.dynamodb import Dynalite, client, dynamodb_endpoint, ensure_table
from recpipe.local.exceptions import DynamoDBServerError


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_dynalite_serves_creates_the_table_keeps_data_across_restarts_and_stops(tmp_path: Path) -> None:
    with Dynalite(tmp_path / "dynamodb") as server:
        pid = server.pid
        assert pid is not None and _alive(pid)
        assert server.endpoint.startswith("http://127.0.0.1:")
        assert ensure_table(server.endpoint, "tbl") is True
        assert ensure_table(server.endpoint, "tbl") is False
        ddb = client(server.endpoint)
        key = {k: {"S": v} for k, v in tables.ACTIVE_KEY.items()}
        ddb.put_item(TableName="tbl", Item={**key, "run_id": {"S": "r1"}})
    assert not _alive(pid)
    with dynamodb_endpoint(tmp_path, table_name="tbl") as url:  # same data under <workdir>/dynamodb
        pass
    with Dynalite(tmp_path / "dynamodb") as again:
        item = client(again.endpoint).get_item(TableName="tbl", Key=key)["Item"]
        assert item["run_id"] == {"S": "r1"}
    assert url.startswith("http://127.0.0.1:")


def test_dynalite_is_stopped_when_the_body_raises(tmp_path: Path) -> None:
    server = Dynalite(tmp_path / "db")
    with pytest.raises(RuntimeError, match="boom"), server:
        pid = server.pid
        raise RuntimeError("boom")
    assert pid is not None and not _alive(pid)
    assert server.pid is None


def test_a_missing_executable_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DynamoDBServerError, match=r"exited at start|No such file|not found"):
        try:
            Dynalite(tmp_path / "db", executable=tmp_path / "no-dynalite").start()
        except FileNotFoundError as exc:
            raise DynamoDBServerError(f"not found: {exc}") from exc
