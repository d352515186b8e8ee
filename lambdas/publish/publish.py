"""The Publish step: the serve variant's k-NN output -> versioned per-user rows, then a pointer flip.

Order of writes (``recpipe.tables`` has the layout):

1. the version item ``meta#version / v#<run_id>`` is set to ``state = writing`` (its
   ``generated_at`` is kept from an earlier attempt of the same run, so a re-run writes
   byte-identical rows);
2. every user's row ``user#<id> / v#<run_id>`` (BatchWriteItem, retried until nothing is left);
3. the version item becomes ``complete`` with the user count, top-up count and metrics;
4. the active pointer ``meta#active / pointer`` is flipped to the run with a conditional write
   that fails if another run moved it meanwhile.

Readers follow the pointer, so they see the previous version until step 4 and the new one in
full afterwards; a publish that fails anywhere before step 4 leaves the previous version served.
Rows and version items expire ``ttl_days`` after ``generated_at`` (TTL attribute ``expires_at``);
the pointer never does. :func:`activate` re-points readers to an older complete version (rollback).

Transform output -> users: each ``*.out`` file is named after the user shard Repackage wrote
(``users-<start>-<stop>.pbr.out``, :mod:`recpipe.vectors`) and the batch transform keeps the input
order, so line j of that file is user ``start + j``; :func:`recpipe.topn.transform_parts` checks the
files tile all users and :func:`recpipe.topn.read_part` checks each file's line count against its range.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import numpy as np
import scipy.sparse as sp
from aws_lambda_powertools import Logger
from boto3.dynamodb.types import TypeDeserializer, TypeSerializer

from lambdas.publish.exceptions import PointerConflictError, VersionNotActivatableError
from lambdas.publish.writer import BatchWriter
from recpipe import runs, tables, topn
from recpipe.lambda_errors import InputError

STATE_WRITING = "writing"
STATE_COMPLETE = "complete"

logger = Logger(service="recpipe-publish")
_serializer = TypeSerializer()
_deserializer = TypeDeserializer()


@dataclass(frozen=True)
class PublishRequest:
    """The Publish event (docs/CONTRACTS.md), validated."""

    run_id: str
    transform_output: str
    manifest: str
    top_n: int
    ttl_days: int
    metrics: dict[str, Any] | None = None

    @classmethod
    def from_event(cls, event: Any) -> PublishRequest:
        if not isinstance(event, Mapping):
            raise InputError(f"The Publish event must be a JSON object, got {type(event).__name__}.")
        required = ("run_id", "transform_output", "manifest", "top_n", "ttl_days")
        missing = [key for key in required if key not in event]
        if missing:
            raise InputError(f"The Publish event lacks {', '.join(repr(k) for k in missing)}.")
        for key in ("run_id", "transform_output", "manifest"):
            if not isinstance(event[key], str) or not event[key]:
                raise InputError(
                    f"The Publish event's {key!r} must be a non-empty string, got {event[key]!r}."
                )
        for key, low, high in (("top_n", 1, 1000), ("ttl_days", 1, 3650)):
            value = event[key]
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise InputError(
                    f"The Publish event's {key!r} must be an int in [{low}, {high}], got {value!r}."
                )
        metrics = event.get("metrics")
        if metrics is not None and not isinstance(metrics, Mapping):
            raise InputError(f"The Publish event's 'metrics' must be an object or null, got {metrics!r}.")
        for key in ("transform_output", "manifest"):
            runs.parse_s3_uri(event[key])
        return cls(event["run_id"], event["transform_output"], event["manifest"], event["top_n"],
                   event["ttl_days"], dict(metrics) if metrics is not None else None)


@dataclass(frozen=True)
class Catalogue:
    """What Publish needs from the processing output."""

    user_ids: list[str]
    item_ids: list[str]
    seen: sp.csr_matrix  # (n_users, n_items), seen_all
    popularity: np.ndarray  # (n_items,), column sums of ``seen``

    @functools.cached_property
    def item_attributes(self) -> list[dict[str, str]]:
        """``{"S": item_id}`` per item index, built once."""
        return [{"S": item_id} for item_id in self.item_ids]


def load_catalogue(s3: Any, manifest_uri: str) -> Catalogue:
    manifest = runs.load_manifest(s3, manifest_uri)
    user_ids = _lines(s3, runs.required_file_uri(manifest_uri, manifest, "user_ids", "Publish"))
    item_ids = _lines(s3, runs.required_file_uri(manifest_uri, manifest, "item_ids", "Publish"))
    seen_uri = runs.required_file_uri(manifest_uri, manifest, "seen_all", "Publish")
    seen = runs.load_csr(s3, seen_uri, (len(user_ids), len(item_ids)))
    counts = manifest.get("counts") or {}
    for name, ids in (("users", user_ids), ("items", item_ids)):
        if name in counts and counts[name] != len(ids):
            raise InputError(f"The manifest {manifest_uri} counts {counts[name]} {name} but its id file "
                             f"lists {len(ids)}.")
    popularity = np.asarray(seen.sum(axis=0)).reshape(-1)
    return Catalogue(user_ids, item_ids, seen, popularity)


def _lines(s3: Any, uri: str) -> list[str]:
    text = runs.get_bytes(s3, uri).decode("utf-8")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


_NULL = {"NULL": True}


def _number(value: float) -> str:
    """A score as a DynamoDB number: float32 precision (7 significant digits), exponents as Decimal
    spells them (``1.5E-7``)."""
    text = f"{value:.7g}"
    return str(Decimal(text)) if "e" in text else text


def user_rows(
    ranked: topn.Ranked, start: int, catalogue: Catalogue, run_id: str, generated_at: str, expires_at: int
) -> Iterator[dict[str, Any]]:
    """Low-level DynamoDB items of users ``start, start + 1, ...`` (one per row of ``ranked``).

    Topped-up items (no k-NN score) get a NULL score; they always come after the scored ones.
    """
    sk = {"S": f"{tables.VERSION_PREFIX}{run_id}"}
    common = {
        "run_id": {"S": run_id},
        "generated_at": {"S": generated_at},
        tables.TTL_ATTRIBUTE: {"N": str(expires_at)},
    }
    # Shared, read-only attribute values: the serializer only reads them (1M users x 20 items).
    item_attrs = catalogue.item_attributes
    rows = zip(ranked.items.tolist(), ranked.scores.tolist(), strict=True)
    for offset, (row_items, row_scores) in enumerate(rows):
        user_id = catalogue.user_ids[start + offset]
        entries = [
            {"M": {"item_id": item_attrs[item], "score": _NULL if score != score else {"N": _number(score)}}}
            for item, score in zip(row_items, row_scores, strict=True)
            if item >= 0
        ]
        yield {
            tables.PARTITION_KEY: {"S": f"{tables.USER_PREFIX}{user_id}"},
            tables.SORT_KEY: sk,
            "user_id": {"S": user_id},
            "items": {"L": entries},
            **common,
        }


def _key(key: Mapping[str, str]) -> dict[str, Any]:
    return {name: {"S": value} for name, value in key.items()}


def _plain(value: Any) -> Any:
    """JSON-ish metrics -> what TypeSerializer accepts (Decimal numbers, None for NaN/inf)."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float | Decimal | np.floating | np.integer):
        number = float(value)
        return Decimal(repr(number)) if math.isfinite(number) else None
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    raise InputError(f"Metric value {value!r} is not JSON data.")


