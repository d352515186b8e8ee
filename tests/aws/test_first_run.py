"""First run on your account: what only AWS can show, next to the local engine on the same data.

Needs ``RECPIPE_AWS_STACK`` (the deployed stack's name, e.g. ``Recpipe``) and AWS credentials allowed
to read the stack, write ``input/`` of its bucket, start executions, describe training jobs, set an
alarm's state and create a temporary SQS queue. One pipeline run on AWS (~30-60 minutes, a few
dollars of SageMaker time) and one local run on the same synthetic data. Optional:
``RECPIPE_AWS_TIMEOUT_MIN`` (default 120) bounds the wait for the AWS run.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from recpipe.executions.follow import follow
from recpipe.remote.aws import stack_outputs
from tests.aws.conftest import STACK_ENV
from tests.aws.first_run import Backend, LocalTrainingJobs, RunView, findings, write_dataset

# The same configuration for both runs (the deploy-time defaults of the stack aside).
RUN_CONFIG: dict[str, Any] = {}
ALARM_WAIT_S = 300


@pytest.fixture(scope="session")
def stack() -> dict[str, Any]:
    name = os.environ[STACK_ENV]
    session = boto3.session.Session()
    outputs = stack_outputs(session.client("cloudformation"), name)
    return {"name": name, "session": session, "outputs": outputs}


@pytest.fixture(scope="session")
def dataset(workdir: Path) -> Path:
    return write_dataset(workdir / "data")


@pytest.fixture(scope="session")
def aws(stack: dict[str, Any], dataset: Path, report: dict[str, Any]) -> tuple[Backend, RunView]:
    session, outputs = stack["session"], stack["outputs"]
    backend = Backend("aws", s3=session.client("s3"), sfn=session.client("stepfunctions"),
                      sagemaker=session.client("sagemaker"), bucket=outputs["BucketName"])
    name = "first-run-" + dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    prefix = f"input/{name}"
    for path in sorted((dataset / "interactions").iterdir()):
        backend.s3.upload_file(str(path), backend.bucket, f"{prefix}/interactions/{path.name}")
    arn = backend.sfn.start_execution(stateMachineArn=outputs["StateMachineArn"], name=name,
                                      input=json.dumps({**RUN_CONFIG, "data.prefix": prefix}))["executionArn"]
    print(f"\nStarted {arn}; waiting for it to end (poll every minute).")
    timeout = 60 * float(os.environ.get("RECPIPE_AWS_TIMEOUT_MIN", "120"))
    outcome = follow(backend.sfn, arn, poll_s=60, timeout_s=timeout)
    report["aws execution"] = f"{arn} {outcome.status}"
    return backend, RunView.from_outcome(outcome)


@pytest.fixture(scope="session")
def local(dataset: Path, workdir: Path) -> dict[str, Any]:
    """The local engine's findings on the same data and configuration (computed while it runs)."""
    from recpipe.local.engine import EngineOptions, LocalEngine

    with LocalEngine(EngineOptions(workdir=workdir / "local")) as engine:
        engine.put_data("input", interactions=dataset / "interactions")
        assert engine.sagemaker is not None
        jobs = engine.sagemaker.jobs
        _, outcome = engine.run(dict(RUN_CONFIG), timeout_s=3 * 3600)
        backend = Backend("local", s3=engine.s3, sfn=engine.sfn,
                          sagemaker=LocalTrainingJobs(jobs), bucket=engine.options.bucket)
        return findings(backend, RunView.from_outcome(outcome))


@pytest.fixture(scope="session")
def aws_findings(aws: tuple[Backend, RunView]) -> dict[str, Any]:
    return findings(*aws)


def _both(report: dict[str, Any], section: str, aws_part: Any, local_part: Any) -> None:
    report[section] = {"aws": aws_part, "local": local_part}


def test_transform_output_has_one_line_per_user(aws_findings: dict[str, Any], local: dict[str, Any],
                                                 report: dict[str, Any]) -> None:
    found = aws_findings["transform"]
    _both(report, "transform", found, local["transform"])
    assert found["records"] == found["users"], found
    # Blank lines are tolerated by the reader (issue 11.3); the report shows whether AWS writes any.
    assert found["lines"] == found["users"], found


