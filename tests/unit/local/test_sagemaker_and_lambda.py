"""Local SageMaker jobs follow the container contracts; local Lambdas report errors as AWS does."""

from __future__ import annotations

import json
import sys
import tarfile
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from recpipe.local.exceptions import TaskFailure
from recpipe.local.lambdas import LocalLambda
from recpipe.local.moto_hook import TaskCall
from recpipe.local.sagemaker.service import LocalSageMaker
from recpipe.local.sagemaker.training import JobProgress

BUCKET = "recpipe-test"


def _call(
    action: str, parameters: dict[str, Any], *, service: str = "sagemaker", sync: bool = True
) -> TaskCall:
    return TaskCall(
        service=service,
        action=action,
        sync=sync,
        parameters=parameters,
        state_name="S",
        execution_name="e",
        region="us-east-1",
        account="123456789012",
    )


@pytest.fixture()
def s3() -> Iterator[Any]:
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        yield client


@pytest.fixture()
def fake_algorithm(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """A stand-in algorithm that follows the training/transform contract and records what it saw."""
    module = types.ModuleType("fake_algorithm")
    module.seen = {}  # type: ignore[attr-defined]

    def run_training_job(opt_ml: Path, *, on_epoch: Any = None, n_jobs: Any = None) -> list[dict[str, Any]]:
        hp = json.loads((opt_ml / "input" / "config" / "hyperparameters.json").read_text())
        module.seen["hp"] = hp  # type: ignore[attr-defined]
        module.seen["train"] = sorted(  # type: ignore[attr-defined]
            p.relative_to(opt_ml / "input" / "data").as_posix()
            for p in (opt_ml / "input" / "data").rglob("*")
            if p.is_file()
        )
        if hp.get("fail"):
            (opt_ml / "output" / "failure").write_text("ClientError: The 'num_factors' parameter is bad.")
            raise SystemExit(1)
        for epoch in (1, 2):
            if on_epoch:
                on_epoch(epoch, 2, {"test:rmse": 1.0 / epoch})
        (opt_ml / "model" / "model_algo-1").write_text("weights")
        return [{"MetricName": "test:rmse", "Value": 0.5}]

    def run_transform(
        model_dir: Path, input_files: list[Path], output_dir: Path, *, content_type: str, accept: str
    ) -> None:
        module.seen["transform"] = (sorted(p.name for p in model_dir.iterdir()), content_type, accept)  # type: ignore[attr-defined]
        for path in input_files:
            (output_dir / f"{path.name}.out").write_text(path.read_text().upper())

    module.run_training_job = run_training_job  # type: ignore[attr-defined]
    module.run_transform = run_transform  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "fake_algorithm", module)
    monkeypatch.setattr(LocalSageMaker, "algorithm_module", staticmethod(lambda image: "fake_algorithm"))
    return module


def _training(name: str, **hp: str) -> dict[str, Any]:
    return {
        "TrainingJobName": name,
        "AlgorithmSpecification": {
            "TrainingImage": "local/factorization-machines:1",
            "TrainingInputMode": "File",
        },
        "HyperParameters": {"epochs": "2", **hp},
        "InputDataConfig": [
            {
                "ChannelName": "train",
                "DataSource": {
                    "S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": f"s3://{BUCKET}/data/train/"}
                },
            }
        ],
        "OutputDataConfig": {"S3OutputPath": f"s3://{BUCKET}/out/fm/"},
        "ResourceConfig": {"InstanceCount": 1, "InstanceType": "ml.m5.xlarge", "VolumeSizeInGB": 30},
        "RoleArn": "arn:aws:iam::123456789012:role/r",
        "StoppingCondition": {"MaxRuntimeInSeconds": 60},
    }


def test_training_job_gets_channels_and_hyperparameters_and_returns_the_describe_shape(
    s3: Any, fake_algorithm: types.ModuleType
) -> None:
    s3.put_object(Bucket=BUCKET, Key="data/train/part-0.rec", Body=b"x")
    s3.put_object(Bucket=BUCKET, Key="data/train/sub/part-1.rec", Body=b"y")
    progress: list[JobProgress] = []
    sagemaker = LocalSageMaker(s3, on_progress=progress.append)
    result = sagemaker(_call("createTrainingJob", _training("job-1")))
    assert fake_algorithm.seen["train"] == ["train/part-0.rec", "train/sub/part-1.rec"]  # type: ignore[attr-defined]
    assert fake_algorithm.seen["hp"] == {"epochs": "2"}  # type: ignore[attr-defined]
    assert result["TrainingJobStatus"] == "Completed"
    assert result["ModelArtifacts"]["S3ModelArtifacts"] == f"s3://{BUCKET}/out/fm/job-1/output/model.tar.gz"
    assert result["FinalMetricDataList"][0]["MetricName"] == "test:rmse"
    assert result["TrainingJobArn"].endswith(":training-job/job-1")
    assert [(p.epoch, p.total, p.metrics["test:rmse"]) for p in progress] == [(1, 2, 1.0), (2, 2, 0.5)]
    body = s3.get_object(Bucket=BUCKET, Key="out/fm/job-1/output/model.tar.gz")["Body"]
    with tarfile.open(fileobj=body, mode="r|gz") as tar:
        assert [m.name for m in tar] == ["model_algo-1"]


