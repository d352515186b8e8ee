"""The per-shard layout (shards/serve.json, shards/eval.json and the files under each prefix), the
evaluation sample, the popularity files and the FM channels' part files."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from tests.unit.processing.conftest import Job
from workflows.processing.shards import shard_ranges
from workflows.processing.split import eval_sample

N_USERS, N_ITEMS = 23, 15


def interactions(seed: int = 3) -> pd.DataFrame:
    """Users 100, 101, ... with 4-9 interactions each; ratings 1-5, so some holdouts hold no
    relevant (>= 4) item."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(N_USERS):
        for t, item in enumerate(rng.choice(N_ITEMS, size=int(rng.integers(4, 10)), replace=False)):
            rows.append((100 + u, f"i{item:02d}", int(rng.integers(1, 6)), 1000 * u + t))
    return pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"])


def run(job: Job, **config: Any) -> dict[str, Any]:
    job.write("interactions/r.csv", interactions())
    job.config(**{"processing.users_per_shard": 5, "processing.negatives_per_positive": 1,
                  "processing.context_items": 3, **config})
    return job.run()


def shard_list(job: Job, name: str) -> list[dict[str, Any]]:
    return json.loads((job.out / "shards" / f"{name}.json").read_text())


def test_shard_ranges() -> None:
    assert shard_ranges(12, 5) == [(0, 5), (5, 10), (10, 12)]
    assert shard_ranges(10, 5) == [(0, 5), (5, 10)]
    assert shard_ranges(3, 25_000) == [(0, 3)]


def test_serve_shards_tile_the_users_and_hold_their_rows(job: Job) -> None:
    manifest = run(job)
    assert manifest["shards"]["users_per_shard"] == 5 and manifest["shards"]["serve"] == "shards/serve.json"
    shards = shard_list(job, "serve")
    users = [s for s in shards if s["kind"] == "users"]
    items = [s for s in shards if s["kind"] == "items"]
    assert shards == users + items  # user shards first
    assert [(s["start"], s["stop"]) for s in users] == [(0, 5), (5, 10), (10, 15), (15, 20), (20, 23)]
    assert [(s["start"], s["stop"]) for s in items] == [(0, 5), (5, 10), (10, 15)]
    assert [s["shard"] for s in users] == list(range(5)) and [s["shard"] for s in items] == [0, 1, 2]
    user_rows, seen_all, ids = job.npz("user_rows"), job.npz("seen_all"), job.ids("user")
    for s in users:
        prefix = job.out / s["prefix"]
        assert s["prefix"] == f"shards/serve/{s['shard']:05d}/"
        index = np.load(prefix / "user_index.npy")
        assert index.dtype == np.int64 and index.tolist() == list(range(s["start"], s["stop"]))
        assert (prefix / "user_ids.txt").read_text().splitlines() == ids[s["start"]:s["stop"]]
        rows = sp.load_npz(prefix / "user_rows.npz")
        assert rows.shape == (s["stop"] - s["start"], manifest["feature_dim"])
        assert (rows != user_rows[s["start"]:s["stop"]]).nnz == 0
        assert (sp.load_npz(prefix / "seen.npz") != seen_all[s["start"]:s["stop"]]).nnz == 0
        assert not (prefix / "holdout.csv").exists()


def test_eval_shards_hold_the_sample_with_its_training_rows_and_only_its_holdout(job: Job) -> None:
    manifest = run(job)
    holdout = job.holdout()
    eligible = sorted(set(holdout.loc[holdout["relevant"] == 1, "user_index"]))
    assert 0 < len(eligible) < N_USERS  # some users have no relevant held-out item
    assert manifest["counts"]["eval_users"] == len(eligible)  # sample_users (50,000) > eligible: all
    assert manifest["shards"]["eval"] == "shards/eval.json"
    shards = shard_list(job, "eval")
    assert all(s["kind"] == "users" for s in shards)
    assert [s["stop"] - s["start"] for s in shards] == [5] * (len(eligible) // 5) + (
        [len(eligible) % 5] if len(eligible) % 5 else [])
    rows_train, seen_train = job.npz("user_rows_train"), job.npz("seen_train")
    sample: list[int] = []
    parts = []
    for s in shards:
        prefix = job.out / s["prefix"]
        assert s["prefix"] == f"shards/eval/{s['shard']:05d}/"
        index = np.load(prefix / "user_index.npy")
        sample += index.tolist()
        assert (sp.load_npz(prefix / "user_rows.npz") != rows_train[index]).nnz == 0
        assert (sp.load_npz(prefix / "seen.npz") != seen_train[index]).nnz == 0
        part = pd.read_csv(prefix / "holdout.csv")
        assert list(part.columns) == ["user_index", "item_index", "rating", "relevant"]
        assert set(part["user_index"]) == set(index.tolist())  # only this shard's users, all of them
        parts.append(part)
    assert sample == eligible
    expected = holdout[holdout["user_index"].isin(eligible)].reset_index(drop=True)
    pd.testing.assert_frame_equal(pd.concat(parts, ignore_index=True), expected)


