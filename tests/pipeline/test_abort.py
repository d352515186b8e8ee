"""Ctrl-C during ``recpipe run`` (a KeyboardInterrupt while the CLI waits on the local engine) stops
the execution and releases the run lock it took, as the Release Lambda would have."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from recpipe.cli import app
from recpipe.executions import records
from recpipe.executions.history import ExecutionOutcome
from recpipe.local.dynamodb import client, ensure_table
from recpipe.local.engine import LocalEngine
from recpipe.results import read

from .conftest import write_dataset

pytestmark = pytest.mark.slow

TABLE = "recpipe-abort-test"


def test_ctrl_c_during_a_local_run_stops_it_and_releases_the_lock(
    tmp_path: Path, dynalite_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = write_dataset(tmp_path / "data")
    ensure_table(dynalite_endpoint, TABLE)
    ddb = client(dynalite_endpoint)
    held: list[dict[str, Any] | None] = []
    real_wait = LocalEngine.wait

    def wait_then_ctrl_c(self: LocalEngine, arn: str, **kwargs: Any) -> ExecutionOutcome:
        show = kwargs["on_update"]

        def on_update(outcome: ExecutionOutcome) -> None:
            show(outcome)
            if any(s.name == "Prepare" and s.status == "succeeded" for s in outcome.states):
                held.append(read.lock_item(ddb, TABLE))  # Prepare's last act: the lock is taken
                raise KeyboardInterrupt

        return real_wait(self, arn, **{**kwargs, "on_update": on_update})

    monkeypatch.setattr(LocalEngine, "wait", wait_then_ctrl_c)
    workdir = tmp_path / "work"
    result = CliRunner().invoke(app, [
        "run", "--interactions", str(data / "interactions"), "--users", str(data / "users"),
        "--items", str(data / "items"), "--workdir", str(workdir),
        "--dynamodb-endpoint", dynalite_endpoint, "--table", TABLE,
    ])
    assert result.exit_code == 130, result.output
    assert "Interrupted: stopping the execution and releasing the run lock" in result.output
    record = records.load(workdir)
    assert held and held[0] is not None and held[0]["owner"] == record["run_id"]
    assert read.lock_item(ddb, TABLE) is None
    assert record["status"] == "ABORTED"