def _read(dynamodb: Any, table: str, key: Mapping[str, str]) -> dict[str, Any] | None:
    response = dynamodb.get_item(TableName=table, Key=_key(key), ConsistentRead=True)
    item = response.get("Item")
    if item is None:
        return None
    return {name: _deserializer.deserialize(value) for name, value in item.items()}


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _begin_version(dynamodb: Any, table: str, request: PublishRequest, now: datetime) -> tuple[str, int]:
    """Mark the version ``writing``; return its ``(generated_at, expires_at)`` (kept from a prior attempt)."""
    generated_at = _iso(now)
    expires_at = int((now + timedelta(days=request.ttl_days)).timestamp())
    response = dynamodb.update_item(
        TableName=table,
        Key=_key(tables.version_key(request.run_id)),
        UpdateExpression=(
            "SET #state = :writing, #run = :run, #top_n = :top_n, "
            "#generated = if_not_exists(#generated, :generated), #ttl = if_not_exists(#ttl, :expires)"
        ),
        ExpressionAttributeNames={"#state": "state", "#run": "run_id", "#top_n": "top_n",
                                  "#generated": "generated_at", "#ttl": tables.TTL_ATTRIBUTE},
        ExpressionAttributeValues={
            ":writing": {"S": STATE_WRITING},
            ":run": {"S": request.run_id},
            ":top_n": {"N": str(request.top_n)},
            ":generated": {"S": generated_at},
            ":expires": {"N": str(expires_at)},
        },
        ReturnValues="ALL_NEW",
    )
    attributes = response["Attributes"]
    return attributes["generated_at"]["S"], int(attributes[tables.TTL_ATTRIBUTE]["N"])


