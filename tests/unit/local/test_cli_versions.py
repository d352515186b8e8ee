"""`recpipe versions`, `rollback` and `unlock` on the local table (the session's dynalite).

The table is seeded in the layout Publish and Prepare write (recpipe.tables); rollback goes
through the real ``recpipe.results.versions.activate`` and unlock through ``release_lock``.
"""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from recpipe import tables
from recpipe.cli import app
from recpipe.executions import records
from recpipe.local.dynamodb import client, ensure_table
from recpipe.results import read

runner = CliRunner()
FUTURE = int(time.time()) + 30 * 86400
_names = itertools.count()


def _items(*pairs: tuple[str, str | None]) -> dict[str, Any]:
    return {
        "L": [
            {"M": {"item_id": {"S": i}, "score": {"NULL": True} if s is None else {"N": s}}} for i, s in pairs
        ]
    }


def seed(ddb: Any, table: str) -> None:
    """Versions r0 (complete, expired), r1 (complete), r2 (complete, active), r3 (still writing);
    user rows of r1 and r2; the pointer on r2 (previous r1)."""

    def put(key: dict[str, str], **attrs: Any) -> None:
        item: dict[str, Any] = {k: {"S": v} for k, v in key.items()}
        for name, value in attrs.items():
            item[name] = {"S": value} if isinstance(value, str) else value
        ddb.put_item(TableName=table, Item=item)

    def version(run_id: str, state: str, generated: str, expires: int, ndcg: str | None, users: int) -> None:
        metrics = {"M": {"ndcg_at_10": {"N": ndcg}}} if ndcg else {"NULL": True}
        put(
            tables.version_key(run_id),
            state=state,
            run_id=run_id,
            generated_at=generated,
            expires_at={"N": str(expires)},
            users_written={"N": str(users)},
            metrics=metrics,
            top_n={"N": "20"},
        )

    version("r0", "complete", "2025-01-01T00:00:00Z", 1000, "0.2", 2)
    version("r1", "complete", "2025-02-01T00:00:00Z", FUTURE, "0.3125", 2)
    version("r2", "complete", "2025-03-01T00:00:00Z", FUTURE, "0.35", 2)
    version("r3", "writing", "2025-04-01T00:00:00Z", FUTURE, None, 1)
    for run_id, first in (("r1", "111"), ("r2", "50")):
        put(
            tables.user_key("1", run_id),
            user_id="1",
            run_id=run_id,
            items=_items((first, "0.9"), ("7", "0.5"), ("3", None)),
        )
        put(tables.user_key("2", run_id), user_id="2", run_id=run_id, items=_items(("9", "0.8")))
    put(
        tables.ACTIVE_KEY,
        run_id="r2",
        previous_run_id="r1",
        ndcg_at_10={"N": "0.35"},
        activated_at="2025-03-01T00:00:00Z",
    )


def put_lock(
    ddb: Any, table: str, owner: str, *, execution_name: str | None = None, expires: int = FUTURE
) -> None:
    ddb.put_item(
        TableName=table,
        Item={
            **{k: {"S": v} for k, v in tables.LOCK_KEY.items()},
            "owner": {"S": owner},
            "execution_name": {"S": execution_name or owner},
            "acquired_at": {"S": "2025-04-01T00:00:00+00:00"},
            tables.TTL_ATTRIBUTE: {"N": str(expires)},
        },
    )


@pytest.fixture()
def local(dynalite_endpoint: str, tmp_path: Path) -> tuple[Any, str, list[str]]:
    """(client, table, the CLI options reaching it): a fresh seeded table per test."""
    table = f"versions-{next(_names)}-{time.monotonic_ns() % 10**9}"
    ensure_table(dynalite_endpoint, table)
    ddb = client(dynalite_endpoint)
    seed(ddb, table)
    return (
        ddb,
        table,
        ["--workdir", str(tmp_path), "--dynamodb-endpoint", dynalite_endpoint, "--table", table],
    )


def _text(result: Any) -> str:
    return " ".join(result.output.split())


def test_versions_lists_each_version_newest_first_with_the_active_one(
    local: tuple[Any, str, list[str]],
) -> None:
    _, _, options = local
    result = runner.invoke(app, ["versions", "--json", *options])
    assert result.exit_code == 0, result.output
    found = json.loads(result.stdout)
    assert [(v["run_id"], v["state"], v["active"], v["expired"]) for v in found] == [
        ("r3", "writing", False, False),
        ("r2", "complete", True, False),
        ("r1", "complete", False, False),
        ("r0", "complete", False, True),
    ]
    assert found[1]["users"] == 2 and found[1]["ndcg_at_10"] == 0.35 and found[3]["ndcg_at_10"] == 0.2
    assert found[0]["ndcg_at_10"] is None and found[1]["generated_at"] == "2025-03-01T00:00:00Z"

    table = runner.invoke(app, ["versions", *options])
    assert table.exit_code == 0, table.output
    text = _text(table)
    assert "active: r2" in text and "0.3125" in text and "complete (expired)" in text and "writing" in text
    cells = [
        [c.strip() for c in line.split("│")[1:-1]]
        for line in table.output.splitlines()
        if "complete" in line or "writing" in line
    ]
    assert [(c[0], c[1]) for c in cells] == [("", "r3"), ("*", "r2"), ("", "r1"), ("", "r0")]


