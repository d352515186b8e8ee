"""The sequence context (a user's recent interactions as a block of the feature row) and the volume
budget (``processing.max_nonzeros``) that decides how many rounds and how long a context are written."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp


@dataclass(frozen=True)
class SequenceContext:
    """The recent-interactions block of a user's feature row (``processing.context_items``).

    ``items`` holds one set's interactions in (user, time, item) order, ``indptr`` each user's
    range in it. The context of position ``a`` (exclusive: what the user did *before* interaction
    ``a``) is the ``length`` interactions just before it, the j-th most recent (j = 0, 1, ...)
    weighted ``decay**j``, the row scaled by ``1 / sqrt(sum of its weights)``, in the columns
    ``offset + item``. Training rows take the context before their own interaction (a sequence
    model in FM form, as FPMC); a user's inference row takes the context at the end of the set
    (``anchor = indptr[u + 1]``), i.e. the most recent interactions.
    """

    items: np.ndarray
    indptr: np.ndarray
    length: int
    decay: float
    offset: int
    dim: int

    @classmethod
    def of(cls, users: np.ndarray, items: np.ndarray, n_users: int, *, length: int, decay: float,
           offset: int, dim: int) -> SequenceContext:
        indptr = np.concatenate([[0], np.cumsum(np.bincount(users, minlength=n_users))]).astype(np.int64)
        return cls(items.astype(np.int64), indptr, length, decay, offset, dim)

    def rows(self, users: np.ndarray, anchors: np.ndarray) -> sp.csr_matrix:
        """CSR ``(len(users), dim)``: the context of each (user, anchor position)."""
        users = np.asarray(users, dtype=np.int64)
        anchors = np.asarray(anchors, dtype=np.int64)
        count = np.minimum(anchors - self.indptr[users], self.length)
        indptr = np.concatenate([[0], np.cumsum(count)])
        # One (row, width) key block, key = item << bits | age, padded with the largest key: a
        # row-wise np.sort (SIMD) puts each row's entries in column order (ties, impossible for
        # distinct items, by age) and the padding last. 5-10x cheaper than csr sort_indices.
        width = max(self.length, 1)
        bits = max((width - 1).bit_length(), 1)
        small = len(self.items) == 0 or int(self.items.max()) < 1 << (31 - bits)
        key_type = np.int32 if small else np.int64
        ages = np.arange(width, dtype=np.int64)
        valid = ages < count[:, None]
        pos = anchors[:, None] - 1 - ages
        np.maximum(pos, 0, out=pos)
        source = self.items if len(self.items) else np.zeros(1, dtype=np.int64)  # no row then has a context
        keys = source.astype(key_type)[pos]
        del pos
        np.left_shift(keys, bits, out=keys)
        np.bitwise_or(keys, ages.astype(key_type), out=keys)
        keys[~valid] = np.iinfo(key_type).max
        keys.sort(axis=1)
        # Value of (count c, age j) = weights[j] / sqrt(norm[c]), as one table lookup (same floats).
        weights = self.decay ** np.arange(width, dtype=np.float64)
        norm = np.concatenate([[1.0], np.cumsum(weights)])  # norm[c] = sum of the first c weights
        table = np.zeros((width + 1, 1 << bits), dtype=np.float32)
        table[:, :width] = (weights[None, :] / np.sqrt(norm[:, None])).astype(np.float32)
        flat = keys[valid]
        del keys
        cols = self.offset + (flat >> bits)
        vals = table[np.repeat(count, count), flat & ((1 << bits) - 1)]
        dtype = np.int32 if self.dim < 2**31 else np.int64
        matrix = sp.csr_matrix((vals, cols.astype(dtype), indptr), shape=(len(users), self.dim))
        matrix.has_sorted_indices = True
        if self.decay == 0.0:
            matrix.eliminate_zeros()
        return matrix

    def user_rows(self, base: sp.csr_matrix) -> sp.csr_matrix:
        """Inference rows: ``base`` (id + side features) plus each user's most recent context."""
        n_users = base.shape[0]
        matrix = (base + self.rows(np.arange(n_users), self.indptr[1:])).tocsr().astype(np.float32)
        matrix.sort_indices()
        return matrix


@dataclass(frozen=True)
class Volume:
    """What the step writes under ``processing.max_nonzeros``: rounds, context length and the
    estimated non-zeros of the largest set (``full``) with them."""

    negative_rounds: int
    context_items: int
    nonzeros: int


def fit_budget(users: np.ndarray, items: np.ndarray, rows: np.ndarray, n_users: int, user_nnz: np.ndarray,
               item_nnz: np.ndarray, per_positive: int, rounds: int, context_items: int,
               max_nonzeros: int) -> Volume:
    """Largest (rounds, context length) whose ``full`` set stays within ``max_nonzeros`` non-zeros
    (0 = no bound): rounds go down first (to 1), then the context length (to 0).

    ``users``/``items`` are all interactions in (user, time, item) order, ``rows`` the indices (or
    mask) of those that become training rows (the positives in implicit mode),
    ``user_nnz``/``item_nnz`` the non-zeros of each user's and item's id + side-feature
    part. The estimate counts ``per_positive`` negatives per
    row (fewer when a user runs out of unseen items) and each negative with its positive's context
    length; it is exact for the positives."""
    u, i = users[rows], items[rows]
    n_neg = per_positive * len(u)
    base = float(user_nnz[u].sum()) * (1 + per_positive) + float(item_nnz[i].sum()) \
        + n_neg * float(item_nnz.mean())
    counts = np.bincount(users, minlength=n_users)
    start = np.cumsum(counts) - counts
    before = (np.arange(len(users)) - start[users])[rows]  # interactions before each row
    # context[L] = sum over rows of min(before, L), for L = 0 .. context_items
    hist = np.bincount(np.minimum(before, context_items), minlength=context_items + 1)
    at_least = len(before) - np.concatenate([[0], np.cumsum(hist)[:-1]])  # rows with before >= L
    context = np.concatenate([[0], np.cumsum(at_least[1:])]).astype(np.float64) * (1 + per_positive)

    def total(r: int, length: int) -> int:
        return int(r * (base + context[length]))

    if max_nonzeros <= 0:
        return Volume(rounds, context_items, total(rounds, context_items))
    while rounds > 1 and total(rounds, context_items) > max_nonzeros:
        rounds -= 1
    fits = np.flatnonzero(base + context <= max_nonzeros)
    length = int(fits[-1]) if fits.size else 0
    return Volume(rounds, min(length, context_items), total(rounds, min(length, context_items)))
