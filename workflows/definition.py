"""The pipeline's state machine, declared once with the Step Functions Data Science SDK.

The steps, in order (state names in quotes; ``$.x`` is where a step's result lands in the state data):

1. "Prepare" (λ): validate the execution input, resolve the config, derive the run id, write
   ``runs/<run_id>/config.json``, take the run lock. The run document replaces the input: ``$.run``.
2. "Process" (SageMaker Processing): raw data -> recordio-protobuf sets + ``manifest.json``.
3. "Plan" (λ): the FM and k-NN hyperparameters from the manifest and config: ``$.plan``.
4. "Models" (Map over ``$.run.variants``: ``eval`` when there is a holdout, and ``serve``; two at a time):
   "Train FM" (``$.fm``) -> "Repackage" (λ, ``$.vectors``) -> "Train k-NN" (``$.knn``) ->
   "Create model" (``$.model``: the name it created) -> "Batch transform" (output under the
   variant's ``transform_output``).
5. "Evaluation?" (Choice on ``$.run.has_evaluation``): "Evaluate" (λ, ``$.evaluation``) ->
   "Quality gate" (Choice: NDCG@10 >= threshold), or "Skip evaluation" (``$.evaluation`` all null).
6. "Publish" (Distributed Map over ``processed/shards/serve.json``, read by its ItemReader, one
   "Publish shard" (λ PublishShard) child per shard; at most ``publish.max_concurrency`` at a time; no
   failure tolerated; results to S3 via ResultWriter, ``$.publish_map``) -> "Commit" (λ: every shard
   reported, complete the version, flip the pointer): ``$.publish``.
7. "Release lock" (λ) -> "Succeeded".

A gate that is not met: "Quality gate report" -> "Release lock (gate)" -> Fail "Quality gate not met".
Any task's error: Catch (``$.error``) -> Pass "<state> failed" (``$.failure = {error, cause}``, the
cause prefixed with the state's name) -> "Release lock after failure" -> Fail "Run failed". Inside
the Map the Pass states end in the Fail "Variant failed", which fails the Map, whose Catch joins the
same path. A failing Prepare skips the release: it takes the lock as its very last action.

SageMaker names: Prepare gives each job and model a base name; every Create* appends
``-<State.RetryCount>-<Execution.RedriveCount>`` (:data:`ATTEMPT_FORMAT`), so a retry or a redrive
never reuses a name. A full account quota (``ResourceLimitExceededException``) has its own, longer
Retry.

Everything account-specific is a ``${Placeholder}`` (:data:`PLACEHOLDERS`), filled by CDK's
``definition_substitutions`` or by the local engine. Per-run values (job names, S3 URIs, instance
types) come from the state data, as ``"<Field>.$"`` paths.

Importing this module is cheap and needs neither ``sagemaker`` nor ``stepfunctions``: only
:func:`build_definition` imports them. The built ASL is committed as ``statemachine.asl.json`` (a
test keeps it identical), so the local engine and CDK can :func:`load_definition` without the SDK.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import logging
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from recpipe.formats.media_types import KNN_VERBOSE_JSONLINES, RECORDIO_PROTOBUF
from recpipe.results.lock import LOCK_TTL_SECONDS
from workflows import publish_map

# Lambdas: logical name -> handler. CDK creates one function per entry; the local engine dispatches
# ``lambda:invoke`` of ``${<Name>FunctionArn}`` to the handler.
FUNCTIONS: dict[str, str] = {
    "Prepare": "lambdas.prepare.handler.lambda_handler",
    "Plan": "lambdas.plan.handler.lambda_handler",
    "Repackage": "lambdas.repackage.handler.lambda_handler",
    "Evaluate": "lambdas.evaluate.handler.lambda_handler",
    "PublishShard": "lambdas.publish.handler.lambda_handler",
    "Commit": "lambdas.commit.handler.lambda_handler",
    "Release": "lambdas.release.handler.lambda_handler",
}

PLACEHOLDERS: tuple[str, ...] = (
    "SageMakerRoleArn",
    "DataBucket",
    "FmImageUri",
    "KnnImageUri",
    "ProcessingImageUri",
    *(f"{name}FunctionArn" for name in FUNCTIONS),
)

ASL_PATH = Path(__file__).with_name("statemachine.asl.json")

# An execution never outlives the run lock it takes.
TIMEOUT_SECONDS = LOCK_TTL_SECONDS
MAP_CONCURRENCY = 2
# Batch transform mini-batches: built-ins reject 0 (unlimited). One user record is ~4 (k+1) bytes
# of recordio in, and a verbose response of k labels and distances out (~25 k bytes): 1 MB of input
# (thousands of users) keeps each response in the tens of MB.
TRANSFORM_MAX_PAYLOAD_MB = 1
PROCESSING_INPUT = "/opt/ml/processing/input"
PROCESSING_OUTPUT = "/opt/ml/processing/output"
# Where the processing code lives in the data bucket (CDK and the local engine upload it there).
PROCESSING_CODE_PREFIX = "code/processing/"
# The last dotted part of the caught error's name (see _Builder.failure_report).
_PARTS = "States.StringSplit($.error.Error, '.')"
ERROR_NAME = f"States.ArrayGetItem({_PARTS}, States.MathAdd(States.ArrayLength({_PARTS}), -1))"
# Where a .sync training job's Describe response names the model.tar.gz.
MODEL_ARTIFACT = "$.ModelArtifacts.S3ModelArtifacts"

# SageMaker names are unique per account and region, and neither a retried Create* (whose first call
# may have succeeded) nor a redriven execution may reuse one: each Create* names its resource
# "<base name>-<State.RetryCount>-<Execution.RedriveCount>" (bases from Prepare, recpipe.runs.job_name,
# leave room for the suffix within SageMaker's 63 characters).
ATTEMPT_FORMAT = "States.Format('{{}}-{{}}-{{}}', {base}, $$.State.RetryCount, $$.Execution.RedriveCount)"
# CreateModel returns only the ARN, ".../model/<name>": the name the transform must use, kept in the
# state data because the model may have been created by an earlier attempt or execution than the
# transform's (SageMaker lower-cases names in ARNs; recpipe's names are lower case throughout).
MODEL_NAME_FROM_ARN = "States.ArrayGetItem(States.StringSplit($.ModelArn, '/'), 1)"

LAMBDA_RETRY_ERRORS = ["Lambda.ServiceException", "Lambda.AWSLambdaException", "Lambda.SdkClientException",
                       "Lambda.TooManyRequestsException"]
SAGEMAKER_RETRY_ERRORS = ["SageMaker.AmazonSageMakerException"]
# A full account quota (instances, concurrent jobs) frees up as other jobs end: minutes, not seconds.
# Waits 1, 2, 4, 8, 16 minutes (~31 in all) before the run fails.
SAGEMAKER_LIMIT_ERRORS = ["SageMaker.ResourceLimitExceededException"]

_REGION = "us-east-1"  # the SDK wants one; nothing region-specific ends up in the ASL


def _ph(name: str) -> str:
    assert name in PLACEHOLDERS, name
    return "${" + name + "}"


def processing_entrypoint() -> list[str]:
    """The processing container's entrypoint (``workflows.processing.ENTRYPOINT``)."""
    from workflows import processing

    return list(processing.ENTRYPOINT)


