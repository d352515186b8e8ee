"""What Evaluate records for the run report, so an AWS run's report needs no recomputation.

:class:`ReportAccumulator` (shard by shard) or :func:`evaluation_report` (one block) summarises the
eval variant's ranked lists (ranked exactly as Publish ranks, :mod:`recpipe.topn`) on the evaluated
users:

* ``ndcg_by_activity``: NDCG@10 per bucket of training interactions per user (the protocol of
  :func:`recpipe.metrics.ranking_metrics`, applied to each bucket's users);
* ``items``: per item index, how many users interacted with it (``popularity``: training part) and
  how many of the lists recommend it (``recommended``): the long tail against coverage;
* ``scores``: a histogram of the lists' scores (topped-up items have no score and are counted apart).

The result is small JSON (two ints per item, a few dozen bins) written to
``runs/<run_id>/report/evaluation.json`` (:data:`REPORT_KEY`). numpy/scipy only: the Evaluate
Lambda ships this module.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import scipy.sparse as sp

from recpipe.metrics import ranking_metrics

REPORT_KEY = "report/evaluation.json"  # under runs/<run_id>/
SCHEMA_VERSION = 1
# Lower edges of the activity buckets (training interactions per user); the last is open-ended.
ACTIVITY_EDGES = (1, 6, 11, 21, 51, 101, 201, 501)
SCORE_BINS = 40


def report_uri(metrics_output: str) -> str:
    """Where Evaluate writes the report document: ``.../runs/<id>/report/evaluation.json`` beside the
    run's ``metrics.json`` (``metrics_output``)."""
    return f"{metrics_output.rsplit('/', 1)[0]}/{REPORT_KEY}"


def bucket_labels(edges: tuple[int, ...] = ACTIVITY_EDGES) -> list[str]:
    """``["1-5", "6-10", ..., "501+"]``."""
    labels = [f"{lo}-{hi - 1}" if hi - 1 > lo else str(lo) for lo, hi in itertools.pairwise(edges)]
    return [*labels, f"{edges[-1]}+"]


def ndcg_by_activity(recommended: np.ndarray, relevant: sp.csr_matrix, activity: np.ndarray,
                     n_items: int, k: int = 10) -> list[dict[str, Any]]:
    """``[{"bucket", "min_interactions", "users", "ndcg_at_10"}]`` per activity bucket (users with no
    training interaction go to the first bucket)."""
    activity = np.asarray(activity).reshape(-1)
    if activity.shape[0] != relevant.shape[0]:
        raise ValueError(f"activity has {activity.shape[0]} users but relevant has {relevant.shape[0]}.")
    bucket = np.clip(np.searchsorted(ACTIVITY_EDGES, activity, side="right") - 1, 0, None)
    relevant = sp.csr_matrix(relevant)
    out = []
    for index, label in enumerate(bucket_labels()):
        keep = sp.diags((bucket == index).astype(np.float32))
        metrics = ranking_metrics(recommended, sp.csr_matrix(keep @ relevant), n_items, k)
        out.append({"bucket": label, "min_interactions": ACTIVITY_EDGES[index],
                    "users": metrics.users_evaluated,
                    "ndcg_at_10": metrics.ndcg_at_10 if metrics.users_evaluated else None})
    return out


def score_histogram(scores: np.ndarray, bins: int = SCORE_BINS) -> dict[str, Any]:
    """``{"edges", "counts", "unscored"}`` of the finite scores (NaN = a topped-up item)."""
    values = np.asarray(scores, dtype=np.float64).ravel()
    finite = values[np.isfinite(values)]
    unscored = int(np.isnan(values).sum())
    if finite.size == 0:
        return {"edges": [], "counts": [], "unscored": unscored}
    lo, hi = float(finite.min()), float(finite.max())
    if hi <= lo:
        hi = lo + 1.0
    counts, edges = np.histogram(finite, bins=bins, range=(lo, hi))
    return {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts], "unscored": unscored}


