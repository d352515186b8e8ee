"""Negative sampling: per user, distinct items outside the user's seen items (uniform, or partly in
proportion to popularity), and the implicit-mode rounds (the positives again, each time with
fresh negatives)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import scipy.sparse as sp

from workflows.processing.write import Round

# Dense seen-item blocks used by negative sampling hold at most this many bytes.
_BLOCK_BYTES = 32 * 2**20
_MAX_REJECTION_ROUNDS = 32


def _sorted_unique(values: np.ndarray) -> np.ndarray:
    """``np.unique`` by sorting (numpy's hash-based unique is several times slower on int64 keys)."""
    ordered = np.sort(values)
    if ordered.size == 0:
        return ordered
    return ordered[np.concatenate([[True], ordered[1:] != ordered[:-1]])]


def sample_negatives(seen: sp.csr_matrix, wanted: np.ndarray, rng: np.random.Generator,
                     popularity_cdf: np.ndarray | None = None,
                     popularity_share: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Per user u, ``min(wanted[u], unseen_u)`` distinct items outside row u of ``seen``, uniformly.

    Users are processed in blocks whose seen rows fit a dense byte matrix; most users are served by
    vectorised rejection sampling, users who need at least half of their unseen items (or are left
    after a few rounds) by an exact draw from their complement.
    """
    n_users, n_items = seen.shape
    out_users: list[np.ndarray] = []
    out_items: list[np.ndarray] = []
    block = max(1, _BLOCK_BYTES // max(n_items, 1))
    seen_count = np.diff(seen.indptr)
    need_all = np.minimum(np.asarray(wanted, dtype=np.int64), n_items - seen_count)
    for lo in range(0, n_users, block):
        hi = min(lo + block, n_users)
        need = need_all[lo:hi].copy()
        if not need.any():
            continue
        sub = seen[lo:hi]
        mask = np.zeros((hi - lo, n_items), dtype=np.uint8)
        mask[np.repeat(np.arange(hi - lo), np.diff(sub.indptr)), sub.indices] = 1
        available = n_items - seen_count[lo:hi]
        exact = np.flatnonzero((need > 0) & (2 * need > available))
        pending = need.copy()
        pending[exact] = 0
        for _ in range(_MAX_REJECTION_ROUNDS):
            total = int(pending.sum())
            if total == 0:
                break
            r = np.repeat(np.arange(hi - lo), pending)
            c = rng.integers(0, n_items, size=total)
            if popularity_cdf is not None and popularity_share > 0:
                by_pop = np.flatnonzero(rng.random(total) < popularity_share)
                c[by_pop] = np.minimum(np.searchsorted(popularity_cdf, rng.random(len(by_pop)), side="right"),
                                       n_items - 1)
            fresh = mask[r, c] == 0
            keys = _sorted_unique(r[fresh] * n_items + c[fresh])
            r_ok, c_ok = keys // n_items, keys % n_items
            mask[r_ok, c_ok] = 2
            pending -= np.bincount(r_ok, minlength=hi - lo)
            out_users.append(lo + r_ok)
            out_items.append(c_ok)
        leftover = np.flatnonzero(pending > 0)
        for r0 in np.concatenate([exact, leftover]).tolist():
            count = int(need[r0] if pending[r0] == 0 else pending[r0])
            complement = np.flatnonzero(mask[r0] == 0)
            chosen = rng.choice(complement, size=count, replace=False)
            out_users.append(np.full(count, lo + r0, dtype=np.int64))
            out_items.append(chosen.astype(np.int64))
    if not out_users:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    return np.concatenate(out_users).astype(np.int64), np.concatenate(out_items).astype(np.int64)


def _negative_anchors(pos_users: np.ndarray, pos_anchors: np.ndarray, neg_users: np.ndarray,
                      n_users: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Spread each user's negatives over that user's positives at random, evenly: ``(order,
    anchors)`` where ``order`` groups the negatives by user and ``anchors[k]`` is the anchor of
    negative ``order[k]`` (the position of the positive whose context it shares). The negatives
    come out of the sampler sorted by item: without the shuffle, early positives would always get
    low item indices, a pattern the model would learn."""
    shuffled = rng.permutation(len(neg_users))
    order = shuffled[np.argsort(neg_users[shuffled], kind="stable")]
    by_user = neg_users[order]
    n_pos = np.bincount(pos_users, minlength=n_users)
    n_neg = np.bincount(by_user, minlength=n_users)
    pos_start = np.cumsum(n_pos) - n_pos
    k = np.arange(len(by_user)) - (np.cumsum(n_neg) - n_neg)[by_user]
    return order, pos_anchors[pos_start[by_user] + k % n_pos[by_user]]


def negatives_per_round(exclude: sp.csr_matrix, wanted: np.ndarray) -> int:
    """How many negatives :func:`sample_negatives` returns for ``wanted`` (users run out of unseen items)."""
    n_items = exclude.shape[1]
    return int(np.minimum(np.asarray(wanted, dtype=np.int64), n_items - np.diff(exclude.indptr)).sum())


def implicit_rounds(pos_users: np.ndarray, pos_items: np.ndarray, pos_anchors: np.ndarray | None,
                     exclude: sp.csr_matrix, per_positive: int, n_rounds: int, rng: np.random.Generator,
                     counts: dict[str, int], name: str, popularity_cdf: np.ndarray | None = None,
                     popularity_share: float = 0.0) -> Iterator[Round]:
    """``n_rounds`` times the positives, each time with freshly sampled negatives (the built-in FM
    cannot resample per epoch; several rounds in one file come close). Positives are ordered by
    user (the prepared order), which :func:`_negative_anchors` relies on."""
    n_users = exclude.shape[0]
    wanted = per_positive * np.bincount(pos_users, minlength=n_users)
    counts[f"{name}_positives"], counts[f"{name}_negatives"] = len(pos_users), 0
    for _ in range(n_rounds):
        neg_users, neg_items = sample_negatives(exclude, wanted, rng, popularity_cdf, popularity_share)
        anchors = None
        if pos_anchors is not None:
            order, neg_anchors = _negative_anchors(pos_users, pos_anchors, neg_users, n_users, rng)
            neg_users, neg_items = neg_users[order], neg_items[order]
            anchors = np.concatenate([pos_anchors, neg_anchors])
        counts[f"{name}_negatives"] += len(neg_users)
        labels = np.concatenate([np.ones(len(pos_users), np.float32), np.zeros(len(neg_users), np.float32)])
        yield Round(np.concatenate([pos_users, neg_users]), np.concatenate([pos_items, neg_items]), labels,
                    anchors)
