"""k-NN batch-transform output -> each user's ranked, seen-filtered top N (Publish and Evaluate).

What the service returns. The built-in k-NN's verbose output holds, per input record,
``labels`` (the training records' labels: here item indices, written by Repackage) and
``distances``. AWS documents the verbose ``distances`` only as "sorted from smallest to largest",
not what they hold for ``index_metric=INNER_PRODUCT`` (raw inner products? negated ones? docs:
"k-NN Request and Response Formats", "k-NN Hyperparameters"). So Publish and Evaluate do not depend
on them: :func:`rank_shard` takes the k-NN's candidate *labels* only and scores each candidate
exactly from the stored vectors (:func:`exact_scores`: ``user . item``, the FM's score up to a
per-user constant, :mod:`recpipe.vectors`; k dot products per user, float32), then ranks by that.
The distances and the order the service lists neighbours in are never trusted. :func:`rank` is the
ranking itself, for callers that already hold scores (``higher_is_better=False`` for a metric where
smaller is nearer).

Ranking (:func:`rank`), per user row:

1. drop padding labels (``-1``, with a sentinel distance, what faiss returns when fewer than k
   items exist) and repeated labels (the best-scored copy stays);
2. sort by score, best first (ties: lower item index first, so the result is deterministic);
3. drop items the user has interacted with (``seen``);
4. keep ``top_n``; a user left with fewer is topped up from the most popular items that are neither
   seen nor already chosen (only when ``popularity`` is given). Topped-up slots carry a NaN score;
   slots nothing could fill hold item ``-1`` and a NaN score.

The transform output's lines map back to users through the user shard file names
(:mod:`recpipe.vectors`): :func:`transform_parts` lists them and checks they tile all users;
:func:`read_part` reads one and checks its record count. A consumer ranks one shard at a time::

    labels, _ = topn.read_part(s3, part)
    items, scores, n_topped_up = topn.rank_shard(labels, shard_user_vectors, item_vectors,
                                                 shard_seen, top_n, popularity)

numpy and scipy only, plus an S3 client passed to :func:`transform_parts` and :func:`read_part`.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import scipy.sparse as sp

from recpipe import runs, vectors
from recpipe.lambda_errors import InputError, NotFoundError

__all__ = ["Ranked", "TransformPart", "exact_scores", "popularity_order", "rank", "rank_shard", "read_part",
           "transform_parts"]

# Users scored per block in exact_scores: the gathered item vectors of a block take
# SCORE_BLOCK x k x dim x 4 bytes (1,024 x 220 x 65 x 4 = 59 MB), whatever the shard size.
SCORE_BLOCK = 1024


class Ranked(NamedTuple):
    """:func:`rank`'s result; unpacks as ``items, scores, n_topped_up``."""

    items: np.ndarray  # (n_users, top_n) int64 item indices, best first; -1 = nothing left
    scores: np.ndarray  # (n_users, top_n) float64; NaN for topped-up and empty slots
    n_topped_up: int  # users who received at least one item from the popularity top-up


def popularity_order(popularity: np.ndarray) -> np.ndarray:
    """Item indices from most to least popular (ties: lower index first)."""
    popularity = np.asarray(popularity).reshape(-1)
    return np.lexsort((np.arange(popularity.size), -popularity.astype(np.float64)))


