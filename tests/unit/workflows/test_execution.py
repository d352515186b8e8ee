"""The ASL executed by moto's interpreter with stub tasks: data really flows from state to state.

Prepare, Plan and Release are the real handlers (moto S3 + DynamoDB); SageMaker jobs and the
Repackage/Evaluate/Publish Lambdas are stubs returning their contracts' shapes (docs/CONTRACTS.md).
Each test runs one execution and checks what every task received and how the run ended.
"""

from __future__ import annotations

import importlib
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import boto3
import pytest
from moto import mock_aws

from lambdas.plan import handler as plan_handler
from lambdas.prepare import handler as prepare_handler
from lambdas.release import handler as release_handler
from recpipe import runs
from recpipe.local.exceptions import TaskFailure
from recpipe.local.moto_hook import TaskCall, installed
from recpipe.results.lock import acquire_lock
from recpipe.tables import BUCKET_ENV, LOCK_KEY, TABLE_ENV, create_table_kwargs
from tests.moto_executions import wait_for_executions
from workflows.definition import PLACEHOLDERS, load_definition

REGION, ACCOUNT = "us-east-1", "123456789012"
BUCKET, TABLE = "recpipe-data", "recpipe-results"
N_USERS, N_ITEMS, FEATURE_DIM = 5, 7, 12


@dataclass
class Calls:
    """What each task state received, in order."""

    log: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, state: str, params: dict[str, Any]) -> None:
        with self.lock:
            self.log.append((state, params))

    def of(self, state: str) -> list[dict[str, Any]]:
        return [p for s, p in self.log if s == state]

    def states(self) -> list[str]:
        return [s for s, _ in self.log]


@dataclass
class Harness:
    s3: Any
    ddb: Any
    sfn: Any
    arn: str
    calls: Calls
    # state name -> exception to raise instead of the stub's normal result
    failures: dict[str, Exception] = field(default_factory=dict)
    # state name -> exception raised by that state's first call only (then it succeeds)
    fail_once: dict[str, Exception] = field(default_factory=dict)
    ndcg: float = 0.25
    threshold: float = 0.1

    def run(self, execution_input: dict[str, Any], name: str = "test-run") -> dict[str, Any]:
        arn = self.sfn.start_execution(stateMachineArn=self.arn, name=name,
                                       input=json.dumps(execution_input))["executionArn"]
        wait_for_executions(timeout_s=60)
        described: dict[str, Any] = self.sfn.describe_execution(executionArn=arn)
        return described

    def lock_owner(self) -> str | None:
        item = self.ddb.get_item(TableName=TABLE, Key={k: {"S": v} for k, v in LOCK_KEY.items()}).get("Item")
        return item["owner"]["S"] if item else None


def lambda_failure(exc: Exception) -> TaskFailure:
    """How Step Functions reports a Python Lambda's exception."""
    return TaskFailure(type(exc).__name__, json.dumps({"errorMessage": str(exc),
                                                       "errorType": type(exc).__name__}))


def stub_lambdas(h: Harness) -> Callable[[TaskCall], Any]:
    def repackage(e: dict[str, Any]) -> dict[str, Any]:
        out = e["output_prefix"]
        return {"items_prefix": runs.prefix_uri(out, "items"), "users_prefix": runs.prefix_uri(out, "users"),
                "dimension": 65, "n_items": N_ITEMS, "n_users": N_USERS,
                "user_files": [runs.join_uri(out, "users", "part-0")]}

    def evaluate(e: dict[str, Any]) -> dict[str, Any]:
        metrics = {"precision_at_10": 0.1, "recall_at_10": 0.2, "ndcg_at_10": h.ndcg, "map_at_10": 0.1,
                   "hit_rate_at_10": 0.5, "coverage_at_10": 0.3, "users_evaluated": N_USERS}
        return {"metrics": metrics, "threshold": h.threshold, "active_ndcg_at_10": None}

    def publish(e: dict[str, Any]) -> dict[str, Any]:
        return {"run_id": e["run_id"], "users_written": N_USERS, "topped_up_users": 0,
                "previous_run_id": None}

    handlers: dict[str, Callable[[dict[str, Any]], Any]] = {
        "Prepare": lambda e: prepare_handler.lambda_handler(e, None, s3=h.s3, dynamodb=h.ddb),
        "Plan": lambda e: plan_handler.lambda_handler(e, None, s3=h.s3),
        "Release": lambda e: release_handler.lambda_handler(e, None, dynamodb=h.ddb),
        "Repackage": repackage, "Evaluate": evaluate, "Publish": publish,
    }

    def invoke(call: TaskCall) -> Any:
        payload = call.parameters["Payload"]
        h.calls.add(call.state_name, payload)
        function = call.parameters["FunctionName"].rsplit(":", 1)[1]
        try:
            if call.state_name in h.failures:
                raise h.failures[call.state_name]
            result = handlers[function](json.loads(json.dumps(payload)))
        except TaskFailure:
            raise
        except Exception as exc:
            raise lambda_failure(exc) from exc
        return {"Payload": result, "StatusCode": 200, "ExecutedVersion": "$LATEST"}

    return invoke