def test_eval_sample_is_seeded_and_sized(make_job: Any) -> None:
    def sample(name: str, **config: Any) -> list[int]:
        job = make_job(name)
        manifest = run(job, **config)
        index = [np.load(job.out / s["prefix"] / "user_index.npy") for s in shard_list(job, "eval")]
        users = np.concatenate(index).tolist()
        assert manifest["counts"]["eval_users"] == len(users)
        return users

    first = sample("a", **{"evaluation.sample_users": 4})
    assert len(first) == 4 and first == sorted(first)
    assert sample("b", **{"evaluation.sample_users": 4}) == first
    others = [sample(f"seed{seed}", **{"evaluation.sample_users": 4, "processing.seed": seed})
              for seed in (1, 2, 3)]
    assert any(o != first for o in others)


def test_eval_sample_function() -> None:
    users = np.array([0, 0, 1, 1, 2, 3, 3, 4])
    holdout = np.array([0, 1, 0, 1, 1, 1, 1, 0], dtype=bool)
    positive = np.array([1, 1, 1, 0, 1, 0, 1, 1], dtype=bool)
    # eligible: 0 (row 1), 2 (row 4), 3 (row 6); 1's holdout is not relevant, 4 has none
    assert eval_sample(users, holdout, positive, 10, 0).tolist() == [0, 2, 3]
    picks = {tuple(eval_sample(users, holdout, positive, 2, seed).tolist()) for seed in range(20)}
    assert all(len(p) == 2 and set(p) <= {0, 2, 3} and list(p) == sorted(p) for p in picks)
    assert len(picks) > 1
    assert eval_sample(users, holdout, positive, 2, 5).tolist() == eval_sample(users, holdout, positive, 2,
                                                                              5).tolist()


def test_without_holdout_there_is_no_eval_shard_list(job: Job) -> None:
    manifest = run(job, **{"evaluation.holdout_fraction": 0})
    assert manifest["shards"]["eval"] is None and manifest["counts"]["eval_users"] == 0
    assert not (job.out / "shards" / "eval.json").exists()


def test_popularity_counts_the_users_of_each_item(job: Job) -> None:
    manifest = run(job)
    assert manifest["files"]["popularity_all"] == "meta/popularity_all.npy"
    assert manifest["files"]["popularity_train"] == "meta/popularity_train.npy"
    every = np.load(job.out / "meta" / "popularity_all.npy")
    train = np.load(job.out / "meta" / "popularity_train.npy")
    assert every.dtype == np.int64 and every.tolist() == np.diff(job.npz("seen_all").tocsc().indptr).tolist()
    assert train.tolist() == np.diff(job.npz("seen_train").tocsc().indptr).tolist()
    assert (train <= every).all() and train.sum() < every.sum()


@pytest.mark.parametrize("instances", [1, 3])
def test_fm_channels_have_several_part_files_per_instance(make_job: Any, instances: int) -> None:
    job = make_job(f"fm{instances}")
    manifest = run(job, **{"resources.fm_instance_count": instances})
    for name in ("train", "full"):
        files = sorted(p.name for p in (job.out / name).glob("*.pbr"))
        assert len(files) >= 4 * instances
        assert manifest["parts"][name] == [f"{name}/{f}" for f in files]
        x, labels = job.read_set(name)
        assert x.shape[0] == len(labels) == manifest["counts"][f"{name}_rows"]
    assert manifest["parts"]["test"] == ["test/part-00000.pbr"]


def test_part_files_keep_the_rows_in_the_same_order(make_job: Any) -> None:
    one, three = make_job("one"), make_job("three")
    run(one)
    run(three, **{"resources.fm_instance_count": 3})
    for name in ("train", "full"):
        a, la = one.read_set(name)
        b, lb = three.read_set(name)
        assert (a != b).nnz == 0 and np.array_equal(la, lb)