def rank(
    labels: np.ndarray,
    distances: np.ndarray,
    seen: sp.csr_matrix | sp.csr_array,
    top_n: int,
    popularity: np.ndarray | None = None,
    *,
    higher_is_better: bool = True,
) -> Ranked:
    """Rank k-NN neighbours per user; see the module docstring for the rules.

    ``labels``/``distances``: (n, k) as read from the verbose output; ``seen``: CSR (n, n_items) whose
    row r is the user of ``labels[r]`` (slice the full matrix to a shard's rows); ``popularity``:
    (n_items,) e.g. column sums of the seen matrix.
    """
    labels = np.asarray(labels)
    distances = np.asarray(distances, dtype=np.float64)
    if labels.ndim != 2 or labels.shape != distances.shape:
        raise ValueError(
            f"labels and distances must be 2-d arrays of one shape, got {labels.shape} and {distances.shape}."
        )
    if not isinstance(top_n, int | np.integer) or top_n < 1:
        raise ValueError(f"The 'top_n' parameter must be an int >= 1, got {top_n!r}.")
    n, k = labels.shape
    seen = sp.csr_matrix(seen)
    n_items = seen.shape[1]
    if seen.shape[0] != n:
        raise ValueError(f"The seen matrix has {seen.shape[0]} rows but there are {n} users to rank.")
    if popularity is not None and np.asarray(popularity).size != n_items:
        raise ValueError(
            f"popularity has {np.asarray(popularity).size} entries but there are {n_items} items."
        )
    labels = _checked_labels(labels, n_items)

    scores = distances if higher_is_better else -distances
    scores = np.where(np.isnan(scores), -np.inf, scores)
    valid = labels >= 0
    if n and k:
        valid &= ~_repeats(labels, scores)
        valid &= ~_is_seen(seen, labels)

    # Only the best ``top_n`` survivors matter: a partition finds each row's top_n-th best score, and
    # only the candidates at or above it (ties included) are sorted by (score desc, label asc).
    m = min(top_n, k)
    if k > m:
        masked = np.where(valid, scores, -np.inf)
        threshold = np.partition(masked, k - m, axis=1)[:, k - m]
        candidates = valid & (masked >= threshold[:, None])
        width = int(candidates.sum(axis=1).max()) if n else 0
        cols = np.argsort(~candidates, axis=1, kind="stable")[:, :width]
        valid = np.take_along_axis(candidates, cols, axis=1)
        labels = np.take_along_axis(labels, cols, axis=1)
        scores = np.take_along_axis(scores, cols, axis=1)
    order = np.lexsort((labels, -scores, ~valid), axis=1)  # valid first, then by score and label
    labels = np.take_along_axis(labels, order, axis=1)[:, :top_n]
    scores = np.take_along_axis(scores, order, axis=1)[:, :top_n]
    valid = np.take_along_axis(valid, order, axis=1)[:, :top_n]

    width = labels.shape[1]
    out_items = np.full((n, top_n), -1, dtype=np.int64)
    out_scores = np.full((n, top_n), np.nan, dtype=np.float64)
    out_items[:, :width] = np.where(valid, labels, -1)
    out_scores[:, :width] = np.where(valid, scores, np.nan)
    counts = valid.sum(axis=1)

    topped_up = 0
    if popularity is not None:
        short = np.nonzero(counts < top_n)[0]
        if short.size:
            ranking = popularity_order(popularity)
            for r in short:
                filled = _top_up(out_items[r], int(counts[r]), ranking, seen, int(r))
                topped_up += filled > 0
    return Ranked(out_items, out_scores, int(topped_up))


def exact_scores(labels: np.ndarray, user_vectors: np.ndarray, item_vectors: np.ndarray) -> np.ndarray:
    """``user_vectors[r] . item_vectors[labels[r, j]]`` (float32) for every candidate; padding labels
    (``-1``) score NaN, which :func:`rank` drops.

    ``labels``: (n, k) item indices from the k-NN; ``user_vectors``: (n, dim), row r the user of
    ``labels[r]``; ``item_vectors``: (n_items, dim). Raises ValueError on mismatched shapes or a
    label outside ``[-1, n_items)``.
    """
    labels = np.asarray(labels)
    users = np.asarray(user_vectors, dtype=np.float32)
    items = np.asarray(item_vectors, dtype=np.float32)
    if labels.ndim != 2 or users.ndim != 2 or items.ndim != 2:
        raise ValueError(f"labels, user vectors and item vectors must be 2-d, got shapes {labels.shape}, "
                         f"{users.shape} and {items.shape}.")
    if users.shape[0] != labels.shape[0]:
        raise ValueError(f"There are {users.shape[0]} user vectors but {labels.shape[0]} rows of labels.")
    if users.shape[1] != items.shape[1]:
        raise ValueError(f"User vectors have {users.shape[1]} dimensions but item vectors {items.shape[1]}: "
                         "were both written by the same Repackage?")
    n_items = items.shape[0]
    labels = _checked_labels(labels, n_items)
    scores = np.empty(labels.shape, dtype=np.float32)
    for start in range(0, labels.shape[0], SCORE_BLOCK):
        stop = start + SCORE_BLOCK
        gathered = items[np.maximum(labels[start:stop], 0)]  # (b, k, dim)
        scores[start:stop] = np.matmul(gathered, users[start:stop, :, None])[..., 0]
    scores[labels < 0] = np.nan
    return scores


def rank_shard(
    labels: np.ndarray,
    user_vectors: np.ndarray,
    item_vectors: np.ndarray,
    seen: sp.csr_matrix | sp.csr_array,
    top_n: int,
    popularity: np.ndarray | None = None,
) -> Ranked:
    """Rank one shard of users from the k-NN's candidate labels, scored exactly (the module docstring
    says why the service's distances are not used): what Publish writes and Evaluate measures.

    ``labels``: (n, k) from the transform output; ``user_vectors``: (n, dim) the shard's user vectors
    in the same row order; ``item_vectors``: (n_items, dim); ``seen``: CSR (n, n_items), the shard's
    rows; ``popularity``: (n_items,) for the top-up (None: no top-up).
    """
    scores = exact_scores(labels, user_vectors, item_vectors)
    return rank(labels, scores, seen, top_n, popularity)


def _checked_labels(labels: np.ndarray, n_items: int) -> np.ndarray:
    """``labels`` as int64; a ValueError naming the first one that is neither -1 (no neighbour) nor an
    item index."""
    labels = labels.astype(np.int64, copy=False)
    bad = (labels < -1) | (labels >= n_items)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise ValueError(
            f"k-NN label {int(labels[r, c])} (row {int(r)}, neighbour {int(c)}) is not an item index in "
            f"[0, {n_items}): was the k-NN model trained on this run's item vectors?"
        )
    return labels