def test_a_failing_sync_job_raises_states_taskfailed_with_the_describe_response_as_cause(
    s3: Any, fake_algorithm: types.ModuleType
) -> None:
    s3.put_object(Bucket=BUCKET, Key="data/train/part-0.rec", Body=b"x")
    with pytest.raises(TaskFailure) as info:
        LocalSageMaker(s3)(_call("createTrainingJob", _training("job-2", fail="1")))
    assert info.value.error == "States.TaskFailed"
    cause = json.loads(info.value.cause)
    assert cause["TrainingJobStatus"] == "Failed"
    assert cause["FailureReason"] == "ClientError: The 'num_factors' parameter is bad."
    assert cause["TrainingJobName"] == "job-2"


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({**_training("job-3"), "TrainingJobName": "x" * 64}, "at most 63 characters"),
        (
            {k: v for k, v in _training("job-4").items() if k != "OutputDataConfig"},
            "'OutputDataConfig' failed",
        ),
        ({**_training("job-5"), "HyperParameters": {"epochs": 2}}, "must be strings"),
    ],
)
def test_requests_sagemaker_would_reject_raise_amazon_sagemaker_exception(
    s3: Any, fake_algorithm: types.ModuleType, parameters: dict[str, Any], message: str
) -> None:
    with pytest.raises(TaskFailure, match=message) as info:
        LocalSageMaker(s3)(_call("createTrainingJob", parameters))
    assert info.value.error == "SageMaker.AmazonSageMakerException"


def test_missing_channel_data_fails_the_job_with_a_client_error(
    s3: Any, fake_algorithm: types.ModuleType
) -> None:
    with pytest.raises(TaskFailure) as info:
        LocalSageMaker(s3)(_call("createTrainingJob", _training("job-6")))
    assert json.loads(info.value.cause)["FailureReason"].startswith("ClientError: No S3 objects found")


def test_model_and_batch_transform_write_out_files_under_the_output_path(
    s3: Any, fake_algorithm: types.ModuleType
) -> None:
    s3.put_object(Bucket=BUCKET, Key="data/train/part-0.rec", Body=b"x")
    s3.put_object(Bucket=BUCKET, Key="vectors/users/users-0.rec", Body=b"ab")
    s3.put_object(Bucket=BUCKET, Key="vectors/users/users-1.rec", Body=b"cd")
    sagemaker = LocalSageMaker(s3)
    trained = sagemaker(_call("createTrainingJob", _training("knn-1")))
    model = sagemaker(
        _call(
            "createModel",
            {
                "ModelName": "m-1",
                "ExecutionRoleArn": "arn:r",
                "PrimaryContainer": {
                    "Image": "local/knn:1",
                    "ModelDataUrl": trained["ModelArtifacts"]["S3ModelArtifacts"],
                },
            },
            sync=False,
        )
    )
    assert model == {"ModelArn": "arn:aws:sagemaker:us-east-1:123456789012:model/m-1"}
    result = sagemaker(
        _call(
            "createTransformJob",
            {
                "TransformJobName": "t-1",
                "ModelName": "m-1",
                "TransformInput": {
                    "DataSource": {
                        "S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": f"s3://{BUCKET}/vectors/users/"}
                    },
                    "ContentType": "application/x-recordio-protobuf",
                    "SplitType": "RecordIO",
                },
                "TransformOutput": {
                    "S3OutputPath": f"s3://{BUCKET}/transform/",
                    "Accept": "application/jsonlines",
                },
                "TransformResources": {"InstanceCount": 1, "InstanceType": "ml.m5.xlarge"},
            },
        )
    )
    assert result["TransformJobStatus"] == "Completed"
    assert fake_algorithm.seen["transform"] == (  # type: ignore[attr-defined]
        ["model_algo-1"],
        "application/x-recordio-protobuf",
        "application/jsonlines",
    )
    assert s3.get_object(Bucket=BUCKET, Key="transform/users-1.rec.out")["Body"].read() == b"CD"
    with pytest.raises(TaskFailure, match="Could not find model") as info:
        sagemaker(
            _call(
                "createTransformJob",
                {
                    "TransformJobName": "t-2",
                    "ModelName": "nope",
                    "TransformInput": {"DataSource": {"S3DataSource": {"S3Uri": "s3://b/x"}}},
                    "TransformOutput": {"S3OutputPath": "s3://b/y"},
                    "TransformResources": {},
                },
            )
        )
    assert info.value.error == "SageMaker.AmazonSageMakerException"


