"""Evaluate Lambda: holdout metrics of the eval variant and the quality gate's threshold.

Event and result: see docs/CONTRACTS.md (``evaluate``).
"""

from __future__ import annotations

import functools
from typing import Any

import boto3
from aws_lambda_powertools import Logger

from lambdas.evaluate.evaluate import evaluate
from recpipe import runs
from recpipe.lambda_errors import InputError

logger = Logger(service="recpipe-evaluate")


@functools.cache
def _clients() -> tuple[Any, Any]:
    return boto3.client("s3"), boto3.client("dynamodb")


def lambda_handler(
    event: dict[str, Any], context: Any, *, s3: Any = None, dynamodb: Any = None
) -> dict[str, Any]:
    if not isinstance(event, dict):
        raise InputError(f"The Evaluate event must be a JSON object, got {type(event).__name__}.")
    if s3 is None or dynamodb is None:
        s3, dynamodb = _clients()
    result = evaluate(event, s3=s3, dynamodb=dynamodb, table=runs.table_name())
    logger.info("Evaluated", extra={"run_id": event.get("run_id"), **result["metrics"],
                                    "threshold": result["threshold"]})
    return result
