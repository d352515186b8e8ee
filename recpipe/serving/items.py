"""What the read API's cold-start fallback reads, computed at publish time.

* :func:`most_similar`: per item of a range, its ``m`` most similar items by the inner product of
  Repackage's item vectors (``concat(V^T x_i, b_i)``, the vectors the k-NN index holds), itself
  excluded, best first. Exact, in row blocks of bounded size (a block is ``rows x n_items`` float32).
* :func:`item_rows`: those lists as ``item#<id> / v#<run_id>`` rows (low-level DynamoDB JSON).
* :func:`popular_row`: the version's ``meta#popular`` row: the ``top`` items most users interacted
  with (score = that user count), plus ``similar_items`` (the M the item rows hold).

Publish's shard child writes these for the ``items`` entries of ``shards/serve.json``
(:func:`publish_items`): the item rows of its range and, the shard starting at item 0, the
popular row (so it is written once per version, before Commit flips the pointer).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from recpipe import tables

# Scores of one block: rows x n_items float32 <= 64 MB.
BLOCK_ELEMENTS = 1 << 24


def most_similar(item_vectors: np.ndarray, m: int, *, start: int = 0, stop: int | None = None,
                 block_elements: int = BLOCK_ELEMENTS) -> tuple[np.ndarray, np.ndarray]:
    """``(indices, scores)`` of shape ``(stop - start, min(m, n_items - 1))``: for each item of
    ``[start, stop)`` the most similar other items, best first (ties: lower index first)."""
    vectors = np.ascontiguousarray(item_vectors, dtype=np.float32)
    if vectors.ndim != 2:
        raise ValueError(f"item_vectors must be 2-D (items x dimension), got shape {vectors.shape}.")
    n_items = vectors.shape[0]
    stop = n_items if stop is None else stop
    if not 0 <= start <= stop <= n_items:
        raise ValueError(f"The item range [{start}, {stop}) is not within the {n_items} items.")
    if m < 0:
        raise ValueError(f"m must be >= 0, got {m}.")
    width = min(m, max(n_items - 1, 0))
    indices = np.empty((stop - start, width), dtype=np.int64)
    scores = np.empty((stop - start, width), dtype=np.float32)
    if width == 0 or stop == start:
        return indices, scores
    rows_per_block = max(1, block_elements // n_items)
    for lo in range(start, stop, rows_per_block):
        hi = min(stop, lo + rows_per_block)
        block = vectors[lo:hi] @ vectors.T
        block[np.arange(hi - lo), np.arange(lo, hi)] = -np.inf  # never an item's own neighbour
        if width < n_items:
            candidates = np.argpartition(-block, width - 1, axis=1)[:, :width]
        else:
            candidates = np.broadcast_to(np.arange(n_items), block.shape).copy()
        values = np.take_along_axis(block, candidates, axis=1)
        order = np.lexsort((candidates, -values), axis=1)
        indices[lo - start:hi - start] = np.take_along_axis(candidates, order, axis=1)
        scores[lo - start:hi - start] = np.take_along_axis(values, order, axis=1)
    return indices, scores


def _entries(indices: Sequence[int], scores: Sequence[float | None],
             item_attributes: Sequence[dict[str, str]]) -> dict[str, Any]:
    return {"L": [{"M": {"item_id": item_attributes[index],
                         "score": {"NULL": True} if score is None else {"N": tables.score_number(score)}}}
                  for index, score in zip(indices, scores, strict=True)]}


def item_rows(indices: np.ndarray, scores: np.ndarray, start: int, item_ids: Sequence[str], run_id: str,
              generated_at: str, expires_at: int) -> Iterator[dict[str, Any]]:
    """The similar-item rows of items ``start, start + 1, ...`` (one per row of ``indices``)."""
    attributes = [{"S": item_id} for item_id in item_ids]
    common = {"run_id": {"S": run_id}, "generated_at": {"S": generated_at},
              tables.TTL_ATTRIBUTE: {"N": str(expires_at)}}
    for offset, (row_items, row_scores) in enumerate(zip(indices.tolist(), scores.tolist(), strict=True)):
        item_id = item_ids[start + offset]
        key = tables.item_key(item_id, run_id)
        yield {
            tables.PARTITION_KEY: {"S": key[tables.PARTITION_KEY]},
            tables.SORT_KEY: {"S": key[tables.SORT_KEY]},
            "item_id": {"S": item_id},
            "items": _entries(row_items, row_scores, attributes),
            **common,
        }


def popular_row(popularity: np.ndarray, item_ids: Sequence[str], top: int, similar_items: int, run_id: str,
                generated_at: str, expires_at: int) -> dict[str, Any]:
    """The ``meta#popular`` row: the ``top`` most popular items (ties: lower index first), score =
    the item's user count; items nobody interacted with are never listed."""
    counts = np.asarray(popularity).reshape(-1)
    if counts.shape[0] != len(item_ids):
        raise ValueError(f"popularity has {counts.shape[0]} entries but there are {len(item_ids)} item ids.")
    order = np.lexsort((np.arange(counts.shape[0]), -counts))
    chosen = [int(i) for i in order[:top] if counts[i] > 0]
    attributes = [{"S": item_id} for item_id in item_ids]
    key = tables.popular_key(run_id)
    return {
        tables.PARTITION_KEY: {"S": key[tables.PARTITION_KEY]},
        tables.SORT_KEY: {"S": key[tables.SORT_KEY]},
        "items": {"L": [{"M": {"item_id": attributes[i], "score": {"N": str(int(counts[i]))}}}
                        for i in chosen]},
        "similar_items": {"N": str(int(similar_items))},
        "run_id": {"S": run_id},
        "generated_at": {"S": generated_at},
        tables.TTL_ATTRIBUTE: {"N": str(expires_at)},
    }


def publish_items(vectors: np.ndarray, item_ids: Sequence[str], popularity: np.ndarray, *, start: int,
                  stop: int, similar_items: int, top_n: int, run_id: str, generated_at: str, expires_at: int,
                  write: Callable[[Iterable[dict[str, Any]]], int]) -> dict[str, Any]:
    """Write the similar-item rows of items ``[start, stop)`` (and the popular row when ``start`` is 0)
    with ``write`` (a batch writer returning how many rows it wrote); returns the shard's report
    ``{"rows", "similar_items", "popular"}``."""
    if len(item_ids) != vectors.shape[0]:
        raise ValueError(f"{len(item_ids)} item ids but {vectors.shape[0]} item vectors.")
    rows = 0
    if similar_items > 0:
        indices, scores = most_similar(vectors, similar_items, start=start, stop=stop)
        rows = write(item_rows(indices, scores, start, item_ids, run_id, generated_at, expires_at))
    popular = start == 0
    if popular:
        write([popular_row(popularity, item_ids, top_n, similar_items, run_id, generated_at, expires_at)])
    return {"rows": rows, "similar_items": similar_items, "popular": popular}
