"""Factorization Machines -> k-NN: the vectors whose inner product ranks items as the FM does.

An FM scores a feature row ``x`` as

    y(x) = w0 + w.x + sum_{j<l} <v_j, v_l> x_j x_l
         = w0 + w.x + 1/2 sum_f [ (V^T x)_f^2 - sum_j V_jf^2 x_j^2 ].

A (user, item) row is ``x = x_u + x_i`` with the user's and the item's columns disjoint (one-hot
ids first, then side features: ``manifest.layout``). Expanding the square splits the score into

    y = [w0 + w.x_u + P(x_u)]  +  [w.x_i + P(x_i)]  +  (V^T x_u).(V^T x_i)
        user-only terms            b_i                  cross term

where ``P(x) = 1/2 (|V^T x|^2 - sum_j |v_j|^2 x_j^2)`` is the pairwise interaction of a row's own
features. With

    item vector  = concat(V^T x_i, b_i)        user vector = concat(V^T x_u, 1)

``user . item = y - user-only terms``: for one user every item is ranked exactly as the FM ranks it,
which is what a k-NN search with ``INNER_PRODUCT`` returns. ``b_i`` must keep ``P(x_i)``: the AWS
blog's recipe uses ``b_i = w_i`` alone, which is only right while items are bare one-hot ids.

User shards: the user inference set is split into contiguous index ranges (the processing step's
shard list; :func:`check_tiling`), one recordio file each, named by their range
(:func:`user_shard_name`). The batch transform writes
``<input name>.out`` with one line per input record in input order, so a transform output file's
name alone says which user indices its lines hold (:func:`parse_user_shard`), whatever order the
files are listed in.

numpy and scipy only (packaged into the Lambdas).
"""

from __future__ import annotations

import itertools
import re

import numpy as np
import scipy.sparse as sp

__all__ = [
    "check_disjoint_columns",
    "check_tiling",
    "fm_parameters",
    "item_vectors",
    "parse_user_shard",
    "self_interaction",
    "shard_ranges",
    "user_only_terms",
    "user_shard_name",
    "user_vectors",
]

USER_SHARD_PREFIX = "users-"
USER_SHARD_SUFFIX = ".pbr"
_USER_SHARD_RE = re.compile(r"(?:^|/)users-(\d+)-(\d+)\.pbr(?:\.out)?$")


def fm_parameters(
    V: np.ndarray, w: np.ndarray, b: np.ndarray | float, feature_dim: int | None = None
) -> tuple[np.ndarray, np.ndarray, float]:
    """Check and normalise an FM model's arrays: ``V`` (N, k), ``w`` (N,), ``w0`` a float.

    Accepts the shapes the artifact stores (``w`` as (N, 1), ``b`` as (1,)). ``feature_dim`` (the
    manifest's) must match N when given.
    """
    V = np.asarray(V)
    w = np.asarray(w).reshape(-1)
    b_arr = np.asarray(b).reshape(-1)
    if V.ndim != 2:
        raise ValueError(f"The FM factors 'v' must be a 2-d array (features x factors), got shape {V.shape}.")
    if w.shape[0] != V.shape[0]:
        raise ValueError(
            f"The FM linear weights have {w.shape[0]} entries but the factors have {V.shape[0]} rows."
        )
    if b_arr.shape != (1,):
        raise ValueError(f"The FM global bias must hold one value, got shape {np.asarray(b).shape}.")
    if feature_dim is not None and V.shape[0] != feature_dim:
        raise ValueError(
            f"The FM model has {V.shape[0]} features but the manifest's feature_dim is {feature_dim}."
        )
    return V, w, float(b_arr[0])


def _csr(rows: sp.spmatrix | sp.sparray | np.ndarray) -> sp.csr_matrix:
    return sp.csr_matrix(rows, dtype=np.float64)


def self_interaction(rows: sp.spmatrix | sp.sparray | np.ndarray, V: np.ndarray,
                     projection: np.ndarray | None = None) -> np.ndarray:
    """``P(x)`` per row: the FM's pairwise interactions among a row's own features (float64)."""
    x = _csr(rows)
    V64 = np.asarray(V, dtype=np.float64)
    proj = x @ V64 if projection is None else np.asarray(projection, dtype=np.float64)
    squared_norms = (V64 * V64).sum(axis=1)
    return np.asarray(0.5 * ((proj * proj).sum(axis=1) - x.multiply(x) @ squared_norms)).reshape(-1)


def _used(rows: sp.csr_matrix, V: np.ndarray, dtype: type) -> tuple[sp.csr_matrix, np.ndarray, np.ndarray]:
    """``(rows[:, cols], V[cols], cols)`` for the columns the rows use: the product touches only
    those factor rows, so no copy of the whole (users + items + features) x k model is made."""
    cols = np.unique(rows.indices)
    return rows[:, cols].astype(dtype), np.asarray(V[cols], dtype=dtype), cols