def test_rollback_reactivates_an_older_complete_version(local: tuple[Any, str, list[str]]) -> None:
    ddb, table, options = local
    result = runner.invoke(app, ["rollback", "r1", *options])
    assert result.exit_code == 0, result.output
    text = _text(result)
    assert "r2 -> r1" in text and "previous active run: r2" in text and "new active run: r1" in text
    pointer = read.active_pointer(ddb, table)
    assert pointer is not None
    assert (pointer["run_id"], pointer["previous_run_id"], pointer["ndcg_at_10"]) == ("r1", "r2", 0.3125)
    served = runner.invoke(app, ["recommend", "1", "--json", *options])
    assert json.loads(served.stdout)["items"][0] == {"item_id": "111", "score": 0.9}
    # the topped-up item (null score) reads as such in the table view
    assert "popular" in runner.invoke(app, ["recommend", "1", *options]).output

    again = runner.invoke(app, ["rollback", "r1", *options])
    assert again.exit_code == 0 and "already the active one" in _text(again)


@pytest.mark.parametrize(
    ("run_id", "message"),
    [
        ("r9", "Version 'r9' is unknown in table"),
        ("r3", "Version 'r3' is in state 'writing', not 'complete'"),
        ("r0", "Version 'r0' expired at 1970-01-01T00:16:40Z"),
    ],
)
def test_rollback_refuses_unknown_incomplete_and_expired_versions(
    local: tuple[Any, str, list[str]], run_id: str, message: str
) -> None:
    ddb, table, options = local
    result = runner.invoke(app, ["rollback", run_id, *options])
    assert result.exit_code == 2
    text = _text(result)
    assert message in text and "The active version is still r2" in text
    pointer = read.active_pointer(ddb, table)
    assert pointer is not None and pointer["run_id"] == "r2"


def test_rollback_warns_when_a_run_holds_the_lock(local: tuple[Any, str, list[str]]) -> None:
    ddb, table, options = local
    put_lock(ddb, table, "r4")
    result = runner.invoke(app, ["rollback", "r1", *options])
    assert result.exit_code == 0, result.output
    assert "run r4 holds the run lock" in _text(result)


def test_unlock_reports_a_free_lock(local: tuple[Any, str, list[str]]) -> None:
    result = runner.invoke(app, ["unlock", *local[2]])
    assert result.exit_code == 0 and "no run holds it" in _text(result)


def test_unlock_releases_the_lock_of_a_run_that_ended(
    local: tuple[Any, str, list[str]], tmp_path: Path
) -> None:
    ddb, table, options = local
    put_lock(ddb, table, "local-x", execution_name="local-x")
    records.save(
        tmp_path,
        {
            "execution_name": "local-x",
            "run_id": "local-x",
            "status": "ABORTED",
            "started": "2025-04-01T00:00:00+00:00",
        },
    )
    result = runner.invoke(app, ["unlock", *options])
    assert result.exit_code == 0, result.output
    text = _text(result)
    assert "held by run local-x" in text and "its local run ended ABORTED" in text
    assert "Lock of run local-x released." in text
    assert read.lock_item(ddb, table) is None


def test_unlock_needs_force_when_the_run_may_still_be_running(local: tuple[Any, str, list[str]]) -> None:
    ddb, table, options = local
    put_lock(ddb, table, "local-y")
    refused = runner.invoke(app, ["unlock", *options])
    assert refused.exit_code == 2
    text = _text(refused)
    assert "no local record of run 'local-y'" in text and "may still be running" in text and "--force" in text
    assert read.lock_item(ddb, table) is not None

    forced = runner.invoke(app, ["unlock", "--force", *options])
    assert forced.exit_code == 0, forced.output
    assert "released (forced)" in _text(forced)
    assert read.lock_item(ddb, table) is None


def test_unlock_releases_an_expired_lock_without_force(local: tuple[Any, str, list[str]]) -> None:
    ddb, table, options = local
    put_lock(ddb, table, "local-z", expires=int(time.time()) - 60)
    result = runner.invoke(app, ["unlock", *options])
    assert result.exit_code == 0, result.output
    assert "the lock expired at" in _text(result)
    assert read.lock_item(ddb, table) is None


def test_unlock_help_explains_force() -> None:
    result = runner.invoke(app, ["unlock", "--help"], env={"COLUMNS": "200"})
    text = _text(result)
    assert result.exit_code == 0
    assert "may still be running" in text and "--force" in text and "PointerConflictError" in text


def test_local_commands_reject_aws_only_options(tmp_path: Path) -> None:
    result = runner.invoke(app, ["versions", "--stack", "Recpipe", "--workdir", str(tmp_path)])
    assert result.exit_code == 2 and "--stack applies only with --aws" in _text(result)
    assert not (tmp_path / "dynamodb").exists()
