"""The Prepare step's work: resolve the config, lay out the run, take the run lock.

The run document it returns is the state data every later state reads (``$.run`` in the state
machine): the run id, the resolved config (nested, so ASL paths like
``$.run.config.resources.fm_instance_type`` work), every S3 URI, the base name of every SageMaker
job and model of the run (``<prefix>-<run id>[-<variant>]-<kind>``; the state machine appends
``-<retry count>-<redrive count>`` so that each attempt's name is new), and the list of model
variants the ``Models`` Map iterates over.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from recpipe import config as cfg
from recpipe import runs
from recpipe.formats.media_types import RECORDIO_PROTOBUF
from recpipe.lambda_errors import ConfigurationError, InputError
from recpipe.results import shards
from recpipe.results.lock import LOCK_TTL_SECONDS, acquire_lock

# Deploy-time defaults (JSON object of config keys), set by CDK from cdk.json.
DEFAULTS_ENV = "RECPIPE_DEFAULTS"
# Top-level keys of the execution input that are not configuration. The Step Functions console
# pre-fills the start dialog with {"Comment": "Insert your JSON here"}.
IGNORED_INPUT_KEYS = frozenset({"Comment"})

EVAL, SERVE = "eval", "serve"


def deploy_defaults(raw: str | None) -> dict[str, cfg.Scalar]:
    """Parse and validate the ``RECPIPE_DEFAULTS`` JSON (empty or unset = no overrides)."""
    if not raw or not raw.strip():
        return {}
    try:
        layer = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ConfigurationError(
            f"The environment variable {DEFAULTS_ENV} is not valid JSON: {exc}.") from exc
    if not isinstance(layer, dict):
        raise ConfigurationError(f"The environment variable {DEFAULTS_ENV} must hold a JSON object of config "
                                 f"keys, got {type(layer).__name__}.")
    try:
        return cfg.validate(layer)
    except cfg.ConfigError as exc:
        raise ConfigurationError(f"The deploy-time defaults ({DEFAULTS_ENV}, from cdk.json) are invalid: "
                                 + "; ".join(exc.problems) + ".") from exc


def resolve_input(execution_input: Any, defaults: Mapping[str, Any]) -> dict[str, cfg.Scalar]:
    """The flat resolved config: schema defaults, then the deploy-time defaults, then the input.

    Raises :class:`recpipe.config.ConfigError` listing every problem of the input at once.
    """
    if execution_input is None:
        execution_input = {}
    if not isinstance(execution_input, dict):
        raise InputError("The execution input must be a JSON object of config keys (for example "
                         f'{{"fm.epochs": 5}} or {{}}), got {type(execution_input).__name__}.')
    overrides = {k: v for k, v in execution_input.items() if k not in IGNORED_INPUT_KEYS}
    return cfg.resolve(defaults, overrides)


def data_uri(bucket: str, prefix: str) -> str:
    """The data location: ``data.prefix`` relative to the bucket, or a full ``s3://`` URI."""
    if prefix.startswith("s3://"):
        runs.parse_s3_uri(prefix)
        return prefix.rstrip("/") + "/"
    return runs.prefix_uri(f"s3://{bucket}", prefix) if prefix.strip("/") else f"s3://{bucket}/"


def _channel(name: str, uri: str, distribution: str = "FullyReplicated") -> dict[str, Any]:
    """One ``InputDataConfig`` entry of CreateTrainingJob: every object under the prefix."""
    return {
        "ChannelName": name,
        "ContentType": RECORDIO_PROTOBUF,
        "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": uri,
                                        "S3DataDistributionType": distribution}},
    }


