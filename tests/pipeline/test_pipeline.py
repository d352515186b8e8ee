"""End to end: the deployed ASL run locally on a synthetic dataset, each state's outputs checked;
then each state made to fail in turn: the execution fails with that state's cause, the run lock is
released and the previously active recommendations are still served."""

from __future__ import annotations

import csv
import json
import re
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp
from typer.testing import CliRunner

from recpipe.cli import app
from recpipe.local.dynamodb import client
from recpipe.local.exceptions import TaskFailure
from recpipe.metrics import RankingMetrics, ranking_metrics
from recpipe.results import read

from .conftest import N_ITEMS, N_USERS, OVERRIDES, PipelineRun, Runner, write_dataset

pytestmark = pytest.mark.slow

VARIANTS = ("eval", "serve")
INNER = ("Train FM", "Repackage", "Train k-NN", "Create model", "Batch transform")


def _local(run: PipelineRun, uri: str) -> Path:
    assert uri.startswith("s3://")
    bucket, _, key = uri[5:].partition("/")
    return run.workdir / "s3" / bucket / key


def _run_doc(run: PipelineRun) -> dict[str, Any]:
    doc: dict[str, Any] = run.state("Prepare").output["run"]
    return doc


def _seen(run: PipelineRun) -> dict[str, set[str]]:
    seen: dict[str, set[str]] = {}
    with (run.data / "interactions" / "ratings.csv").open() as fh:
        for row in csv.DictReader(fh):
            seen.setdefault(row["user_id"], set()).add(row["item_id"])
    return seen


def test_the_execution_succeeds_through_every_state_in_order(pipeline: PipelineRun) -> None:
    assert pipeline.outcome.status == "SUCCEEDED", (pipeline.outcome.error, pipeline.outcome.cause)
    top = [s.name for s in pipeline.outcome.states if not s.path]
    assert top == [
        "Prepare",
        "Process",
        "Plan",
        "Models",
        "Evaluation?",
        "Evaluate",
        "Quality gate",
        "Publish",
        "Commit",
        "Release lock",
        "Succeeded",
    ]
    for variant in VARIANTS:
        assert [s.name for s in pipeline.outcome.states if s.variant == variant] == list(INNER)
    assert all(s.status == "succeeded" for s in pipeline.outcome.states)


def test_prepare_writes_the_resolved_config_under_the_run(pipeline: PipelineRun) -> None:
    doc = _run_doc(pipeline)
    assert doc["run_id"] == pipeline.run_id
    written = json.loads((pipeline.run_dir / "config.json").read_text())
    for key, value in OVERRIDES.items():  # config.json is the flat resolved config
        assert written[key] == value
    assert [v["name"] for v in doc["variants"]] == list(VARIANTS)


def test_process_writes_the_manifest_and_the_training_sets(pipeline: PipelineRun) -> None:
    manifest = json.loads(_local(pipeline, _run_doc(pipeline)["uris"]["manifest"]).read_text())
    assert manifest["counts"]["users"] == N_USERS
    assert manifest["counts"]["items"] == N_ITEMS
    assert manifest["feature_dim"] > N_USERS + N_ITEMS  # one-hot ids plus user and item features
    assert manifest["layout"]["user_features"] and manifest["layout"]["item_features"]
    processed = _local(pipeline, _run_doc(pipeline)["uris"]["manifest"]).parent
    for name in ("train", "test", "full"):
        assert any((processed / manifest["files"][name]).iterdir()), name


def test_plan_emits_string_hyperparameters_from_the_manifest(pipeline: PipelineRun) -> None:
    plan = pipeline.state("Plan").output["plan"]
    manifest = json.loads(_local(pipeline, _run_doc(pipeline)["uris"]["manifest"]).read_text())
    fm = plan["fm_hyperparameters"]
    assert all(isinstance(v, str) for v in fm.values())
    assert fm["feature_dim"] == str(manifest["feature_dim"])
    assert (fm["num_factors"], fm["epochs"]) == ("8", "3")
    assert plan["knn_hyperparameters"]["k"] == str(OVERRIDES["publish.top_n"] + OVERRIDES["knn.k_margin"])


