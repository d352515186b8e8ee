"""FM -> k-NN vectors: ``user . item`` must equal the FM score minus the user-only terms."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from recpipe import vectors
from tests.fixtures import FM

FIXTURE = FM


def fm_score_reference(x: np.ndarray, V: np.ndarray, w: np.ndarray, w0: float) -> float:
    """The FM equation written out term by term (no algebraic shortcut)."""
    n = x.shape[0]
    total = w0 + float(np.dot(w, x))
    for j in range(n):
        for m in range(j + 1, n):
            total += float(np.dot(V[j], V[m])) * x[j] * x[m]
    return total


def random_rows(rng: np.random.Generator, width: int, n: int, ids_at: int, side_at: int, side: int
                ) -> sp.csr_matrix:
    """One-hot id in ``[ids_at, ids_at + n)`` plus up to 3 real-valued side features."""
    rows = np.zeros((n, width))
    for r in range(n):
        rows[r, ids_at + r] = 1.0
        cols = rng.choice(side, size=rng.integers(0, 4), replace=False)
        rows[r, side_at + cols] = rng.uniform(0.2, 1.5, size=cols.size)
    return sp.csr_matrix(rows)


def test_inner_product_is_fm_score_minus_user_terms_with_side_features() -> None:
    rng = np.random.default_rng(7)
    n_users, n_items, n_user_side, n_item_side, k = 6, 9, 4, 5, 3
    feature_dim = n_users + n_items + n_user_side + n_item_side
    # Layout: user ids, item ids, user side features, item side features.
    user_rows = random_rows(rng, feature_dim, n_users, 0, n_users + n_items, n_user_side)
    item_rows = random_rows(rng, feature_dim, n_items, n_users, n_users + n_items + n_user_side, n_item_side)
    V = rng.normal(size=(feature_dim, k))
    w = rng.normal(size=feature_dim)
    w0 = 0.37

    users = vectors.user_vectors(user_rows, V)
    items = vectors.item_vectors(item_rows, V, w)
    user_terms = vectors.user_only_terms(user_rows, V, w, w0)
    assert users.shape == (n_users, k + 1) and items.shape == (n_items, k + 1)
    assert users.dtype == np.float32 and items.dtype == np.float32
    np.testing.assert_array_equal(users[:, -1], 1.0)

    got = users.astype(np.float64) @ items.astype(np.float64).T
    for u in range(n_users):
        for i in range(n_items):
            x = (user_rows[u] + item_rows[i]).toarray().ravel()
            expected = fm_score_reference(x, V, w, w0) - user_terms[u]
            assert got[u, i] == pytest.approx(expected, rel=1e-5, abs=1e-5), (u, i)


def test_dropping_the_item_self_interaction_would_change_the_ranking() -> None:
    """Guard against the AWS blog's ``b_i = w_i``: with item features it is not the FM's ranking."""
    rng = np.random.default_rng(3)
    item_rows = sp.csr_matrix(np.hstack([np.eye(8), rng.uniform(0.5, 2.0, size=(8, 4))]))
    V = rng.normal(size=(12, 3))
    w = np.zeros(12)
    items = vectors.item_vectors(item_rows, V, w)
    # With zero linear weights, b_i is exactly P(x_i), which is far from zero here.
    np.testing.assert_allclose(items[:, -1], vectors.self_interaction(item_rows, V), rtol=1e-6)
    assert np.abs(items[:, -1]).max() > 0.1


def test_shared_fixture_one_hot_vectors() -> None:
    expected = np.load(FIXTURE / "expected.npz")
    V, w, w0 = vectors.fm_parameters(expected["V"], expected["w"], expected["b"], feature_dim=18)
    n_users, n_items = int(expected["nb_users"]), int(expected["nb_items"])
    user_rows = sp.eye(n_users, n_users + n_items, format="csr")
    item_rows = sp.eye(n_items, n_users + n_items, k=n_users, format="csr")

    users = vectors.user_vectors(user_rows, V)
    items = vectors.item_vectors(item_rows, V, w)
    # One-hot rows: V^T x is the id's factor row and b_i is the item's linear weight (P(x_i) = 0).
    np.testing.assert_allclose(users[:, :-1], V[:n_users], rtol=1e-6)
    np.testing.assert_allclose(items[:, :-1], V[n_users:], rtol=1e-6)
    np.testing.assert_allclose(items[:, -1], w[n_users:], rtol=1e-6)
    user_terms = vectors.user_only_terms(user_rows, V, w, w0)
    got = users.astype(np.float64) @ items.astype(np.float64).T
    for u in range(n_users):
        for i in range(n_items):
            x = np.zeros(n_users + n_items)
            x[u] = x[n_users + i] = 1.0
            ref = fm_score_reference(x, V.astype(np.float64), w.astype(np.float64), w0)
            assert got[u, i] == pytest.approx(ref - user_terms[u], abs=1e-6)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((np.zeros((4, 2)), np.zeros(3), np.zeros(1)), "linear weights have 3 entries"),
        ((np.zeros(4), np.zeros(4), np.zeros(1)), "must be a 2-d array"),
        ((np.zeros((4, 2)), np.zeros((4, 1)), np.zeros(2)), "global bias must hold one value"),
    ],
)
def test_fm_parameters_rejects_bad_shapes(args: tuple[np.ndarray, np.ndarray, np.ndarray], message: str
                                          ) -> None:
    with pytest.raises(ValueError, match=message):
        vectors.fm_parameters(args[0], args[1], args[2])


def test_fm_parameters_checks_feature_dim() -> None:
    with pytest.raises(ValueError, match="feature_dim is 5"):
        vectors.fm_parameters(np.zeros((4, 2)), np.zeros(4), 0.0, feature_dim=5)


def test_overlapping_user_and_item_columns_are_refused() -> None:
    users = sp.csr_matrix(np.array([[1.0, 0, 0, 1.0]]))
    items = sp.csr_matrix(np.array([[0, 1.0, 0, 1.0]]))
    with pytest.raises(ValueError, match="share 1 column"):
        vectors.check_disjoint_columns(users, items)
    vectors.check_disjoint_columns(users, sp.csr_matrix(np.array([[0, 1.0, 1.0, 0]])))


@pytest.mark.parametrize(("n", "shards"), [(10, 3), (10, 1), (2, 5), (1000, 7), (0, 4)])
def test_shard_ranges_tile_the_users(n: int, shards: int) -> None:
    ranges = vectors.shard_ranges(n, shards)
    assert len(ranges) == min(n, shards)
    covered = [i for a, b in ranges for i in range(a, b)]
    assert covered == list(range(n))
    sizes = [b - a for a, b in ranges]
    assert not sizes or max(sizes) - min(sizes) <= 1


def test_shard_names_round_trip_through_the_transform_output_name() -> None:
    name = vectors.user_shard_name(250, 500)
    assert vectors.parse_user_shard(name) == (250, 500)
    assert vectors.parse_user_shard(f"runs/r1/serve/transform/{name}.out") == (250, 500)
    assert vectors.parse_user_shard("runs/r1/serve/transform/_SUCCESS") is None
    assert vectors.parse_user_shard("x/users-0000000005-0000000005.pbr.out") is None


def test_vectors_come_back_in_item_order_and_must_cover_every_item() -> None:
    vecs = np.arange(12, dtype=np.float32).reshape(4, 3)
    ordered = vectors.vectors_by_index(vecs, np.array([2.0, 0.0, 3.0, 1.0]), 4)
    assert ordered.tolist() == vecs[[1, 3, 0, 2]].tolist()
    with pytest.raises(ValueError, match="each of the 4 item indices once"):
        vectors.vectors_by_index(vecs, np.array([0, 0, 1, 2]), 4)
    with pytest.raises(ValueError, match="no labels"):
        vectors.vectors_by_index(vecs, None, 4)
