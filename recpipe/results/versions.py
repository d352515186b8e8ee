"""Published versions and the active pointer (layout: :mod:`recpipe.tables`).

A version's life, in write order:

1. :func:`begin_version`: the version item ``meta#version / v#<run_id>`` is set to ``writing``. Its
   ``generated_at``/``expires_at`` and the pointer it was based on (``based_on_run_id``) are kept
   from the first call (``if_not_exists``), so every Publish shard of a run, a retried shard and a
   re-run all write byte-identical rows and the same expiry;
2. the writers put the rows ``user#<id> / v#<run_id>``;
3. :func:`commit_version`: the version item becomes ``complete`` (user count, top-up count,
   metrics), then the active pointer ``meta#active / pointer`` is flipped to the run with a
   conditional write that fails (:class:`PointerConflictError`) if the pointer no longer names the
   version the run was based on (another publish or a rollback ran meanwhile).

Readers follow the pointer, so they see the previous version until step 3 and the new one in full
afterwards. Rows and version items expire ``ttl_days`` after ``generated_at`` (TTL attribute
``expires_at``); the pointer never does. :func:`activate` re-points readers to an older complete,
unexpired version (rollback).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer

from recpipe import tables
from recpipe.lambda_errors import InputError
from recpipe.results.exceptions import PointerConflictError, VersionNotActivatableError

STATE_WRITING = "writing"
STATE_COMPLETE = "complete"

_serializer = TypeSerializer()
_deserializer = TypeDeserializer()


def _key(key: Mapping[str, str]) -> dict[str, Any]:
    return {name: {"S": value} for name, value in key.items()}


def iso(moment: datetime) -> str:
    """``2026-03-01T12:00:00Z``: how the table spells times."""
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def plain(value: Any) -> Any:
    """JSON-ish metrics -> what TypeSerializer accepts (Decimal numbers, None for NaN/inf)."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float | Decimal):
        number = float(value)
        return Decimal(repr(number)) if math.isfinite(number) else None
    if hasattr(value, "dtype") and getattr(value, "shape", None) == ():  # numpy scalars
        return plain(value.item())
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    raise InputError(f"Metric value {value!r} is not JSON data.")


def read_item(dynamodb: Any, table: str, key: Mapping[str, str]) -> dict[str, Any] | None:
    """One item as plain Python values (consistent read), or None."""
    response = dynamodb.get_item(TableName=table, Key=_key(key), ConsistentRead=True)
    item = response.get("Item")
    if item is None:
        return None
    return {name: _deserializer.deserialize(value) for name, value in item.items()}


def active_run(dynamodb: Any, table: str) -> str | None:
    """The run id the pointer names (None before the first publish)."""
    pointer = read_item(dynamodb, table, tables.ACTIVE_KEY)
    return str(pointer["run_id"]) if pointer and pointer.get("run_id") else None


def begin_version(dynamodb: Any, table: str, run_id: str, *, top_n: int, ttl_days: int,
                  now: datetime) -> tuple[str, int]:
    """Mark the version ``writing``; return its ``(generated_at, expires_at)``.

    Both (and ``based_on_run_id``, the pointer at the first call) are kept from an earlier call for
    the same run, so concurrent and retried callers agree on them.
    """
    generated_at = iso(now)
    expires_at = int((now + timedelta(days=ttl_days)).timestamp())
    based_on = active_run(dynamodb, table)
    response = dynamodb.update_item(
        TableName=table,
        Key=_key(tables.version_key(run_id)),
        UpdateExpression=(
            "SET #state = :writing, #run = :run, #top_n = :top_n, "
            "#generated = if_not_exists(#generated, :generated), #ttl = if_not_exists(#ttl, :expires), "
            "#based = if_not_exists(#based, :based)"
        ),
        ExpressionAttributeNames={"#state": "state", "#run": "run_id", "#top_n": "top_n",
                                  "#generated": "generated_at", "#ttl": tables.TTL_ATTRIBUTE,
                                  "#based": "based_on_run_id"},
        ExpressionAttributeValues={
            ":writing": {"S": STATE_WRITING},
            ":run": {"S": run_id},
            ":top_n": {"N": str(top_n)},
            ":generated": {"S": generated_at},
            ":expires": {"N": str(expires_at)},
            ":based": {"S": based_on} if based_on is not None else {"NULL": True},
        },
        ReturnValues="ALL_NEW",
    )
    attributes = response["Attributes"]
    return attributes["generated_at"]["S"], int(attributes[tables.TTL_ATTRIBUTE]["N"])


def complete_version(dynamodb: Any, table: str, run_id: str, *, users: int, topped_up: int,
                     metrics: Mapping[str, Any] | None, now: datetime) -> None:
    """Mark the version ``complete`` with its counts and metrics (``completed_at`` kept from a re-run)."""
    dynamodb.update_item(
        TableName=table,
        Key=_key(tables.version_key(run_id)),
        UpdateExpression=(
            "SET #state = :complete, #users = :users, #topped = :topped, #metrics = :metrics, "
            "#completed = if_not_exists(#completed, :now)"
        ),
        ExpressionAttributeNames={"#state": "state", "#users": "users_written", "#topped": "topped_up_users",
                                  "#metrics": "metrics", "#completed": "completed_at"},
        ExpressionAttributeValues={
            ":complete": {"S": STATE_COMPLETE},
            ":users": {"N": str(users)},
            ":topped": {"N": str(topped_up)},
            ":metrics": _serializer.serialize(plain(dict(metrics) if metrics is not None else None)),
            ":now": {"S": iso(now)},
        },
    )