def _dyn(params: dict[str, Any], dotted: str, path: str) -> None:
    """Replace the static field ``a.b.c`` of ``params`` with ``"c.$": path`` (a value from the state data)."""
    *parents, leaf = dotted.split(".")
    node = params
    for part in parents:
        node = node.setdefault(part, {})
    node.pop(leaf, None)
    node[f"{leaf}.$"] = path


def attempt_name(base_path: str) -> str:
    """The intrinsic naming one attempt's SageMaker resource from the base name at ``base_path``."""
    return ATTEMPT_FORMAT.format(base=base_path)


def _lambda_parameters(function: str, payload: dict[str, Any]) -> dict[str, Any]:
    return {"FunctionName": _ph(f"{function}FunctionArn"), "Payload": payload}


def _payload_selector(*keys: str) -> dict[str, str]:
    """ResultSelector keeping these keys of a ``lambda:invoke`` result's ``Payload``."""
    return {f"{k}.$": f"$.Payload.{k}" for k in keys}


class _Builder:
    """Builds the SDK objects, then amends the ASL with the fields SDK 2.3.0 predates."""

    def __init__(self) -> None:
        import boto3
        import sagemaker
        from stepfunctions import steps

        self.sf = steps
        self.sagemaker = sagemaker
        boto_session = boto3.Session(aws_access_key_id="unused", aws_secret_access_key="unused",
                                     region_name=_REGION)
        self.session = sagemaker.Session(boto_session=boto_session)
        # state name -> extra ASL fields (ResultSelector, ErrorPath, ...) applied after to_dict().
        self.extra: dict[str, dict[str, Any]] = {}
        # state name -> a function rewriting the state after to_dict() (fields the SDK cannot express).
        self.rewrite: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {}

    # --- retries and catches -----------------------------------------------------------------------

    def lambda_retry(self) -> Any:
        return self.sf.Retry(error_equals=LAMBDA_RETRY_ERRORS, interval_seconds=2, max_attempts=3,
                             backoff_rate=2.0)

    def sagemaker_retry(self, step: Any) -> None:
        step.add_retry(self.sf.Retry(error_equals=SAGEMAKER_LIMIT_ERRORS, interval_seconds=60, max_attempts=5,
                                     backoff_rate=2.0))
        step.add_retry(self.sf.Retry(error_equals=SAGEMAKER_RETRY_ERRORS, interval_seconds=5, max_attempts=2,
                                     backoff_rate=2.0))

    def catch_to(self, state: Any, handler: Any) -> None:
        state.add_catch(self.sf.Catch(error_equals=["States.ALL"], next_step=handler, result_path="$.error"))

    def failure_report(self, failed_state: str, next_step: Any, *, variant: bool = False,
                       prefix: bool = True) -> Any:
        """Pass "<state> failed": ``$.failure = {error, cause}`` from the Catch's ``$.error``.

        The cause reads "<state> failed[ for the <variant> variant] (<error>): <cause>". The error is
        the caught name's last dotted part ("States.TaskFailed" -> "TaskFailed", "LockHeldError" as
        is): a Fail state may not raise a name in the reserved "States." namespace.
        """
        if not prefix:
            cause = "$.error.Cause"
        elif variant:
            cause = (f"States.Format('{failed_state} failed for the {{}} variant ({{}}): {{}}', "
                     "$.variant.name, $.error.Error, $.error.Cause)")
        else:
            cause = f"States.Format('{failed_state} failed ({{}}): {{}}', $.error.Error, $.error.Cause)"
        report = self.sf.Pass(f"{failed_state} failed", result_path="$.failure",
                              parameters={"error.$": ERROR_NAME, "cause.$": cause})
        report.next(next_step)
        return report

    # --- task states ------------------------------------------------------------------------------

    def lambda_task(self, state_id: str, function: str, payload: dict[str, Any], *, result_path: str | None,
                    selector: dict[str, str] | None) -> Any:
        task = self.sf.LambdaStep(state_id, parameters=_lambda_parameters(function, payload),
                                  result_path=result_path)
        task.add_retry(self.lambda_retry())
        if selector is not None:
            self.extra[state_id] = {"ResultSelector": selector}
        return task

    def estimator(self, image: str) -> Any:
        from sagemaker.estimator import Estimator

        return Estimator(image_uri=_ph(image), role=_ph("SageMakerRoleArn"), instance_count=1,
                         instance_type="ml.m5.xlarge", volume_size=30, max_run=86400,
                         output_path=f"s3://{_ph('DataBucket')}/runs/", input_mode="File",
                         sagemaker_session=self.session, debugger_hook_config=False,
                         disable_profiler=True)

    @staticmethod
    def training_resources(params: dict[str, Any], algorithm: str) -> None:
        """``algorithm`` = "fm" (type and count from the config) or "knn" (type from the config,
        always one instance: with several, each would index a sample of its own)."""
        _dyn(params, "ResourceConfig.InstanceType", f"$.config.resources.{algorithm}_instance_type")
        if algorithm == "fm":
            _dyn(params, "ResourceConfig.InstanceCount", "$.config.resources.fm_instance_count")
        else:
            params["ResourceConfig"]["InstanceCount"] = 1
        _dyn(params, "ResourceConfig.VolumeSizeInGB", "$.config.resources.volume_size_gb")
        _dyn(params, "StoppingCondition.MaxRuntimeInSeconds", "$.config.resources.max_runtime_seconds")

    def process(self) -> Any:
        from sagemaker.processing import ProcessingInput, ProcessingOutput, Processor

        entrypoint: list[Any] = processing_entrypoint()
        processor = Processor(role=_ph("SageMakerRoleArn"), image_uri=_ph("ProcessingImageUri"),
                              instance_count=1, instance_type="ml.m5.xlarge", entrypoint=entrypoint,
                              volume_size_in_gb=30, max_runtime_in_seconds=86400,
                              sagemaker_session=self.session)
        inputs = [
            ProcessingInput(input_name="data", source="s3://unused/data",
                            destination=f"{PROCESSING_INPUT}/data"),
            ProcessingInput(input_name="config", source="s3://unused/config.json",
                            destination=f"{PROCESSING_INPUT}/config"),
            ProcessingInput(input_name="code", source=f"s3://{_ph('DataBucket')}/{PROCESSING_CODE_PREFIX}",
                            destination=f"{PROCESSING_INPUT}/code"),
        ]
        outputs = [ProcessingOutput(output_name="processed", source=PROCESSING_OUTPUT,
                                    destination="s3://unused/processed/")]
        step = self.sf.ProcessingStep("Process", processor=processor, job_name="unused", inputs=inputs,
                                      outputs=outputs, container_entrypoint=entrypoint, result_path=None)
        p = step.parameters
        _dyn(p, "ProcessingJobName", attempt_name("$.run.jobs.processing"))
        _dyn(p["ProcessingInputs"][0], "S3Input.S3Uri", "$.run.uris.data")
        _dyn(p["ProcessingInputs"][1], "S3Input.S3Uri", "$.run.uris.config")
        _dyn(p["ProcessingOutputConfig"]["Outputs"][0], "S3Output.S3Uri", "$.run.uris.processed")
        cluster = p["ProcessingResources"]["ClusterConfig"]
        _dyn(cluster, "InstanceType", "$.run.config.resources.processing_instance_type")
        _dyn(cluster, "VolumeSizeInGB", "$.run.config.resources.volume_size_gb")
        _dyn(p, "StoppingCondition.MaxRuntimeInSeconds", "$.run.config.resources.max_runtime_seconds")
        self.sagemaker_retry(step)
        return step

    def train_fm(self) -> Any:
        step = self.sf.TrainingStep("Train FM", estimator=self.estimator("FmImageUri"), job_name="unused",
                                    data={"train": "s3://unused/train/"}, hyperparameters={},
                                    result_path="$.fm")
        p = step.parameters
        p.pop("InputDataConfig")
        p["InputDataConfig.$"] = "$.variant.fm_channels"  # train (+ test for eval): Prepare builds them
        _dyn(p, "TrainingJobName", attempt_name("$.variant.jobs.fm"))
        _dyn(p, "HyperParameters", "$.plan.fm_hyperparameters")
        _dyn(p, "OutputDataConfig.S3OutputPath", "$.variant.fm_output")
        self.training_resources(p, "fm")
        self.sagemaker_retry(step)
        self.extra["Train FM"] = {"ResultSelector": {"model_artifact.$": MODEL_ARTIFACT}}
        return step

    def train_knn(self) -> Any:
        step = self.sf.TrainingStep("Train k-NN", estimator=self.estimator("KnnImageUri"), job_name="unused",
                                    data={"train": "s3://unused/items/"}, hyperparameters={},
                                    result_path="$.knn")
        p = step.parameters
        channel = p["InputDataConfig"][0]
        channel["ContentType"] = RECORDIO_PROTOBUF
        _dyn(channel, "DataSource.S3DataSource.S3Uri", "$.vectors.items_prefix")
        _dyn(p, "TrainingJobName", attempt_name("$.variant.jobs.knn"))
        _dyn(p, "HyperParameters", "$.plan.knn_hyperparameters")
        _dyn(p, "OutputDataConfig.S3OutputPath", "$.variant.knn_output")
        self.training_resources(p, "knn")
        self.sagemaker_retry(step)
        self.extra["Train k-NN"] = {"ResultSelector": {"model_artifact.$": MODEL_ARTIFACT}}
        return step

    def create_model(self) -> Any:
        from sagemaker.model import Model

        model = Model(image_uri=_ph("KnnImageUri"), model_data="s3://unused/model.tar.gz",
                      role=_ph("SageMakerRoleArn"), sagemaker_session=self.session)
        step = self.sf.ModelStep("Create model", model=model, model_name="unused", result_path="$.model")
        p = step.parameters
        p["PrimaryContainer"].pop("Environment", None)
        _dyn(p, "ModelName", attempt_name("$.variant.jobs.model"))
        self.extra["Create model"] = {"ResultSelector": {"name.$": MODEL_NAME_FROM_ARN,
                                                         "arn.$": "$.ModelArn"}}
        _dyn(p, "PrimaryContainer.ModelDataUrl", "$.knn.model_artifact")
        self.sagemaker_retry(step)
        return step

    def batch_transform(self) -> Any:
        from sagemaker.transformer import Transformer

        transformer = Transformer(model_name="unused", instance_count=1, instance_type="ml.m5.xlarge",
                                  strategy="MultiRecord", assemble_with="Line", output_path="s3://unused/out/",
                                  accept=KNN_VERBOSE_JSONLINES, max_payload=TRANSFORM_MAX_PAYLOAD_MB,
                                  sagemaker_session=self.session)
        step = self.sf.TransformStep("Batch transform", transformer=transformer, job_name="unused",
                                     model_name="unused", data="s3://unused/users/", data_type="S3Prefix",
                                     content_type=RECORDIO_PROTOBUF, split_type="RecordIO", result_path=None)
        p = step.parameters
        _dyn(p, "TransformJobName", attempt_name("$.variant.jobs.xform"))
        _dyn(p, "ModelName", "$.model.name")  # what Create model created
        # S3Prefix over the users prefix: each shard file is one input, one <shard>.out output.
        _dyn(p, "TransformInput.DataSource.S3DataSource.S3Uri", "$.vectors.users_prefix")
        _dyn(p, "TransformOutput.S3OutputPath", "$.variant.transform_output")
        _dyn(p, "TransformResources.InstanceType", "$.config.resources.transform_instance_type")
        _dyn(p, "TransformResources.InstanceCount", "$.config.resources.transform_instance_count")
        self.sagemaker_retry(step)
        return step

    # --- publishing: a Distributed Map over the shard list, then Commit --------------------------

    def publish_states(self) -> tuple[Any, Any]:
        """"Publish" (a DISTRIBUTED Map: one "Publish shard" child per entry of the shard list, which
        its ItemReader reads from S3) and "Commit". The SDK's Map predates Distributed Map: it is built
        as an inline Map and rewritten by :func:`workflows.publish_map.distributed`."""
        sf = self.sf
        shard = sf.LambdaStep("Publish shard", result_path="$", parameters={
            "FunctionName": _ph("PublishShardFunctionArn"), "Payload.$": "$"})  # the child's whole input
        shard.add_retry(self.lambda_retry())
        # The report, not the whole invoke envelope, is what the ResultWriter stores per child.
        self.extra["Publish shard"] = {"ResultSelector": _payload_selector("kind", "shard", "rows")}
        publish = sf.Map("Publish", iterator=sf.Chain([shard]), parameters=dict(publish_map.ITEM_SELECTOR),
                         result_path="$.publish_map")
        self.rewrite["Publish"] = functools.partial(publish_map.distributed, result_bucket=_ph("DataBucket"))
        commit = self.lambda_task(
            "Commit", "Commit",
            {"run_id.$": "$.run.run_id", "shards.$": "$.run.publish.shards",
             "reports.$": "$.run.publish.reports", "metrics.$": "$.evaluation.metrics"},
            result_path="$.publish",
            selector=_payload_selector("run_id", "users_written", "topped_up_users", "previous_run_id",
                                       "shards"))
        return publish, commit

    # --- the machine ------------------------------------------------------------------------------

    def variant_chain(self) -> Any:
        """The Map iterator: one model variant from FM training to batch transform."""
        sf = self.sf
        variant_failed = sf.Fail("Variant failed")
        self.extra["Variant failed"] = {"ErrorPath": "$.failure.error", "CausePath": "$.failure.cause"}
        train_fm = self.train_fm()
        repackage = self.lambda_task(
            "Repackage", "Repackage",
            {"run_id.$": "$.run_id", "variant.$": "$.variant.name", "model_artifact.$": "$.fm.model_artifact",
             "manifest.$": "$.manifest", "output_prefix.$": "$.variant.vectors"},
            result_path="$.vectors",
            selector=_payload_selector("items_prefix", "users_prefix", "dimension", "n_items", "n_users",
                                       "n_shards"))
        train_knn = self.train_knn()
        create_model = self.create_model()
        transform = self.batch_transform()
        for state in (train_fm, repackage, train_knn, create_model, transform):
            self.catch_to(state, self.failure_report(state.state_id, variant_failed, variant=True))
        return sf.Chain([train_fm, repackage, train_knn, create_model, transform])

    def build(self) -> dict[str, Any]:
        sf = self.sf
        run_failed = sf.Fail("Run failed")
        self.extra["Run failed"] = {"ErrorPath": "$.failure.error", "CausePath": "$.failure.cause"}
        release_after_failure = self.lambda_task("Release lock after failure", "Release",
                                                 {"run_id.$": "$.run.run_id"}, result_path="$.release",
                                                 selector=_payload_selector("released"))
        release_after_failure.next(run_failed)
        # The lock expires anyway: a failing release must not hide the original failure.
        release_after_failure.add_catch(sf.Catch(error_equals=["States.ALL"], next_step=run_failed,
                                                 result_path="$.release_error"))

        prepare = self.lambda_task("Prepare", "Prepare",
                                   {"input.$": "$", "execution_name.$": "$$.Execution.Name"},
                                   result_path="$", selector={"run.$": "$.Payload"})
        self.catch_to(prepare, self.failure_report("Prepare", run_failed))

        process = self.process()
        plan = self.lambda_task(
            "Plan", "Plan",
            {"run_id.$": "$.run.run_id", "manifest.$": "$.run.uris.manifest", "config.$": "$.run.config"},
            result_path="$.plan",
            selector=_payload_selector("fm_hyperparameters", "knn_hyperparameters", "feature_dim", "n_items",
                                       "n_users", "k"))

        models = sf.Map("Models", items_path="$.run.variants", max_concurrency=MAP_CONCURRENCY,
                        result_path=None,
                        parameters={"run_id.$": "$.run.run_id", "variant.$": "$$.Map.Item.Value",
                                    "config.$": "$.run.config", "manifest.$": "$.run.uris.manifest",
                                    "plan.$": "$.plan"})
        models.attach_iterator(self.variant_chain())

        evaluate = self.lambda_task(
            "Evaluate", "Evaluate",
            {"run_id.$": "$.run.run_id", "transform_output.$": "$.run.transform_outputs.eval",
             "vectors.$": "$.run.vectors.eval",
             "manifest.$": "$.run.uris.manifest", "k": 10,
             "min_ndcg_at_10.$": "$.run.config.evaluation.min_ndcg_at_10",
             "max_regression.$": "$.run.config.evaluation.max_regression",
             "metrics_output.$": "$.run.uris.metrics"},
            result_path="$.evaluation",
            selector=_payload_selector("metrics", "threshold", "active_ndcg_at_10"))
        skip_evaluation = sf.Pass("Skip evaluation", result={"metrics": None, "threshold": None,
                                                             "active_ndcg_at_10": None},
                                  result_path="$.evaluation")
        publish, commit = self.publish_states()
        release = self.lambda_task("Release lock", "Release", {"run_id.$": "$.run.run_id"},
                                   result_path="$.release", selector=_payload_selector("released"))
        succeeded = sf.Succeed("Succeeded")

        gate_not_met = sf.Fail("Quality gate not met", error="QualityGateNotMet")
        self.extra["Quality gate not met"] = {"CausePath": "$.failure.cause"}
        # Every value formatted here is a string or a number: the evaluation goes in as one JSON text
        # (metrics, threshold and the active version's NDCG@10 may each be null: no active version
        # on a first run, no metric when no user was scored), the config values are validated numbers.
        gate_report = sf.Pass("Quality gate report", result_path="$.failure", parameters={
            "error": "QualityGateNotMet",
            "cause.$": "States.Format('The eval variant did not meet the quality gate (metrics.ndcg_at_10 >= "
                       "threshold = max(evaluation.min_ndcg_at_10 = {}, active version NDCG@10 - "
                       "evaluation.max_regression = {})); nothing was published. Evaluation: {} (metrics "
                       "kept at {}).', $.run.config.evaluation.min_ndcg_at_10, "
                       "$.run.config.evaluation.max_regression, States.JsonToString($.evaluation), "
                       "$.run.uris.metrics)",
        })
        release_gate = self.lambda_task("Release lock (gate)", "Release", {"run_id.$": "$.run.run_id"},
                                        result_path="$.release", selector=_payload_selector("released"))
        release_gate.add_catch(sf.Catch(error_equals=["States.ALL"], next_step=gate_not_met,
                                        result_path="$.release_error"))
        gate_report.next(release_gate)
        release_gate.next(gate_not_met)

        rule = sf.ChoiceRule
        gate = sf.Choice("Quality gate")
        # The type guards come first: a Choice cannot Catch, and comparing a null would fail the run
        # without releasing the lock.
        gate.add_choice(rule.And([rule.IsNumeric("$.evaluation.metrics.ndcg_at_10", True),
                                  rule.IsNumeric("$.evaluation.threshold", True),
                                  rule.NumericGreaterThanEqualsPath("$.evaluation.metrics.ndcg_at_10",
                                                                    "$.evaluation.threshold")]),
                        publish)
        gate.default_choice(gate_report)

        has_evaluation = sf.Choice("Evaluation?")
        has_evaluation.add_choice(rule.BooleanEquals("$.run.has_evaluation", True), evaluate)
        has_evaluation.default_choice(skip_evaluation)
        evaluate.next(gate)
        skip_evaluation.next(publish)

        for state in (process, plan, models, evaluate, publish, commit, release):
            self.catch_to(state, self.failure_report(state.state_id, release_after_failure,
                                                     prefix=state is not models))
        release.next(succeeded)
        publish.next(commit)
        commit.next(release)
        chain = sf.Chain([prepare, process, plan, models, has_evaluation])
        graph = sf.Graph(chain, timeout_seconds=TIMEOUT_SECONDS, comment=(
            "recpipe: batch recommendations with SageMaker Factorization Machines + k-NN "
            "(built by workflows/definition.py)"))
        asl: dict[str, Any] = graph.to_dict()
        self.amend(asl)
        return asl

    def amend(self, machine: dict[str, Any]) -> None:
        """Add the fields SDK 2.3.0 cannot express to the states (Map iterators included), and put
        states and fields in reading order (the SDK emits them in graph-visit order)."""
        for name, state in list(machine["States"].items()):
            state.update(self.extra.pop(name, {}))
            if name in self.rewrite:
                state = machine["States"][name] = self.rewrite.pop(name)(state)
            if state["Type"] == "Map":
                self.amend(state.get("Iterator") or state["ItemProcessor"])
        machine["States"] = {name: _canonical(machine["States"][name])
                             for name in _reading_order(machine["States"], machine["StartAt"])}


