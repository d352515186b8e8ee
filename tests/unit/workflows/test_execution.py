"""The ASL executed by moto's interpreter with stub tasks: data really flows from state to state.

Prepare, Plan and Release are the real handlers (moto S3 + DynamoDB); SageMaker jobs and the
Repackage/Evaluate/Publish Lambdas are stubs returning their contracts' shapes (docs/CONTRACTS.md;
tests/unit/workflows/harness.py). Each test runs one execution and checks what every task received
and how the run ended.
"""

from __future__ import annotations

import importlib
import json
import re
import time
from typing import Any

from recpipe.local.exceptions import TaskFailure
from recpipe.results.lock import acquire_lock
from tests.unit.workflows.harness import BUCKET, FEATURE_DIM, N_ITEMS, N_USERS, SERVE_SHARDS, TABLE, Harness


def by_variant(calls: list[dict[str, Any]], key: str) -> dict[str, dict[str, Any]]:
    return {re.search(r"-(eval|serve)-", c[key]).group(1): c for c in calls}  # type: ignore[union-attr]


def test_default_run_trains_both_variants_and_publishes_serve(harness: Harness) -> None:
    out = harness.run({})
    assert out["status"] == "SUCCEEDED", out
    calls = harness.calls
    states = calls.states()
    assert states[:3] == ["Prepare", "Process", "Plan"]
    assert states[-2:] == ["Commit", "Release lock"]
    assert states[-6:-2] == ["Evaluate"] + ["Publish shard"] * 3
    run_id = "test-run"
    root = f"s3://{BUCKET}/runs/{run_id}"

    process = calls.of("Process")[0]
    assert process["ProcessingJobName"] == f"recpipe-{run_id}-process-0-0"
    inputs = {i["InputName"]: i["S3Input"]["S3Uri"] for i in process["ProcessingInputs"]}
    assert inputs == {"data": f"s3://{BUCKET}/input/", "config": f"{root}/config.json",
                      "code": f"s3://{BUCKET}/code/processing/"}
    assert process["ProcessingResources"]["ClusterConfig"]["InstanceType"] == "ml.m5.xlarge"

    plan = harness.calls.of("Plan")[0]
    assert plan["manifest"] == f"{root}/processed/manifest.json"

    fm = by_variant(calls.of("Train FM"), "TrainingJobName")
    assert fm["eval"]["HyperParameters"]["feature_dim"] == str(FEATURE_DIM)
    assert fm["eval"]["HyperParameters"] == fm["serve"]["HyperParameters"]
    assert all(isinstance(v, str) for v in fm["eval"]["HyperParameters"].values())
    assert [c["ChannelName"] for c in fm["eval"]["InputDataConfig"]] == ["train", "test"]
    assert [c["ChannelName"] for c in fm["serve"]["InputDataConfig"]] == ["train"]
    assert fm["serve"]["ResourceConfig"] == {"InstanceType": "ml.m5.xlarge", "InstanceCount": 1,
                                             "VolumeSizeInGB": 30}
    assert fm["serve"]["StoppingCondition"] == {"MaxRuntimeInSeconds": 86400}

    repackage = {c["variant"]: c for c in calls.of("Repackage")}
    assert repackage["serve"] == {
        "run_id": run_id, "variant": "serve", "manifest": f"{root}/processed/manifest.json",
        "model_artifact": f"{root}/serve/fm/recpipe-{run_id}-serve-fm-0-0/output/model.tar.gz",
        "output_prefix": f"{root}/serve/vectors/"}

    knn = by_variant(calls.of("Train k-NN"), "TrainingJobName")
    channel = knn["eval"]["InputDataConfig"][0]
    assert channel["DataSource"]["S3DataSource"]["S3Uri"] == f"{root}/eval/vectors/items/"
    assert knn["eval"]["HyperParameters"] == {
        "feature_dim": "65", "k": str(N_ITEMS), "sample_size": str(N_ITEMS), "predictor_type": "classifier",
        "index_type": "faiss.Flat", "index_metric": "INNER_PRODUCT"}

    model = by_variant(calls.of("Create model"), "ModelName")
    assert model["serve"]["PrimaryContainer"]["ModelDataUrl"] == (
        f"{root}/serve/knn/recpipe-{run_id}-serve-knn-0-0/output/model.tar.gz")
    assert model["serve"]["ModelName"] == f"recpipe-{run_id}-serve-model-0-0"

    transform = by_variant(calls.of("Batch transform"), "TransformJobName")
    assert transform["serve"]["ModelName"] == model["serve"]["ModelName"]
    assert transform["serve"]["TransformInput"]["DataSource"]["S3DataSource"]["S3Uri"] == (
        f"{root}/serve/vectors/users/")
    assert transform["serve"]["TransformOutput"]["S3OutputPath"] == f"{root}/serve/transform/"

    evaluate = calls.of("Evaluate")[0]
    assert evaluate == {"run_id": run_id, "transform_output": f"{root}/eval/transform/",
                        "vectors": f"{root}/eval/vectors/", "manifest": f"{root}/processed/manifest.json",
                        "k": 10, "min_ndcg_at_10": 0.0,
                        "max_regression": 0.02, "metrics_output": f"{root}/metrics.json"}
    children = sorted(calls.of("Publish shard"), key=lambda c: (c["shard"]["kind"], c["shard"]["shard"]))
    assert [c["shard"] for c in children] == sorted(SERVE_SHARDS, key=lambda e: (e["kind"], e["shard"]))
    child = children[0]
    assert child["transform_output"] == f"{root}/serve/transform/"
    assert child["manifest"] == f"{root}/processed/manifest.json"
    assert child["vectors"] == f"{root}/serve/vectors/"
    assert child["reports"] == f"{root}/publish/"
    assert (child["top_n"], child["ttl_days"], child["similar_items"]) == (20, 60, 20)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", child["started_at"])
    assert all(c["started_at"] == child["started_at"] for c in children)  # one time for every shard
    commit = calls.of("Commit")[0]
    shard_list = {"Bucket": BUCKET, "Key": f"runs/{run_id}/processed/shards/serve.json"}
    assert commit == {"run_id": run_id, "shards": shard_list, "reports": f"{root}/publish/",
                      "metrics": commit["metrics"]}
    assert commit["metrics"]["ndcg_at_10"] == 0.25
    output = json.loads(out["output"])
    assert output["publish"]["users_written"] == N_USERS
    assert set(output["publish_map"]) == {"MapRunArn", "ResultWriterDetails"}  # small at any shard count
    assert harness.lock_owner() is None
    assert json.loads(out["output"])["release"] == {"released": True}