@pytest.mark.parametrize("variant", VARIANTS)
def test_each_variant_trains_fm_repackages_trains_knn_and_transforms(
    pipeline: PipelineRun, variant: str
) -> None:
    variant_dir = pipeline.run_dir / variant
    fm_models = list((variant_dir / "fm").rglob("model.tar.gz"))
    knn_models = list((variant_dir / "knn").rglob("model.tar.gz"))
    assert len(fm_models) == 1 and len(knn_models) == 1
    assert fm_models[0].parent.name == "output"
    assert re.fullmatch(rf"recpipe-.*-{variant}-fm-0-0", fm_models[0].parent.parent.name)  # first attempt
    with tarfile.open(fm_models[0]) as tar:
        assert tar.getnames()
    manifest_path = _local(pipeline, _run_doc(pipeline)["uris"]["manifest"])
    manifest = json.loads(manifest_path.read_text())
    shards = [e for e in json.loads((manifest_path.parent / manifest["shards"][variant]).read_text())
              if e["kind"] == "users"]
    users = manifest["counts"]["users" if variant == "serve" else "eval_users"]
    assert 0 < users <= N_USERS and len(shards) > 1  # conftest: a small processing.users_per_shard
    # Repackage writes one user vector file per shard of the variant's list, the transform one output each.
    names = sorted(f"users-{e['start']:010d}-{e['stop']:010d}.pbr" for e in shards)
    assert sorted(p.name for p in (variant_dir / "vectors" / "users").iterdir()) == names
    outputs = sorted((variant_dir / "transform").rglob("*.out"))
    assert [p.name for p in outputs] == [f"{name}.out" for name in names]
    records = [json.loads(line) for path in outputs for line in path.read_text().splitlines()]
    assert len(records) == users
    k = OVERRIDES["publish.top_n"] + OVERRIDES["knn.k_margin"]
    for record in records:
        assert len(record["labels"]) == len(record["distances"]) == min(k, N_ITEMS)
        assert record["distances"] == sorted(record["distances"])  # ascending, as the service returns


def _most_popular_metrics(run: PipelineRun) -> RankingMetrics:
    """Most-popular's metrics on the run's own holdout, with the Evaluate protocol: every user gets
    the items most users interacted with in the training part, minus what they saw there."""
    manifest_path = _local(run, _run_doc(run)["uris"]["manifest"])
    manifest = json.loads(manifest_path.read_text())
    n_users, n_items = manifest["counts"]["users"], manifest["counts"]["items"]
    seen = sp.load_npz(manifest_path.parent / manifest["files"]["seen_train"]).tocsr()
    popularity = np.asarray(seen.sum(axis=0)).ravel()
    by_popularity = np.argsort(-popularity, kind="stable")
    recommended = np.array([[i for i in by_popularity if not seen[u, i]][:10] for u in range(n_users)])
    with (manifest_path.parent / manifest["files"]["holdout"]).open() as fh:
        rows = [row for row in csv.DictReader(fh) if float(row["relevant"])]
    users = [int(row["user_index"]) for row in rows]
    items = [int(row["item_index"]) for row in rows]
    relevant = sp.csr_matrix((np.ones(len(rows)), (users, items)), shape=(n_users, n_items))
    return ranking_metrics(recommended, relevant, n_items)


def test_evaluate_shows_the_model_learned_the_planted_clusters(pipeline: PipelineRun) -> None:
    """The eval variant ranks the held-out items at least twice as well (NDCG@10) as most-popular on
    the same holdout: it learned who likes what (conftest.write_dataset), not just what is popular."""
    metrics = pipeline.state("Evaluate").output["evaluation"]["metrics"]
    popular = _most_popular_metrics(pipeline)
    assert metrics["users_evaluated"] == popular.users_evaluated > 0
    assert popular.ndcg_at_10 > 0
    assert metrics["ndcg_at_10"] >= 2 * popular.ndcg_at_10, (metrics, popular)
    stored = json.loads(_local(pipeline, _run_doc(pipeline)["uris"]["metrics"]).read_text())
    assert stored["metrics"]["ndcg_at_10"] == pytest.approx(metrics["ndcg_at_10"])


