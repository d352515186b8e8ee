"""The ranking metrics against a per-user loop that follows the protocol's words literally."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp

from recpipe.metrics import ranking_metrics


def reference(
    recommended: np.ndarray, relevant_sets: list[set[int]], n_items: int, k: int
) -> dict[str, float]:
    p = r = n = m = h = 0.0
    users = 0
    seen_items: set[int] = set()
    for recs, rel in zip(recommended, relevant_sets, strict=True):
        if not rel:
            continue
        users += 1
        top = [int(i) for i in recs[:k]]  # -1 = an empty slot: it keeps its rank
        seen_items.update(i for i in top if i >= 0)
        hit_ranks = [rank for rank, item in enumerate(top, start=1) if item in rel]
        p += len(hit_ranks) / k
        r += len(hit_ranks) / len(rel)
        dcg = sum(1 / math.log2(rank + 1) for rank in hit_ranks)
        idcg = sum(1 / math.log2(rank + 1) for rank in range(1, min(len(rel), k) + 1))
        n += dcg / idcg
        m += sum((i + 1) / rank for i, rank in enumerate(hit_ranks)) / min(len(rel), k)
        h += 1.0 if hit_ranks else 0.0
    return {"precision_at_10": p / users, "recall_at_10": r / users, "ndcg_at_10": n / users,
            "map_at_10": m / users, "hit_rate_at_10": h / users, "coverage_at_10": len(seen_items) / n_items,
            "users_evaluated": users}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_reference_on_random_data(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n_users, n_items, k = 50, 30, 10
    recommended = np.stack([rng.permutation(n_items)[:k + 2] for _ in range(n_users)])
    recommended[rng.random((n_users, k + 2)) < 0.05] = -1
    relevant_sets = [set(rng.choice(n_items, size=rng.integers(0, 6), replace=False).tolist())
                     for _ in range(n_users)]
    rows = [u for u, s in enumerate(relevant_sets) for _ in s]
    cols = [i for s in relevant_sets for i in s]
    relevant = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n_users, n_items))

    got = ranking_metrics(recommended, relevant, n_items, k=k).as_dict()
    want = reference(recommended, relevant_sets, n_items, k)
    assert got == pytest.approx(want)


def test_known_answer() -> None:
    # One user, relevant {0, 1}; recommended [0, 5, 1, ...]: hits at ranks 1 and 3.
    recommended = np.array([[0, 5, 1, 6, 7, 8, 9, 2, 3, 4]])
    relevant = sp.csr_matrix(np.array([[1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]]))
    got = ranking_metrics(recommended, relevant, n_items=12, k=10)
    assert got.precision_at_10 == pytest.approx(0.2)
    assert got.recall_at_10 == pytest.approx(1.0)
    assert got.ndcg_at_10 == pytest.approx((1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3)))
    assert got.map_at_10 == pytest.approx((1 + 2 / 3) / 2)
    assert got.hit_rate_at_10 == 1.0
    assert got.coverage_at_10 == pytest.approx(10 / 12)


def test_users_without_relevant_items_are_ignored() -> None:
    recommended = np.tile(np.arange(10), (2, 1))
    relevant = sp.csr_matrix((2, 10))
    assert ranking_metrics(recommended, relevant, 10).users_evaluated == 0


def test_shape_errors_are_clear() -> None:
    with pytest.raises(ValueError, match="need at least k=10"):
        ranking_metrics(np.zeros((1, 5), dtype=int), sp.csr_matrix((1, 10)), 10)