def test_no_holdout_runs_serve_only_and_skips_the_gate(harness: Harness) -> None:
    out = harness.run({"evaluation": {"holdout_fraction": 0},
                       "resources.fm_instance_type": "ml.c5.2xlarge"})
    assert out["status"] == "SUCCEEDED", out
    assert "Evaluate" not in harness.calls.states()
    assert [c["TrainingJobName"] for c in harness.calls.of("Train FM")] == ["recpipe-test-run-serve-fm-0-0"]
    assert harness.calls.of("Train FM")[0]["ResourceConfig"]["InstanceType"] == "ml.c5.2xlarge"
    assert harness.calls.of("Commit")[0]["metrics"] is None


def test_quality_gate_not_met_publishes_nothing_and_releases(harness: Harness) -> None:
    harness.ndcg, harness.threshold = 0.05, 0.1
    out = harness.run({})
    assert out["status"] == "FAILED"
    assert out["error"] == "QualityGateNotMet"
    assert out["cause"].startswith("The eval variant did not meet the quality gate")
    assert '"ndcg_at_10":0.05' in out["cause"] and '"threshold":0.1' in out["cause"]
    assert '"active_ndcg_at_10":null' in out["cause"]  # a first run: no active version
    assert '"users_evaluated":5' in out["cause"]
    assert "Publish shard" not in harness.calls.states()
    assert harness.calls.states()[-1] == "Release lock (gate)"
    assert harness.lock_owner() is None


def test_missing_metrics_fail_the_gate_instead_of_the_choice(harness: Harness) -> None:
    harness.ndcg = None  # type: ignore[assignment]  # e.g. no user had a relevant held-out item
    harness.threshold = None  # type: ignore[assignment]
    out = harness.run({})
    assert (out["status"], out["error"]) == ("FAILED", "QualityGateNotMet")
    assert '"ndcg_at_10":null' in out["cause"] and '"threshold":null' in out["cause"]
    assert "Publish shard" not in harness.calls.states()
    assert harness.lock_owner() is None


def test_a_failed_job_names_the_state_and_variant_and_releases(harness: Harness) -> None:
    reason = {"TrainingJobStatus": "Failed", "FailureReason": "k must be <= 1024"}
    harness.failures["Train k-NN"] = TaskFailure("States.TaskFailed", json.dumps(reason))
    out = harness.run({})
    assert out["status"] == "FAILED"
    assert out["error"] == "TaskFailed"  # a Fail state may not raise a "States." name
    assert re.match(r"Train k-NN failed for the (eval|serve) variant \(States\.TaskFailed\): ", out["cause"])
    assert "k must be <= 1024" in out["cause"]
    assert harness.calls.states()[-1] == "Release lock after failure"
    assert harness.lock_owner() is None


