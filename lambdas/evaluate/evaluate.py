"""The Evaluate step: score the "eval" variant's recommendations on the holdout, set the gate's bar.

The eval variant learned from everything but each user's most recent interactions (the holdout,
written by the processing step). Its batch-transform output is ranked exactly as Publish ranks
what users get (:func:`recpipe.topn.rank`: sorted by score, training items removed, popularity
top-up from the training part), cut at K = 10 and scored with :mod:`recpipe.metrics`.

The quality gate (a Choice state) publishes when ``ndcg_at_10 >= threshold``, where
``threshold = max(evaluation.min_ndcg_at_10, active NDCG@10 - evaluation.max_regression)``; the
active version's NDCG@10 is read from the results table's pointer item (absent on a first run).

Why a Lambda and not a processing job: it reads the same transform output and holdout that
Publish reads (tens of MB for a million users), needs no container start-up (minutes on
SageMaker), and reuses Publish's ranking code, so evaluation and serving cannot drift apart.
"""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime
from typing import Any

import numpy as np
import scipy.sparse as sp

from recpipe import runs, topn
from recpipe.lambda_errors import InputError
from recpipe.metrics import ranking_metrics
from recpipe.tables import ACTIVE_KEY

K = 10


def _require(event: dict[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    if key not in event:
        raise InputError(f"The Evaluate event has no '{key}' key.")
    value = event[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise InputError(f"The Evaluate event's '{key}' must be {getattr(kind, '__name__', kind)}, "
                         f"got {value!r}.")
    return value


def load_relevant(s3: Any, uri: str, n_users: int, n_items: int) -> sp.csr_matrix:
    """The holdout's relevant (user, item) pairs as a CSR matrix; errors name the row."""
    text = runs.get_bytes(s3, uri).decode("utf-8")
    reader = csv.DictReader(io.StringIO(text))
    need = {"user_index", "item_index", "relevant"}
    if reader.fieldnames is None or not need <= set(reader.fieldnames):
        raise InputError(f"{uri}: expected columns {sorted(need)}, got {reader.fieldnames}.")
    users: list[int] = []
    items: list[int] = []
    for line, row in enumerate(reader, start=2):
        try:
            u, i, rel = int(row["user_index"]), int(row["item_index"]), float(row["relevant"])
        except (TypeError, ValueError) as exc:
            raise InputError(f"{uri}, line {line}: not a number ({exc}).") from exc
        if not (0 <= u < n_users and 0 <= i < n_items):
            raise InputError(f"{uri}, line {line}: user {u} / item {i} outside the manifest's "
                             f"{n_users} users and {n_items} items.")
        if rel:
            users.append(u)
            items.append(i)
    data = np.ones(len(users), dtype=np.float32)
    relevant = sp.csr_matrix((data, (users, items)), shape=(n_users, n_items))
    relevant.sum_duplicates()
    return relevant


def recommend_top_k(s3: Any, transform_output: str, seen: sp.csr_matrix, k: int) -> np.ndarray:
    """Every user's top-k item indices from the transform output (``-1`` where nothing is left)."""
    n_users = seen.shape[0]
    popularity = np.asarray(seen.sum(axis=0)).ravel()
    out = np.full((n_users, k), -1, dtype=np.int64)
    for part in topn.transform_parts(s3, transform_output, n_users):
        labels, distances = topn.read_part(s3, part)
        ranked = topn.rank(labels, distances, seen[part.start:part.stop], k, popularity)
        out[part.start:part.stop] = ranked.items
    return out


def active_ndcg(dynamodb: Any, table: str) -> float | None:
    item = dynamodb.get_item(TableName=table, Key={k: {"S": v} for k, v in ACTIVE_KEY.items()},
                             ConsistentRead=True).get("Item")
    if not item or "ndcg_at_10" not in item:
        return None
    return float(item["ndcg_at_10"]["N"])


def evaluate(event: dict[str, Any], *, s3: Any, dynamodb: Any, table: str) -> dict[str, Any]:
    run_id = _require(event, "run_id", str)
    transform_output = _require(event, "transform_output", str)
    manifest_uri = _require(event, "manifest", str)
    metrics_output = _require(event, "metrics_output", str)
    min_ndcg = float(_require(event, "min_ndcg_at_10", (int, float)))
    max_regression = float(_require(event, "max_regression", (int, float)))
    if event.get("k", K) != K:
        raise InputError(f"The Evaluate event's 'k' must be {K} (the gate is on NDCG@{K}), "
                         f"got {event['k']!r}.")

    manifest = runs.load_manifest(s3, manifest_uri)
    n_users, n_items = int(manifest["counts"]["users"]), int(manifest["counts"]["items"])
    holdout_uri = runs.manifest_file_uri(manifest_uri, manifest, "holdout")
    if holdout_uri is None:
        raise InputError(f"The manifest {manifest_uri} has no holdout (evaluation.holdout_fraction = 0?): "
                         "there is nothing to evaluate.")
    seen_uri = runs.required_file_uri(manifest_uri, manifest, "seen_train", "Evaluate")
    seen = runs.load_csr(s3, seen_uri, (n_users, n_items))
    relevant = load_relevant(s3, holdout_uri, n_users, n_items)

    recommended = recommend_top_k(s3, transform_output, seen, K)
    metrics = ranking_metrics(recommended, relevant, n_items, K).as_dict()
    active = active_ndcg(dynamodb, table)
    threshold = min_ndcg if active is None else max(min_ndcg, active - max_regression)
    result = {"metrics": metrics, "threshold": threshold, "active_ndcg_at_10": active}
    runs.put_json(s3, metrics_output, {
        **result, "run_id": run_id, "k": K, "min_ndcg_at_10": min_ndcg, "max_regression": max_regression,
        "passed": metrics["ndcg_at_10"] >= threshold,
        "evaluated_at": datetime.now(UTC).isoformat(timespec="seconds"),
    })
    return result