def _complete_version(dynamodb: Any, table: str, request: PublishRequest, *, users: int, topped_up: int,
                      now: datetime) -> None:
    dynamodb.update_item(
        TableName=table,
        Key=_key(tables.version_key(request.run_id)),
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
            ":metrics": _serializer.serialize(_plain(request.metrics)),
            ":now": {"S": _iso(now)},
        },
    )


def _flip_pointer(dynamodb: Any, table: str, run_id: str, *, expected_run_id: str | None,
                  ndcg_at_10: Any, now: datetime) -> None:
    """Point readers at ``run_id``, if the pointer still names ``expected_run_id`` (None = no pointer)."""
    item: dict[str, Any] = {
        **_key(tables.ACTIVE_KEY),
        "run_id": {"S": run_id},
        "activated_at": {"S": _iso(now)},
    }
    # Absent rather than NULL: readers (Evaluate's gate) expect a number or nothing.
    ndcg = _plain(ndcg_at_10)
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
        now_active = (_read(dynamodb, table, tables.ACTIVE_KEY) or {}).get("run_id")
        raise PointerConflictError(
            f"The active version changed from {expected_run_id!r} to {now_active!r} while {run_id!r} was "
            f"being activated; {run_id!r} was not activated (its rows are written and stay available)."
        ) from exc


def publish(
    request: PublishRequest,
    *,
    s3: Any,
    dynamodb: Any,
    table: str,
    now: datetime | None = None,
    writer: BatchWriter | None = None,
) -> dict[str, Any]:
    """Write the run's rows under its own version, complete the version, flip the pointer."""
    now = now or datetime.now(UTC)
    catalogue = load_catalogue(s3, request.manifest)
    parts = topn.transform_parts(s3, request.transform_output, len(catalogue.user_ids))
    active = _read(dynamodb, table, tables.ACTIVE_KEY)
    active_run = active.get("run_id") if active else None

    generated_at, expires_at = _begin_version(dynamodb, table, request, now)
    writer = writer or BatchWriter(dynamodb, table)
    users_written = topped_up = 0
    for part in parts:
        labels, distances = topn.read_part(s3, part)
        ranked = topn.rank(labels, distances, catalogue.seen[part.start:part.stop], request.top_n,
                           catalogue.popularity)
        topped_up += ranked.n_topped_up
        users_written += writer.write(
            user_rows(ranked, part.start, catalogue, request.run_id, generated_at, expires_at)
        )
        logger.info("Shard written", extra={"key": part.key, "users": [part.start, part.stop],
                                            "users_written": users_written, "calls": writer.calls,
                                            "retries": writer.retries})
    _complete_version(dynamodb, table, request, users=users_written, topped_up=topped_up, now=now)

    if active_run == request.run_id:  # a re-run of the active version: the pointer already says so
        previous = active.get("previous_run_id") if active else None
    else:
        ndcg = (request.metrics or {}).get("ndcg_at_10")
        _flip_pointer(dynamodb, table, request.run_id, expected_run_id=active_run, ndcg_at_10=ndcg, now=now)
        previous = active_run
    return {
        "run_id": request.run_id,
        "users_written": users_written,
        "topped_up_users": topped_up,
        "previous_run_id": previous,
    }


def activate(run_id: str, *, dynamodb: Any, table: str, now: datetime | None = None) -> dict[str, Any]:
    """Point readers at an older, complete, unexpired version (rollback). Returns
    ``{"run_id", "previous_run_id"}``; refuses unknown, incomplete or expired versions."""
    now = now or datetime.now(UTC)
    version = _read(dynamodb, table, tables.version_key(run_id))
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
            f"Version {run_id!r} expired at {_iso(datetime.fromtimestamp(int(expires), UTC))}; its rows are "
            "being deleted."
        )
    active = _read(dynamodb, table, tables.ACTIVE_KEY)
    active_run = active.get("run_id") if active else None
    if active_run == run_id:
        return {"run_id": run_id, "previous_run_id": active.get("previous_run_id") if active else None}
    ndcg = (version.get("metrics") or {}).get("ndcg_at_10")
    _flip_pointer(dynamodb, table, run_id, expected_run_id=active_run, ndcg_at_10=ndcg, now=now)
    return {"run_id": run_id, "previous_run_id": active_run}
