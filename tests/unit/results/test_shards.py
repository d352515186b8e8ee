"""recpipe.results.shards: the Publish shard list, the shard reports and Commit's check of them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws

from recpipe import runs
from recpipe.lambda_errors import InputError
from recpipe.results import shards
from recpipe.results.exceptions import ShardReportError

BUCKET = "shards-test"
REPORTS = f"s3://{BUCKET}/runs/r1/publish/"
ENTRIES = [{"kind": "users", "shard": 0, "start": 0, "stop": 3, "prefix": "shards/serve/00000/"},
           {"kind": "users", "shard": 1, "start": 3, "stop": 5, "prefix": "shards/serve/00001/"},
           {"kind": "items", "shard": 0, "start": 0, "stop": 7}]


@pytest.fixture
def s3() -> Iterator[Any]:
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        yield client


def test_publish_locations_follow_the_run_layout() -> None:
    assert shards.publish_locations("b", "r1", "s3://b/runs/r1/serve/vectors/") == {
        "shards": {"Bucket": "b", "Key": "runs/r1/processed/shards/serve.json"},
        "reports": "s3://b/runs/r1/publish/",
        "vectors": "s3://b/runs/r1/serve/vectors/",
    }
    assert shards.report_uri(REPORTS, "users", 12) == f"{REPORTS}users-00012.json"


def test_a_shard_list_round_trips() -> None:
    entries = shards.parse_shard_list(ENTRIES, "serve.json")
    assert [e.as_json() for e in entries] == ENTRIES
    assert entries[1].size == 2 and entries[2].prefix is None
    assert shards.kinds_of(entries) == {"users": 2, "items": 1}


@pytest.mark.parametrize(("document", "message"), [
    ({}, "must be a JSON array"),
    ([[]], "entry 0 must be a JSON object"),
    ([{**ENTRIES[0], "kind": "pairs"}], "'kind' must be one of users, items"),
    ([{**ENTRIES[0], "shard": True}], "'shard' must be an int >= 0"),
    ([{**ENTRIES[0], "stop": 0}], r"the range \[0, 0\) is empty"),
    ([{k: v for k, v in ENTRIES[0].items() if k != "prefix"}], "needs its 'prefix'"),
    ([ENTRIES[0], ENTRIES[0]], "entry 1: users shard 0 is listed twice"),
])
def test_bad_shard_lists_are_named(document: Any, message: str) -> None:
    with pytest.raises(InputError, match=message):
        shards.parse_shard_list(document, "serve.json")


def _report(s3: Any, entry: dict[str, Any], **change: Any) -> None:
    parsed = shards.ShardEntry.parse(entry, "entry")
    rows = parsed.size if parsed.kind == "users" else 4
    report = {**shards.shard_report("r1", parsed, rows=rows, topped_up=1), **change}
    runs.put_json(s3, shards.report_uri(REPORTS, parsed.kind, parsed.shard), report)


def test_check_reports_sums_users_and_top_ups(s3: Any) -> None:
    for entry in ENTRIES:
        _report(s3, entry)
    totals = shards.check_reports(s3, "r1", shards.parse_shard_list(ENTRIES, "x"), REPORTS)
    assert totals == shards.ReportTotals(shards=3, users_written=5, topped_up_users=2, item_rows=4)


def test_check_reports_names_every_missing_and_wrong_report(s3: Any) -> None:
    _report(s3, ENTRIES[0], rows=2)
    _report(s3, ENTRIES[2])
    with pytest.raises(ShardReportError) as raised:
        shards.check_reports(s3, "r1", shards.parse_shard_list(ENTRIES, "x"), REPORTS)
    message = str(raised.value)
    assert "1 of 3 shard(s) wrote no report under " + REPORTS in message
    assert "users shard 1 [3, 5)" in message
    assert "users shard 0 [0, 3): 2 rows written for 3 users" in message
    assert message.endswith("the previous version is still served.")


def test_a_report_of_another_run_does_not_count(s3: Any) -> None:
    for entry in ENTRIES:
        _report(s3, entry)
    _report(s3, ENTRIES[1], run_id="r0")
    s3.put_object(Bucket=BUCKET, Key="runs/r1/publish/items-00000.json", Body=json.dumps([1]).encode())
    expected = r"2 report.* the report belongs to run 'r0'; items shard 0 \[0, 7\): the report is not a JSON"
    with pytest.raises(ShardReportError, match=expected):
        shards.check_reports(s3, "r1", shards.parse_shard_list(ENTRIES, "x"), REPORTS)
