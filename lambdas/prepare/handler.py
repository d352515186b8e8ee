"""Prepare Lambda: ``{"input": {...execution input...}, "execution_name": str}`` -> the run document."""

from __future__ import annotations

import functools
import os
from typing import Any

import boto3
from aws_lambda_powertools import Logger

from lambdas.prepare.prepare import DEFAULTS_ENV, deploy_defaults, prepare
from recpipe import runs
from recpipe.lambda_errors import InputError

logger = Logger(service="recpipe-prepare")


@functools.cache
def _clients() -> tuple[Any, Any]:
    return boto3.client("s3"), boto3.client("dynamodb")


def lambda_handler(event: dict[str, Any], context: Any, *,
                   s3: Any = None, dynamodb: Any = None) -> dict[str, Any]:
    if not isinstance(event, dict) or not isinstance(event.get("execution_name"), str):
        raise InputError("The Prepare event must be {\"input\": {...}, \"execution_name\": str}; "
                         f"got keys {sorted(event) if isinstance(event, dict) else type(event).__name__}.")
    if s3 is None or dynamodb is None:
        s3, dynamodb = _clients()
    document = prepare(
        event.get("input"), event["execution_name"],
        bucket=runs.bucket_name(), table=runs.table_name(),
        defaults=deploy_defaults(os.environ.get(DEFAULTS_ENV)),
        s3=s3, dynamodb=dynamodb, job_prefix=runs.job_prefix(),
    )
    logger.info("Run prepared", extra={"run_id": document["run_id"],
                                       "variants": [v["name"] for v in document["variants"]]})
    return document
