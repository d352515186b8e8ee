"""The run lock (``meta#lock / lock``): one run at a time publishes.

Prepare takes it (:func:`acquire_lock`, its last side effect); the state machine's Release states,
the lock-cleanup rule's Release and ``recpipe unlock`` give it back (:func:`release_lock`), each only
if the named run still owns it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from recpipe.lambda_errors import LockHeldError
from recpipe.tables import LOCK_KEY, TTL_ATTRIBUTE

# A run holds the lock at most this long. Longer than any sane run; it bounds how long a run that
# was stopped (StopExecution skips the Catch that releases the lock) blocks the next one. The state
# machine's TimeoutSeconds equals it, so a live execution never outlives its lock.
LOCK_TTL_SECONDS = 48 * 3600


def _lock_key() -> dict[str, Any]:
    return {k: {"S": v} for k, v in LOCK_KEY.items()}


def acquire_lock(dynamodb: Any, table: str, run_id: str, execution_name: str, *, now: float) -> int:
    """Take the pipeline lock for ``run_id``; returns its expiry (epoch seconds).

    Succeeds when the lock is free, expired, or already ours (so a retried Prepare is harmless);
    otherwise raises :class:`LockHeldError` naming the run that holds it.
    """
    expires = int(now) + LOCK_TTL_SECONDS
    item = {
        **_lock_key(),
        "owner": {"S": run_id},
        "execution_name": {"S": execution_name},
        "acquired_at": {"S": datetime.fromtimestamp(now, UTC).isoformat(timespec="seconds")},
        TTL_ATTRIBUTE: {"N": str(expires)},
    }
    try:
        dynamodb.put_item(
            TableName=table,
            Item=item,
            ConditionExpression="attribute_not_exists(#pk) OR #exp < :now OR #owner = :run",
            ExpressionAttributeNames={"#pk": "pk", "#exp": TTL_ATTRIBUTE, "#owner": "owner"},
            ExpressionAttributeValues={":now": {"N": str(int(now))}, ":run": {"S": run_id}},
        )
    except dynamodb.exceptions.ConditionalCheckFailedException:
        held = dynamodb.get_item(TableName=table, Key=_lock_key(), ConsistentRead=True).get("Item", {})
        owner = held.get("owner", {}).get("S", "?")
        since = held.get("acquired_at", {}).get("S", "?")
        until = held.get(TTL_ATTRIBUTE, {}).get("N")
        until_text = (datetime.fromtimestamp(int(until), UTC).isoformat(timespec="seconds")
                      if until else "?")
        raise LockHeldError(
            f"Another run holds the pipeline lock: run '{owner}' (since {since}, expires {until_text}; "
            f"table {table}). Only one run may publish at a time: wait for it to finish, or, if it was "
            "stopped, delete the lock item (pk='meta#lock', sk='lock')."
        ) from None
    return expires


def release_lock(dynamodb: Any, table: str, run_id: str) -> bool:
    """True when the lock was ours and is now gone; False when it is absent or another run's
    (the failure path calls this too, e.g. after Prepare refused because the lock was taken)."""
    try:
        dynamodb.delete_item(
            TableName=table,
            Key=_lock_key(),
            ConditionExpression="#owner = :run",
            ExpressionAttributeNames={"#owner": "owner"},
            ExpressionAttributeValues={":run": {"S": run_id}},
        )
    except dynamodb.exceptions.ConditionalCheckFailedException:
        return False
    return True
