"""What Evaluate records for the report: NDCG by activity bucket, item counts, score histogram."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp

from recpipe.report import data


def _ndcg(recommended: list[int], relevant: set[int], k: int) -> float:
    dcg = sum(1 / math.log2(rank + 2) for rank, item in enumerate(recommended[:k]) if item in relevant)
    ideal = sum(1 / math.log2(rank + 2) for rank in range(min(len(relevant), k)))
    return dcg / ideal


def test_bucket_labels() -> None:
    assert data.bucket_labels() == ["1-5", "6-10", "11-20", "21-50", "51-100", "101-200", "201-500", "501+"]
    assert data.bucket_labels((1, 2, 4)) == ["1", "2-3", "4+"]


def test_ndcg_by_activity_matches_a_per_user_reference() -> None:
    rng = np.random.default_rng(5)
    n_users, n_items, k = 60, 30, 10
    recommended = np.array([rng.permutation(n_items)[:k] for _ in range(n_users)])
    relevant_sets = [set(rng.choice(n_items, size=rng.integers(0, 4), replace=False).tolist())
                     for _ in range(n_users)]
    rows = [u for u, s in enumerate(relevant_sets) for _ in s]
    cols = [i for s in relevant_sets for i in s]
    relevant = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n_users, n_items))
    activity = rng.choice([0, 3, 7, 15, 30, 600], size=n_users)
    found = data.ndcg_by_activity(recommended, relevant, activity, n_items, k)
    labels = data.bucket_labels()
    assert [b["bucket"] for b in found] == labels
    for index, bucket in enumerate(found):
        lo = data.ACTIVITY_EDGES[index]
        hi = data.ACTIVITY_EDGES[index + 1] if index + 1 < len(data.ACTIVITY_EDGES) else np.inf
        users = [u for u in range(n_users) if relevant_sets[u] and (lo <= max(activity[u], 1) < hi)]
        assert bucket["users"] == len(users), bucket
        if users:
            expected = np.mean([_ndcg(recommended[u].tolist(), relevant_sets[u], k) for u in users])
            assert bucket["ndcg_at_10"] == pytest.approx(expected)
        else:
            assert bucket["ndcg_at_10"] is None


def test_evaluation_report_counts_items_and_scores() -> None:
    recommended = np.array([[0, 1, -1], [1, 2, 0]])
    scores = np.array([[0.9, 0.5, np.nan], [0.7, np.nan, 0.1]])
    relevant = sp.csr_matrix(np.array([[0, 1, 0, 0], [0, 0, 0, 1]]))
    seen = sp.csr_matrix(np.array([[0, 0, 1, 1], [1, 0, 0, 1]]))
    report = data.evaluation_report(recommended, scores, relevant, seen, run_id="r", k=2)
    assert report["items"] == {"popularity": [1, 0, 1, 2], "recommended": [2, 2, 1, 0]}
    assert report["scores"]["unscored"] == 1 and sum(report["scores"]["counts"]) == 4
    edges = report["scores"]["edges"]
    assert edges[0] == pytest.approx(0.1) and edges[-1] == pytest.approx(0.9)
    assert report["users"] == 2 and report["run_id"] == "r"
    assert data.evaluation_report(recommended, scores, relevant, seen, run_id="r", k=2,
                                  popularity=np.array([5, 4, 3, 2]))["items"]["popularity"] == [5, 4, 3, 2]
    with pytest.raises(ValueError, match="differ in shape"):
        data.evaluation_report(recommended, scores[:, :2], relevant, seen, run_id="r")


def test_histogram_of_equal_scores_and_of_nothing() -> None:
    assert data.score_histogram(np.array([2.0, 2.0]))["counts"][0] == 2
    assert data.score_histogram(np.array([np.nan])) == {"edges": [], "counts": [], "unscored": 1}


def test_the_report_lives_beside_the_runs_metrics() -> None:
    assert data.report_uri("s3://b/runs/r1/metrics.json") == "s3://b/runs/r1/report/evaluation.json"


def test_shard_by_shard_equals_all_at_once() -> None:
    rng = np.random.default_rng(9)
    n_users, n_items = 50, 25
    recommended = np.array([rng.permutation(n_items)[:10] for _ in range(n_users)])
    recommended[3, 7:] = -1
    scores = rng.normal(size=(n_users, 10))
    scores[4, 8:] = np.nan
    relevant = sp.random(n_users, n_items, density=0.08, format="csr", random_state=4)
    seen = sp.random(n_users, n_items, density=0.4, format="csr", random_state=5)
    whole = data.evaluation_report(recommended, scores, relevant, seen, run_id="r")
    accumulator = data.ReportAccumulator(n_items)
    for lo, hi in ((0, 17), (17, 40), (40, 50)):
        accumulator.add(recommended[lo:hi], scores[lo:hi], relevant[lo:hi], seen[lo:hi])
    parts = accumulator.result("r")
    assert parts["items"] == whole["items"] and parts["scores"] == whole["scores"] and parts["users"] == 50
    for a, b in zip(parts["ndcg_by_activity"], whole["ndcg_by_activity"], strict=True):
        assert a["users"] == b["users"]
        assert a["ndcg_at_10"] == pytest.approx(b["ndcg_at_10"]) if b["users"] else a["ndcg_at_10"] is None
