"""Every SageMaker request the state machine sends, as a real execution resolves it, validates
against botocore's model of the SageMaker API.

The requests are captured from a moto execution of the committed ASL (placeholders filled as CDK
fills them, paths resolved from the state data a run builds: Prepare's run document, Plan's
hyperparameters, Repackage's result). botocore's ParamValidator checks required members, types and
minimums; :func:`constraint_problems` adds what it leaves out: maximum lengths, string patterns and
enum values of the service model.
"""

from __future__ import annotations

import re
from typing import Any

import botocore.session
import pytest
from botocore.model import ListShape, MapShape, Shape, StructureShape
from botocore.validate import ParamValidator

from tests.unit.workflows.harness import Harness

SAGEMAKER = botocore.session.get_session().get_service_model("sagemaker")
STATES = ("Process", "Train FM", "Train k-NN", "Create model", "Batch transform")


def constraint_problems(value: Any, shape: Shape, path: str = "") -> list[str]:
    """``max``, ``pattern`` and ``enum`` violations in ``value`` against ``shape`` (recursively)."""
    problems: list[str] = []
    if isinstance(shape, StructureShape) and isinstance(value, dict):
        for name, member in value.items():
            if name in shape.members:
                problems += constraint_problems(member, shape.members[name], f"{path}.{name}")
    elif isinstance(shape, ListShape) and isinstance(value, list):
        for i, member in enumerate(value):
            problems += constraint_problems(member, shape.member, f"{path}[{i}]")
    elif isinstance(shape, MapShape) and isinstance(value, dict):
        for key, member in value.items():
            problems += constraint_problems(key, shape.key, f"{path} key {key!r}")
            problems += constraint_problems(member, shape.value, f"{path}[{key!r}]")
    elif isinstance(value, str):
        meta = shape.metadata
        if "max" in meta and len(value) > meta["max"]:
            problems.append(f"{path}: {len(value)} characters, max {meta['max']}")
        if "pattern" in meta:
            try:
                pattern = re.compile(meta["pattern"])
            except re.error:  # a Java-only construct: botocore does not check it either
                pattern = None
            if pattern is not None and not pattern.search(value):
                problems.append(f"{path}: {value!r} does not match {meta['pattern']}")
        if shape.enum and value not in shape.enum:
            problems.append(f"{path}: {value!r} is not one of {shape.enum}")
    elif isinstance(value, int) and not isinstance(value, bool) and value > shape.metadata.get("max", value):
        problems.append(f"{path}: {value} > max {shape.metadata['max']}")
    return problems


def sagemaker_requests(harness: Harness) -> list[tuple[str, str, dict[str, Any]]]:
    """``(state, operation, parameters)`` of every SageMaker call, in order."""
    out = []
    for state, params in harness.calls.log:
        if state in STATES:
            operation = {"Process": "CreateProcessingJob", "Train FM": "CreateTrainingJob",
                         "Train k-NN": "CreateTrainingJob", "Create model": "CreateModel",
                         "Batch transform": "CreateTransformJob"}[state]
            out.append((state, operation, params))
    return out


def check(requests: list[tuple[str, str, dict[str, Any]]]) -> None:
    validator = ParamValidator()
    for state, operation, params in requests:
        input_shape = SAGEMAKER.operation_model(operation).input_shape
        report = validator.validate(params, input_shape)
        assert not report.has_errors(), f"{state} ({operation}): {report.generate_report()}"
        assert not constraint_problems(params, input_shape), (state, constraint_problems(params, input_shape))


@pytest.mark.parametrize("execution_input", [
    {},
    {"resources.fm_instance_count": 2, "resources.fm_instance_type": "ml.c5.2xlarge",
     "resources.knn_instance_type": "ml.m5.2xlarge", "resources.transform_instance_count": 3},
    {"evaluation.holdout_fraction": 0},
], ids=["defaults", "two-fm-instances", "serve-only"])
def test_every_sagemaker_request_validates_against_botocore(harness: Harness,
                                                            execution_input: dict[str, Any]) -> None:
    out = harness.run(execution_input, name="a-long-execution-name-" + "x" * 57)  # 80 characters
    assert out["status"] == "SUCCEEDED", out
    requests = sagemaker_requests(harness)
    variants = 1 if execution_input.get("evaluation.holdout_fraction") == 0 else 2
    assert [op for _, op, _ in requests].count("CreateTrainingJob") == 2 * variants
    assert len(requests) == 1 + 4 * variants
    check(requests)


def test_two_fm_instances_shard_the_train_channel_and_knn_keeps_one(harness: Harness) -> None:
    out = harness.run({"resources.fm_instance_count": 2})
    assert out["status"] == "SUCCEEDED", out
    requests = sagemaker_requests(harness)
    check(requests)
    for state, _, params in requests:
        if state == "Train FM":
            assert params["ResourceConfig"]["InstanceCount"] == 2
            channels = {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3DataDistributionType"]
                        for c in params["InputDataConfig"]}
            assert channels["train"] == "ShardedByS3Key"
            assert channels.get("test", "FullyReplicated") == "FullyReplicated"
        if state == "Train k-NN":
            assert params["ResourceConfig"]["InstanceCount"] == 1
            assert params["InputDataConfig"][0]["DataSource"]["S3DataSource"].get(
                "S3DataDistributionType", "FullyReplicated") == "FullyReplicated"


def test_the_validation_catches_a_bad_request() -> None:
    """The checks above could fail: a request with a missing member, a wrong type, a too-long name
    and an unknown enum value is refused."""
    bad = {"ModelName": "x" * 64, "ExecutionRoleArn": 5,
           "PrimaryContainer": {"Image": "i", "Mode": "NotAMode"}}
    shape = SAGEMAKER.operation_model("CreateModel").input_shape
    assert ParamValidator().validate({"PrimaryContainer": {}}, shape).has_errors()
    assert ParamValidator().validate(bad, shape).has_errors()
    problems = constraint_problems(bad, shape)
    assert any(".ModelName: 64 characters, max 63" in p for p in problems)
    assert any("NotAMode" in p for p in problems)
