"""recpipe.topn: ranking k-NN output into seen-filtered top N, and mapping transform files to users."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import numpy as np
import pytest
import scipy.sparse as sp
from moto import mock_aws

from recpipe import topn, vectors
from recpipe.lambda_errors import PipelineError


def reference_rank(labels: np.ndarray, distances: np.ndarray, seen: sp.csr_matrix, top_n: int,
                   popularity: np.ndarray | None) -> tuple[list[list[int]], list[list[float]], int]:
    """The rules of recpipe.topn, one user at a time in plain Python."""
    dense_seen = seen.toarray() != 0
    popular: list[int] = []
    if popularity is not None:
        popular = sorted(range(seen.shape[1]), key=lambda i: (-popularity[i], i))
    all_items, all_scores, topped = [], [], 0
    for r in range(labels.shape[0]):
        best: dict[int, float] = {}
        for label, score in zip(labels[r].tolist(), distances[r].tolist(), strict=True):
            if label >= 0 and (label not in best or score > best[label]):
                best[label] = score
        ranked = sorted(best.items(), key=lambda kv: (-kv[1], kv[0]))
        ranked = [(i, s) for i, s in ranked if not dense_seen[r, i]][:top_n]
        items = [i for i, _ in ranked]
        scores = [s for _, s in ranked]
        extra = [i for i in popular if not dense_seen[r, i] and i not in items][: top_n - len(items)]
        topped += bool(extra)
        items += extra
        scores += [float("nan")] * len(extra)
        items += [-1] * (top_n - len(items))
        scores += [float("nan")] * (top_n - len(scores))
        all_items.append(items)
        all_scores.append(scores)
    return all_items, all_scores, topped


def test_sorts_by_score_itself_and_never_trusts_the_service_order() -> None:
    labels = np.array([[4, 1, 3, 0]])
    distances = np.array([[0.1, 0.9, -2.0, 0.5]])  # not sorted either way
    seen = sp.csr_matrix((1, 5))
    items, scores, topped = topn.rank(labels, distances, seen, 3)
    assert items.tolist() == [[1, 0, 4]]
    np.testing.assert_allclose(scores, [[0.9, 0.5, 0.1]])
    assert topped == 0
    # The same neighbours listed in any order give the same result.
    perm = [2, 0, 3, 1]
    again = topn.rank(labels[:, perm], distances[:, perm], seen, 3)
    assert again.items.tolist() == items.tolist()


def test_smaller_is_nearer_when_asked() -> None:
    items, scores, _ = topn.rank(np.array([[0, 1, 2]]), np.array([[3.0, 1.0, 2.0]]), sp.csr_matrix((1, 3)), 2,
                                 higher_is_better=False)
    assert items.tolist() == [[1, 2]]
    np.testing.assert_allclose(scores, [[-1.0, -2.0]])


def test_removes_seen_items_and_tops_up_from_popular_unseen_items() -> None:
    # User 0 has seen its two best neighbours; user 1 has seen nothing.
    labels = np.array([[0, 1, 2], [2, 1, 0]])
    distances = np.array([[3.0, 2.0, 1.0], [3.0, 2.0, 1.0]])
    seen = sp.csr_matrix(np.array([[1, 1, 0, 0, 0, 1], [0, 0, 0, 0, 0, 0]]))
    popularity = np.array([9.0, 8.0, 7.0, 1.0, 2.0, 10.0])
    items, scores, topped = topn.rank(labels, distances, seen, 3, popularity)
    # User 0: item 2 from the k-NN, then the most popular unseen, unchosen items: 4 (2.0) then 3 (1.0).
    assert items.tolist() == [[2, 4, 3], [2, 1, 0]]
    assert scores[0, 0] == 1.0 and np.isnan(scores[0, 1:]).all()
    assert topped == 1


def test_without_popularity_short_rows_are_padded() -> None:
    labels = np.array([[0, 1]])
    seen = sp.csr_matrix(np.array([[1, 0, 0]]))
    items, scores, topped = topn.rank(labels, np.array([[2.0, 1.0]]), seen, 3)
    assert items.tolist() == [[1, -1, -1]]
    assert topped == 0 and np.isnan(scores[0, 1:]).all()


def test_padding_and_repeated_labels_are_dropped() -> None:
    labels = np.array([[-1, 2, 2, 1]])
    distances = np.array([[9.0, 1.0, 5.0, 3.0]])
    items, scores, _ = topn.rank(labels, distances, sp.csr_matrix((1, 3)), 3)
    assert items.tolist() == [[2, 1, -1]]
    np.testing.assert_allclose(scores[0, :2], [5.0, 3.0])


@pytest.mark.parametrize(("seed", "top_n"), [(0, 5), (1, 5), (2, 1), (3, 15)])
def test_matches_the_reference_on_random_data(seed: int, top_n: int) -> None:
    rng = np.random.default_rng(seed)
    n, k, n_items = 40, 12, 30
    labels = rng.integers(-1, n_items, size=(n, k))
    distances = rng.normal(size=(n, k)).round(1)  # rounding makes ties
    seen = sp.random(n, n_items, density=0.3, format="csr", random_state=seed)
    seen.data[:] = 1.0
    popularity = np.asarray(seen.sum(axis=0)).ravel()
    got = topn.rank(labels, distances, seen, top_n, popularity)
    ref_items, ref_scores, ref_topped = reference_rank(labels, distances, seen, top_n, popularity)
    assert got.items.tolist() == ref_items
    np.testing.assert_allclose(got.scores, np.array(ref_scores))
    assert got.n_topped_up == ref_topped
    assert ref_topped > 0 or top_n == 1


@pytest.mark.parametrize(
    ("labels", "distances", "seen_shape", "top_n", "message"),
    [
        (np.array([[0, 7]]), np.array([[1.0, 0.0]]), (1, 3), 2, "label 7 .* not an item index in \\[0, 3\\)"),
        (np.array([[0, 1]]), np.array([[1.0]]), (1, 3), 2, "one shape"),
        (np.array([[0, 1]]), np.array([[1.0, 0.0]]), (2, 3), 2, "2 rows but there are 1 users"),
        (np.array([[0, 1]]), np.array([[1.0, 0.0]]), (1, 3), 0, "'top_n' parameter must be an int >= 1"),
    ],
)
def test_rejects_inconsistent_input(labels: np.ndarray, distances: np.ndarray, seen_shape: tuple[int, int],
                                    top_n: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        topn.rank(labels, distances, sp.csr_matrix(seen_shape), top_n)


@pytest.fixture
def s3() -> Iterator[Any]:
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket="bkt")
        yield client


def put_outputs(s3: Any, ranges: list[tuple[int, int]], extra: tuple[str, ...] = ()) -> None:
    for start, stop in ranges:
        s3.put_object(Bucket="bkt", Key=f"t/{vectors.user_shard_name(start, stop)}.out", Body=b"")
    for key in extra:
        s3.put_object(Bucket="bkt", Key=key, Body=b"")


def test_transform_parts_map_files_to_user_ranges(s3: Any) -> None:
    put_outputs(s3, [(5, 9), (0, 5)], extra=("t/_manifest.json",))
    parts = topn.transform_parts(s3, "s3://bkt/t", 9)
    assert [(p.start, p.stop) for p in parts] == [(0, 5), (5, 9)]
    assert parts[0].key == "t/users-0000000000-0000000005.pbr.out"


@pytest.mark.parametrize(
    ("ranges", "extra", "message"),
    [
        ([(0, 4), (5, 9)], (), "Users \\[4, 5\\) have no transform output"),
        ([(0, 5), (4, 9)], (), "overlaps the previous file, which ends at user 5"),
        ([(0, 5)], (), "cover users \\[0, 5\\) but the manifest has 9"),
        ([], (), "No transform output"),
        ([(0, 9)], ("t/part-1.out",), "t/part-1.out is not named after a user shard"),
    ],
)
def test_transform_parts_must_tile_the_users(s3: Any, ranges: list[tuple[int, int]], extra: tuple[str, ...],
                                             message: str) -> None:
    put_outputs(s3, ranges, extra)
    with pytest.raises(PipelineError, match=message):
        topn.transform_parts(s3, "s3://bkt/t/", 9)


# --- exact scoring: the k-NN's labels only, scored from the stored vectors -------------------------

def _vectors(seed: int, n_users: int, n_items: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n_users, dim)).astype(np.float32),
            rng.normal(size=(n_items, dim)).astype(np.float32))


def _verbose_lines(labels: np.ndarray, distances: np.ndarray) -> bytes:
    """Verbose k-NN jsonlines as the service writes them (distances listed ascending)."""
    import json

    lines = []
    for row_labels, row_distances in zip(labels.tolist(), distances.tolist(), strict=True):
        order = np.argsort(row_distances, kind="stable")
        lines.append(json.dumps({"labels": [float(row_labels[j]) for j in order],
                                 "distances": [row_distances[j] for j in order],
                                 "predicted_label": float(row_labels[order[0]])}))
    return ("\n".join(lines) + "\n").encode()


def test_exact_scores_are_the_float32_inner_products_of_the_candidates() -> None:
    users, items = _vectors(1, 7, 30, 5)
    labels = np.array([[3, 0, 29, -1]] * 7)
    labels[2] = [5, 5, 6, 7]
    scores = topn.exact_scores(labels, users, items)
    assert scores.dtype == np.float32
    for r in range(7):
        for j in range(4):
            if labels[r, j] < 0:
                assert np.isnan(scores[r, j])
            else:
                assert scores[r, j] == pytest.approx(float(users[r] @ items[labels[r, j]]), rel=1e-5)


def test_exact_scores_blocks_give_the_same_result(monkeypatch: pytest.MonkeyPatch) -> None:
    users, items = _vectors(2, 50, 40, 6)
    labels = np.random.default_rng(3).integers(0, 40, size=(50, 8))
    whole = topn.exact_scores(labels, users, items)
    monkeypatch.setattr(topn, "SCORE_BLOCK", 7)
    np.testing.assert_array_equal(topn.exact_scores(labels, users, items), whole)


def test_ranking_ignores_the_services_distances_negated_or_not() -> None:
    """The transform output's distances may be raw inner products, negated ones or anything else:
    the ranking comes from the labels and the stored vectors only."""
    from recpipe.formats.knn_output import read_verbose_jsonlines

    n_users, n_items, k, top_n = 40, 60, 12, 5
    users, items = _vectors(4, n_users, n_items, 8)
    exact = users @ items.T
    labels = np.argsort(-exact, axis=1, kind="stable")[:, :k]  # the true k nearest by inner product
    true_distances = np.take_along_axis(exact, labels, axis=1)
    rng = np.random.default_rng(5)
    seen = sp.random(n_users, n_items, density=0.1, format="csr", random_state=6)
    popularity = np.asarray((seen != 0).sum(axis=0)).reshape(-1)

    results = []
    for distances in (true_distances, -true_distances, rng.normal(size=true_distances.shape)):
        read_labels, _ = read_verbose_jsonlines(_verbose_lines(labels, distances))
        results.append(topn.rank_shard(read_labels, users, items, seen, top_n, popularity))
    for other in results[1:]:
        np.testing.assert_array_equal(other.items, results[0].items)
        np.testing.assert_array_equal(other.scores, results[0].scores)
    # ... and it is the reference ranking by the exact products.
    want_items, _, want_topped = reference_rank(labels, true_distances.astype(np.float32).astype(np.float64),
                                                seen, top_n, popularity)
    assert results[0].items.tolist() == want_items and results[0].n_topped_up == want_topped
    # Trusting negated distances would have reversed it: the test can tell the two apart.
    negated = read_verbose_jsonlines(_verbose_lines(labels, -true_distances))
    assert topn.rank(*negated, seen, top_n, popularity).items.tolist() != want_items


@pytest.mark.parametrize(("labels", "users_shape", "items_shape", "match"), [
    (np.array([[0, 1]]), (2, 3), (5, 3), "2 user vectors but 1 rows"),
    (np.array([[0, 1]]), (1, 4), (5, 3), "4 dimensions but item vectors 3"),
    (np.array([[0, 5]]), (1, 3), (5, 3), r"label 5 \(row 0, neighbour 1\) is not an item index in \[0, 5\)"),
    (np.array([0, 1]), (1, 3), (5, 3), "must be 2-d"),
])
def test_exact_scores_reject_inconsistent_input(labels: np.ndarray, users_shape: tuple[int, int],
                                                items_shape: tuple[int, int], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        topn.exact_scores(labels, np.zeros(users_shape, np.float32), np.zeros(items_shape, np.float32))
