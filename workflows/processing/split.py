"""The split: which interactions are held out for evaluation (each user's most recent), the seen-item
matrices, and the seeded sample of users that evaluation scores."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

# Keeps ceil(0.3 * 10) from becoming 4 (0.3 * 10 = 3.0000000000000004).
HOLDOUT_SLACK = 1e-9


def mark_holdout(users: np.ndarray, n_users: int, fraction: float) -> np.ndarray:
    """Per user, the most recent ``ceil(fraction * n_u)`` interactions (``users`` in (user, time, item)
    order): a bool per interaction."""
    counts = np.bincount(users, minlength=n_users)
    if fraction <= 0:
        return np.zeros(len(users), dtype=bool)
    n_hold = np.ceil(fraction * counts - HOLDOUT_SLACK).astype(np.int64)
    start = np.cumsum(counts) - counts
    position = np.arange(len(users)) - start[users]
    return position >= (counts - n_hold)[users]


def seen_matrix(users: np.ndarray, items: np.ndarray, n_users: int, n_items: int) -> sp.csr_matrix:
    order = np.argsort(users, kind="stable")
    indptr = np.concatenate([[0], np.cumsum(np.bincount(users, minlength=n_users))])
    idx_dtype = np.int32 if n_items < 2**31 and len(users) < 2**31 else np.int64
    matrix = sp.csr_matrix(
        (np.ones(len(users), dtype=np.float32), items[order].astype(idx_dtype), indptr.astype(idx_dtype)),
        shape=(n_users, n_items))
    matrix.sort_indices()
    return matrix


# Random streams of processing.seed: 0-5 are the negatives and shuffles of train/test/full (step).
EVAL_SAMPLE_STREAM = 6


def eval_sample(users: np.ndarray, holdout: np.ndarray, positive: np.ndarray, size: int,
                seed: int) -> np.ndarray:
    """The users evaluation scores: a seeded random sample of ``min(size, eligible)`` users among
    those with at least one relevant (positive) held-out interaction, sorted by user index."""
    eligible = users[holdout & positive]
    if eligible.size:  # users are sorted: keep the first of each run
        eligible = eligible[np.concatenate([[True], eligible[1:] != eligible[:-1]])]
    if size >= eligible.size:
        return eligible.astype(np.int64)
    rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(EVAL_SAMPLE_STREAM + 1)[-1])
    return np.sort(rng.choice(eligible, size=size, replace=False)).astype(np.int64)