def test_publish_serves_top_n_unseen_items_for_every_user_and_releases_the_lock(
    pipeline: PipelineRun,
) -> None:
    ddb = client(pipeline.endpoint)
    pointer = read.active_pointer(ddb, pipeline.table)
    assert pointer is not None and pointer["run_id"] == pipeline.run_id
    assert pipeline.state("Commit").output["publish"]["users_written"] == N_USERS
    rows = list(read.all_recommendations(ddb, pipeline.table, str(pipeline.run_id)))
    assert len(rows) == N_USERS
    seen = _seen(pipeline)
    for row in rows:
        items = [i["item_id"] for i in row["items"]]
        assert len(items) == OVERRIDES["publish.top_n"] == len(set(items))
        assert not set(items) & seen[row["user_id"]], row["user_id"]
        scores = [i["score"] for i in row["items"]]
        assert scores == sorted(scores, reverse=True)
    assert read.lock_item(ddb, pipeline.table) is None


def test_the_cli_reads_the_published_version_and_the_run_record(pipeline: PipelineRun) -> None:
    runner = CliRunner()
    common = [
        "--workdir",
        str(pipeline.workdir),
        "--dynamodb-endpoint",
        pipeline.endpoint,
        "--table",
        pipeline.table,
    ]
    result = runner.invoke(app, ["recommend", "1", "--json", "--top", "3", *common])
    assert result.exit_code == 0, result.output
    row = json.loads(result.stdout)
    assert (row["user_id"], row["run_id"], len(row["items"])) == ("1", pipeline.run_id, 3)
    status = runner.invoke(app, ["status", str(pipeline.run_id), "--workdir", str(pipeline.workdir)])
    assert status.exit_code == 0
    text = " ".join(status.output.split())
    assert "SUCCEEDED" in text and "Batch transform" in text and "[serve]" in text


# --- failures ------------------------------------------------------------------------------------


class InjectedError(Exception):
    pass


def _raise(message: str) -> Any:
    def handler(event: Any, context: Any) -> Any:
        raise InjectedError(message)

    return handler


def _failing_job(message: str) -> Any:
    def run(opt_ml: Path, **kwargs: Any) -> Any:
        (opt_ml / "output" / "failure").write_text(f"ClientError: {message}")
        raise SystemExit(1)

    return run


def _failing_transform(message: str) -> Any:
    def run(*args: Any, **kwargs: Any) -> Any:
        raise ValueError(message)

    return run


def _rejected_model(self: Any, parameters: Any) -> Any:
    raise TaskFailure(
        "SageMaker.AmazonSageMakerException", "injected: model rejected (Error Code: ValidationException)"
    )


FAILURES = [
    ("Prepare", {"overrides": {"fm.num_factors": 0}}, None, "fm.num_factors"),
    ("Process", {"bad_data": True}, None, "ratings.csv"),
    ("Plan", {"lambda_overrides": {"Plan": _raise("injected plan error")}}, None, "injected plan error"),
    (
        "Train FM",
        {},
        ("recpipe.algorithms.fm", "run_training_job", _failing_job("injected fm failure")),
        "injected fm failure",
    ),
    (
        "Repackage",
        {"lambda_overrides": {"Repackage": _raise("injected repackage error")}},
        None,
        "injected repackage error",
    ),
    (
        "Train k-NN",
        {},
        ("recpipe.algorithms.knn", "run_training_job", _failing_job("injected knn failure")),
        "injected knn failure",
    ),
    (
        "Create model",
        {},
        ("recpipe.local.sagemaker.service.LocalSageMaker", "create_model", _rejected_model),
        "model rejected",
    ),
    (
        "Batch transform",
        {},
        ("recpipe.algorithms.knn", "run_transform", _failing_transform("injected transform")),
        "injected transform",
    ),
    (
        "Evaluate",
        {"lambda_overrides": {"Evaluate": _raise("injected evaluate error")}},
        None,
        "injected evaluate error",
    ),
    (   # every shard fails: the Map fails as on AWS (the child's own error is in its Map Run)
        "Publish",
        {"lambda_overrides": {"PublishShard": _raise("injected publish error")}},
        None,
        "States.ExceedToleratedFailureThreshold",
    ),
]