def item_vectors(item_rows: sp.spmatrix | sp.sparray | np.ndarray, V: np.ndarray,
                 w: np.ndarray) -> np.ndarray:
    """``concat(V^T x_i, b_i)`` per item, float32 (n_items, k + 1); ``b_i = w.x_i + P(x_i)``
    (computed in float64 over the item columns only)."""
    x, V_used, cols = _used(sp.csr_matrix(item_rows), V, np.float64)
    proj = x @ V_used
    bias = x @ np.asarray(w, dtype=np.float64).reshape(-1)[cols] + self_interaction(x, V_used, proj)
    out = np.empty((x.shape[0], V_used.shape[1] + 1), dtype=np.float32)
    out[:, :-1] = proj
    out[:, -1] = bias
    return out


def user_vectors(user_rows: sp.spmatrix | sp.sparray | np.ndarray, V: np.ndarray) -> np.ndarray:
    """``concat(V^T x_u, 1)`` per user, float32 (n_users, k + 1), computed in float32 over the
    columns the rows use. Call it per shard for large sets."""
    x, V_used, _ = _used(sp.csr_matrix(user_rows), V, np.float32)
    out = np.empty((x.shape[0], V.shape[1] + 1), dtype=np.float32)
    out[:, :-1] = x @ V_used
    out[:, -1] = 1.0
    return out


def user_only_terms(user_rows: sp.spmatrix | sp.sparray | np.ndarray, V: np.ndarray, w: np.ndarray,
                    w0: float) -> np.ndarray:
    """``w0 + w.x_u + P(x_u)`` per user: what ``user . item`` leaves out of the FM score."""
    x = _csr(user_rows)
    return np.asarray(w0 + x @ np.asarray(w, dtype=np.float64).reshape(-1) + self_interaction(x, V))


def check_disjoint_columns(user_rows: sp.spmatrix | sp.sparray,
                           item_rows: sp.spmatrix | sp.sparray | np.ndarray) -> None:
    """The decomposition needs users and items to use different feature columns. ``item_rows`` may
    also be the item rows' column indices (as :func:`numpy.unique` of their ``indices``)."""
    user_cols = np.unique(sp.csr_matrix(user_rows).indices)
    if isinstance(item_rows, np.ndarray) and item_rows.ndim == 1:
        item_cols = np.unique(item_rows)
    else:
        item_cols = np.unique(sp.csr_matrix(item_rows).indices)
    shared = np.intersect1d(user_cols, item_cols, assume_unique=True)
    if shared.size:
        raise ValueError(
            f"User and item feature rows share {shared.size} column(s) (first: {int(shared[0])}); the "
            "FM score only splits into user . item vectors when their columns are disjoint."
        )


def check_tiling(ranges: list[tuple[int, int]], n: int) -> None:
    """The ``(start, stop)`` ranges (any order) cover ``[0, n)`` exactly once; a ValueError names
    the first gap or overlap."""
    expected = 0
    for start, stop in sorted(ranges):
        if start > expected:
            raise ValueError(f"users [{expected}, {start}) are in no shard: the shards must cover all "
                             f"{n} users exactly once.")
        if start < expected:
            raise ValueError(f"the shard [{start}, {stop}) overlaps the previous one, which ends at "
                             f"{expected}.")
        expected = stop
    if expected != n:
        raise ValueError(f"the shards cover users [0, {expected}) but there are {n}.")


def shard_ranges(n: int, shards: int) -> list[tuple[int, int]]:
    """Split ``range(n)`` into at most ``shards`` contiguous, non-empty, near-equal ``(start, stop)``."""
    if shards < 1:
        raise ValueError(f"The 'user_shards' parameter must be an int >= 1, got {shards}.")
    count = min(shards, n)
    if count == 0:
        return []
    bounds = np.linspace(0, n, count + 1).round().astype(np.int64)
    return [(int(a), int(b)) for a, b in itertools.pairwise(bounds)]


def user_shard_name(start: int, stop: int) -> str:
    """File name of the user shard holding user indices ``[start, stop)``."""
    return f"{USER_SHARD_PREFIX}{start:010d}-{stop:010d}{USER_SHARD_SUFFIX}"


def parse_user_shard(name: str) -> tuple[int, int] | None:
    """``(start, stop)`` from a user shard's name, its transform output's (``.out``) or an S3 key.

    ``None`` when the name is not a user shard's.
    """
    match = _USER_SHARD_RE.search(name)
    if match is None:
        return None
    start, stop = int(match.group(1)), int(match.group(2))
    return (start, stop) if stop > start else None


def vectors_by_index(vectors: np.ndarray, labels: np.ndarray | None, n_items: int) -> np.ndarray:
    """Repackage's item records (label = item index, any order) as rows ``0 .. n_items - 1``;
    raises ValueError unless every item index appears exactly once."""
    vectors = np.asarray(vectors, dtype=np.float32)
    if labels is None:
        raise ValueError("The item vectors carry no labels (item indices).")
    index = np.asarray(labels).astype(np.int64).reshape(-1)
    if vectors.shape[0] != n_items or index.shape[0] != n_items or not np.array_equal(
            np.sort(index), np.arange(n_items)):
        raise ValueError(f"The item vectors must hold each of the {n_items} item indices once; got "
                         f"{vectors.shape[0]} records with labels in [{index.min(initial=0)}, "
                         f"{index.max(initial=-1)}].")
    out = np.empty_like(vectors)
    out[index] = vectors
    return out