def _is_seen(seen: sp.csr_matrix, labels: np.ndarray) -> np.ndarray:
    """``seen[r, labels[r, j]] != 0`` for every entry; padding labels (-1) are never seen."""
    n, k = labels.shape
    rows = np.broadcast_to(np.arange(n)[:, None], (n, k)).ravel()
    hits = np.asarray(seen[rows, np.maximum(labels, 0).ravel()]).reshape(n, k) != 0
    return hits & (labels >= 0)


def _repeats(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """True where a label also appears elsewhere in its row with a better score (or, at equal score,
    earlier): only the best copy of a label counts. Rows without repeats (the norm) cost one sort."""
    repeats = np.zeros(labels.shape, dtype=bool)
    ordered = np.sort(labels, axis=1)
    rows = np.nonzero(((ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] >= 0)).any(axis=1))[0]
    if rows.size == 0:
        return repeats
    sub_labels, sub_scores = labels[rows], scores[rows]
    k = labels.shape[1]
    positions = np.broadcast_to(np.arange(k), sub_labels.shape)
    by_label = np.lexsort((positions, -sub_scores, sub_labels), axis=1)  # best copy first per label
    grouped = np.take_along_axis(sub_labels, by_label, axis=1)
    repeat_sorted = np.zeros(grouped.shape, dtype=bool)
    repeat_sorted[:, 1:] = grouped[:, 1:] == grouped[:, :-1]
    sub_repeats = np.empty_like(repeat_sorted)
    np.put_along_axis(sub_repeats, by_label, repeat_sorted, axis=1)
    repeats[rows] = sub_repeats
    return repeats


def _top_up(row_items: np.ndarray, count: int, ranking: np.ndarray, seen: sp.csr_matrix, r: int) -> int:
    """Fill ``row_items[count:]`` in place from ``ranking``, skipping seen and chosen items."""
    excluded = set(seen.indices[seen.indptr[r]:seen.indptr[r + 1]].tolist())
    excluded.update(row_items[:count].tolist())
    filled = 0
    for item in ranking:
        if count + filled >= row_items.size:
            break
        if int(item) in excluded:
            continue
        row_items[count + filled] = item
        filled += 1
    return filled


@dataclass(frozen=True)
class TransformPart:
    """One batch-transform output file and the user index range its lines hold, in order."""

    bucket: str
    key: str
    start: int
    stop: int


def transform_parts(s3: Any, uri: str, n_users: int) -> list[TransformPart]:
    """List the ``*.out`` files under the S3 prefix ``uri`` and map each to its users, in user order.

    Each file is named after its input shard (``users-<start>-<stop>.pbr.out``); the parts must tile
    ``[0, n_users)`` exactly, otherwise an InputError names the gap or overlap (NotFoundError when
    there is no output at all).
    """
    bucket, prefix = runs.parse_s3_uri(uri)
    prefix = prefix if not prefix or prefix.endswith("/") else prefix + "/"
    parts: list[TransformPart] = []
    unknown: list[str] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            key = obj["Key"]
            if not key.endswith(".out"):
                continue
            span = vectors.parse_user_shard(key)
            if span is None:
                unknown.append(key)
            else:
                parts.append(TransformPart(bucket, key, *span))
    if unknown:
        raise InputError(
            f"Transform output s3://{bucket}/{unknown[0]} is not named after a user shard "
            f"(users-<start>-<stop>.pbr.out); {len(unknown)} such file(s)."
        )
    if not parts:
        raise NotFoundError(f"No transform output (*.out) under s3://{bucket}/{prefix}.")
    parts.sort(key=lambda p: p.start)
    expected = 0
    for part in parts:
        if part.start > expected:
            raise InputError(
                f"Users [{expected}, {part.start}) have no transform output under s3://{bucket}/{prefix}: "
                "the outputs must cover every user exactly once."
            )
        if part.start < expected:
            raise InputError(
                f"Transform output s3://{bucket}/{part.key} (users [{part.start}, {part.stop})) overlaps the "
                f"previous file, which ends at user {expected}."
            )
        expected = part.stop
    if expected != n_users:
        raise InputError(
            f"Transform outputs under s3://{bucket}/{prefix} cover users [0, {expected}) but the manifest "
            f"has {n_users} users."
        )
    return parts



def read_part(s3: Any, part: TransformPart) -> tuple[np.ndarray, np.ndarray]:
    """``(labels, distances)``, each (stop - start, k), of one transform output file; an InputError
    when its record count does not match the user range its name gives."""
    from recpipe.formats.knn_output import read_verbose_jsonlines

    uri = runs.s3_uri(part.bucket, part.key)
    try:
        labels, distances = read_verbose_jsonlines(io.BytesIO(runs.get_bytes(s3, uri)))
    except ValueError as exc:
        raise InputError(f"{uri}: {exc}") from exc
    if labels.shape[0] != part.stop - part.start:
        raise InputError(
            f"Transform output {uri} holds {labels.shape[0]} records but its name says users "
            f"[{part.start}, {part.stop}) ({part.stop - part.start} records)."
        )
    return labels, distances
