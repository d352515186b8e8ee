"""Reading the results table (``recpipe.tables`` layout) for the CLI, locally and with ``--aws``:
the active pointer, the lock item, one user's or every user's rows of a version, the versions.

Values come back as plain Python (DynamoDB numbers as int or float, not Decimal).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

from recpipe import tables
from recpipe.results.versions import read_item


def _plain(value: Any) -> Any:
    """A deserialised item's Decimals -> int or float (the inverse direction of versions.plain)."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _item(raw: dict[str, Any]) -> dict[str, Any]:
    from boto3.dynamodb.types import TypeDeserializer

    deserializer = TypeDeserializer()
    return {k: _plain(deserializer.deserialize(v)) for k, v in raw.items()}


def active_pointer(ddb: Any, table: str) -> dict[str, Any] | None:
    """The ``meta#active`` pointer item, or None when nothing was published yet."""
    item = read_item(ddb, table, tables.ACTIVE_KEY)
    return _plain(item) if item is not None else None


def lock_item(ddb: Any, table: str) -> dict[str, Any] | None:
    """The run lock item (``owner``, ``execution_name``, ``acquired_at``, ``expires_at``), or None."""
    item = read_item(ddb, table, tables.LOCK_KEY)
    return _plain(item) if item is not None else None


def shape(user_id: str, run_id: str, items: list[Any], top: int | None = None) -> dict[str, Any]:
    """The CLI's JSON shape: ``{"user_id", "run_id", "items": [{"item_id", "score"}, ...]}``."""
    chosen = items[:top] if top else items
    return {"user_id": user_id, "run_id": run_id,
            "items": [{"item_id": str(i.get("item_id")), "score": i.get("score")} for i in chosen]}


def user_recommendations(ddb: Any, table: str, user_id: str, run_id: str) -> dict[str, Any] | None:
    item = read_item(ddb, table, tables.user_key(user_id, run_id))
    if item is None:
        return None
    item = _plain(item)
    return shape(str(item.get("user_id", user_id)), run_id, list(item.get("items", [])))


def _user_order(row: dict[str, Any]) -> tuple[int, str]:
    """Numeric ids in numeric order, then the others."""
    user_id = str(row["user_id"])
    return (len(user_id), user_id) if user_id.isdigit() else (1 << 30, user_id)


def _version_scan(table: str, run_id: str) -> dict[str, Any]:
    """Scan arguments selecting the user rows of version ``run_id``."""
    return {
        "TableName": table,
        "FilterExpression": "begins_with(#pk, :user) AND #sk = :version",
        "ExpressionAttributeNames": {"#pk": tables.PARTITION_KEY, "#sk": tables.SORT_KEY},
        "ExpressionAttributeValues": {":user": {"S": tables.USER_PREFIX},
                                      ":version": {"S": f"{tables.VERSION_PREFIX}{run_id}"}},
    }


def _user_row(raw: dict[str, Any], run_id: str) -> dict[str, Any]:
    item = _item(raw)
    user_id = str(item.get("user_id") or str(item[tables.PARTITION_KEY])[len(tables.USER_PREFIX):])
    return shape(user_id, run_id, list(item.get("items", [])))


def all_recommendations(ddb: Any, table: str, run_id: str, *,
                        ordered: bool = True) -> Iterator[dict[str, Any]]:
    """Every user's row of version ``run_id`` (a scan of the whole table). ``ordered``: numeric user
    ids in numeric order (holds every row in memory, fine locally); otherwise rows stream out page by
    page in scan order (a deployed table of a million users)."""
    rows = []
    for page in ddb.get_paginator("scan").paginate(**_version_scan(table, run_id)):
        for raw in page.get("Items", []):
            row = _user_row(raw, run_id)
            if ordered:
                rows.append(row)
            else:
                yield row
    rows.sort(key=_user_order)
    yield from rows


def sample_users(ddb: Any, table: str, run_id: str, n: int = 3) -> list[dict[str, Any]]:
    """``n`` users of version ``run_id``: the lowest ids among the first rows found."""
    found: list[dict[str, Any]] = []
    kwargs = _version_scan(table, run_id)
    while len(found) < 50:
        page = ddb.scan(**kwargs)
        found += [_user_row(raw, run_id) for raw in page.get("Items", [])]
        if "LastEvaluatedKey" not in page:
            break
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
    found.sort(key=_user_order)
    return found[:n]


def versions(ddb: Any, table: str, *, now: float | None = None) -> list[dict[str, Any]]:
    """Every published version (``meta#version`` items), newest first: ``run_id``, ``state``
    (``writing`` | ``complete``), ``users`` (rows written), ``ndcg_at_10`` (None without an
    evaluation), ``generated_at``, ``completed_at``, ``expires_at`` (epoch seconds), ``expired``
    (the TTL passed; DynamoDB deletes such items within days) and ``active`` (the pointer names it)."""
    now = time.time() if now is None else now
    pointer = active_pointer(ddb, table)
    active = str(pointer["run_id"]) if pointer and pointer.get("run_id") is not None else None
    kwargs: dict[str, Any] = {
        "TableName": table,
        "KeyConditionExpression": "#pk = :pk",
        "ExpressionAttributeNames": {"#pk": tables.PARTITION_KEY},
        "ExpressionAttributeValues": {":pk": {"S": tables.VERSION_PK}},
        "ConsistentRead": True,
    }
    out: list[dict[str, Any]] = []
    for page in ddb.get_paginator("query").paginate(**kwargs):
        for raw in page.get("Items", []):
            item = _item(raw)
            run_id = str(item.get("run_id") or str(item[tables.SORT_KEY])[len(tables.VERSION_PREFIX):])
            metrics = item.get("metrics")
            metrics = metrics if isinstance(metrics, dict) else {}
            expires = item.get(tables.TTL_ATTRIBUTE)
            out.append({
                "run_id": run_id,
                "state": item.get("state"),
                "users": item.get("users_written"),
                "ndcg_at_10": metrics.get("ndcg_at_10"),
                "generated_at": item.get("generated_at"),
                "completed_at": item.get("completed_at"),
                "expires_at": expires,
                "expired": expires is not None and float(expires) <= now,
                "active": run_id == active,
            })
    out.sort(key=lambda v: (str(v["generated_at"] or ""), v["run_id"]), reverse=True)
    return out
