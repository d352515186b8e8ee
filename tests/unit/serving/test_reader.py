"""The read path: user rows, cold-start fallbacks, similar items, ``n`` validation, pointer cache."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from recpipe import tables
from recpipe.serving import Reader
from recpipe.serving.exceptions import InvalidRequestError, NoActiveVersionError, NotFoundError
from recpipe.serving.reader import MAX_RECENT, merge_similar
from tests.unit.serving.conftest import ITEM_IDS, SIMILAR, TOP_N, World
from tests.unit.serving.seed import CountingClient, write_version


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _reference_similar(vectors: np.ndarray, index: int, m: int) -> list[str]:
    scores = vectors @ vectors[index]
    order = [int(i) for i in np.argsort(-scores, kind="stable") if i != index]
    return [ITEM_IDS[i] for i in order[:m]]


def test_a_known_user_gets_their_row_cut_to_n(world: World) -> None:
    reader = Reader(world.ddb, world.table)
    answer = reader.recommendations("1", "3")
    assert answer == {"user_id": "1", "run_id": world.run_id, "fallback": False,
                      "items": [{"item_id": "i0", "score": 2.5}, {"item_id": "i1", "score": 2.4},
                                {"item_id": "i2", "score": 2.3}]}
    full = reader.recommendations("1", TOP_N)["items"]
    assert [e["item_id"] for e in full] == [f"i{k}" for k in range(10)] + ["i11", "i10"]
    assert full[-1]["score"] is None  # topped up from popularity by Publish
    assert reader.recommendations("2")["items"] == [{"item_id": "i3", "score": 0.75},
                                                    {"item_id": "i4", "score": 1.5e-7}]


@pytest.mark.parametrize(("n", "message"), [
    ("0", r"The 'n' parameter must be an int in \[1, 20\], got '0'\."),
    ("21", r"must be an int in \[1, 20\], got '21'"),
    ("ten", r"must be an int in \[1, 20\], got 'ten'"),
    ("1.5", r"got '1\.5'"),
])
def test_n_out_of_range_is_refused(world: World, n: str, message: str) -> None:
    with pytest.raises(InvalidRequestError, match=message):
        Reader(world.ddb, world.table).recommendations("1", n)


def test_an_unknown_user_gets_the_popular_items(world: World) -> None:
    answer = Reader(world.ddb, world.table).recommendations("nobody", "4")
    assert answer["fallback"] is True and answer["fallback_source"] == "popular"
    # counts [5,0,9,9,1,3,0,7,2,2,4,8]: 9,9 (lower index first), 8, 7
    assert answer["items"] == [{"item_id": "i2", "score": 9}, {"item_id": "i3", "score": 9},
                               {"item_id": "i11", "score": 8}, {"item_id": "i7", "score": 7}]
    assert "unknown_items" not in answer
    # items nobody interacted with are never offered
    everything = Reader(world.ddb, world.table).recommendations("nobody", TOP_N)["items"]
    assert {e["item_id"] for e in everything}.isdisjoint({"i1", "i6"}) and len(everything) == 10


def test_recent_items_give_their_merged_similar_items(world: World) -> None:
    reader = Reader(world.ddb, world.table)
    answer = reader.recommendations("nobody", "5", "i0, i5,ghost,i0")
    assert answer["fallback"] is True and answer["fallback_source"] == "recent"
    assert answer["unknown_items"] == ["ghost"]
    # reference: best similarity to i0 or i5 among each one's top-M list, the given items left out
    best: dict[str, float] = {}
    for index in (0, 5):
        for item_id in _reference_similar(world.vectors, index, SIMILAR):
            score = float(world.vectors[ITEM_IDS.index(item_id)] @ world.vectors[index])
            best[item_id] = max(best.get(item_id, -np.inf), score)
    expected = [i for i in sorted(best, key=lambda i: -best[i]) if i not in {"i0", "i5"}][:5]
    assert [e["item_id"] for e in answer["items"]] == expected
    assert [e["score"] for e in answer["items"]] == pytest.approx([best[i] for i in expected], rel=1e-6)
    assert answer["items"] != reader.recommendations("nobody", "5")["items"]


def test_recent_lists_too_short_are_topped_up_from_popularity(world: World) -> None:
    answer = Reader(world.ddb, world.table).recommendations("nobody", str(TOP_N), "i2")
    ids = [e["item_id"] for e in answer["items"]]
    assert ids[:SIMILAR] == [i for i in _reference_similar(world.vectors, 2, SIMILAR)]
    assert "i2" not in ids and len(ids) == len(set(ids))
    assert all(e["score"] is None for e in answer["items"][SIMILAR:])
    assert len(ids) > SIMILAR


def test_only_unknown_recent_items_fall_back_to_popular_without_them(world: World) -> None:
    answer = Reader(world.ddb, world.table).recommendations("nobody", "3", "ghost,i2")
    assert answer["fallback_source"] == "recent" and answer["unknown_items"] == ["ghost"]
    answer = Reader(world.ddb, world.table).recommendations("nobody", "3", "ghost,phantom")
    assert answer["fallback_source"] == "popular"
    assert answer["unknown_items"] == ["ghost", "phantom"]
    assert [e["item_id"] for e in answer["items"]] == ["i2", "i3", "i11"]


def test_too_many_recent_items_are_refused(world: World) -> None:
    recent = ",".join(f"x{k}" for k in range(MAX_RECENT + 1))
    with pytest.raises(InvalidRequestError, match=rf"at most {MAX_RECENT} items, got {MAX_RECENT + 1}"):
        Reader(world.ddb, world.table).recommendations("nobody", None, recent)


def test_a_known_user_ignores_recent(world: World) -> None:
    answer = Reader(world.ddb, world.table).recommendations("2", None, "i0")
    assert answer["fallback"] is False and "unknown_items" not in answer


def test_similar_items_of_one_item(world: World) -> None:
    reader = Reader(world.ddb, world.table)
    answer = reader.similar("i4", "3")
    assert answer["item_id"] == "i4" and answer["run_id"] == world.run_id
    assert [e["item_id"] for e in answer["items"]] == _reference_similar(world.vectors, 4, 3)
    assert len(reader.similar("i4")["items"]) == SIMILAR  # default min(10, M)
    with pytest.raises(InvalidRequestError, match=rf"must be an int in \[1, {SIMILAR}\], got '6'"):
        reader.similar("i4", "6")
    with pytest.raises(NotFoundError, match="Unknown item 'ghost'"):
        reader.similar("ghost")


def test_one_get_item_per_request_while_the_pointer_is_cached(world: World) -> None:
    client, clock = CountingClient(world.ddb), Clock()
    reader = Reader(client, world.table, pointer_ttl_s=10, clock=clock)
    reader.recommendations("1")
    assert client.calls == ["get_item", "batch_get_item", "get_item"]  # pointer, version+popular, row
    client.calls.clear()
    for user_id in ("1", "2", "nobody"):
        reader.recommendations(user_id)
    assert client.calls == ["get_item"] * 3
    client.calls.clear()
    reader.recommendations("nobody", None, "i1,i2")
    assert client.calls == ["get_item", "batch_get_item"]


def test_a_flipped_pointer_is_followed_once_the_cache_expires(world: World) -> None:
    clock = Clock()
    reader = Reader(world.ddb, world.table, pointer_ttl_s=10, clock=clock)
    assert reader.recommendations("2")["run_id"] == world.run_id
    write_version(world.ddb, world.table, "run-3", top_n=5, users={"2": [("i9", 1.0)]})
    clock.now = 9.9
    assert reader.recommendations("2")["run_id"] == world.run_id
    clock.now = 10.0
    answer = reader.recommendations("2")
    assert answer["run_id"] == "run-3" and answer["items"] == [{"item_id": "i9", "score": 1}]
    with pytest.raises(InvalidRequestError, match=r"\[1, 5\]"):
        reader.recommendations("2", "6")
    with pytest.raises(NotFoundError, match="no similar-item lists"):
        reader.similar("i4")


def test_nothing_published_is_a_503(world: World) -> None:
    world.ddb.delete_item(TableName=world.table, Key={k: {"S": v} for k, v in tables.ACTIVE_KEY.items()})
    with pytest.raises(NoActiveVersionError, match="No version is published yet in table 'results'"):
        Reader(world.ddb, world.table).recommendations("1")


def test_merge_keeps_each_items_best_score_and_first_appearance_on_ties() -> None:
    lists: list[list[dict[str, Any]]] = [
        [{"item_id": "a", "score": 0.5}, {"item_id": "b", "score": 0.4}],
        [{"item_id": "c", "score": 0.4}, {"item_id": "a", "score": 0.9}, {"item_id": "x", "score": 2.0}],
    ]
    popular = [{"item_id": "x", "score": 3}, {"item_id": "p", "score": 1}]
    merged = merge_similar(lists, ["x"], 4, popular=popular)
    assert merged == [{"item_id": "a", "score": 0.9}, {"item_id": "b", "score": 0.4},
                      {"item_id": "c", "score": 0.4}, {"item_id": "p", "score": None}]
