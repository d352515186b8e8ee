"""A moto execution of the committed ASL with stub tasks, recording what every task received.

Prepare, Plan and Release are the real handlers (moto S3 + DynamoDB); SageMaker jobs and the
other Lambdas are stubs returning their contracts' shapes (docs/CONTRACTS.md). Used by
``test_execution.py`` (data flow) and ``test_requests.py`` (requests against botocore's model).
"""

from __future__ import annotations

import json
import logging
import re
import threading
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
from recpipe.tables import BUCKET_ENV, LOCK_KEY, TABLE_ENV, create_table_kwargs
from tests.moto_executions import wait_for_executions
from workflows.definition import PLACEHOLDERS, load_definition

REGION, ACCOUNT = "us-east-1", "123456789012"
BUCKET, TABLE = "recpipe-data", "recpipe-results"
N_USERS, N_ITEMS, FEATURE_DIM = 5, 7, 12
# processed/shards/serve.json as the processing step writes it (read by the Publish Map's ItemReader).
SERVE_SHARDS = [{"kind": "users", "shard": 0, "start": 0, "stop": 3, "prefix": "shards/serve/00000/"},
                {"kind": "users", "shard": 1, "start": 3, "stop": 5, "prefix": "shards/serve/00001/"},
                {"kind": "items", "shard": 0, "start": 0, "stop": 7}]


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
                "dimension": 65, "n_items": N_ITEMS, "n_users": N_USERS, "n_shards": 1,
                "user_files": [runs.join_uri(out, "users", "part-0")]}

    def evaluate(e: dict[str, Any]) -> dict[str, Any]:
        metrics = {"precision_at_10": 0.1, "recall_at_10": 0.2, "ndcg_at_10": h.ndcg, "map_at_10": 0.1,
                   "hit_rate_at_10": 0.5, "coverage_at_10": 0.3, "users_evaluated": N_USERS}
        return {"metrics": metrics, "threshold": h.threshold, "active_ndcg_at_10": None}

    def publish_shard(e: dict[str, Any]) -> dict[str, Any]:
        return {"run_id": e["run_id"], **e["shard"], "rows": e["shard"]["stop"] - e["shard"]["start"]}

    def commit(e: dict[str, Any]) -> dict[str, Any]:
        return {"run_id": e["run_id"], "users_written": N_USERS, "topped_up_users": 0,
                "previous_run_id": None, "shards": len(SERVE_SHARDS)}

    handlers: dict[str, Callable[[dict[str, Any]], Any]] = {
        "Prepare": lambda e: prepare_handler.lambda_handler(e, None, s3=h.s3, dynamodb=h.ddb),
        "Plan": lambda e: plan_handler.lambda_handler(e, None, s3=h.s3),
        "Release": lambda e: release_handler.lambda_handler(e, None, dynamodb=h.ddb),
        "Repackage": repackage, "Evaluate": evaluate, "PublishShard": publish_shard, "Commit": commit,
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
        runs.put_json(h.s3, runs.join_uri(processed, "shards", "serve.json"), SERVE_SHARDS)
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


def make_harness(monkeypatch: pytest.MonkeyPatch) -> Iterator[Harness]:
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