def test_processing_job_runs_the_entrypoint_with_opt_ml_remapped(s3: Any, tmp_path: Path) -> None:
    script = (
        "import os, pathlib, sys\n"
        "root = pathlib.Path(os.environ['RECPIPE_OPT_ML'])\n"
        "data = (root / 'processing/input/data/x.csv').read_text()\n"
        "if data == 'bad':\n"
        "    (root / 'output/message').write_text('x.csv row 1: bad value')\n"
        "    sys.exit(3)\n"
        "(pathlib.Path(sys.argv[1]) / 'out.txt').write_text(data * 2)\n"
    )
    s3.put_object(Bucket=BUCKET, Key="code/run.py", Body=script.encode())

    def request(name: str) -> dict[str, Any]:
        return {
            "ProcessingJobName": name,
            "RoleArn": "arn:r",
            "ProcessingResources": {"ClusterConfig": {"InstanceCount": 1}},
            "AppSpecification": {
                "ImageUri": "local/sklearn:1",
                "ContainerEntrypoint": ["python3", "/opt/ml/processing/input/code/run.py"],
                "ContainerArguments": ["/opt/ml/processing/output"],
            },
            "ProcessingInputs": [
                {
                    "InputName": "code",
                    "S3Input": {
                        "S3Uri": f"s3://{BUCKET}/code/",
                        "S3DataType": "S3Prefix",
                        "LocalPath": "/opt/ml/processing/input/code",
                    },
                },
                {
                    "InputName": "data",
                    "S3Input": {
                        "S3Uri": f"s3://{BUCKET}/in/x.csv",
                        "S3DataType": "S3Prefix",
                        "LocalPath": "/opt/ml/processing/input/data",
                    },
                },
            ],
            "ProcessingOutputConfig": {
                "Outputs": [
                    {
                        "OutputName": "o",
                        "S3Output": {
                            "S3Uri": f"s3://{BUCKET}/processed/{name}",
                            "LocalPath": "/opt/ml/processing/output",
                        },
                    }
                ]
            },
        }

    sagemaker = LocalSageMaker(s3)
    s3.put_object(Bucket=BUCKET, Key="in/x.csv", Body=b"ok")
    assert sagemaker(_call("createProcessingJob", request("p-1")))["ProcessingJobStatus"] == "Completed"
    assert s3.get_object(Bucket=BUCKET, Key="processed/p-1/out.txt")["Body"].read() == b"okok"
    s3.put_object(Bucket=BUCKET, Key="in/x.csv", Body=b"bad")
    with pytest.raises(TaskFailure) as info:
        sagemaker(_call("createProcessingJob", request("p-2")))
    cause = json.loads(info.value.cause)
    assert cause["ProcessingJobStatus"] == "Failed"
    assert cause["FailureReason"] == "AlgorithmError: x.csv row 1: bad value"
    assert cause["ExitMessage"] == "x.csv row 1: bad value"


class FooError(Exception):
    pass


def test_a_lambda_error_is_reported_with_its_type_and_a_json_cause() -> None:
    def handler(event: Any, context: Any) -> Any:
        raise FooError(f"bad run {event['run_id']} in {context.function_name}")

    lam = LocalLambda({}, overrides={"recpipe-publish": handler})
    call = _call(
        "invoke",
        {
            "FunctionName": "arn:aws:lambda:us-east-1:123456789012:function:recpipe-publish",
            "Payload": {"run_id": "r1"},
        },
        service="lambda",
        sync=False,
    )
    with pytest.raises(TaskFailure) as info:
        lam(call)
    assert info.value.error == "FooError"
    cause = json.loads(info.value.cause)
    assert cause["errorType"] == "FooError"
    assert cause["errorMessage"] == "bad run r1 in recpipe-publish"
    assert set(cause) == {"errorMessage", "errorType", "requestId", "stackTrace"}


def test_a_lambda_result_comes_back_in_the_invoke_envelope() -> None:
    lam = LocalLambda({"recpipe-x": "json.loads"}, overrides={"recpipe-y": lambda event, ctx: {"got": event}})
    out = lam(
        _call("invoke", {"FunctionName": "recpipe-y", "Payload": {"a": 1}}, service="lambda", sync=False)
    )
    assert out["Payload"] == {"got": {"a": 1}}
    assert out["StatusCode"] == 200
    with pytest.raises(TaskFailure) as info:
        lam(_call("invoke", {"FunctionName": "recpipe-none", "Payload": {}}, service="lambda", sync=False))
    assert info.value.error == "Lambda.ResourceNotFoundException"
    bad = LocalLambda({}, overrides={"recpipe-z": lambda event, ctx: {"not json": object()}})
    with pytest.raises(TaskFailure) as info:
        bad(_call("invoke", {"FunctionName": "recpipe-z", "Payload": {}}, service="lambda", sync=False))
    assert info.value.error == "Runtime.MarshalError"