# Field order of a state in the emitted ASL (unknown fields keep their order, after these).
_FIELD_ORDER = ("Type", "Comment", "Resource", "ItemReader", "ItemsPath", "MaxConcurrency",
                "MaxConcurrencyPath", "ToleratedFailureCount", "Parameters", "ItemSelector", "Iterator",
                "ItemProcessor", "ResultWriter", "Result", "ResultSelector", "ResultPath", "Error",
                "ErrorPath", "Cause", "CausePath", "Choices", "Default", "Retry", "Catch", "Next", "End")


def _canonical(state: dict[str, Any]) -> dict[str, Any]:
    rank = {key: i for i, key in enumerate(_FIELD_ORDER)}
    return dict(sorted(state.items(), key=lambda kv: rank.get(kv[0], len(rank))))


def _reading_order(states: dict[str, Any], start: str) -> list[str]:
    """The happy path first (Next, Choices, Default from ``start``), then the states only a Catch
    reaches, each followed by where it leads."""
    order: list[str] = []

    def walk(name: str) -> None:
        while name and name not in order:
            order.append(name)
            state = states[name]
            for choice in state.get("Choices", []):
                walk(choice["Next"])
            if "Default" in state:
                walk(state["Default"])
            name = state.get("Next", "")

    walk(start)
    for name in list(order):
        for catch in states[name].get("Catch", []):
            walk(catch["Next"])
    for name in list(order):  # catch targets of states reached only on a failure path
        for catch in states[name].get("Catch", []):
            walk(catch["Next"])
    missing = set(states) - set(order)
    if missing:
        raise AssertionError(f"unreachable states: {sorted(missing)}")
    return order


