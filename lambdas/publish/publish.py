"""The PublishShard step: one entry of ``shards/serve.json`` -> its rows under the run's version.

The "Publish" Distributed Map runs one child per entry (:mod:`recpipe.results.shards`); a child
handles its entry by ``kind``:

- ``users``: rank the shard's users and write their rows ``user#<id> / v#<run_id>``. It reads only
  what its shard needs: the transform output ``users-<start:010d>-<stop:010d>.pbr.out`` (the
  k-NN's candidate labels; the distances are not used, :mod:`recpipe.topn`), the shard's user
  vectors from Repackage (same name without ``.out``), the item vectors, the shard's ``seen.npz``
  and ``user_ids.txt`` (under its ``prefix``), the global ``popularity_all.npy`` and ``item_ids.txt``
  (per item, not per user). Memory is bounded by one shard plus the item tables, whatever the
  number of users.
- ``items``: the similar-item rows ``item#<id> / v#<run_id>`` of its item range (``similar_items``
  per item, exact inner products of the item vectors) and, for the shard starting at item 0, the
  version's ``meta#popular`` row (:func:`recpipe.serving.items.publish_items`).

Then it writes its report ``runs/<id>/publish/<kind>-<shard:05d>.json`` (row count, top-ups), the
last thing it does: a report means the rows are written.

Idempotent: the version item is begun with ``if_not_exists`` (:func:`recpipe.results.versions.begin_version`)
from the execution's start time, so every child, a retried child and a redriven execution write the
same ``generated_at``/``expires_at`` and byte-identical rows, and the same report.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import scipy.sparse as sp
from aws_lambda_powertools import Logger

from lambdas.publish.writer import BatchWriter
from recpipe import runs, tables, topn, vectors
from recpipe.lambda_errors import InputError
from recpipe.results import shards, versions

logger = Logger(service="recpipe-publish")

ITEMS_FILE = "items/items.pbr"  # under the vectors prefix (Repackage)
USERS_DIR = "users"


@dataclass(frozen=True)
class PublishShardRequest:
    """The PublishShard event (docs/CONTRACTS.md: the Map's ItemSelector), validated."""

    run_id: str
    shard: shards.ShardEntry
    manifest: str
    transform_output: str
    vectors: str
    reports: str
    top_n: int
    ttl_days: int
    started_at: datetime | None = None
    similar_items: int = 0

    @classmethod
    def from_event(cls, event: Any) -> PublishShardRequest:
        if not isinstance(event, Mapping):
            raise InputError(f"The PublishShard event must be a JSON object, got {type(event).__name__}.")
        required = ("run_id", "shard", "manifest", "transform_output", "vectors", "reports", "top_n",
                    "ttl_days")
        missing = [key for key in required if key not in event]
        if missing:
            raise InputError(f"The PublishShard event lacks {', '.join(repr(k) for k in missing)}.")
        for key in ("run_id", "manifest", "transform_output", "vectors", "reports"):
            if not isinstance(event[key], str) or not event[key]:
                raise InputError(
                    f"The PublishShard event's {key!r} must be a non-empty string, got {event[key]!r}.")
        for key in ("manifest", "transform_output", "vectors", "reports"):
            runs.parse_s3_uri(event[key])
        for key, low, high in (("top_n", 1, 1000), ("ttl_days", 1, 3650)):
            value = event[key]
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise InputError(
                    f"The PublishShard event's {key!r} must be an int in [{low}, {high}], got {value!r}.")
        started = event.get("started_at")
        started_at = None
        if started is not None:
            try:
                started_at = datetime.fromisoformat(str(started).replace("Z", "+00:00"))
            except ValueError as exc:
                raise InputError(f"The PublishShard event's 'started_at' is not an ISO 8601 time: "
                                 f"{started!r}.") from exc
            if started_at.tzinfo is None:
                started_at = started_at.replace(tzinfo=UTC)
        similar = event.get("similar_items", 0)
        if isinstance(similar, bool) or not isinstance(similar, int) or not 0 <= similar <= 100:
            raise InputError(
                f"The PublishShard event's 'similar_items' must be an int in [0, 100], got {similar!r}.")
        entry = shards.ShardEntry.parse(event["shard"], "The PublishShard event's 'shard'")
        return cls(event["run_id"], entry, event["manifest"], event["transform_output"], event["vectors"],
                   event["reports"], event["top_n"], event["ttl_days"], started_at, similar)


@dataclass(frozen=True)
class ShardInputs:
    """What one users shard is ranked from."""

    user_ids: list[str]
    labels: np.ndarray         # (n, k) k-NN candidates
    user_vectors: np.ndarray   # (n, dim)
    item_vectors: np.ndarray   # (n_items, dim)
    seen: sp.csr_matrix        # (n, n_items)
    popularity: np.ndarray     # (n_items,)
    item_ids: list[str]


def _lines(s3: Any, uri: str) -> list[str]:
    text = runs.get_bytes(s3, uri).decode("utf-8")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def _npy(s3: Any, uri: str) -> np.ndarray:
    try:
        array: np.ndarray = np.load(io.BytesIO(runs.get_bytes(s3, uri)), allow_pickle=False)
    except ValueError as exc:
        raise InputError(f"{uri} is not a numpy .npy file: {exc}.") from exc
    return array


@functools.lru_cache(maxsize=2)
def _item_tables(s3: Any, manifest_uri: str, vectors_uri: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Item ids, popularity and item vectors: the same for every shard of a run, so a warm Lambda
    instance that handles several shards reads them once."""
    manifest = runs.load_manifest(s3, manifest_uri)
    item_ids = _lines(s3, runs.required_file_uri(manifest_uri, manifest, "item_ids", "PublishShard"))
    n_items = len(item_ids)
    counts = manifest.get("counts") or {}
    if "items" in counts and counts["items"] != n_items:
        raise InputError(f"The manifest {manifest_uri} counts {counts['items']} items but its id file "
                         f"lists {n_items}.")
    popularity_uri = runs.required_file_uri(manifest_uri, manifest, "popularity_all", "PublishShard")
    popularity = _npy(s3, popularity_uri).reshape(-1)
    if popularity.size != n_items:
        raise InputError(f"{popularity_uri} has {popularity.size} entries; the manifest has {n_items} items.")
    item_vectors = runs.load_vectors(s3, runs.join_uri(vectors_uri, ITEMS_FILE), n_items, "item",
                                     by_label=True)
    return item_ids, popularity, item_vectors


def load_shard(s3: Any, request: PublishShardRequest) -> ShardInputs:
    entry = request.shard
    item_ids, popularity, item_vectors = _item_tables(s3, request.manifest, request.vectors)
    processed = request.manifest.rsplit("/", 1)[0]
    assert entry.prefix is not None  # ShardEntry.parse requires it for users
    shard_dir = runs.prefix_uri(processed, entry.prefix)
    user_ids = _lines(s3, runs.join_uri(shard_dir, "user_ids.txt"))
    if len(user_ids) != entry.size:
        raise InputError(f"{shard_dir}user_ids.txt lists {len(user_ids)} users; the shard is users "
                         f"[{entry.start}, {entry.stop}) ({entry.size}).")
    seen = runs.load_csr(s3, runs.join_uri(shard_dir, "seen.npz"), (entry.size, len(item_ids)))
    name = vectors.user_shard_name(entry.start, entry.stop)
    bucket, key = runs.parse_s3_uri(runs.join_uri(request.transform_output, name + ".out"))
    labels, _ = topn.read_part(s3, topn.TransformPart(bucket, key, entry.start, entry.stop))
    user_vectors = runs.load_vectors(s3, runs.join_uri(request.vectors, USERS_DIR, name), entry.size, "user")
    return ShardInputs(user_ids, labels, user_vectors, item_vectors, seen, popularity, item_ids)


_NULL = {"NULL": True}


def user_rows(ranked: topn.Ranked, user_ids: list[str], item_attributes: list[dict[str, str]], run_id: str,
              generated_at: str, expires_at: int) -> Iterator[dict[str, Any]]:
    """Low-level DynamoDB items of ``user_ids`` (one per row of ``ranked``, same order).

    ``item_attributes[i]`` is ``{"S": item_id}`` of item index i (built once, shared read-only).
    Topped-up items (no k-NN score) get a NULL score; they always come after the scored ones.
    """
    sk = {"S": f"{tables.VERSION_PREFIX}{run_id}"}
    common = {
        "run_id": {"S": run_id},
        "generated_at": {"S": generated_at},
        tables.TTL_ATTRIBUTE: {"N": str(expires_at)},
    }
    rows = zip(ranked.items.tolist(), ranked.scores.tolist(), strict=True)
    for user_id, (row_items, row_scores) in zip(user_ids, rows, strict=True):
        entries = [
            {"M": {"item_id": item_attributes[item],
                   "score": _NULL if score != score else {"N": tables.score_number(score)}}}
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


def publish_users(request: PublishShardRequest, *, s3: Any, dynamodb: Any, table: str, now: datetime,
                  writer: BatchWriter) -> dict[str, Any]:
    inputs = load_shard(s3, request)
    generated_at, expires_at = versions.begin_version(dynamodb, table, request.run_id, top_n=request.top_n,
                                                      ttl_days=request.ttl_days, now=now)
    ranked = topn.rank_shard(inputs.labels, inputs.user_vectors, inputs.item_vectors, inputs.seen,
                             request.top_n, inputs.popularity)
    item_attributes = [{"S": item_id} for item_id in inputs.item_ids]
    written = writer.write(user_rows(ranked, inputs.user_ids, item_attributes, request.run_id,
                                     generated_at, expires_at))
    return shards.shard_report(request.run_id, request.shard, rows=written, topped_up=ranked.n_topped_up,
                               generated_at=generated_at)


def publish_items(request: PublishShardRequest, *, s3: Any, dynamodb: Any, table: str, now: datetime,
                  writer: BatchWriter) -> dict[str, Any]:
    from recpipe.serving import items

    entry = request.shard
    item_ids, popularity, item_vectors = _item_tables(s3, request.manifest, request.vectors)
    if entry.stop > len(item_ids):
        raise InputError(f"The items shard [{entry.start}, {entry.stop}) is beyond the manifest's "
                         f"{len(item_ids)} items.")
    generated_at, expires_at = versions.begin_version(dynamodb, table, request.run_id, top_n=request.top_n,
                                                      ttl_days=request.ttl_days, now=now)
    result = items.publish_items(item_vectors, item_ids, popularity, start=entry.start, stop=entry.stop,
                                 similar_items=request.similar_items, top_n=request.top_n,
                                 run_id=request.run_id, generated_at=generated_at, expires_at=expires_at,
                                 write=writer.write)
    return shards.shard_report(request.run_id, entry, **result, generated_at=generated_at)


def publish_shard(request: PublishShardRequest, *, s3: Any, dynamodb: Any, table: str,
                  now: datetime | None = None, writer: BatchWriter | None = None) -> dict[str, Any]:
    """Handle one shard entry by kind, then write its report; returns the report."""
    now = request.started_at or now or datetime.now(UTC)
    entry = request.shard
    publish = publish_users if entry.kind == shards.KIND_USERS else publish_items
    report = publish(request, s3=s3, dynamodb=dynamodb, table=table, now=now,
                     writer=writer or BatchWriter(dynamodb, table))
    runs.put_json(s3, shards.report_uri(request.reports, entry.kind, entry.shard), report)
    return report
