"""The Release step's work: delete the lock item if (and only if) ``run_id`` owns it."""

from __future__ import annotations

from typing import Any

from recpipe.tables import LOCK_KEY


def release_lock(dynamodb: Any, table: str, run_id: str) -> bool:
    """True when the lock was ours and is now gone; False when it is absent or another run's
    (the failure path calls this too, e.g. after Prepare refused because the lock was taken)."""
    try:
        dynamodb.delete_item(
            TableName=table,
            Key={k: {"S": v} for k, v in LOCK_KEY.items()},
            ConditionExpression="#owner = :run",
            ExpressionAttributeNames={"#owner": "owner"},
            ExpressionAttributeValues={":run": {"S": run_id}},
        )
    except dynamodb.exceptions.ConditionalCheckFailedException:
        return False
    return True