def flip_pointer(dynamodb: Any, table: str, run_id: str, *, expected_run_id: str | None,
                 ndcg_at_10: Any, now: datetime) -> None:
    """Point readers at ``run_id``, if the pointer still names ``expected_run_id`` (None = no pointer)."""
    item: dict[str, Any] = {
        **_key(tables.ACTIVE_KEY),
        "run_id": {"S": run_id},
        "activated_at": {"S": iso(now)},
    }
    # Absent rather than NULL: readers (Evaluate's gate) expect a number or nothing.
    ndcg = plain(ndcg_at_10)
    if isinstance(ndcg, Decimal):
        item["ndcg_at_10"] = {"N": str(ndcg)}
    if expected_run_id is not None:
        item["previous_run_id"] = {"S": expected_run_id}
    if expected_run_id is None:
        condition: dict[str, Any] = {"ConditionExpression": "attribute_not_exists(#pk)",
                                     "ExpressionAttributeNames": {"#pk": tables.PARTITION_KEY}}
    else:
        condition = {"ConditionExpression": "#run = :expected",
                     "ExpressionAttributeNames": {"#run": "run_id"},
                     "ExpressionAttributeValues": {":expected": {"S": expected_run_id}}}
    try:
        dynamodb.put_item(TableName=table, Item=item, **condition)
    except dynamodb.exceptions.ConditionalCheckFailedException as exc:
        now_active = active_run(dynamodb, table)
        raise PointerConflictError(
            f"The active version changed from {expected_run_id!r} to {now_active!r} while {run_id!r} was "
            f"being activated; {run_id!r} was not activated (its rows are written and stay available)."
        ) from exc


def commit_version(dynamodb: Any, table: str, run_id: str, *, users: int, topped_up: int,
                   metrics: Mapping[str, Any] | None, now: datetime) -> dict[str, Any]:
    """Complete the version begun by :func:`begin_version` and flip the pointer to it.

    The flip expects the pointer the version was based on (read when it was begun), so a rollback
    or another publish while the rows were written makes it fail rather than be overwritten.
    Returns ``{"run_id", "previous_run_id"}``. A re-run of the active version flips nothing.
    """
    version = read_item(dynamodb, table, tables.version_key(run_id))
    if version is None:
        raise VersionNotActivatableError(
            f"Version {run_id!r} was never begun in table {table!r}: no rows were written for it.")
    complete_version(dynamodb, table, run_id, users=users, topped_up=topped_up, metrics=metrics, now=now)
    pointer = read_item(dynamodb, table, tables.ACTIVE_KEY)
    if pointer is not None and pointer.get("run_id") == run_id:
        return {"run_id": run_id, "previous_run_id": pointer.get("previous_run_id")}
    based_on = version.get("based_on_run_id")
    flip_pointer(dynamodb, table, run_id, expected_run_id=str(based_on) if based_on else None,
                 ndcg_at_10=(metrics or {}).get("ndcg_at_10"), now=now)
    return {"run_id": run_id, "previous_run_id": based_on}


def activate(run_id: str, *, dynamodb: Any, table: str, now: datetime | None = None) -> dict[str, Any]:
    """Point readers at an older, complete, unexpired version (rollback). Returns
    ``{"run_id", "previous_run_id"}``; refuses unknown, incomplete or expired versions."""
    now = now or datetime.now(UTC)
    version = read_item(dynamodb, table, tables.version_key(run_id))
    if version is None:
        raise VersionNotActivatableError(
            f"Version {run_id!r} is unknown in table {table!r} (never published, or expired and deleted)."
        )
    if version.get("state") != STATE_COMPLETE:
        raise VersionNotActivatableError(
            f"Version {run_id!r} is in state {version.get('state')!r}, not {STATE_COMPLETE!r}: its rows "
            "may be incomplete."
        )
    expires = version.get(tables.TTL_ATTRIBUTE)
    if expires is not None and int(expires) <= now.timestamp():
        raise VersionNotActivatableError(
            f"Version {run_id!r} expired at {iso(datetime.fromtimestamp(int(expires), UTC))}; its rows are "
            "being deleted."
        )
    active = read_item(dynamodb, table, tables.ACTIVE_KEY)
    current = active.get("run_id") if active else None
    if current == run_id:
        return {"run_id": run_id, "previous_run_id": active.get("previous_run_id") if active else None}
    ndcg = (version.get("metrics") or {}).get("ndcg_at_10")
    flip_pointer(dynamodb, table, run_id, expected_run_id=current, ndcg_at_10=ndcg, now=now)
    return {"run_id": run_id, "previous_run_id": current}
