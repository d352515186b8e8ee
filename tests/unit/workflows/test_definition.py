"""The state machine's shape: valid ASL, state order, and which output feeds which parameter."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lambdas.prepare.prepare import LOCK_TTL_SECONDS, run_document
from recpipe import config as cfg
from recpipe.runs import derive_run_id
from workflows import definition as wf

ROOT = Path(__file__).resolve().parents[3]
ASL_VALIDATOR = ROOT / "node_modules" / ".bin" / "asl-validator"


@pytest.fixture(scope="module")
def asl() -> dict[str, Any]:
    return wf.build_definition()


def states(asl: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = asl["States"]
    return out


def iterator(asl: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = asl["States"]["Models"]["Iterator"]["States"]
    return out


def shard_states(asl: dict[str, Any]) -> dict[str, Any]:
    """The Publish Map's child states."""
    out: dict[str, Any] = asl["States"]["Publish"]["ItemProcessor"]["States"]
    return out


def all_states(asl: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    yield from states(asl).items()
    yield from iterator(asl).items()
    yield from shard_states(asl).items()


def happy_path(machine: dict[str, Any], start: str, choose: dict[str, str] | None = None) -> list[str]:
    """Follow Next; at a Choice, take ``choose[name]`` (default: its first choice)."""
    path, name = [], start
    while name:
        path.append(name)
        state = machine[name]
        if state["Type"] == "Choice":
            name = (choose or {}).get(name) or state["Choices"][0]["Next"]
        else:
            name = state.get("Next", "")
    return path


def test_committed_asl_is_current(asl: dict[str, Any]) -> None:
    assert wf.load_definition() == asl, "rebuild statemachine.asl.json: python -m workflows.definition"
    assert json.loads(wf.definition_json()) == asl


def test_build_is_deterministic_and_returns_copies(asl: dict[str, Any]) -> None:
    again = wf.build_definition()
    again["States"].clear()
    assert wf.build_definition() == asl


@pytest.mark.skipif(not ASL_VALIDATOR.exists() or shutil.which("node") is None,
                    reason="asl-validator (npm) not installed")
def test_asl_validator_accepts_it(tmp_path: Path) -> None:
    path = tmp_path / "definition.json"
    path.write_text(wf.definition_json())
    done = subprocess.run([str(ASL_VALIDATOR), "--json-path", str(path)], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_placeholders_are_exactly_the_declared_ones(asl: dict[str, Any]) -> None:
    used = set(re.findall(r"\$\{([A-Za-z0-9]+)\}", json.dumps(asl)))
    assert used == set(wf.PLACEHOLDERS)
    assert {"SageMakerRoleArn", "DataBucket", "FmImageUri", "KnnImageUri", "ProcessingImageUri"} <= used
    assert {f"{name}FunctionArn" for name in wf.FUNCTIONS} <= used


def test_functions_map_logical_names_to_handlers(asl: dict[str, Any]) -> None:
    packages = {"Prepare": "prepare", "Plan": "plan", "Repackage": "repackage", "Evaluate": "evaluate",
                "PublishShard": "publish", "Commit": "commit", "Release": "release"}
    assert set(wf.FUNCTIONS) == set(packages)
    for name, handler in wf.FUNCTIONS.items():
        assert handler == f"lambdas.{packages[name]}.handler.lambda_handler"
    lambdas = {s["Parameters"]["FunctionName"] for _, s in all_states(asl)
               if s.get("Resource") == "arn:aws:states:::lambda:invoke"}
    assert lambdas == {f"${{{name}FunctionArn}}" for name in wf.FUNCTIONS}


def test_importing_the_module_does_not_import_the_sdk() -> None:
    code = ("import sys, workflows.definition as d; d.load_definition(); d.FUNCTIONS; "
            "assert 'sagemaker' not in sys.modules and 'stepfunctions' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=60)


def test_state_order(asl: dict[str, Any]) -> None:
    top = states(asl)
    assert asl["StartAt"] == "Prepare"
    assert happy_path(top, "Prepare") == ["Prepare", "Process", "Plan", "Models", "Evaluation?", "Evaluate",
                                          "Quality gate", "Publish", "Commit", "Release lock", "Succeeded"]
    assert happy_path(top, "Prepare", {"Evaluation?": "Skip evaluation"})[4:] == [
        "Evaluation?", "Skip evaluation", "Publish", "Commit", "Release lock", "Succeeded"]
    assert top["Quality gate"]["Default"] == "Quality gate report"
    assert happy_path(top, "Quality gate report") == ["Quality gate report", "Release lock (gate)",
                                                      "Quality gate not met"]
    assert top["Quality gate not met"]["Type"] == "Fail"
    models = top["Models"]
    assert models["Type"] == "Map" and models["MaxConcurrency"] == 2
    assert models["ItemsPath"] == "$.run.variants"
    inner = models["Iterator"]
    assert happy_path(inner["States"], inner["StartAt"]) == ["Train FM", "Repackage", "Train k-NN",
                                                             "Create model", "Batch transform"]
    assert asl["TimeoutSeconds"] == LOCK_TTL_SECONDS


def test_every_task_failure_is_caught_and_reported(asl: dict[str, Any]) -> None:
    top, inner = states(asl), iterator(asl)
    # A Publish child has no Catch on purpose: its failure fails the Map (no failure tolerated), whose
    # Catch below releases the lock.
    assert "Catch" not in shard_states(asl)["Publish shard"]
    for name, state in all_states(asl):
        if state["Type"] not in ("Task", "Map") or name in shard_states(asl):
            continue
        catches = state.get("Catch", [])
        assert catches and catches[-1]["ErrorEquals"] == ["States.ALL"], name
        if name in ("Release lock after failure", "Release lock (gate)"):
            continue
        assert catches[-1]["ResultPath"] == "$.error", name
        report = (inner if name in inner else top)[catches[-1]["Next"]]
        assert report["Type"] == "Pass" and report["ResultPath"] == "$.failure", name
        assert report["Parameters"]["error.$"] == wf.ERROR_NAME
        if name != "Models":  # inside the Map the cause already names the state
            assert f"'{name} failed" in report["Parameters"]["cause.$"], name
            assert "$.error.Cause" in report["Parameters"]["cause.$"]
        if name in inner:
            assert report["Next"] == "Variant failed"
        elif name == "Prepare":  # nothing to release: the lock is Prepare's last action
            assert report["Next"] == "Run failed"
        else:
            assert happy_path(top, report["Next"]) == ["Release lock after failure", "Run failed"]
    for fail in (top["Run failed"], inner["Variant failed"]):
        assert fail["ErrorPath"] == "$.failure.error" and fail["CausePath"] == "$.failure.cause"
    # A failing release still ends in the failure it was cleaning up after.
    assert top["Release lock after failure"]["Catch"][0]["Next"] == "Run failed"
    assert top["Release lock after failure"]["Catch"][0]["ResultPath"] == "$.release_error"


def test_retries(asl: dict[str, Any]) -> None:
    for name, state in all_states(asl):
        if state["Type"] != "Task":
            continue
        errors = [e for r in state["Retry"] for e in r["ErrorEquals"]]
        if "lambda:invoke" in state["Resource"]:
            assert "Lambda.TooManyRequestsException" in errors and "Lambda.ServiceException" in errors, name
            assert all(r["MaxAttempts"] <= 3 for r in state["Retry"])
        else:
            # A full quota waits minutes (its own retrier, first), other service errors seconds.
            limit, other = state["Retry"]
            assert limit["ErrorEquals"] == ["SageMaker.ResourceLimitExceededException"], name
            assert other["ErrorEquals"] == ["SageMaker.AmazonSageMakerException"], name
            assert limit["IntervalSeconds"] >= 60 and limit["IntervalSeconds"] > 4 * other["IntervalSeconds"]
            # Every retry count fits the one or two digits the names leave room for.
            assert limit["MaxAttempts"] + other["MaxAttempts"] <= 99
        assert all(isinstance(r["IntervalSeconds"], int) for r in state["Retry"])


def lambda_payload(state: dict[str, Any]) -> dict[str, Any]:
    payload: dict[str, Any] = state["Parameters"]["Payload"]
    return payload


def test_data_flow_of_the_top_level(asl: dict[str, Any]) -> None:
    top = states(asl)
    prepare = top["Prepare"]
    assert lambda_payload(prepare) == {"input.$": "$", "execution_name.$": "$$.Execution.Name"}
    assert prepare["ResultSelector"] == {"run.$": "$.Payload"} and prepare["ResultPath"] == "$"

    process = top["Process"]["Parameters"]
    assert process["ProcessingJobName.$"] == wf.attempt_name("$.run.jobs.processing")
    inputs = {i["InputName"]: i["S3Input"] for i in process["ProcessingInputs"]}
    assert inputs["data"]["S3Uri.$"] == "$.run.uris.data"
    assert inputs["data"]["LocalPath"] == "/opt/ml/processing/input/data"
    assert inputs["config"]["S3Uri.$"] == "$.run.uris.config"
    assert inputs["config"]["LocalPath"] == "/opt/ml/processing/input/config"
    assert inputs["code"]["S3Uri"] == "s3://${DataBucket}/code/processing/"
    assert inputs["code"]["LocalPath"] == "/opt/ml/processing/input/code"
    output = process["ProcessingOutputConfig"]["Outputs"][0]["S3Output"]
    assert (output["LocalPath"], output["S3Uri.$"]) == ("/opt/ml/processing/output", "$.run.uris.processed")
    assert process["AppSpecification"]["ContainerEntrypoint"] == wf.processing_entrypoint()
    assert process["AppSpecification"]["ImageUri"] == "${ProcessingImageUri}"
    assert (process["ProcessingResources"]["ClusterConfig"]["InstanceType.$"]
            == "$.run.config.resources.processing_instance_type")

    assert lambda_payload(top["Plan"]) == {"run_id.$": "$.run.run_id", "manifest.$": "$.run.uris.manifest",
                                           "config.$": "$.run.config"}
    assert top["Plan"]["ResultPath"] == "$.plan"
    assert top["Plan"]["ResultSelector"]["fm_hyperparameters.$"] == "$.Payload.fm_hyperparameters"

    assert top["Models"]["Parameters"] == {
        "run_id.$": "$.run.run_id", "variant.$": "$$.Map.Item.Value", "config.$": "$.run.config",
        "manifest.$": "$.run.uris.manifest", "plan.$": "$.plan"}
    assert top["Models"]["ResultPath"] is None

    assert top["Evaluation?"]["Choices"][0] == {"Variable": "$.run.has_evaluation", "BooleanEquals": True,
                                                "Next": "Evaluate"}
    evaluate = lambda_payload(top["Evaluate"])
    assert evaluate["transform_output.$"] == "$.run.transform_outputs.eval"
    assert evaluate["vectors.$"] == "$.run.vectors.eval"
    assert evaluate["metrics_output.$"] == "$.run.uris.metrics"
    assert evaluate["k"] == 10
    assert evaluate["min_ndcg_at_10.$"] == "$.run.config.evaluation.min_ndcg_at_10"
    assert evaluate["max_regression.$"] == "$.run.config.evaluation.max_regression"
    assert top["Evaluate"]["ResultPath"] == "$.evaluation"
    assert top["Skip evaluation"]["ResultPath"] == "$.evaluation"
    assert top["Skip evaluation"]["Result"]["metrics"] is None

    gate = top["Quality gate"]["Choices"][0]
    assert gate["Next"] == "Publish"
    assert {"Variable": "$.evaluation.metrics.ndcg_at_10",
            "NumericGreaterThanEqualsPath": "$.evaluation.threshold"} in gate["And"]

    commit = lambda_payload(top["Commit"])
    assert commit == {"run_id.$": "$.run.run_id", "shards.$": "$.run.publish.shards",
                      "reports.$": "$.run.publish.reports", "metrics.$": "$.evaluation.metrics"}
    assert top["Commit"]["ResultPath"] == "$.publish"
    for release in ("Release lock", "Release lock after failure", "Release lock (gate)"):
        assert lambda_payload(top[release]) == {"run_id.$": "$.run.run_id"}


def test_data_flow_inside_the_map(asl: dict[str, Any]) -> None:
    inner = iterator(asl)
    fm = inner["Train FM"]
    assert fm["Resource"] == "arn:aws:states:::sagemaker:createTrainingJob.sync"
    p = fm["Parameters"]
    assert p["HyperParameters.$"] == "$.plan.fm_hyperparameters"
    assert p["InputDataConfig.$"] == "$.variant.fm_channels"
    assert p["TrainingJobName.$"] == wf.attempt_name("$.variant.jobs.fm")
    assert p["AlgorithmSpecification"] == {"TrainingImage": "${FmImageUri}", "TrainingInputMode": "File"}
    assert p["ResourceConfig"]["InstanceType.$"] == "$.config.resources.fm_instance_type"
    assert p["ResourceConfig"]["InstanceCount.$"] == "$.config.resources.fm_instance_count"
    assert "DebugHookConfig" not in p and "ProfilerConfig" not in p
    assert fm["ResultSelector"] == {"model_artifact.$": "$.ModelArtifacts.S3ModelArtifacts"}
    assert fm["ResultPath"] == "$.fm"

    repackage = lambda_payload(inner["Repackage"])
    assert repackage == {"run_id.$": "$.run_id", "variant.$": "$.variant.name",
                         "model_artifact.$": "$.fm.model_artifact", "manifest.$": "$.manifest",
                         "output_prefix.$": "$.variant.vectors"}
    assert set(inner["Repackage"]["ResultSelector"]) == {
        f"{k}.$" for k in ("items_prefix", "users_prefix", "dimension", "n_items", "n_users", "n_shards")}
    assert inner["Repackage"]["ResultPath"] == "$.vectors"

    knn = inner["Train k-NN"]["Parameters"]
    assert knn["HyperParameters.$"] == "$.plan.knn_hyperparameters"
    assert knn["AlgorithmSpecification"]["TrainingImage"] == "${KnnImageUri}"
    channel = knn["InputDataConfig"][0]
    assert channel["ChannelName"] == "train" and channel["ContentType"] == "application/x-recordio-protobuf"
    assert channel["DataSource"]["S3DataSource"]["S3Uri.$"] == "$.vectors.items_prefix"
    assert inner["Train k-NN"]["ResultPath"] == "$.knn"
    assert knn["ResourceConfig"]["InstanceType.$"] == "$.config.resources.knn_instance_type"
    assert knn["ResourceConfig"]["InstanceCount"] == 1  # one index over all items, whatever the config

    assert knn["TrainingJobName.$"] == wf.attempt_name("$.variant.jobs.knn")

    model = inner["Create model"]["Parameters"]
    assert model["ModelName.$"] == wf.attempt_name("$.variant.jobs.model")
    assert model["PrimaryContainer"] == {"Image": "${KnnImageUri}", "ModelDataUrl.$": "$.knn.model_artifact"}
    assert inner["Create model"]["ResultPath"] == "$.model"
    assert inner["Create model"]["ResultSelector"]["name.$"] == wf.MODEL_NAME_FROM_ARN

    transform = inner["Batch transform"]["Parameters"]
    assert transform["TransformJobName.$"] == wf.attempt_name("$.variant.jobs.xform")
    assert transform["ModelName.$"] == "$.model.name"  # the name Create model created
    assert transform["TransformInput"] == {
        "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri.$": "$.vectors.users_prefix"}},
        "ContentType": "application/x-recordio-protobuf", "SplitType": "RecordIO"}
    assert transform["TransformOutput"]["Accept"] == "application/jsonlines; verbose=true"
    assert transform["TransformOutput"]["S3OutputPath.$"] == "$.variant.transform_output"
    assert 1 <= transform["MaxPayloadInMB"] <= 100


def test_publish_is_a_distributed_map_over_the_shard_list_in_s3(asl: dict[str, Any]) -> None:
    publish = states(asl)["Publish"]
    assert publish["Type"] == "Map"
    assert publish["ItemProcessor"]["ProcessorConfig"] == {"Mode": "DISTRIBUTED", "ExecutionType": "STANDARD"}
    assert "ItemsPath" not in publish and "Iterator" not in publish and "Parameters" not in publish
    assert publish["ItemReader"] == {
        "Resource": "arn:aws:states:::s3:getObject", "ReaderConfig": {"InputType": "JSON"},
        "Parameters": {"Bucket.$": "$.run.publish.shards.Bucket", "Key.$": "$.run.publish.shards.Key"}}
    assert publish["MaxConcurrencyPath"] == "$.run.config.publish.max_concurrency"
    assert "MaxConcurrency" not in publish
    assert publish["ToleratedFailureCount"] == 0
    assert publish["ResultWriter"] == {
        "Resource": "arn:aws:states:::s3:putObject",
        "Parameters": {"Bucket": "${DataBucket}", "Prefix": "publish-results"}}
    assert publish["ResultPath"] == "$.publish_map" and publish["Next"] == "Commit"
    assert publish["ItemSelector"] == {
        "shard.$": "$$.Map.Item.Value", "run_id.$": "$.run.run_id", "manifest.$": "$.run.uris.manifest",
        "transform_output.$": "$.run.transform_outputs.serve", "vectors.$": "$.run.publish.vectors",
        "reports.$": "$.run.publish.reports", "top_n.$": "$.run.config.publish.top_n",
        "ttl_days.$": "$.run.config.publish.version_ttl_days",
        "similar_items.$": "$.run.config.publish.similar_items", "started_at.$": "$$.Execution.StartTime"}
    child = shard_states(asl)["Publish shard"]
    assert publish["ItemProcessor"]["StartAt"] == "Publish shard" and child["End"] is True
    assert child["Parameters"] == {"FunctionName": "${PublishShardFunctionArn}", "Payload.$": "$"}
    assert child["ResultSelector"] == {"kind.$": "$.Payload.kind", "shard.$": "$.Payload.shard",
                                       "rows.$": "$.Payload.rows"}


def test_every_publish_path_resolves_in_the_run_document(asl: dict[str, Any]) -> None:
    doc = run_document("r1", "r1", "bucket", cfg.resolve({}), now=0.0)
    publish = states(asl)["Publish"]
    paths = [*publish["ItemReader"]["Parameters"].values(), publish["MaxConcurrencyPath"],
             *(v for k, v in publish["ItemSelector"].items() if not v.startswith("$$.")),
             *lambda_payload(states(asl)["Commit"]).values()]
    values = {p: resolve(p.removeprefix("$."), {"run": doc, "evaluation": {"metrics": None}}) for p in paths}
    assert values["$.run.publish.shards.Key"] == "runs/r1/processed/shards/serve.json"
    assert values["$.run.publish.vectors"] == "s3://bucket/runs/r1/serve/vectors/"
    assert values["$.run.publish.reports"] == "s3://bucket/runs/r1/publish/"
    assert values["$.run.config.publish.max_concurrency"] == 8


def resolve(path: str, data: Any) -> Any:
    """A minimal JSONPath (``$.a.b``) lookup."""
    node = data
    for part in path.removeprefix("$.").split("."):
        node = node[part]
    return node


def attempt_base(expression: str) -> str:
    """The base-name path of a per-attempt name expression (``wf.attempt_name(path)``)."""
    match = re.search(r", (\$\.[\w.]+),", expression)
    assert match and expression == wf.attempt_name(match.group(1)), expression
    return match.group(1)


NAME_FIELDS = ("ProcessingJobName.$", "TrainingJobName.$", "ModelName.$", "TransformJobName.$")


@pytest.mark.parametrize("prefix", ["recpipe", "x" * 32])
def test_job_names_fit_for_the_longest_execution_name(asl: dict[str, Any], prefix: str) -> None:
    name = "Scheduled.Run_2024-01-01T00:00:00Z-" + "x" * 45  # 80 characters, the Step Functions limit
    assert len(name) == 80
    doc = run_document(derive_run_id(name), name, "bucket", cfg.resolve({}), now=0.0, job_prefix=prefix)
    named = [(states(asl)["Process"], {"run": doc})]
    for variant in doc["variants"]:
        item = {"run_id": doc["run_id"], "variant": variant, "config": doc["config"]}
        named += [(state, item) for state in iterator(asl).values()]
    names = []
    for state, data in named:
        for key in NAME_FIELDS:
            expression = state.get("Parameters", {}).get(key)
            if expression is None or expression == "$.model.name":
                continue
            retries = sum(r["MaxAttempts"] for r in state["Retry"])
            # The longest name an attempt can get: every retry used, a four-digit redrive count.
            names.append(f"{resolve(attempt_base(expression), data)}-{retries}-9999")
    assert len(names) == len(set(names)) == 1 + 2 * 4
    for job in names:
        assert re.fullmatch(re.escape(prefix) + r"-[a-z0-9](-*[a-z0-9]){0,62}", job) and len(job) <= 63, job


def test_quality_gate_report_formats_nothing_that_can_be_null(asl: dict[str, Any]) -> None:
    """States.Format must not receive a null: on a first run there is no active version, and
    metrics may be null. Only validated config numbers, a URI and JSON text go in."""
    cause = states(asl)["Quality gate report"]["Parameters"]["cause.$"]
    match = re.fullmatch(r"States\.Format\('(?:[^'\\]|\\.)*', (.*)\)", cause)
    assert match, cause
    arguments = [a.strip() for a in re.split(r",\s*(?![^()]*\))", match.group(1))]
    assert arguments == ["$.run.config.evaluation.min_ndcg_at_10", "$.run.config.evaluation.max_regression",
                         "States.JsonToString($.evaluation)", "$.run.uris.metrics"]
    for config_key in arguments[:2]:
        assert cfg.defaults()[config_key.removeprefix("$.run.config.")] is not None


def test_print_definition(capsys: pytest.CaptureFixture[str]) -> None:
    wf.print_definition()
    assert json.loads(capsys.readouterr().out)["StartAt"] == "Prepare"