def stub_sagemaker(h: Harness) -> Callable[[TaskCall], Any]:
    def manifest(params: dict[str, Any]) -> None:
        processed = params["ProcessingOutputConfig"]["Outputs"][0]["S3Output"]["S3Uri"]
        config = runs.get_json(h.s3, next(i["S3Input"]["S3Uri"] for i in params["ProcessingInputs"]
                                          if i["InputName"] == "config"))
        runs.put_json(h.s3, runs.join_uri(processed, "manifest.json"), {
            "schema_version": 1, "feature_dim": FEATURE_DIM, "config": config,
            "counts": {"users": N_USERS, "items": N_ITEMS},
            "files": {"train": "train/", "test": "test/", "full": "full/"}})

    def job(call: TaskCall) -> Any:
        p = call.parameters
        h.calls.add(call.state_name, p)
        if call.state_name in h.failures:
            raise h.failures[call.state_name]
        with h.calls.lock:
            once = h.fail_once.pop(call.state_name, None)
        if once is not None:
            raise once
        if call.action == "createProcessingJob":
            manifest(p)
            return {"ProcessingJobName": p["ProcessingJobName"], "ProcessingJobStatus": "Completed"}
        if call.action == "createTrainingJob":
            artifact = runs.join_uri(p["OutputDataConfig"]["S3OutputPath"], p["TrainingJobName"], "output",
                                     "model.tar.gz")
            return {"TrainingJobName": p["TrainingJobName"], "TrainingJobStatus": "Completed",
                    "ModelArtifacts": {"S3ModelArtifacts": artifact}}
        if call.action == "createModel":
            return {"ModelArn": f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:model/{p['ModelName']}"}
        if call.action == "createTransformJob":
            return {"TransformJobName": p["TransformJobName"], "TransformJobStatus": "Completed"}
        raise TaskFailure("States.Runtime", f"unexpected action {call.action}")

    return job


def filled_definition() -> str:
    values = {name: f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{name.removesuffix('FunctionArn')}"
              for name in PLACEHOLDERS if name.endswith("FunctionArn")}
    values.update(SageMakerRoleArn=f"arn:aws:iam::{ACCOUNT}:role/sm", DataBucket=BUCKET,
                  FmImageUri="fm:1", KnnImageUri="knn:1", ProcessingImageUri="proc:1")
    text = re.sub(r"\$\{(\w+)\}", lambda m: values[m.group(1)], json.dumps(load_definition()))
    return text


@pytest.fixture
def harness(monkeypatch: pytest.MonkeyPatch) -> Iterator[Harness]:
    for key, value in {"AWS_DEFAULT_REGION": REGION, "AWS_ACCESS_KEY_ID": "testing",
                       "AWS_SECRET_ACCESS_KEY": "testing", BUCKET_ENV: BUCKET, TABLE_ENV: TABLE}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("RECPIPE_DEFAULTS", raising=False)
    for name in ("moto", "botocore"):  # moto logs every failed state at length
        logging.getLogger(name).setLevel(logging.CRITICAL)
    with mock_aws():
        ddb: Any = boto3.client("dynamodb")
        s3, sfn = boto3.client("s3"), boto3.client("stepfunctions")
        s3.create_bucket(Bucket=BUCKET)
        ddb.create_table(**create_table_kwargs(TABLE))
        h = Harness(s3=s3, ddb=ddb, sfn=sfn, arn="", calls=Calls())
        with installed({"lambda": stub_lambdas(h), "sagemaker": stub_sagemaker(h)}, retry_scale=0.0):
            h.arn = sfn.create_state_machine(name="recpipe", definition=filled_definition(),
                                             roleArn=f"arn:aws:iam::{ACCOUNT}:role/sfn")["stateMachineArn"]
            yield h


def by_variant(calls: list[dict[str, Any]], key: str) -> dict[str, dict[str, Any]]:
    return {re.search(r"-(eval|serve)-", c[key]).group(1): c for c in calls}  # type: ignore[union-attr]


def test_default_run_trains_both_variants_and_publishes_serve(harness: Harness) -> None:
    out = harness.run({})
    assert out["status"] == "SUCCEEDED", out
    calls = harness.calls
    states = calls.states()
    assert states[:3] == ["Prepare", "Process", "Plan"]
    assert states[-3:] == ["Evaluate", "Publish", "Release lock"]
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
        "output_prefix": f"{root}/serve/vectors/", "user_shards": 4}

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
                        "manifest": f"{root}/processed/manifest.json", "k": 10, "min_ndcg_at_10": 0.0,
                        "max_regression": 0.02, "metrics_output": f"{root}/metrics.json"}
    publish = calls.of("Publish")[0]
    assert publish["transform_output"] == f"{root}/serve/transform/"
    assert publish["metrics"]["ndcg_at_10"] == 0.25
    assert (publish["top_n"], publish["ttl_days"]) == (20, 60)
    assert harness.lock_owner() is None
    assert json.loads(out["output"])["release"] == {"released": True}


