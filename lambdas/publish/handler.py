"""PublishShard Lambda (the "Publish" Map's child): ``{"run_id", "shard": {kind, shard, start, stop,
prefix}, "manifest", "transform_output", "vectors", "reports", "top_n", "ttl_days", "started_at"}`` ->
the shard's report ``{"run_id", "kind", "shard", "start", "stop", "rows", ...}``."""

from __future__ import annotations

import functools
from typing import Any

import boto3

from lambdas.publish.publish import PublishShardRequest, logger, publish_shard
from recpipe import runs


@functools.cache
def _clients() -> tuple[Any, Any]:
    return boto3.client("s3"), boto3.client("dynamodb")


def lambda_handler(event: dict[str, Any], context: Any, *,
                   s3: Any = None, dynamodb: Any = None) -> dict[str, Any]:
    request = PublishShardRequest.from_event(event)
    if s3 is None or dynamodb is None:
        default_s3, default_dynamodb = _clients()
        s3, dynamodb = s3 or default_s3, dynamodb or default_dynamodb
    report = publish_shard(request, s3=s3, dynamodb=dynamodb, table=runs.table_name())
    logger.info("Shard published", extra=report)
    return report
