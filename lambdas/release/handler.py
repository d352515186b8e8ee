"""Release Lambda: ``{"run_id"}`` -> ``{"released": bool}``."""

from __future__ import annotations

import functools
from typing import Any

import boto3
from aws_lambda_powertools import Logger

from lambdas.release.release import release_lock
from recpipe import runs
from recpipe.lambda_errors import InputError

logger = Logger(service="recpipe-release")


@functools.cache
def _dynamodb() -> Any:
    return boto3.client("dynamodb")


def lambda_handler(event: dict[str, Any], context: Any, *, dynamodb: Any = None) -> dict[str, bool]:
    run_id = event.get("run_id") if isinstance(event, dict) else None
    if not isinstance(run_id, str) or not run_id:
        raise InputError(f"The Release event must be {{\"run_id\": str}}, got {event!r}.")
    released = release_lock(dynamodb or _dynamodb(), runs.table_name(), run_id)
    logger.info("Lock released" if released else "Lock not held by this run",
                extra={"run_id": run_id, "released": released})
    return {"released": released}
