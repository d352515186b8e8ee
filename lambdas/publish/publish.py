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
the pointer never does. The version and pointer writes are :mod:`recpipe.results.versions`'s.

Transform output -> users: each ``*.out`` file is named after the user shard Repackage wrote
(``users-<start>-<stop>.pbr.out``, :mod:`recpipe.vectors`) and the batch transform keeps the input
order, so line j of that file is user ``start + j``; :func:`recpipe.topn.transform_parts` checks the
files tile all users and :func:`recpipe.topn.read_part` checks each file's line count against its range.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import numpy as np
import scipy.sparse as sp
from aws_lambda_powertools import Logger

from lambdas.publish.writer import BatchWriter
from recpipe import runs, tables, topn
from recpipe.lambda_errors import InputError
from recpipe.results import versions

logger = Logger(service="recpipe-publish")


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
    generated_at, expires_at = versions.begin_version(dynamodb, table, request.run_id, top_n=request.top_n,
                                                      ttl_days=request.ttl_days, now=now)
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
    committed = versions.commit_version(dynamodb, table, request.run_id, users=users_written,
                                        topped_up=topped_up, metrics=request.metrics, now=now)
    return {
        "run_id": request.run_id,
        "users_written": users_written,
        "topped_up_users": topped_up,
        "previous_run_id": committed["previous_run_id"],
    }
