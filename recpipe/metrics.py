"""Top-K ranking metrics, with exactly the protocol of the Evaluate state and ``bench/quality.py``.

For every user with at least one relevant held-out item (and only those):

- Precision@K = hits / K; Recall@K = hits / |rel|; HitRate@K = 1 if hits > 0;
- NDCG@K: binary gain, DCG = sum over hits of 1 / log2(rank + 1) (rank 1-based), ideal DCG over
  min(|rel|, K) hits;
- MAP@K: AP = sum over hits of precision@rank, divided by min(|rel|, K);

averaged over those users. Coverage@K = distinct items recommended to those users / catalogue size.

numpy only (the Evaluate Lambda ships it).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import scipy.sparse as sp


@dataclass(frozen=True)
class RankingMetrics:
    precision_at_10: float
    recall_at_10: float
    ndcg_at_10: float
    map_at_10: float
    hit_rate_at_10: float
    coverage_at_10: float
    users_evaluated: int

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def ranking_metrics(recommended: np.ndarray, relevant: sp.csr_matrix | sp.csr_array, n_items: int,
                    k: int = 10) -> RankingMetrics:
    """Score ``recommended`` (``[n_users, >=k]`` item indices, best first, ``-1`` = no item) against
    ``relevant`` (``[n_users, n_items]``, non-zero = a relevant held-out item).

    Field names say ``_at_10`` because the pipeline's gate and reports use K = 10; ``k`` exists for
    tests and may differ.
    """
    recommended = np.asarray(recommended)
    relevant = sp.csr_matrix(relevant)
    if recommended.ndim != 2 or recommended.shape[0] != relevant.shape[0]:
        raise ValueError(f"recommended has shape {recommended.shape}; expected ({relevant.shape[0]}, >= {k})")
    if recommended.shape[1] < k:
        raise ValueError(f"recommended has {recommended.shape[1]} columns; need at least k={k}")
    n_rel = np.diff(relevant.indptr)
    users = np.flatnonzero(n_rel > 0)
    if users.size == 0:
        return RankingMetrics(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0)

    top = recommended[users, :k].astype(np.int64)
    rel = relevant[users]
    rel.data = np.ones_like(rel.data, dtype=np.float32)
    # hits[u, r] = 1 when the item at rank r is relevant for user u (padding -1 never is).
    valid = top >= 0
    safe = np.where(valid, top, 0)
    rows = np.repeat(np.arange(users.size), k)
    hits = np.asarray(rel[rows, safe.ravel()]).reshape(users.size, k) * valid

    n_rel_u = n_rel[users].astype(np.float64)
    n_hits = hits.sum(axis=1)
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = (hits * discounts).sum(axis=1)
    ideal_len = np.minimum(n_rel_u, k).astype(np.int64)
    idcg = np.cumsum(discounts)[ideal_len - 1]
    precision_at_rank = np.cumsum(hits, axis=1) / np.arange(1, k + 1)
    ap = (precision_at_rank * hits).sum(axis=1) / np.minimum(n_rel_u, k)

    distinct = np.unique(top[valid]).size
    return RankingMetrics(
        precision_at_10=float(np.mean(n_hits / k)),
        recall_at_10=float(np.mean(n_hits / n_rel_u)),
        ndcg_at_10=float(np.mean(dcg / idcg)),
        map_at_10=float(np.mean(ap)),
        hit_rate_at_10=float(np.mean(n_hits > 0)),
        coverage_at_10=float(distinct / n_items) if n_items else 0.0,
        users_evaluated=int(users.size),
    )