def test_a_failed_lambda_names_the_state(harness: Harness) -> None:
    harness.failures["Commit"] = RuntimeError("table throttled")
    out = harness.run({})
    assert (out["status"], out["error"]) == ("FAILED", "RuntimeError")
    assert out["cause"].startswith("Commit failed (RuntimeError): ") and "table throttled" in out["cause"]
    assert harness.lock_owner() is None



def test_a_failed_shard_fails_the_publish_map_and_nothing_is_committed(harness: Harness) -> None:
    harness.failures["Publish shard"] = RuntimeError("shard throttled")
    out = harness.run({})
    assert (out["status"], out["error"]) == ("FAILED", "ExceedToleratedFailureThreshold")
    assert out["cause"].startswith("Publish failed (States.ExceedToleratedFailureThreshold): ")
    assert "Commit" not in harness.calls.states()
    assert harness.calls.states()[-1] == "Release lock after failure"
    assert harness.lock_owner() is None

def test_invalid_input_fails_in_prepare_with_every_problem(harness: Harness) -> None:
    out = harness.run({"fm.num_factor": 8, "fm": {"epochs": 0}})
    assert (out["status"], out["error"]) == ("FAILED", "ConfigError")
    assert out["cause"].startswith("Prepare failed (ConfigError): ")
    assert "unknown key 'fm.num_factor'" in out["cause"]
    assert "'fm.epochs' must be in [1, 1000]" in out["cause"]
    assert harness.calls.states() == ["Prepare"]


def test_a_held_lock_refuses_the_run_and_is_left_alone(harness: Harness) -> None:
    acquire_lock(harness.ddb, TABLE, "other-run", "other-run", now=time.time())
    out = harness.run({})
    assert (out["status"], out["error"]) == ("FAILED", "LockHeldError")
    assert "run 'other-run'" in out["cause"]
    assert harness.lock_owner() == "other-run"


def test_a_retried_create_names_a_new_resource_and_the_transform_uses_the_created_model(
        harness: Harness) -> None:
    # A retried Create* whose first call reached SageMaker must not reuse the name.
    harness.fail_once["Create model"] = TaskFailure("SageMaker.ResourceLimitExceededException", "quota")
    harness.fail_once["Train FM"] = TaskFailure("SageMaker.AmazonSageMakerException", "throttled")
    out = harness.run({})
    assert out["status"] == "SUCCEEDED", out
    fm_names = sorted(c["TrainingJobName"] for c in harness.calls.of("Train FM"))
    assert len(fm_names) == 3  # eval, serve, and one retry
    retried = [n for n in fm_names if n.endswith("-fm-1-0")]
    assert len(retried) == 1 and retried[0].replace("-fm-1-0", "-fm-0-0") in fm_names
    models = [c["ModelName"] for c in harness.calls.of("Create model")]
    assert len(models) == len(set(models)) == 3
    assert sum(m.endswith("-model-1-0") for m in models) == 1
    created = {variant: [m for m in models if f"-{variant}-" in m][-1] for variant in ("eval", "serve")}
    used = by_variant(harness.calls.of("Batch transform"), "TransformJobName")
    assert {v: c["ModelName"] for v, c in used.items()} == created


def test_a_redriven_execution_names_every_job_anew(harness: Harness) -> None:
    """Step Functions redrive re-runs failed states with the same input: only
    ``$$.Execution.RedriveCount`` tells the attempts apart (moto cannot redrive; the context says 2)."""
    module = importlib.import_module("moto.stepfunctions.parser.backend.execution_worker")
    worker: Any = module.ExecutionWorker
    original = worker._get_evaluation_environment

    def redriven(self: Any) -> Any:
        env = original(self)
        env.states.context_object.context_object_data["Execution"]["RedriveCount"] = 2
        return env

    worker._get_evaluation_environment = redriven
    try:
        out = harness.run({})
    finally:
        worker._get_evaluation_environment = original
    assert out["status"] == "SUCCEEDED", out
    names = [c[key] for state in ("Process", "Train FM", "Train k-NN", "Create model", "Batch transform")
             for c in harness.calls.of(state)
             for key in ("ProcessingJobName", "TrainingJobName", "TransformJobName") if key in c]
    names += [c["ModelName"] for c in harness.calls.of("Create model")]
    assert len(names) == len(set(names)) == 9
    assert all(n.endswith("-0-2") for n in names), names
