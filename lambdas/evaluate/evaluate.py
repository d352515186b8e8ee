"""The Evaluate step: score the "eval" variant's recommendations on the holdout, set the gate's bar.

The eval variant learned from everything but each user's most recent interactions (the holdout,
written by the processing step). Only a seeded random sample of users is scored (the processing
step's ``shards/eval.json``: ``evaluation.sample_users`` users with a relevant held-out item), shard
by shard: per shard its ``seen.npz`` (training part), ``holdout.csv`` and ``user_index.npy``, the
shard's transform output and its user vectors. Each shard is ranked exactly as Publish ranks what
users get (:func:`recpipe.topn.rank_shard`: the k-NN's candidates scored from the stored user and
item vectors, training items removed, popularity top-up from the training part), cut at K = 10
and scored with :mod:`recpipe.metrics`; the metric sums are accumulated, so memory holds one shard
(plus the item vectors and popularity) whatever the user count. ``users_scored`` says how many
users were ranked, ``users_evaluated`` how many of them had a relevant held-out item. The run
report's document (:mod:`recpipe.report.data`, ``runs/<id>/report/evaluation.json``) is built from
the same ranked shards.

The quality gate (a Choice state) publishes when ``ndcg_at_10 >= threshold``, where
``threshold = max(evaluation.min_ndcg_at_10, active NDCG@10 - evaluation.max_regression)``; the
active version's NDCG@10 is read from the results table's pointer item (absent on a first run).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import scipy.sparse as sp

from lambdas.repackage.repackage import user_shards
from recpipe import runs, topn, vectors
from recpipe.lambda_errors import InputError
from recpipe.metrics import ranking_metrics
from recpipe.report.data import ReportAccumulator, report_uri
from recpipe.tables import ACTIVE_KEY

K = 10
HOLDOUT_COLUMNS = ("user_index", "item_index", "relevant")
# Metrics averaged over the evaluated users (coverage is counted over the items instead).
MEAN_METRICS = ("precision_at_10", "recall_at_10", "ndcg_at_10", "map_at_10", "hit_rate_at_10")


def _require(event: dict[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    if key not in event:
        raise InputError(f"The Evaluate event has no '{key}' key.")
    value = event[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise InputError(f"The Evaluate event's '{key}' must be {getattr(kind, '__name__', kind)}, "
                         f"got {value!r}.")
    return value


def _number(raw: object, kind: type[int] | type[float]) -> float | None:
    if not isinstance(raw, str):
        return None
    try:
        return kind(raw)
    except ValueError:
        return None


def parse_holdout(text: str, uri: str, user_index: np.ndarray, n_items: int) -> sp.csr_matrix:
    """One shard's holdout (``user_index,item_index,rating,relevant``, global user indices) as a CSR
    matrix of the relevant pairs, rows in the shard's order (``user_index``: the global index of each
    row, ascending). Errors name the file, the line and the field."""
    reader = csv.DictReader(io.StringIO(text))
    if reader.fieldnames is None or not set(HOLDOUT_COLUMNS) <= set(reader.fieldnames):
        raise InputError(f"{uri}: expected the columns {', '.join(HOLDOUT_COLUMNS)}, got "
                         f"{', '.join(reader.fieldnames or []) or 'none'}.")
    rows: list[int] = []
    items: list[int] = []
    for line, row in enumerate(reader, start=2):
        values: dict[str, float] = {}
        for name, kind in (("user_index", int), ("item_index", int), ("relevant", float)):
            raw = row.get(name)  # None when the line is short
            number = _number(raw, kind)
            if number is None:
                raise InputError(f"{uri}, line {line}: '{name}' is not a number: {raw!r}.")
            values[name] = number
        u, i = int(values["user_index"]), int(values["item_index"])
        position = int(np.searchsorted(user_index, u))
        if position >= user_index.size or user_index[position] != u:
            raise InputError(f"{uri}, line {line}: user_index {u} is not one of this shard's "
                             f"{user_index.size} users.")
        if not 0 <= i < n_items:
            raise InputError(f"{uri}, line {line}: item_index {i} is outside the manifest's {n_items} items.")
        if values["relevant"]:
            rows.append(position)
            items.append(i)
    relevant = sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, items)),
                             shape=(user_index.size, n_items))
    relevant.sum_duplicates()
    return relevant


@dataclass
class MetricSums:
    """Per-shard metrics accumulated as sums, so that no shard's arrays outlive it."""

    n_items: int
    users_scored: int = 0
    users_evaluated: int = 0
    sums: dict[str, float] = field(default_factory=lambda: dict.fromkeys(MEAN_METRICS, 0.0))
    covered: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.covered = np.zeros(self.n_items, dtype=bool)

    def add(self, recommended: np.ndarray, relevant: sp.csr_matrix) -> None:
        self.users_scored += recommended.shape[0]
        shard = ranking_metrics(recommended, relevant, self.n_items, K)
        self.users_evaluated += shard.users_evaluated
        for name in MEAN_METRICS:
            self.sums[name] += getattr(shard, name) * shard.users_evaluated
        top = recommended[np.diff(relevant.indptr) > 0, :K]
        self.covered[top[top >= 0]] = True

    def as_dict(self) -> dict[str, float | int]:
        n = self.users_evaluated
        out: dict[str, float | int] = {name: (self.sums[name] / n if n else 0.0) for name in MEAN_METRICS}
        out["coverage_at_10"] = float(self.covered.sum() / self.n_items) if n and self.n_items else 0.0
        out["users_evaluated"] = n
        out["users_scored"] = self.users_scored
        return out