class ReportAccumulator:
    """The report document built shard by shard (Evaluate streams its users): ``add`` each shard's
    ranked lists, then ``result``. Memory: per bucket two numbers, per item one count, and the
    lists' scores (float32; 2 MB for the default 50,000 evaluated users at k = 10)."""

    def __init__(self, n_items: int, k: int = 10) -> None:
        self.n_items = n_items
        self.k = k
        self.users = 0
        self.recommended = np.zeros(n_items, dtype=np.int64)
        self.popularity = np.zeros(n_items, dtype=np.int64)
        self.bucket_users = np.zeros(len(ACTIVITY_EDGES), dtype=np.int64)
        self.bucket_ndcg_sums = np.zeros(len(ACTIVITY_EDGES), dtype=np.float64)
        self._scores: list[np.ndarray] = []

    def add(self, recommended: np.ndarray, scores: np.ndarray, relevant: sp.csr_matrix,
            seen_train: sp.csr_matrix) -> None:
        """One shard: ``recommended`` / ``scores`` ``(users, >= k)`` item indices (``-1`` = none) and
        scores (NaN = topped up), best first; ``relevant``: the users' held-out relevant items;
        ``seen_train``: their training interactions (``users x n_items``)."""
        recommended, scores = np.asarray(recommended), np.asarray(scores)
        if recommended.shape != scores.shape:
            raise ValueError(f"recommended {recommended.shape} and scores {scores.shape} differ in shape.")
        seen = sp.csr_matrix(seen_train)
        if seen.shape[1] != self.n_items or seen.shape[0] != recommended.shape[0]:
            raise ValueError(f"seen_train has shape {seen.shape}; expected ({recommended.shape[0]}, "
                             f"{self.n_items}).")
        valid = recommended >= 0
        self.users += int(recommended.shape[0])
        self.recommended += np.bincount(recommended[valid].ravel(), minlength=self.n_items)
        self.popularity += np.asarray((seen > 0).sum(axis=0)).reshape(-1)
        self._scores.append(scores[valid].astype(np.float32))
        for index, bucket in enumerate(ndcg_by_activity(recommended, relevant, np.diff(seen.indptr),
                                                        self.n_items, self.k)):
            self.bucket_users[index] += bucket["users"]
            self.bucket_ndcg_sums[index] += (bucket["ndcg_at_10"] or 0.0) * bucket["users"]

    def result(self, run_id: str, popularity: np.ndarray | None = None) -> dict[str, Any]:
        """The document; ``popularity``: users per item in the training part (the processing
        output's ``popularity_train``; default: counted over the added users)."""
        counts = self.popularity if popularity is None else np.asarray(popularity).reshape(-1)
        if counts.shape[0] != self.n_items:
            raise ValueError(f"popularity has {counts.shape[0]} items, expected {self.n_items}.")
        buckets = []
        for i, label in enumerate(bucket_labels()):
            users = int(self.bucket_users[i])
            buckets.append({"bucket": label, "min_interactions": ACTIVITY_EDGES[i], "users": users,
                            "ndcg_at_10": float(self.bucket_ndcg_sums[i] / users) if users else None})
        scores = np.concatenate(self._scores) if self._scores else np.empty(0, dtype=np.float32)
        return {
            "schema_version": SCHEMA_VERSION,
            "run_id": run_id,
            "k": self.k,
            "users": self.users,
            "ndcg_by_activity": buckets,
            "items": {"popularity": [int(v) for v in counts],
                      "recommended": [int(v) for v in self.recommended]},
            "scores": score_histogram(scores),
        }


def evaluation_report(recommended: np.ndarray, scores: np.ndarray, relevant: sp.csr_matrix,
                      seen_train: sp.csr_matrix, *, run_id: str, popularity: np.ndarray | None = None,
                      k: int = 10) -> dict[str, Any]:
    """The report document of one block of users (see :class:`ReportAccumulator`)."""
    accumulator = ReportAccumulator(sp.csr_matrix(seen_train).shape[1], k)
    accumulator.add(recommended, scores, relevant, seen_train)
    return accumulator.result(run_id, popularity)