@pytest.mark.parametrize(("state", "kwargs", "patch", "message"), FAILURES, ids=[f[0] for f in FAILURES])
def test_a_failing_state_fails_the_run_releases_the_lock_and_keeps_the_active_version(
    pipeline: PipelineRun,
    run_pipeline: Runner,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    state: str,
    kwargs: dict[str, Any],
    patch: tuple[str, str, Any] | None,
    message: str,
) -> None:
    assert pipeline.outcome.status == "SUCCEEDED"
    if patch is not None:
        target, attribute, replacement = patch
        monkeypatch.setattr(f"{target}.{attribute}", replacement)
    kwargs = dict(kwargs)
    if kwargs.pop("bad_data", False):
        kwargs["data"] = write_dataset(tmp_path / "bad", bad_rating_row=5)
    failed = run_pipeline(**kwargs)
    assert failed.outcome.status == "FAILED"
    assert failed.outcome.cause is not None
    assert failed.outcome.cause.startswith(f"{state} failed"), failed.outcome.cause
    assert message in failed.outcome.cause
    first_failure = failed.outcome.failed_state
    assert first_failure is not None and first_failure.name == state
    ddb = client(pipeline.endpoint)
    assert read.lock_item(ddb, pipeline.table) is None
    pointer = read.active_pointer(ddb, pipeline.table)
    assert pointer is not None and pointer["run_id"] == pipeline.run_id
    served = read.user_recommendations(ddb, pipeline.table, "1", str(pipeline.run_id))
    assert served is not None and len(served["items"]) == OVERRIDES["publish.top_n"]


def test_a_run_below_the_quality_gate_fails_clearly_and_publishes_nothing(
    pipeline: PipelineRun, run_pipeline: Runner
) -> None:
    gated = run_pipeline(overrides={"evaluation.min_ndcg_at_10": 1.0})
    assert gated.outcome.status == "FAILED"
    assert "Quality gate not met" in [s.name for s in gated.outcome.states]
    assert json.loads((gated.run_dir / "metrics.json").read_text())["passed"] is False
    ddb = client(pipeline.endpoint)
    pointer = read.active_pointer(ddb, pipeline.table)
    assert pointer is not None and pointer["run_id"] == pipeline.run_id
    assert read.lock_item(ddb, pipeline.table) is None


def test_one_failing_publish_shard_fails_the_run_and_flips_nothing(
    pipeline: PipelineRun, run_pipeline: Runner
) -> None:
    """Issue 10.2: one shard's child fails, the others write their rows; the Map fails, Commit never
    runs, the lock is released and the previous version is still the one served."""
    from lambdas.publish import handler as shard_handler
    from recpipe import tables
    from recpipe.results import versions

    def shard_1_fails(event: Any, context: Any) -> Any:
        if (event["shard"]["kind"], event["shard"]["shard"]) == ("users", 1):
            raise InjectedError("injected failure of users shard 1")
        return shard_handler.lambda_handler(event, context)

    failed = run_pipeline(overrides={"processing.users_per_shard": N_USERS // 3},
                          lambda_overrides={"PublishShard": shard_1_fails})
    assert failed.outcome.status == "FAILED"
    assert failed.outcome.error == "ExceedToleratedFailureThreshold"
    assert failed.outcome.cause is not None
    assert failed.outcome.cause.startswith("Publish failed (States.ExceedToleratedFailureThreshold)")
    first_failure = failed.outcome.failed_state
    assert first_failure is not None and first_failure.name == "Publish"
    assert "Commit" not in [s.name for s in failed.outcome.states]
    # The other shards ran and reported; shard 1 did not.
    reports = sorted(p.name for p in (failed.run_dir / "publish").glob("*.json"))
    assert "users-00000.json" in reports and "users-00002.json" in reports
    assert "users-00001.json" not in reports
    ddb = client(pipeline.endpoint)
    assert read.lock_item(ddb, pipeline.table) is None
    pointer = read.active_pointer(ddb, pipeline.table)
    assert pointer is not None and pointer["run_id"] == pipeline.run_id
    version = versions.read_item(ddb, pipeline.table, tables.version_key(str(failed.run_id)))
    assert version is not None and version["state"] == "writing"  # begun by the shards, never completed
    served = read.user_recommendations(ddb, pipeline.table, "1", str(pipeline.run_id))
    assert served is not None and len(served["items"]) == OVERRIDES["publish.top_n"]
