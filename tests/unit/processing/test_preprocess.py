"""Behaviour of the processing step on small inputs with known answers."""

from __future__ import annotations

import math
from collections.abc import Callable
from fractions import Fraction

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from tests.unit.processing.conftest import Job
from workflows.processing import write
from workflows.processing.negatives import sample_negatives


def random_interactions(n_users: int = 30, n_items: int = 60, per_user: int = 12, seed: int = 0,
                        ts_range: int = 8) -> pd.DataFrame:
    """Distinct (user, item) pairs, ratings 1..5, few distinct timestamps so that ties happen."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        n = int(rng.integers(1, per_user + 1))
        for i in rng.choice(n_items, size=n, replace=False):
            rows.append((100 + u, 1000 + int(i), int(rng.integers(1, 6)), int(rng.integers(0, ts_range))))
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"])
    return frame.sample(frac=1.0, random_state=seed).reset_index(drop=True)


def reference_holdout(frame: pd.DataFrame, fraction: float) -> set[tuple[int, int]]:
    """The rule, written plainly: per user the last ceil(f * n) by (timestamp, item id)."""
    held: set[tuple[int, int]] = set()
    for user, group in frame.groupby("user_id"):
        assert isinstance(user, int | np.integer)
        ordered = group.sort_values(["timestamp", "item_id"], kind="stable")
        n_hold = math.ceil(Fraction(str(fraction)) * len(ordered))
        held |= {(int(user), int(i)) for i in ordered["item_id"].iloc[len(ordered) - n_hold:]}
    return held


def row_dict(matrix: sp.csr_matrix, row: int) -> dict[int, float]:
    return dict(zip(matrix[row].indices.tolist(), matrix[row].data.tolist(), strict=True))


def as_ids(job: Job, users: np.ndarray, items: np.ndarray) -> set[tuple[int, int]]:
    uid, iid = job.ids("user"), job.ids("item")
    return {(int(uid[u]), int(iid[i])) for u, i in zip(users.tolist(), items.tolist(), strict=True)}


# --- layout ------------------------------------------------------------------------------------


USERS_CSV = "user_id,age,gender,tags\n100,24,M,a|b\n101,9,F,\n102,53,F,b\n999,30,M,c\n"
ITEMS_CSV = "item_id,year,genres\n1000,1995,Comedy|Drama|Romance\n1001,1977,Drama\n1002,,\n"


def test_layout_feature_rows_and_training_rows_are_their_sums(job: Job) -> None:
    job.write("interactions/i.csv", "user_id,item_id,rating,timestamp\n"
              "100,1000,5,1\n100,1001,4,2\n101,1000,5,3\n101,1003,4,4\n102,1002,5,5\n103,1001,4,6\n"
              "103,1000,5,7\n102,1003,1,8\n")
    job.write("users/u.csv", USERS_CSV)
    job.write("items/i.csv", ITEMS_CSV)
    job.config(**{"evaluation.holdout_fraction": 0.3, "processing.negatives_per_positive": 1})
    manifest = job.run()

    n_users, n_items = 4, 4  # users 100..103, items 1000..1003
    layout = manifest["layout"]
    assert manifest["counts"]["users"] == n_users and manifest["counts"]["items"] == n_items
    assert layout["users"] == [0, n_users] and layout["items"] == [n_users, n_items]
    # user features: age (9, 24, 53 of users in the interactions; 30 belongs to user 999 who has none),
    # gender (F, M), tags (a, b); item features: year (1977, 1995), genres (Comedy, Drama, Romance)
    base = n_users + n_items
    assert layout["user_features"] == {"age": [base, 3], "gender": [base + 3, 2], "tags": [base + 5, 2]}
    assert layout["item_features"] == {"year": [base + 7, 2], "genres": [base + 9, 3]}
    assert manifest["feature_dim"] == base + 12
    values = pd.read_json(job.out / "meta" / "features.json", typ="series")
    assert values["user_features"]["age"] == ["9", "24", "53"]  # numeric order, not "24" < "53" < "9"
    assert job.ids("user") == ["100", "101", "102", "103"]
    assert job.ids("item") == ["1000", "1001", "1002", "1003"]

    xu, xi = job.npz("user_rows"), job.npz("item_rows")
    dim = manifest["feature_dim"]
    assert xu.shape == (n_users, dim) and xi.shape == (n_items, dim)
    age, gender, tags = (layout["user_features"][c][0] for c in ("age", "gender", "tags"))
    year, genres = (layout["item_features"][c][0] for c in ("year", "genres"))
    expected_u0 = {0: 1.0, age + 1: 1.0, gender + 1: 1.0, tags: 0.5, tags + 1: 0.5}  # 100: 24, M, a|b
    assert row_dict(xu, 0) == expected_u0
    assert row_dict(xu, 1) == {1: 1.0, age: 1.0, gender: 1.0}
    assert xu[3].indices.tolist() == [3]  # user 103 is not in the user table: id only
    third = pytest.approx(1 / 3)
    assert row_dict(xi, 0) == {n_users: 1.0, year + 1: 1.0,
                               genres: third, genres + 1: third, genres + 2: third}
    assert xi[2].indices.tolist() == [n_users + 2]  # empty cells: no feature
    assert xi[3].indices.tolist() == [n_users + 3]  # not in the item table

    for name in ("train", "test", "full"):
        x, _ = job.read_set(name)
        users, items, _ = job.pairs(name)
        expected = (xu[users] + xi[items]).toarray()
        np.testing.assert_array_equal(x.toarray(), expected)


@pytest.mark.parametrize(("spec", "columns"),
                         [("", []), ("gender", ["gender"]), (" tags , age", ["tags", "age"])])
def test_feature_column_selection(job: Job, spec: str, columns: list[str]) -> None:
    job.write("interactions/i.csv", "user_id,item_id\n100,1000\n101,1001\n")
    job.write("users/u.csv", USERS_CSV)
    job.config(**{"data.user_features": spec, "evaluation.holdout_fraction": 0.0})
    manifest = job.run()
    assert list(manifest["layout"]["user_features"]) == columns
    assert manifest["layout"]["item_features"] == {}


def test_ids_only_layout_without_tables(job: Job) -> None:
    job.write("interactions/i.csv", "user_id,item_id\nb,x\na,y\nc,x\n")
    job.config(**{"evaluation.holdout_fraction": 0.0, "processing.negatives_per_positive": 0})
    manifest = job.run()
    assert manifest["feature_dim"] == 3 + 2
    assert job.ids("user") == ["a", "b", "c"] and job.ids("item") == ["x", "y"]
    users, items, labels = job.pairs("full")
    assert as_ids_str(job, users, items) == {("b", "x"), ("a", "y"), ("c", "x")}
    assert (labels == 1).all()
    assert manifest["files"]["test"] is None and manifest["files"]["holdout"] is None
    assert not (job.out / "test").exists()


def as_ids_str(job: Job, users: np.ndarray, items: np.ndarray) -> set[tuple[str, str]]:
    uid, iid = job.ids("user"), job.ids("item")
    return {(uid[u], iid[i]) for u, i in zip(users.tolist(), items.tolist(), strict=True)}


# --- negative sampling ---------------------------------------------------------------------------


def test_negatives_avoid_interactions_and_keep_the_ratio(job: Job) -> None:
    frame = random_interactions(n_users=25, n_items=300, per_user=15, seed=3)
    job.write("interactions/i.csv", frame)
    k = 3
    job.config(**{"processing.negatives_per_positive": k, "evaluation.holdout_fraction": 0.25})
    manifest = job.run()
    everything = {(int(u), int(i)) for u, i in zip(frame.user_id, frame.item_id, strict=True)}
    held = reference_holdout(frame, 0.25)
    train_seen = everything - held
    positive = {(int(u), int(i)) for u, i, r in zip(frame.user_id, frame.item_id, frame.rating, strict=True)
                if r >= 4}
    expected_positives = {"train": positive - held, "test": positive & held, "full": positive}
    excluded = {"train": train_seen, "test": everything, "full": everything}
    total_negatives = {}
    for name in ("train", "test", "full"):
        users, items, labels = job.pairs(name)
        pos = labels == 1
        assert set(np.unique(labels).tolist()) <= {0.0, 1.0}
        assert as_ids(job, users[pos], items[pos]) == expected_positives[name]
        neg_pairs = list(zip(users[~pos].tolist(), items[~pos].tolist(), strict=True))
        assert len(set(neg_pairs)) == len(neg_pairs), "a user got the same negative twice"
        negatives = as_ids(job, users[~pos], items[~pos])
        assert not negatives & excluded[name]
        # no user is short of unseen items here, so the ratio holds exactly, per user
        n_pos = np.bincount(users[pos], minlength=manifest["counts"]["users"])
        n_neg = np.bincount(users[~pos], minlength=manifest["counts"]["users"])
        np.testing.assert_array_equal(n_neg, k * n_pos)
        total_negatives[name] = int((~pos).sum())
    # the train set's negatives may be holdout items (it never looks at the holdout), never train items
    assert manifest["counts"]["negatives"] == total_negatives["full"]
    assert manifest["counts"]["train_negatives"] == total_negatives["train"]
    assert manifest["counts"]["positives"] == len(positive)


def test_sample_negatives_caps_at_the_unseen_items_and_draws_uniformly() -> None:
    seen = sp.csr_matrix(np.array([[1, 1, 0, 0, 0], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1], [0, 1, 0, 0, 0]]),
                         dtype=np.float32)
    users, items = sample_negatives(seen, np.array([10, 2, 4, 1]), np.random.default_rng(0))
    by_user = {u: sorted(items[users == u].tolist()) for u in range(4)}
    assert by_user[0] == [2, 3, 4]  # wanted 10, only 3 unseen: all of them
    assert len(by_user[1]) == 2 and len(set(by_user[1])) == 2
    assert by_user[2] == []  # nothing unseen
    assert len(by_user[3]) == 1 and by_user[3][0] != 1
    # uniform: a user with nothing seen draws each of 5 items ~ equally often
    many = sp.csr_matrix((2000, 5), dtype=np.float32)
    _, drawn = sample_negatives(many, np.ones(2000, dtype=np.int64), np.random.default_rng(1))
    shares = np.bincount(drawn, minlength=5) / 2000
    assert np.all(np.abs(shares - 0.2) < 0.04)


# --- holdout ------------------------------------------------------------------------------------


@pytest.mark.parametrize("fraction", [0.1, 0.3, 0.5])
def test_holdout_is_the_most_recent_ceil_f_n_ties_by_item(job: Job, fraction: float) -> None:
    frame = random_interactions(n_users=40, n_items=30, per_user=11, seed=7, ts_range=4)
    job.write("interactions/i.csv", frame)
    job.config(**{"evaluation.holdout_fraction": fraction})
    manifest = job.run()
    holdout = job.holdout()
    assert list(holdout.columns) == ["user_index", "item_index", "rating", "relevant"]
    got = as_ids(job, holdout.user_index.to_numpy(), holdout.item_index.to_numpy())
    assert got == reference_holdout(frame, fraction)
    assert manifest["counts"]["holdout"] == len(got)
    ratings = {(int(u), int(i)): r
               for u, i, r in zip(frame.user_id, frame.item_id, frame.rating, strict=True)}
    uid, iid = job.ids("user"), job.ids("item")
    for u, i, r, relevant in holdout.itertuples(index=False, name=None):
        rating = ratings[(int(uid[u]), int(iid[i]))]
        assert r == rating and relevant == int(rating >= 4)
    seen_train, seen_all = job.npz("seen_train"), job.npz("seen_all")
    assert seen_all.nnz == len(frame) and seen_train.nnz == len(frame) - len(got)
    assert (seen_all - seen_train).nnz == len(got)


def test_holdout_without_timestamps_uses_file_order(job: Job) -> None:
    job.write("interactions/a.csv", "user_id,item_id\n1,50\n1,10\n1,40\n")
    job.write("interactions/b.csv", "user_id,item_id\n1,30\n1,20\n2,10\n")
    job.config(**{"evaluation.holdout_fraction": 0.4})  # user 1: ceil(0.4 * 5) = 2, user 2: ceil(0.4) = 1
    job.run()
    holdout = job.holdout()
    assert as_ids(job, holdout.user_index.to_numpy(), holdout.item_index.to_numpy()) == {(1, 30), (1, 20),
                                                                                          (2, 10)}
    assert (holdout.rating == 1).all() and (holdout.relevant == 1).all()


# --- duplicates, filters, modes -------------------------------------------------------------------


def test_duplicates_keep_the_latest_and_are_counted(job: Job) -> None:
    job.write("interactions/i.csv", "user_id,item_id,rating,timestamp\n"
              "1,10,2,5\n1,10,5,9\n2,10,4,1\n1,10,3,9\n1,11,1,3\n1,11,4,2\n")
    job.config(**{"processing.mode": "explicit", "evaluation.holdout_fraction": 0.0})
    manifest = job.run()
    assert manifest["counts"]["duplicates"] == 3
    assert manifest["counts"]["interactions"] == 3
    users, items, labels = job.pairs("full")
    uid, iid = job.ids("user"), job.ids("item")
    got = {(int(uid[u]), int(iid[i])): lab
           for u, i, lab in zip(users.tolist(), items.tolist(), labels.tolist(), strict=True)}
    # (1,10): times 5, 9, 9 -> the later line of the two at time 9; (1,11): time 3 beats time 2
    assert got == {(1, 10): 3.0, (2, 10): 4.0, (1, 11): 1.0}


def test_min_counts_are_applied_until_stable(job: Job) -> None:
    # user 3 has one interaction -> dropped; then item 12 has one -> dropped; then user 2 has one -> dropped
    job.write("interactions/i.csv", "user_id,item_id\n1,10\n1,11\n4,10\n4,11\n2,11\n2,12\n3,12\n")
    job.config(**{"processing.min_user_interactions": 2, "processing.min_item_interactions": 2,
                  "evaluation.holdout_fraction": 0.0})
    manifest = job.run()
    assert job.ids("user") == ["1", "4"] and job.ids("item") == ["10", "11"]
    assert manifest["counts"]["interactions"] == 4 and manifest["counts"]["filtered"] == 3


def test_explicit_mode_labels_are_ratings_without_negatives(job: Job) -> None:
    frame = random_interactions(seed=5)
    frame["rating"] = frame["rating"] / 2  # half stars
    job.write("interactions/i.csv", frame)
    job.config(**{"processing.mode": "explicit"})
    manifest = job.run()
    _, _, train = job.pairs("train")
    _, _, test = job.pairs("test")
    assert sorted(np.concatenate([train, test]).tolist()) == sorted(frame.rating.astype(np.float32).tolist())
    assert manifest["counts"]["negatives"] == 0 and manifest["counts"]["full_rows"] == len(frame)


def test_ids_that_turn_from_numbers_to_strings_deep_in_a_file(job: Job) -> None:
    n = 300_000  # past the C parser's first chunks, which then parse the column as integers
    lines = [f"{u % 1000},{u % 7}\n" for u in range(n)] + ["u1,0\n", "1,x\n"]
    job.write("interactions/i.csv", "user_id,item_id\n" + "".join(lines))
    job.config(**{"evaluation.holdout_fraction": 0.0, "processing.negatives_per_positive": 0})
    manifest = job.run()
    assert manifest["counts"]["users"] == 1001 and manifest["counts"]["items"] == 8
    assert manifest["counts"]["duplicates"] == n - 7000  # 1000 users x 7 items
    assert "u1" in job.ids("user") and "x" in job.ids("item") and "999" in job.ids("user")


def test_parquet_iso_timestamps_and_several_files(job: Job) -> None:
    frame = random_interactions(seed=11)
    dates = pd.Timestamp("2024-01-01", tz="UTC") + pd.to_timedelta(frame.timestamp, unit="h")
    half = len(frame) // 2
    job.write("interactions/part-0.parquet", frame.iloc[:half])
    iso = frame.iloc[half:].assign(timestamp=dates.iloc[half:].dt.strftime("%Y-%m-%dT%H:%M:%SZ"))
    job.write("interactions/part-1.csv", iso)
    job.write("interactions/_SUCCESS", "")
    job.config(**{"evaluation.holdout_fraction": 0.3})
    manifest = job.run()
    # numbers (epoch seconds) in one file, ISO dates in the other: ordered by the instant they denote
    seconds = (dates - pd.Timestamp("1970-01-01", tz="UTC")).dt.total_seconds().astype(np.int64)
    instants = frame.assign(timestamp=np.concatenate([frame.timestamp.iloc[:half], seconds.iloc[half:]]))
    holdout = job.holdout()
    got = as_ids(job, holdout.user_index.to_numpy(), holdout.item_index.to_numpy())
    assert got == reference_holdout(instants, 0.3)
    paths = [i["path"] for i in manifest["inputs"]]
    assert paths == ["interactions/part-0.parquet", "interactions/part-1.csv"]
    assert [i["rows"] for i in manifest["inputs"]] == [half, len(frame) - half]
    assert all(len(i["sha256"]) == 64 for i in manifest["inputs"])
    assert manifest["counts"]["interactions"] == len(frame)


def test_parquet_epoch_and_iso_csv_agree(make_job: Callable[[str], Job]) -> None:
    frame = random_interactions(seed=12)
    epoch = make_job("epoch")
    epoch.write("interactions/i.parquet", frame.assign(timestamp=frame.timestamp * 3600))
    iso = make_job("iso")
    dates = pd.Timestamp("1970-01-01", tz="UTC") + pd.to_timedelta(frame.timestamp, unit="h")
    iso.write("interactions/i.csv", frame.assign(timestamp=dates.dt.strftime("%Y-%m-%dT%H:%M:%S+00:00")))
    for j in (epoch, iso):
        j.config(**{"evaluation.holdout_fraction": 0.3})
        j.run()
    assert epoch.holdout().equals(iso.holdout())
    held = epoch.holdout()
    got = as_ids(epoch, held.user_index.to_numpy(), held.item_index.to_numpy())
    assert got == reference_holdout(frame, 0.3)


# --- determinism and shards ---------------------------------------------------------------------


def test_same_seed_same_bytes_other_seed_other_negatives(make_job: Callable[[str], Job]) -> None:
    frame = random_interactions(seed=2)
    jobs = [make_job(name) for name in ("a", "b", "c")]
    for j, seed in zip(jobs, (7, 7, 8), strict=True):
        j.write("interactions/i.csv", frame)
        j.write("users/u.csv", "user_id,g\n" + "".join(f"{100 + u},{u % 3}\n" for u in range(30)))
        j.config(**{"processing.seed": seed})
        j.run()
    a, b, _ = (sorted(p for p in j.out.rglob("*") if p.is_file()) for j in jobs)
    assert [p.relative_to(jobs[0].out) for p in a] == [p.relative_to(jobs[1].out) for p in b]
    for pa, pb in zip(a, b, strict=True):
        assert pa.read_bytes() == pb.read_bytes(), pa.name
    train_a = (jobs[0].out / "train" / "part-00000.pbr").read_bytes()
    train_c = (jobs[2].out / "train" / "part-00000.pbr").read_bytes()
    assert train_a != train_c


def test_shards_are_bounded_and_whole(job: Job, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(write, "MAX_SHARD_BYTES", 3000)
    job.write("interactions/i.csv", random_interactions(seed=4))
    job.config(**{"evaluation.holdout_fraction": 0.0})
    manifest = job.run()
    files = sorted((job.out / "full").glob("part-*.pbr"))
    assert len(files) > 3
    assert all(f.stat().st_size <= 3000 for f in files)
    x, labels = job.read_set("full")
    assert x.shape[0] == len(labels) == manifest["counts"]["full_rows"]


def test_rows_are_shuffled(job: Job) -> None:
    job.write("interactions/i.csv", random_interactions(n_users=30, seed=9))
    job.config(**{"evaluation.holdout_fraction": 0.0})
    job.run()
    users, _, labels = job.pairs("full")
    assert not np.all(np.diff(users) >= 0)
    assert not np.all(np.diff(labels) <= 0)


def test_rerun_replaces_previous_output(job: Job) -> None:
    job.write("interactions/i.csv", random_interactions(seed=1))
    job.run()
    stale = job.out / "train" / "part-09999.pbr"
    stale.write_bytes(b"old")
    job.run()
    assert not stale.exists()