def _build() -> dict[str, Any]:
    # The SDKs log and warn on import (to stdout, in places); keep stdout clean for `recpipe definition`.
    os.environ.setdefault("SAGEMAKER_SUPPRESS_V2_WARNING", "1")
    with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
        warnings.simplefilter("ignore")
        logging.getLogger("sagemaker.config").setLevel(logging.WARNING)
        builder = _Builder()
        asl = builder.build()
    if builder.extra or builder.rewrite:
        unknown = sorted(builder.extra) + sorted(builder.rewrite)
        raise AssertionError(f"amendments for unknown states: {unknown}")
    return asl


@functools.cache
def _definition_text() -> str:
    return json.dumps(_build(), indent=2) + "\n"


def build_definition() -> dict[str, Any]:
    """The ASL (a fresh copy each call; built once per process with the SDK)."""
    return copy.deepcopy(json.loads(_definition_text()))


def definition_json() -> str:
    """The ASL as indented JSON text (what ``recpipe definition`` prints and CDK deploys)."""
    return _definition_text()


def load_definition() -> dict[str, Any]:
    """The committed ASL (``statemachine.asl.json``), read without importing the SDK."""
    loaded: dict[str, Any] = json.loads(ASL_PATH.read_text(encoding="utf-8"))
    return loaded


def write_definition(path: Path = ASL_PATH) -> Path:
    """Rebuild ``statemachine.asl.json`` (run after changing this module; a test checks it is current)."""
    path.write_text(definition_json(), encoding="utf-8")
    return path


def print_definition() -> None:
    """``recpipe definition``: print the ASL to stdout."""
    sys.stdout.write(definition_json())


if __name__ == "__main__":
    print(write_definition())
