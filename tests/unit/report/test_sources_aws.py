"""The report's AWS inputs: the bucket (moto S3) and the FM jobs' CloudWatch metrics (stub clients
answering as SageMaker and CloudWatch document)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import boto3
import pytest
from moto import mock_aws

from recpipe.report import build, sources
from recpipe.report.data import REPORT_KEY


class StubSageMaker:
    def list_training_jobs(self, **kwargs: Any) -> dict[str, Any]:
        assert kwargs["NameContains"] == "r1"
        return {"TrainingJobSummaries": [
            {"TrainingJobName": "recpipe-r1-eval-knn-1", "CreationTime": datetime(2026, 12, 1, tzinfo=UTC)},
            {"TrainingJobName": "recpipe-r1-serve-fm-1", "CreationTime": datetime(2026, 12, 1, tzinfo=UTC)}]}

    def describe_training_job(self, TrainingJobName: str) -> dict[str, Any]:
        return {"TrainingStartTime": datetime(2026, 12, 1, 0, 0, tzinfo=UTC),
                "TrainingEndTime": datetime(2026, 12, 1, 0, 10, tzinfo=UTC)}


class StubCloudWatch:
    def __init__(self) -> None:
        self.queries: list[dict[str, Any]] = []

    def list_metrics(self, **kwargs: Any) -> dict[str, Any]:
        assert kwargs["Namespace"] == sources.CLOUDWATCH_NAMESPACE
        assert kwargs["Dimensions"] == [{"Name": "Host", "Value": "recpipe-r1-serve-fm-1/algo-1"}]
        return {"Metrics": [{"MetricName": "train:rmse"}, {"MetricName": "test:rmse"}]}

    def get_metric_data(self, **kwargs: Any) -> dict[str, Any]:
        self.queries.extend(kwargs["MetricDataQueries"])
        return {"MetricDataResults": [{"Label": "train:rmse", "Values": [0.9, 0.7, 0.6]},
                                      {"Label": "test:rmse", "Values": [1.0, 0.8]}]}


def test_aws_epochs_come_from_the_fm_jobs_cloudwatch_metrics() -> None:
    cloudwatch = StubCloudWatch()
    epochs = sources.aws_epochs(StubSageMaker(), cloudwatch, "r1")
    assert epochs == {"serve": [{"epoch": 1, "metrics": {"train:rmse": 0.9, "test:rmse": 1.0}},
                                {"epoch": 2, "metrics": {"train:rmse": 0.7, "test:rmse": 0.8}},
                                {"epoch": 3, "metrics": {"train:rmse": 0.6}}]}
    assert {q["Label"] for q in cloudwatch.queries} == {"train:rmse", "test:rmse"}


@pytest.mark.parametrize("name", ["recpipe-r1-serve-fm", "recpipe-r1-eval-fm-2"])
def test_variant_of_job_names(name: str) -> None:
    assert sources.variant_of(name) in ("serve", "eval")


def test_aws_inputs_read_the_bucket_and_name_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="report-bucket")
        for run_id, ndcg in (("r0", 0.1), ("r1", 0.2)):
            body = {"run_id": run_id, "evaluated_at": f"2026-12-0{ndcg * 10:.0f}",
                    "metrics": {"ndcg_at_10": ndcg}}
            s3.put_object(Bucket="report-bucket", Key=f"runs/{run_id}/metrics.json", Body=json.dumps(body))
        s3.put_object(Bucket="report-bucket", Key=f"runs/r1/{REPORT_KEY}", Body=b'{"users": 3}')
        clients = {"s3": s3, "sagemaker": StubSageMaker(), "cloudwatch": StubCloudWatch()}
        inputs = build.aws_inputs(None, bucket="report-bucket", region="us-east-1", state_machine_arn=None,
                                  client=lambda service, region: clients[service])
        assert inputs.run_id == "r1" and [h["run_id"] for h in inputs.history] == ["r0", "r1"]
        assert inputs.evaluation == {"users": 3} and inputs.notes == []
        assert len(inputs.epochs["serve"]) == 3
        older = build.aws_inputs("r0", bucket="report-bucket", region="us-east-1", state_machine_arn=None,
                                 client=lambda service, region: clients[service])
        assert any("report/evaluation.json is missing" in note for note in older.notes)
        with pytest.raises(FileNotFoundError, match="Unknown run 'r9'"):
            build.aws_inputs("r9", bucket="report-bucket", region="us-east-1", state_machine_arn=None,
                             client=lambda service, region: clients[service])