def test_knn_distances_against_recomputed_products(aws_findings: dict[str, Any], local: dict[str, Any],
                                                   report: dict[str, Any]) -> None:
    found = aws_findings["distances"]
    _both(report, "distances", found, local["distances"])
    # Publish and Evaluate rank by the recomputed products (recpipe.topn.rank_shard) whatever this
    # says; the check records what AWS's undocumented INNER_PRODUCT distances hold.
    assert found["convention"] in ("inner product", "negated inner product"), found


def test_knn_artifact_labels_cover_every_item_once(aws_findings: dict[str, Any], local: dict[str, Any],
                                                   report: dict[str, Any]) -> None:
    found = aws_findings["knn_labels"]
    _both(report, "knn labels", found, local["knn_labels"])
    assert found["every_item_once"], found


def test_fm_artifact_params(aws_findings: dict[str, Any], local: dict[str, Any],
                            report: dict[str, Any]) -> None:
    _both(report, "fm params", aws_findings["fm_params"], local["fm_params"])
    assert aws_findings["fm_params"], "the FM artifact has no parameter arrays"


def test_fm_metric_and_ndcg_next_to_the_local_engine(aws_findings: dict[str, Any], local: dict[str, Any],
                                                     report: dict[str, Any]) -> None:
    _both(report, "fm final metrics", aws_findings["fm_metrics"], local["fm_metrics"])
    _both(report, "evaluation", aws_findings["evaluation"], local["evaluation"])
    assert aws_findings["fm_metrics"], "the FM training job reported no final metric"
    assert aws_findings["evaluation"]["ndcg_at_10"] is not None


@pytest.fixture()
def alarm_queue(stack: dict[str, Any]) -> Iterator[tuple[Any, str]]:
    """A temporary SQS queue subscribed to the alerts topic (raw delivery); removed afterwards."""
    session, topic = stack["session"], stack["outputs"]["AlertsTopicArn"]
    sqs, sns = session.client("sqs"), session.client("sns")
    url = sqs.create_queue(QueueName="recpipe-first-run-" + dt.datetime.now(dt.UTC).strftime("%Y%m%d%H%M%S"))[
        "QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sqs.set_queue_attributes(QueueUrl=url, Attributes={"Policy": json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Principal": {"Service": "sns.amazonaws.com"},
                       "Action": "sqs:SendMessage", "Resource": queue_arn,
                       "Condition": {"ArnEquals": {"aws:SourceArn": topic}}}]})})
    subscription = sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn,
                                 Attributes={"RawMessageDelivery": "true"},
                                 ReturnSubscriptionArn=True)["SubscriptionArn"]
    try:
        yield sqs, url
    finally:
        sns.unsubscribe(SubscriptionArn=subscription)
        sqs.delete_queue(QueueUrl=url)


def test_an_alarm_reaches_the_topic(stack: dict[str, Any], alarm_queue: tuple[Any, str],
                                    report: dict[str, Any]) -> None:
    """CloudWatch may publish to the topic (its policy replaces SNS's default one, issue 11.6)."""
    cloudwatch = stack["session"].client("cloudwatch")
    topic = stack["outputs"]["AlertsTopicArn"]
    alarms = [a["AlarmName"] for a in cloudwatch.describe_alarms(ActionPrefix=topic)["MetricAlarms"]]
    assert alarms, f"no alarm notifies {topic}"
    alarm = sorted(alarms)[0]
    sqs, url = alarm_queue
    cloudwatch.set_alarm_state(AlarmName=alarm, StateValue="ALARM",
                               StateReason="recpipe first-run check: is the alarm delivered?")
    received: list[str] = []
    deadline = time.monotonic() + ALARM_WAIT_S
    try:
        while time.monotonic() < deadline and not any(alarm in body for body in received):
            messages = sqs.receive_message(QueueUrl=url, WaitTimeSeconds=20, MaxNumberOfMessages=10)
            received.extend(m["Body"] for m in messages.get("Messages", []))
    finally:
        cloudwatch.set_alarm_state(AlarmName=alarm, StateValue="OK",
                                   StateReason="recpipe first-run check done")
    report["alarm delivered"] = f"{alarm}: {'yes' if any(alarm in b for b in received) else 'NO'}"
    assert any(alarm in body for body in received), f"no notification of {alarm} within {ALARM_WAIT_S} s"
