"""recpipe.runs: run ids, S3 URIs, JSON documents, the manifest, the environment."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws

from recpipe import runs
from recpipe.lambda_errors import ConfigurationError, InputError, NotFoundError, SchemaVersionError

BUCKET = "bkt"


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    with mock_aws():
        client = boto3.client("s3")
        client.create_bucket(Bucket=BUCKET)
        yield client


@pytest.mark.parametrize(("name", "run_id"), [
    ("local-20250101-120000-ab12", "local-20250101-120000-ab12"),
    ("9f1c2d3e-1111-2222-3333-444455556666", "9f1c2d3e-1111-2222-3333-444455556666"),  # console UUID
])
def test_valid_short_names_are_kept(name: str, run_id: str) -> None:
    assert runs.derive_run_id(name) == run_id


@pytest.mark.parametrize("name", ["Nightly_Run", "a--b", "-x", "a" * 44, "x" * 80, "___", "Ünïcode name"])
def test_other_names_become_short_distinct_slugs(name: str) -> None:
    run_id = runs.derive_run_id(name)
    assert len(run_id) <= runs.MAX_RUN_ID
    assert runs._VALID_RUN_ID.match(run_id)
    assert runs.derive_run_id(name) == run_id  # deterministic: a retried Prepare gets the same id
    assert runs.derive_run_id(name + "2") != run_id


def test_case_variants_do_not_collide() -> None:
    assert runs.derive_run_id("Run-A") != runs.derive_run_id("run-a")


def test_job_name_keeps_a_short_run_id() -> None:
    assert runs.job_name("r", "fm", "eval") == "recpipe-r-eval-fm"
    assert runs.job_name("r", "process", prefix="prod-recs") == "prod-recs-r-process"


@pytest.mark.parametrize("prefix", ["recpipe", "a", "x" * 32])
def test_job_names_leave_room_for_the_attempt_suffix_with_any_prefix(prefix: str) -> None:
    run_id = runs.derive_run_id("x" * 80)
    assert len(run_id) == runs.MAX_RUN_ID
    names = {runs.job_name(run_id, kind, variant, prefix=prefix)
             for variant in ("eval", "serve") for kind in ("fm", "knn", "model", "xform")}
    names.add(runs.job_name(run_id, "process", prefix=prefix))
    assert len(names) == 9
    for name in names:
        assert name.startswith(prefix + "-")
        assert len(name) + runs.ATTEMPT_SUFFIX_CHARS <= runs.MAX_JOB_NAME == 63, name
    # One shortened run part for every name of the run, and distinct between runs.
    other = runs.job_name(runs.derive_run_id("y" * 80), "fm", "eval", prefix=prefix)
    assert other != runs.job_name(run_id, "fm", "eval", prefix=prefix)
    run_parts = {n.removeprefix(prefix + "-").removesuffix("-process").split("-eval-")[0].split("-serve-")[0]
                 for n in names}
    assert len(run_parts) == 1


def test_job_prefix_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(runs.JOB_PREFIX_ENV, raising=False)
    assert runs.job_prefix() == runs.DEFAULT_JOB_PREFIX == "recpipe"
    monkeypatch.setenv(runs.JOB_PREFIX_ENV, "team-a-recs")
    assert runs.job_prefix() == "team-a-recs"


@pytest.mark.parametrize("prefix", ["Recpipe", "-x", "x-", "a_b", "x" * 33])
def test_job_prefix_rejects_names_sagemaker_arns_would_change(monkeypatch: pytest.MonkeyPatch,
                                                              prefix: str) -> None:
    monkeypatch.setenv(runs.JOB_PREFIX_ENV, prefix)
    with pytest.raises(ConfigurationError, match="RECPIPE_JOB_PREFIX"):
        runs.job_prefix()


@pytest.mark.parametrize(("uri", "parts"), [("s3://b/k/x.json", ("b", "k/x.json")), ("s3://b", ("b", "")),
                                            ("s3://b/", ("b", ""))])
def test_parse_s3_uri(uri: str, parts: tuple[str, str]) -> None:
    assert runs.parse_s3_uri(uri) == parts


@pytest.mark.parametrize("uri", ["b/k", "s3:///k", "", None])
def test_parse_s3_uri_rejects(uri: Any) -> None:
    with pytest.raises(InputError):
        runs.parse_s3_uri(uri)


def test_uri_joins() -> None:
    assert runs.join_uri("s3://b/runs/x/", "processed/", "manifest.json") == "s3://b/runs/x/processed/manifest.json"
    assert runs.prefix_uri("s3://b/runs/x", "eval", "fm") == "s3://b/runs/x/eval/fm/"
    assert runs.run_prefix("b", "r1") == "s3://b/runs/r1/"


def test_json_round_trip_and_errors_name_the_key(s3: Any) -> None:
    runs.put_json(s3, "s3://bkt/a/doc.json", {"x": 1})
    assert runs.get_json(s3, "s3://bkt/a/doc.json") == {"x": 1}
    with pytest.raises(NotFoundError, match=r"s3://bkt/a/missing\.json"):
        runs.get_json(s3, "s3://bkt/a/missing.json")
    s3.put_object(Bucket=BUCKET, Key="a/bad.json", Body=b"{nope")
    with pytest.raises(InputError, match=r"s3://bkt/a/bad\.json is not valid JSON"):
        runs.get_json(s3, "s3://bkt/a/bad.json")


def test_load_manifest_checks_the_schema_version(s3: Any) -> None:
    s3.put_object(Bucket=BUCKET, Key="m.json", Body=json.dumps({"schema_version": 1, "files": {}}).encode())
    assert runs.load_manifest(s3, "s3://bkt/m.json")["schema_version"] == 1
    s3.put_object(Bucket=BUCKET, Key="m2.json", Body=json.dumps({"schema_version": 9}).encode())
    with pytest.raises(SchemaVersionError, match=r"s3://bkt/m2\.json has schema_version 9"):
        runs.load_manifest(s3, "s3://bkt/m2.json")
    s3.put_object(Bucket=BUCKET, Key="m3.json", Body=b"[]")
    with pytest.raises(InputError, match="must be a JSON object"):
        runs.load_manifest(s3, "s3://bkt/m3.json")


def test_manifest_file_uri() -> None:
    manifest = {"files": {"train": "train/", "test": None}}
    uri = "s3://b/runs/r/processed/manifest.json"
    assert runs.manifest_file_uri(uri, manifest, "train") == "s3://b/runs/r/processed/train/"
    assert runs.manifest_file_uri(uri, manifest, "test") is None
    with pytest.raises(InputError, match=r"'files\.holdout'"):
        runs.manifest_file_uri(uri, manifest, "holdout")


def test_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECPIPE_TABLE", "t")
    monkeypatch.delenv("RECPIPE_BUCKET", raising=False)
    assert runs.table_name() == "t"
    with pytest.raises(ConfigurationError, match="RECPIPE_BUCKET"):
        runs.bucket_name()