def variant_document(run_id: str, run: str, processed: str, name: str, *,
                     job_prefix: str = runs.DEFAULT_JOB_PREFIX, fm_instances: int = 1) -> dict[str, Any]:
    """Where one model variant reads and writes, and its SageMaker names.

    ``eval`` trains on ``train/`` with the holdout as ``test`` channel; ``serve`` trains on ``full/``.
    With several FM instances (``resources.fm_instance_count``) the train channel is
    ``ShardedByS3Key``: each instance reads its own share of the part files (the processing step
    writes several per instance) instead of every instance passing over all the data; the small
    ``test`` channel stays replicated.
    """
    train = "ShardedByS3Key" if fm_instances > 1 else "FullyReplicated"
    if name == EVAL:
        channels = [_channel("train", runs.prefix_uri(processed, "train"), train),
                    _channel("test", runs.prefix_uri(processed, "test"))]
    else:
        channels = [_channel("train", runs.prefix_uri(processed, "full"), train)]
    return {
        "name": name,
        "fm_channels": channels,
        "fm_output": runs.prefix_uri(run, name, "fm"),
        "vectors": runs.prefix_uri(run, name, "vectors"),
        "knn_output": runs.prefix_uri(run, name, "knn"),
        "transform_output": runs.prefix_uri(run, name, "transform"),
        "jobs": {kind: runs.job_name(run_id, kind, name, prefix=job_prefix)
                 for kind in ("fm", "knn", "model", "xform")},
    }


def run_document(run_id: str, execution_name: str, bucket: str, flat: Mapping[str, Any],
                 *, now: float, job_prefix: str = runs.DEFAULT_JOB_PREFIX) -> dict[str, Any]:
    """The run document (pure: no AWS calls)."""
    run = runs.run_prefix(bucket, run_id)
    processed = runs.prefix_uri(run, "processed")
    has_eval = float(flat["evaluation.holdout_fraction"]) > 0
    names = [EVAL, SERVE] if has_eval else [SERVE]
    fm_instances = int(flat["resources.fm_instance_count"])
    variants = [variant_document(run_id, run, processed, n, job_prefix=job_prefix, fm_instances=fm_instances)
                for n in names]
    by_name = {v["name"]: v for v in variants}
    return {
        "run_id": run_id,
        "execution_name": execution_name,
        "bucket": bucket,
        "created_at": datetime.fromtimestamp(now, UTC).isoformat(timespec="seconds"),
        "lock_expires_at": int(now) + LOCK_TTL_SECONDS,
        "config": cfg.nest(flat),
        "has_evaluation": has_eval,
        "uris": {
            "run": run,
            "config": runs.join_uri(run, "config.json"),
            "data": data_uri(bucket, str(flat["data.prefix"])),
            "processed": processed,
            "manifest": runs.join_uri(processed, "manifest.json"),
            "metrics": runs.join_uri(run, "metrics.json"),
        },
        "jobs": {"processing": runs.job_name(run_id, "process", prefix=job_prefix)},
        "variants": variants,
        "vectors": {EVAL: by_name[EVAL]["vectors"] if has_eval else None, SERVE: by_name[SERVE]["vectors"]},
        "transform_outputs": {EVAL: by_name[EVAL]["transform_output"] if has_eval else None,
                              SERVE: by_name[SERVE]["transform_output"]},
        "publish": shards.publish_locations(bucket, run_id, by_name[SERVE]["vectors"]),
    }


def prepare(execution_input: Any, execution_name: str, *, bucket: str, table: str,
            defaults: Mapping[str, Any], s3: Any, dynamodb: Any,
            now: Callable[[], float] = time.time,
            job_prefix: str = runs.DEFAULT_JOB_PREFIX) -> dict[str, Any]:
    """Validate, lay out the run, write ``runs/<run_id>/config.json``, then take the lock.

    The lock is the last side effect, so a failure before it leaves nothing to release.
    """
    flat = resolve_input(execution_input, defaults)
    run_id = runs.derive_run_id(execution_name)
    t = now()
    document = run_document(run_id, execution_name, bucket, flat, now=t, job_prefix=job_prefix)
    runs.put_json(s3, document["uris"]["config"], flat)
    document["lock_expires_at"] = acquire_lock(dynamodb, table, run_id, execution_name, now=t)
    return document
