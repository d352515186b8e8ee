"""Commit Lambda: ``{"run_id", "shards": s3 URI | {"Bucket", "Key"}, "reports", "metrics"}`` ->
``{"run_id", "users_written", "topped_up_users", "previous_run_id", "shards"}``."""

from __future__ import annotations

import functools
from typing import Any

import boto3

from lambdas.commit.commit import CommitRequest, commit, logger
from recpipe import runs


@functools.cache
def _clients() -> tuple[Any, Any]:
    return boto3.client("s3"), boto3.client("dynamodb")


def lambda_handler(event: dict[str, Any], context: Any, *,
                   s3: Any = None, dynamodb: Any = None) -> dict[str, Any]:
    request = CommitRequest.from_event(event)
    if s3 is None or dynamodb is None:
        default_s3, default_dynamodb = _clients()
        s3, dynamodb = s3 or default_s3, dynamodb or default_dynamodb
    result = commit(request, s3=s3, dynamodb=dynamodb, table=runs.table_name())
    logger.info("Committed", extra=result)
    return result