def active_ndcg(dynamodb: Any, table: str) -> float | None:
    item = dynamodb.get_item(TableName=table, Key={k: {"S": v} for k, v in ACTIVE_KEY.items()},
                             ConsistentRead=True).get("Item")
    if not item or "ndcg_at_10" not in item:
        return None
    return float(item["ndcg_at_10"]["N"])


def _npy(s3: Any, uri: str, rows: int) -> np.ndarray:
    try:
        array = np.load(io.BytesIO(runs.get_bytes(s3, uri)), allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise InputError(f"{uri} is not a .npy file: {exc}.") from exc
    if array.shape != (rows,):
        raise InputError(f"{uri} has shape {array.shape}; expected ({rows},).")
    return array


def evaluate(event: dict[str, Any], *, s3: Any, dynamodb: Any, table: str) -> dict[str, Any]:
    run_id = _require(event, "run_id", str)
    transform_output = _require(event, "transform_output", str)
    vectors_prefix = _require(event, "vectors", str)
    manifest_uri = _require(event, "manifest", str)
    metrics_output = _require(event, "metrics_output", str)
    min_ndcg = float(_require(event, "min_ndcg_at_10", (int, float)))
    max_regression = float(_require(event, "max_regression", (int, float)))
    if event.get("k", K) != K:
        raise InputError(f"The Evaluate event's 'k' must be {K} (the gate is on NDCG@{K}), "
                         f"got {event['k']!r}.")

    manifest = runs.load_manifest(s3, manifest_uri)
    if not (manifest.get("shards") or {}).get("eval"):
        raise InputError(f"The manifest {manifest_uri} has no evaluation sample (shards.eval is null: "
                         "evaluation.holdout_fraction = 0?): there is nothing to evaluate.")
    n_items = int(manifest["counts"]["items"])
    entries, _ = user_shards(s3, manifest_uri, manifest, "eval", "Evaluate")
    popularity = _npy(s3, runs.required_file_uri(manifest_uri, manifest, "popularity_train", "Evaluate"),
                      n_items)
    item_vectors = runs.load_vectors(s3, runs.join_uri(vectors_prefix, "items", "items.pbr"), n_items, "item",
                                     by_label=True)
    bucket, out_key = runs.parse_s3_uri(runs.prefix_uri(transform_output))
    processed = manifest_uri.rsplit("/", 1)[0]

    sums = MetricSums(n_items)
    report = ReportAccumulator(n_items, K)
    for entry in entries:
        assert entry.prefix is not None
        shard_dir = runs.prefix_uri(processed, entry.prefix)
        name = vectors.user_shard_name(entry.start, entry.stop)
        part = topn.TransformPart(bucket, f"{out_key}{name}.out", entry.start, entry.stop)
        labels, _ = topn.read_part(s3, part)
        user_vectors = runs.load_vectors(s3, runs.join_uri(vectors_prefix, "users", name), entry.size, "user")
        seen = runs.load_csr(s3, shard_dir + "seen.npz", (entry.size, n_items))
        user_index = _npy(s3, shard_dir + "user_index.npy", entry.size)
        holdout_uri = shard_dir + "holdout.csv"
        relevant = parse_holdout(runs.get_bytes(s3, holdout_uri).decode("utf-8"), holdout_uri, user_index,
                                 n_items)
        ranked = topn.rank_shard(labels, user_vectors, item_vectors, seen, K, popularity)
        sums.add(ranked.items, relevant)
        report.add(ranked.items, ranked.scores, relevant, seen)

    metrics = sums.as_dict()
    runs.put_json(s3, report_uri(metrics_output), report.result(run_id, popularity))
    active = active_ndcg(dynamodb, table)
    threshold = min_ndcg if active is None else max(min_ndcg, active - max_regression)
    result = {"metrics": metrics, "threshold": threshold, "active_ndcg_at_10": active}
    runs.put_json(s3, metrics_output, {
        **result, "run_id": run_id, "k": K, "min_ndcg_at_10": min_ndcg, "max_regression": max_regression,
        "passed": metrics["ndcg_at_10"] >= threshold,
        "evaluated_at": datetime.now(UTC).isoformat(timespec="seconds"),
    })
    return result
