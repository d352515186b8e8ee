"""Prepare: config validation, run layout, the run lock (moto S3 + DynamoDB)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws

from lambdas.prepare import handler
from lambdas.prepare.prepare import LOCK_TTL_SECONDS, deploy_defaults, prepare
from recpipe import config as cfg
from recpipe import runs
from recpipe.lambda_errors import ConfigurationError, InputError, LockHeldError
from recpipe.results.lock import release_lock
from recpipe.tables import BUCKET_ENV, LOCK_KEY, TABLE_ENV, create_table_kwargs

BUCKET, TABLE = "data-bucket", "results"
NOW = 1_700_000_000.0


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, Any]]:
    monkeypatch.setenv(BUCKET_ENV, BUCKET)
    monkeypatch.setenv(TABLE_ENV, TABLE)
    monkeypatch.delenv("RECPIPE_DEFAULTS", raising=False)
    monkeypatch.delenv(runs.JOB_PREFIX_ENV, raising=False)
    with mock_aws():
        s3 = boto3.client("s3")
        ddb: Any = boto3.client("dynamodb")
        s3.create_bucket(Bucket=BUCKET)
        ddb.create_table(**create_table_kwargs(TABLE))
        yield s3, ddb


def run(aws: tuple[Any, Any], execution_input: Any, name: str = "exec-1", now: float = NOW,
        defaults: dict[str, Any] | None = None) -> dict[str, Any]:
    s3, ddb = aws
    return prepare(execution_input, name, bucket=BUCKET, table=TABLE, defaults=defaults or {},
                   s3=s3, dynamodb=ddb, now=lambda: now)


def lock_item(ddb: Any) -> dict[str, Any]:
    return ddb.get_item(TableName=TABLE, Key={k: {"S": v} for k, v in LOCK_KEY.items()}).get("Item", {})


def test_empty_input_resolves_defaults_and_writes_flat_config(aws: tuple[Any, Any]) -> None:
    s3, ddb = aws
    doc = handler.lambda_handler({"input": {}, "execution_name": "exec-1"}, None, s3=s3, dynamodb=ddb)
    assert doc["run_id"] == "exec-1"
    assert doc["config"] == cfg.nest(cfg.defaults())
    written = runs.get_json(s3, f"s3://{BUCKET}/runs/exec-1/config.json")
    assert written == cfg.defaults()
    assert doc["uris"]["config"] == f"s3://{BUCKET}/runs/exec-1/config.json"
    assert doc["uris"]["manifest"] == f"s3://{BUCKET}/runs/exec-1/processed/manifest.json"
    assert doc["uris"]["data"] == f"s3://{BUCKET}/input/"
    assert lock_item(ddb)["owner"] == {"S": "exec-1"}


def test_default_run_has_eval_and_serve_variants(aws: tuple[Any, Any]) -> None:
    doc = run(aws, {})
    assert doc["has_evaluation"] is True
    assert [v["name"] for v in doc["variants"]] == ["eval", "serve"]
    ev, serve = doc["variants"]
    assert [c["ChannelName"] for c in ev["fm_channels"]] == ["train", "test"]
    assert ev["fm_channels"][1]["DataSource"]["S3DataSource"]["S3Uri"].endswith("/processed/test/")
    assert [c["ChannelName"] for c in serve["fm_channels"]] == ["train"]
    assert serve["fm_channels"][0]["DataSource"]["S3DataSource"]["S3Uri"].endswith("/processed/full/")
    assert doc["transform_outputs"] == {"eval": ev["transform_output"], "serve": serve["transform_output"]}


def distribution(channel: dict[str, Any]) -> str:
    return str(channel["DataSource"]["S3DataSource"]["S3DataDistributionType"])


@pytest.mark.parametrize(("count", "train"), [(1, "FullyReplicated"), (2, "ShardedByS3Key"),
                                              (20, "ShardedByS3Key")])
def test_several_fm_instances_shard_the_train_channel(aws: tuple[Any, Any], count: int, train: str) -> None:
    doc = run(aws, {"resources.fm_instance_count": count}, name=f"n{count}")
    ev, serve = doc["variants"]
    assert [distribution(c) for c in ev["fm_channels"]] == [train, "FullyReplicated"]  # test: replicated
    assert [distribution(c) for c in serve["fm_channels"]] == [train]


def test_no_holdout_means_serve_only(aws: tuple[Any, Any]) -> None:
    doc = run(aws, {"evaluation": {"holdout_fraction": 0}})
    assert doc["has_evaluation"] is False
    assert [v["name"] for v in doc["variants"]] == ["serve"]
    assert doc["transform_outputs"]["eval"] is None


def test_console_comment_is_ignored_and_nested_or_flat_overrides_apply(aws: tuple[Any, Any]) -> None:
    doc = run(aws, {"Comment": "Insert your JSON here", "fm": {"epochs": 3}, "publish.top_n": 7})
    assert doc["config"]["fm"]["epochs"] == 3
    assert doc["config"]["publish"]["top_n"] == 7


def test_deploy_defaults_sit_between_schema_and_input(aws: tuple[Any, Any]) -> None:
    defaults = deploy_defaults(json.dumps({"fm.epochs": 7, "publish.top_n": 9}))
    doc = run(aws, {"fm.epochs": 2}, defaults=defaults)
    assert doc["config"]["fm"]["epochs"] == 2
    assert doc["config"]["publish"]["top_n"] == 9


@pytest.mark.parametrize(("raw", "match"), [
    ("{not json", "RECPIPE_DEFAULTS is not valid JSON"),
    ("[1]", "must hold a JSON object"),
    ('{"fm.epoch": 3}', r"RECPIPE_DEFAULTS.*unknown key 'fm.epoch'"),
])
def test_bad_deploy_defaults_are_named(raw: str, match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        deploy_defaults(raw)


@pytest.mark.parametrize(("execution_input", "match"), [
    ({"fm.num_factor": 8}, r"unknown key 'fm.num_factor' \(did you mean 'fm.num_factors'\?\)"),
    ({"fm": {"epochs": "ten"}}, r"'fm.epochs' must be an integer, got 'ten'"),
    ({"fm.num_factors": 0}, r"'fm.num_factors' must be in \[1, 1000\], got 0"),
    ({"processing.mode": "both"}, r"'processing.mode' must be one of implicit, explicit"),
    ({"evaluation.holdout_fraction": True}, r"'evaluation.holdout_fraction' must be a number"),
])
def test_bad_input_is_rejected_naming_the_key(aws: tuple[Any, Any], execution_input: dict[str, Any],
                                              match: str) -> None:
    with pytest.raises(cfg.ConfigError, match=match):
        run(aws, execution_input)
    assert lock_item(aws[1]) == {}  # nothing locked on a refused input


def test_every_problem_is_listed_at_once(aws: tuple[Any, Any]) -> None:
    with pytest.raises(cfg.ConfigError) as info:
        run(aws, {"fm.epochs": 0, "nope": 1})
    assert len(info.value.problems) == 2


def test_non_object_input_is_rejected(aws: tuple[Any, Any]) -> None:
    with pytest.raises(InputError, match="must be a JSON object"):
        run(aws, [1, 2])


def test_lock_held_by_another_run_is_refused_naming_it(aws: tuple[Any, Any]) -> None:
    run(aws, {}, name="first")
    with pytest.raises(LockHeldError, match="run 'first'"):
        run(aws, {}, name="second", now=NOW + 60)
    assert lock_item(aws[1])["owner"] == {"S": "first"}


def test_retry_by_the_same_run_keeps_the_lock(aws: tuple[Any, Any]) -> None:
    first = run(aws, {}, name="first")
    again = run(aws, {}, name="first", now=NOW + 5)
    assert again["run_id"] == first["run_id"]
    assert lock_item(aws[1])["owner"] == {"S": "first"}


def test_expired_lock_is_taken_over(aws: tuple[Any, Any]) -> None:
    run(aws, {}, name="stale")
    doc = run(aws, {}, name="fresh", now=NOW + LOCK_TTL_SECONDS + 1)
    item = lock_item(aws[1])
    assert item["owner"] == {"S": "fresh"}
    assert int(item["expires_at"]["N"]) == doc["lock_expires_at"] == int(NOW) + 2 * LOCK_TTL_SECONDS + 1


def test_lock_is_free_again_after_release(aws: tuple[Any, Any]) -> None:
    run(aws, {}, name="first")
    assert release_lock(aws[1], TABLE, "first") is True
    assert run(aws, {}, name="second")["run_id"] == "second"


def test_job_names_fit_for_the_longest_execution_name(aws: tuple[Any, Any]) -> None:
    doc = run(aws, {}, name="Nightly_Run:" + "x" * 68)  # 80 characters, the Step Functions limit
    names = [doc["jobs"]["processing"]] + [n for v in doc["variants"] for n in v["jobs"].values()]
    assert len(set(names)) == len(names) == 9
    for name in names:
        assert name.startswith("recpipe-") and len(name) + runs.ATTEMPT_SUFFIX_CHARS <= 63
        assert all(c.isalnum() or c == "-" for c in name)


def test_job_names_start_with_the_deployed_prefix(aws: tuple[Any, Any],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    s3, ddb = aws
    monkeypatch.setenv(runs.JOB_PREFIX_ENV, "team-b")
    doc = handler.lambda_handler({"input": {}, "execution_name": "r1"}, None, s3=s3, dynamodb=ddb)
    assert doc["jobs"]["processing"] == "team-b-r1-process"
    assert doc["variants"][-1]["jobs"]["model"] == "team-b-r1-serve-model"
    monkeypatch.setenv(runs.JOB_PREFIX_ENV, "Team_B")
    with pytest.raises(ConfigurationError, match=runs.JOB_PREFIX_ENV):
        handler.lambda_handler({"input": {}, "execution_name": "r2"}, None, s3=s3, dynamodb=ddb)


def test_handler_reads_environment_and_rejects_malformed_event(aws: tuple[Any, Any],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    s3, ddb = aws
    monkeypatch.setenv("RECPIPE_DEFAULTS", json.dumps({"fm": {"epochs": 4}}))
    doc = handler.lambda_handler({"input": {}, "execution_name": "x"}, None, s3=s3, dynamodb=ddb)
    assert doc["config"]["fm"]["epochs"] == 4
    with pytest.raises(InputError, match="execution_name"):
        handler.lambda_handler({"input": {}}, None, s3=s3, dynamodb=ddb)
    monkeypatch.delenv(BUCKET_ENV)
    with pytest.raises(ConfigurationError, match=BUCKET_ENV):
        handler.lambda_handler({"input": {}, "execution_name": "y"}, None, s3=s3, dynamodb=ddb)


def test_run_document_is_json_and_small(aws: tuple[Any, Any]) -> None:
    doc = run(aws, {})
    assert len(json.dumps(doc)) < 16_000  # far below Step Functions' 256 KB state payload