def test_no_holdout_runs_serve_only_and_skips_the_gate(harness: Harness) -> None:
    out = harness.run({"evaluation": {"holdout_fraction": 0},
                       "resources.fm_instance_type": "ml.c5.2xlarge"})
    assert out["status"] == "SUCCEEDED", out
    assert "Evaluate" not in harness.calls.states()
    assert [c["TrainingJobName"] for c in harness.calls.of("Train FM")] == ["recpipe-test-run-serve-fm-0-0"]
    assert harness.calls.of("Train FM")[0]["ResourceConfig"]["InstanceType"] == "ml.c5.2xlarge"
    assert harness.calls.of("Publish")[0]["metrics"] is None


def test_quality_gate_not_met_publishes_nothing_and_releases(harness: Harness) -> None:
    harness.ndcg, harness.threshold = 0.05, 0.1
    out = harness.run({})
    assert out["status"] == "FAILED"
    assert out["error"] == "QualityGateNotMet"
    assert out["cause"].startswith("The eval variant did not meet the quality gate")
    assert '"ndcg_at_10":0.05' in out["cause"] and '"threshold":0.1' in out["cause"]
    assert '"active_ndcg_at_10":null' in out["cause"]  # a first run: no active version
    assert '"users_evaluated":5' in out["cause"]
    assert "Publish" not in harness.calls.states()
    assert harness.calls.states()[-1] == "Release lock (gate)"
    assert harness.lock_owner() is None


def test_missing_metrics_fail_the_gate_instead_of_the_choice(harness: Harness) -> None:
    harness.ndcg = None  # type: ignore[assignment]  # e.g. no user had a relevant held-out item
    harness.threshold = None  # type: ignore[assignment]
    out = harness.run({})
    assert (out["status"], out["error"]) == ("FAILED", "QualityGateNotMet")
    assert '"ndcg_at_10":null' in out["cause"] and '"threshold":null' in out["cause"]
    assert "Publish" not in harness.calls.states()
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
    harness.failures["Publish"] = RuntimeError("table throttled")
    out = harness.run({})
    assert (out["status"], out["error"]) == ("FAILED", "RuntimeError")
    assert out["cause"].startswith("Publish failed (RuntimeError): ") and "table throttled" in out["cause"]
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
