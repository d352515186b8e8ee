"""Repackage Lambda: ``{"run_id", "variant", "model_artifact", "manifest", "output_prefix"}``
-> ``{"items_prefix", "users_prefix", "dimension", "n_items", "n_users", "n_shards"}``."""

from __future__ import annotations

import functools
from typing import Any

import boto3
from aws_lambda_powertools import Logger

from lambdas.repackage.repackage import RepackageRequest, repackage

logger = Logger(service="recpipe-repackage")


@functools.cache
def _s3() -> Any:
    return boto3.client("s3")


def lambda_handler(event: dict[str, Any], context: Any, *, s3: Any = None) -> dict[str, Any]:
    request = RepackageRequest.from_event(event)
    result = repackage(request, s3=s3 or _s3())
    logger.info("Repackaged", extra={"run_id": request.run_id, "variant": request.variant, **result})
    return result
