"""Plan Lambda: ``{"run_id", "manifest": uri, "config": {...}}`` -> the training hyperparameters."""

from __future__ import annotations

import functools
from typing import Any

import boto3
from aws_lambda_powertools import Logger

from lambdas.plan.plan import plan
from recpipe import runs
from recpipe.lambda_errors import InputError

logger = Logger(service="recpipe-plan")


@functools.cache
def _s3() -> Any:
    return boto3.client("s3")


def lambda_handler(event: dict[str, Any], context: Any, *, s3: Any = None) -> dict[str, Any]:
    missing = [k for k in ("run_id", "manifest", "config") if not isinstance(event, dict) or k not in event]
    if missing:
        raise InputError(f"The Plan event lacks {', '.join(repr(k) for k in missing)}.")
    if not isinstance(event["config"], dict):
        kind = type(event["config"]).__name__
        raise InputError(f"The Plan event's 'config' must be an object, got {kind}.")
    manifest = runs.load_manifest(s3 or _s3(), event["manifest"])
    result = plan(event["config"], manifest, event["manifest"])
    logger.info("Planned", extra={"run_id": event["run_id"], **result})
    return result
