"""The exact top-k kernel against a float64 brute-force reference and faiss's IndexFlatIP."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from recpipe.algorithms.topk import topk_inner_product


def reference_topk(q: np.ndarray, x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Brute force in float64: scores descending, ties by ascending item index."""
    scores = q.astype(np.float64) @ x.astype(np.float64).T
    order = np.lexsort((np.broadcast_to(np.arange(x.shape[0]), scores.shape), -scores), axis=1)[:, :k]
    return np.take_along_axis(scores, order, axis=1), order


def assert_same_neighbours(scores: np.ndarray, idx: np.ndarray, q: np.ndarray, x: np.ndarray, k: int) -> None:
    """Same neighbours as the reference, allowing swaps only between (float32-)equal scores."""
    ref_scores, ref_idx = reference_topk(q, x, k)
    kk = min(k, x.shape[0])
    np.testing.assert_allclose(scores[:, :kk], ref_scores, rtol=1e-5, atol=1e-5)
    mismatch = idx[:, :kk] != ref_idx
    if mismatch.any():  # only near-ties may be ordered differently
        exact = q.astype(np.float64) @ x.astype(np.float64).T
        got = np.take_along_axis(exact, idx[:, :kk], axis=1)
        np.testing.assert_allclose(got, ref_scores, rtol=1e-5, atol=1e-5)
    assert (np.diff(scores[:, :kk], axis=1) <= 0).all()


@pytest.mark.parametrize(
    ("n_q", "n_items", "dim", "k", "kwargs"),
    [
        (7, 5, 3, 10, {}),  # fewer items than k: padding
        (300, 1000, 8, 10, {"seed_items": 64, "item_block": 128, "user_block": 64}),
        (257, 4099, 65, 100, {"seed_items": 200, "item_block": 512, "user_block": 100}),
        (40, 3000, 16, 1000, {"seed_items": 100}),  # k larger than the seed: buffers cut repeatedly
        (33, 500, 4, 1, {}),
    ],
)
def test_matches_brute_force(n_q: int, n_items: int, dim: int, k: int, kwargs: dict[str, int]) -> None:
    rng = np.random.default_rng(n_q * 7 + n_items)
    q = rng.standard_normal((n_q, dim), dtype=np.float32)
    x = rng.standard_normal((n_items, dim), dtype=np.float32)
    scores, idx = topk_inner_product(q, x, k, **kwargs)
    assert scores.shape == idx.shape == (n_q, k)
    assert_same_neighbours(scores, idx, q, x, k)
    if k > n_items:
        assert (idx[:, n_items:] == -1).all()
        assert np.isneginf(scores[:, n_items:]).all()


def test_single_thread_equals_threaded() -> None:
    rng = np.random.default_rng(3)
    q = rng.standard_normal((500, 12), dtype=np.float32)
    x = rng.standard_normal((2000, 12), dtype=np.float32)
    a = topk_inner_product(q, x, 20, threads=1, user_block=64)
    b = topk_inner_product(q, x, 20, threads=2, user_block=64)
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_array_equal(a[0], b[0])


def test_ties_are_ordered_by_item_index() -> None:
    q = np.ones((2, 2), np.float32)
    x = np.array([[1, 0], [0, 1], [-1, -1], [0.5, 0.5], [-2, 0], [2, -1]], np.float32)
    scores, idx = topk_inner_product(q, x, 6)
    np.testing.assert_array_equal(idx[0], [0, 1, 3, 5, 2, 4])
    np.testing.assert_array_equal(scores[0], [1, 1, 1, 1, -2, -2])


def test_agrees_with_faiss_flat_ip() -> None:
    rng = np.random.default_rng(11)
    # FM-like: a shared popularity direction makes many users share their top items
    x = rng.standard_normal((3000, 17), dtype=np.float32)
    x[:, -1] = rng.gumbel(size=3000).astype(np.float32)
    q = rng.standard_normal((200, 17), dtype=np.float32)
    q[:, -1] = 1.0
    index = faiss.IndexFlatIP(17)
    index.add(x)
    f_scores, f_idx = index.search(q, 50)
    scores, idx = topk_inner_product(q, x, 50, seed_items=128, item_block=256)
    np.testing.assert_allclose(scores, f_scores, rtol=1e-5, atol=1e-5)
    assert (idx == f_idx).mean() > 0.999  # differences only where faiss's float32 scores tie


def test_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="same number of columns"):
        topk_inner_product(np.zeros((2, 3), np.float32), np.zeros((4, 2), np.float32), 1)
    with pytest.raises(ValueError, match="k must be >= 1"):
        topk_inner_product(np.zeros((2, 3), np.float32), np.zeros((4, 3), np.float32), 0)


def test_empty_inputs() -> None:
    scores, idx = topk_inner_product(np.zeros((0, 3), np.float32), np.zeros((4, 3), np.float32), 2)
    assert scores.shape == (0, 2)
    scores, idx = topk_inner_product(np.zeros((2, 3), np.float32), np.zeros((0, 3), np.float32), 2)
    assert (idx == -1).all()


def test_heavy_ties_and_many_cut_backs() -> None:
    """Small integer vectors: scores repeat a lot, so buffers fill with equal values and are cut back
    both around a sampled pivot and by the quickselect fallback."""
    rng = np.random.default_rng(5)
    q = rng.integers(-2, 3, (150, 5)).astype(np.float32)
    x = rng.integers(-2, 3, (5000, 5)).astype(np.float32)
    for k in (1, 7, 64):
        scores, idx = topk_inner_product(q, x, k, seed_items=16, item_block=64, user_block=32)
        assert_same_neighbours(scores, idx, q, x, k)
        assert all(len(set(row)) == k for row in idx.tolist())  # no item twice
