"""Similar items and the popular list as Publish computes them, against a brute-force reference."""

from __future__ import annotations

import numpy as np
import pytest

from recpipe import tables
from recpipe.serving import items
from recpipe.serving.reader import entries


def _reference(vectors: np.ndarray, m: int) -> tuple[list[list[int]], list[list[float]]]:
    out_i, out_s = [], []
    for i in range(len(vectors)):
        scores = [(float(np.dot(vectors[i].astype(np.float64), vectors[j])), j)
                  for j in range(len(vectors)) if j != i]
        scores.sort(key=lambda sj: (-sj[0], sj[1]))
        out_i.append([j for _, j in scores[:m]])
        out_s.append([s for s, _ in scores[:m]])
    return out_i, out_s


@pytest.mark.parametrize("block_elements", [1, 37, items.BLOCK_ELEMENTS])
def test_most_similar_matches_brute_force_in_any_block_size(block_elements: int) -> None:
    vectors = np.random.default_rng(3).normal(size=(37, 6)).astype(np.float32)
    indices, scores = items.most_similar(vectors, 7, block_elements=block_elements)
    ref_i, ref_s = _reference(vectors, 7)
    assert indices.tolist() == ref_i
    np.testing.assert_allclose(scores, ref_s, rtol=1e-5, atol=1e-6)


def test_a_range_of_items_and_m_beyond_the_catalogue() -> None:
    vectors = np.random.default_rng(4).normal(size=(9, 3)).astype(np.float32)
    indices, _ = items.most_similar(vectors, 50, start=3, stop=7, block_elements=10)
    assert indices.shape == (4, 8)  # every other item, never itself
    assert indices.tolist() == _reference(vectors, 8)[0][3:7]
    assert all(i + 3 not in row for i, row in enumerate(indices.tolist()))
    assert items.most_similar(vectors, 0)[0].shape == (9, 0)


def test_ties_prefer_the_lower_index() -> None:
    vectors = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    indices, scores = items.most_similar(vectors, 2)
    assert indices.tolist() == [[1, 2], [0, 2], [0, 1], [0, 1]]
    assert scores[3].tolist() == [0.0, 0.0]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"start": 5, "stop": 3}, r"\[5, 3\) is not within the 4 items"),
    ({"stop": 9}, r"\[0, 9\) is not within"),
])
def test_bad_ranges_are_refused(kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        items.most_similar(np.zeros((4, 2), dtype=np.float32), 2, **kwargs)


def test_item_rows_spell_the_table_layout() -> None:
    indices = np.array([[2, 0], [0, 2]])
    scores = np.array([[0.5, 1.5e-7], [3.0, -2.0]], dtype=np.float32)
    rows = list(items.item_rows(indices, scores, 1, ["a", "b", "c"], "r1", "2026-12-01T00:00:00Z", 99))
    assert [r["pk"]["S"] for r in rows] == ["item#b", "item#c"]
    assert rows[0]["sk"] == {"S": "v#r1"} and rows[0][tables.TTL_ATTRIBUTE] == {"N": "99"}
    assert entries(rows[0]["items"]) == [{"item_id": "c", "score": 0.5}, {"item_id": "a", "score": 1.5e-7}]
    assert entries(rows[1]["items"]) == [{"item_id": "a", "score": 3}, {"item_id": "c", "score": -2}]


def test_popular_row_orders_by_users_and_skips_unused_items() -> None:
    row = items.popular_row(np.array([3, 0, 5, 3]), ["a", "b", "c", "d"], 10, 20, "r1", "t", 7)
    assert row["pk"] == {"S": "meta#popular"} and row["similar_items"] == {"N": "20"}
    assert entries(row["items"]) == [{"item_id": "c", "score": 5}, {"item_id": "a", "score": 3},
                                     {"item_id": "d", "score": 3}]
    with pytest.raises(ValueError, match="popularity has 2 entries but there are 4 item ids"):
        items.popular_row(np.array([1, 2]), ["a", "b", "c", "d"], 10, 20, "r1", "t", 7)


def test_publish_items_writes_its_range_and_shard_zero_the_popular_row() -> None:
    vectors = np.random.default_rng(8).normal(size=(6, 3)).astype(np.float32)
    ids = [f"x{i}" for i in range(6)]
    written: list[dict] = []

    def write(rows: object) -> int:
        batch = list(rows)  # type: ignore[call-overload]
        written.extend(batch)
        return len(batch)

    common = {"similar_items": 2, "top_n": 3, "run_id": "r", "generated_at": "t", "expires_at": 1,
              "write": write}
    report = items.publish_items(vectors, ids, np.array([1, 2, 3, 4, 5, 6]), start=3, stop=6, **common)
    assert report == {"rows": 3, "similar_items": 2, "popular": False}
    assert [r["pk"]["S"] for r in written] == ["item#x3", "item#x4", "item#x5"]
    written.clear()
    report = items.publish_items(vectors, ids, np.array([1, 2, 3, 4, 5, 6]), start=0, stop=3, **common)
    assert report["popular"] is True and written[-1]["pk"] == {"S": "meta#popular"}
    assert [e["item_id"] for e in entries(written[-1]["items"])] == ["x5", "x4", "x3"]
