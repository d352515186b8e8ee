"""Repackage: the real FM artifact -> item and user vectors whose inner product ranks as the FM does."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any

import boto3
import numpy as np
import pytest
import scipy.sparse as sp
from moto import mock_aws

from lambdas.repackage import handler
from lambdas.repackage.repackage import RepackageRequest, repackage
from recpipe import vectors
from recpipe.formats import recordio
from recpipe.formats.fm_model import save_fm_model
from recpipe.lambda_errors import InputError, NotFoundError, SchemaVersionError
from tests.fixtures import FM

FIXTURE = FM
BUCKET = "recpipe-test"
N_USERS, N_ITEMS, FEATURES = 7, 11, 18  # the fixture's sizes: user ids first, then item ids
PROCESSED = "runs/r1/processed/"


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    with mock_aws():
        client: Any = boto3.client("s3")
        client.create_bucket(Bucket=BUCKET)
        yield client


def feature_rows() -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """One-hot user rows; item rows with their id plus a second, real-valued item column (a stand-in
    for a side feature, so that b_i must carry the item's own pairwise term)."""
    user_rows = sp.eye(N_USERS, FEATURES, format="csr")
    items = np.zeros((N_ITEMS, FEATURES))
    for i in range(N_ITEMS):
        items[i, N_USERS + i] = 1.0
        items[i, N_USERS + (i + 3) % N_ITEMS] = 0.5
    return user_rows, sp.csr_matrix(items)


def put_npz(s3: Any, key: str, matrix: sp.csr_matrix) -> None:
    buf = io.BytesIO()
    sp.save_npz(buf, matrix)
    s3.put_object(Bucket=BUCKET, Key=key, Body=buf.getvalue())


def setup_run(s3: Any, **manifest_changes: Any) -> dict[str, Any]:
    user_rows, item_rows = feature_rows()
    manifest = {
        "schema_version": 1,
        "counts": {"users": N_USERS, "items": N_ITEMS},
        "feature_dim": FEATURES,
        "files": {"user_rows": "meta/user_rows.npz", "item_rows": "meta/item_rows.npz"},
        **manifest_changes,
    }
    s3.put_object(Bucket=BUCKET, Key=PROCESSED + "manifest.json", Body=json.dumps(manifest).encode())
    put_npz(s3, PROCESSED + "meta/user_rows.npz", user_rows)
    put_npz(s3, PROCESSED + "meta/item_rows.npz", item_rows)
    model = (FIXTURE / "model.tar.gz").read_bytes()
    s3.put_object(Bucket=BUCKET, Key="runs/r1/serve/fm/model.tar.gz", Body=model)
    return {
        "run_id": "r1",
        "variant": "serve",
        "model_artifact": f"s3://{BUCKET}/runs/r1/serve/fm/model.tar.gz",
        "manifest": f"s3://{BUCKET}/{PROCESSED}manifest.json",
        "output_prefix": f"s3://{BUCKET}/runs/r1/serve/vectors/",
        "user_shards": 3,
    }


def read(s3: Any, uri: str) -> tuple[np.ndarray, np.ndarray | None]:
    bucket, key = uri[len("s3://"):].split("/", 1)
    return recordio.read_dense(s3.get_object(Bucket=bucket, Key=key)["Body"].read())


def fm_score(x: np.ndarray, V: np.ndarray, w: np.ndarray, w0: float) -> float:
    n = x.size
    pairs = sum(float(V[j] @ V[m]) * x[j] * x[m] for j in range(n) for m in range(j + 1, n))
    return w0 + float(w @ x) + pairs


def test_vectors_rank_items_as_the_fm_scores_them(s3: Any) -> None:
    event = setup_run(s3)
    result = handler.lambda_handler(event, None, s3=s3)
    prefix = f"s3://{BUCKET}/runs/r1/serve/vectors/"
    assert result["items_prefix"] == prefix + "items/" and result["users_prefix"] == prefix + "users/"
    assert (result["dimension"], result["n_items"], result["n_users"]) == (5, N_ITEMS, N_USERS)
    assert result["user_files"] == [prefix + "users/" + vectors.user_shard_name(a, b)
                                    for a, b in [(0, 2), (2, 5), (5, 7)]]

    items, labels = read(s3, prefix + "items/items.pbr")
    assert items.shape == (N_ITEMS, 5) and items.dtype == np.float32
    assert labels is not None
    np.testing.assert_array_equal(labels.ravel(), np.arange(N_ITEMS))
    users = np.vstack([read(s3, uri)[0] for uri in result["user_files"]])
    assert all(read(s3, uri)[1] is None for uri in result["user_files"])
    np.testing.assert_array_equal(users[:, -1], 1.0)

    expected = np.load(FIXTURE / "expected.npz")
    V, w = expected["V"].astype(np.float64), expected["w"].ravel().astype(np.float64)
    w0 = float(expected["b"][0])
    user_rows, item_rows = feature_rows()
    got = users.astype(np.float64) @ items.astype(np.float64).T
    for u in range(N_USERS):
        xu = user_rows[u].toarray().ravel()
        user_only = w0 + w @ xu  # a one-hot user row has no pairwise term of its own
        for i in range(N_ITEMS):
            x = xu + item_rows[i].toarray().ravel()
            assert got[u, i] == pytest.approx(fm_score(x, V, w, w0) - user_only, abs=1e-6), (u, i)


def test_random_fm_with_user_and_item_side_features(s3: Any) -> None:
    """Through the whole Lambda (artifact, recordio, shards): user . item = FM score - user-only terms."""
    rng = np.random.default_rng(11)
    n_users, n_items, user_side, item_side, k = 5, 6, 3, 4, 3
    dim = n_users + n_items + user_side + item_side
    users = np.zeros((n_users, dim))
    users[np.arange(n_users), np.arange(n_users)] = 1.0
    users[:, n_users + n_items:n_users + n_items + user_side] = rng.uniform(0, 1, (n_users, user_side))
    items = np.zeros((n_items, dim))
    items[np.arange(n_items), n_users + np.arange(n_items)] = 1.0
    present = rng.random((n_items, item_side)) < 0.6
    items[:, dim - item_side:] = rng.uniform(0, 1, (n_items, item_side)) * present
    V = rng.normal(size=(dim, k)).astype(np.float32)
    w = rng.normal(size=dim).astype(np.float32)
    w0 = 0.5
    buf = io.BytesIO()
    save_fm_model(buf, V, w, np.array([w0], dtype=np.float32))
    event = setup_run(s3, counts={"users": n_users, "items": n_items}, feature_dim=dim)
    put_npz(s3, PROCESSED + "meta/user_rows.npz", sp.csr_matrix(users))
    put_npz(s3, PROCESSED + "meta/item_rows.npz", sp.csr_matrix(items))
    s3.put_object(Bucket=BUCKET, Key="runs/r1/serve/fm/model.tar.gz", Body=buf.getvalue())

    result = handler.lambda_handler({**event, "user_shards": 2}, None, s3=s3)
    item_vecs = read(s3, result["items_prefix"] + "items.pbr")[0].astype(np.float64)
    user_vecs = np.vstack([read(s3, uri)[0] for uri in result["user_files"]]).astype(np.float64)
    V64, w64 = V.astype(np.float64), w.astype(np.float64)
    for u in range(n_users):
        user_only = fm_score(users[u], V64, w64, w0)  # w0, the user's linear and own pairwise terms
        for i in range(n_items):
            expected = fm_score(users[u] + items[i], V64, w64, w0) - user_only
            assert user_vecs[u] @ item_vecs[i] == pytest.approx(expected, rel=1e-5, abs=1e-5), (u, i)


def test_a_retry_with_fewer_shards_removes_the_old_shards(s3: Any) -> None:
    event = setup_run(s3)
    repackage(RepackageRequest.from_event({**event, "user_shards": 5}), s3=s3)
    result = repackage(RepackageRequest.from_event({**event, "user_shards": 2}), s3=s3)
    listed = s3.list_objects_v2(Bucket=BUCKET, Prefix="runs/r1/serve/vectors/users/")["Contents"]
    assert sorted(f"s3://{BUCKET}/{o['Key']}" for o in listed) == result["user_files"]
    assert len(result["user_files"]) == 2


def test_more_shards_than_users_gives_one_file_per_user(s3: Any) -> None:
    event = setup_run(s3)
    result = repackage(RepackageRequest.from_event({**event, "user_shards": 50}), s3=s3)
    ranges = [vectors.parse_user_shard(uri) for uri in result["user_files"]]
    assert ranges == [(u, u + 1) for u in range(N_USERS)]


GOOD = {"run_id": "r1", "variant": "serve", "model_artifact": "s3://b/m.tar.gz", "manifest": "s3://b/m.json",
        "output_prefix": "s3://b/v/", "user_shards": 4}


@pytest.mark.parametrize(
    ("event", "message"),
    [
        (None, "must be a JSON object"),
        ({k: v for k, v in GOOD.items() if k != "model_artifact"}, "lacks 'model_artifact'"),
        ({**GOOD, "user_shards": 0}, r"'user_shards' must be an int in \[1, 1000\], got 0"),
        ({**GOOD, "user_shards": 2.5}, "'user_shards' must be an int"),
        ({**GOOD, "variant": ""}, "'variant' must be a non-empty string"),
        ({**GOOD, "output_prefix": "v/"}, "Expected an S3 URI"),
    ],
)
def test_malformed_events_are_rejected(event: Any, message: str) -> None:
    with pytest.raises(InputError, match=message):
        RepackageRequest.from_event(event)


def test_missing_artifact_is_named(s3: Any) -> None:
    event = setup_run(s3)
    s3.delete_object(Bucket=BUCKET, Key="runs/r1/serve/fm/model.tar.gz")
    with pytest.raises(NotFoundError, match=f"s3://{BUCKET}/runs/r1/serve/fm/model.tar.gz does not exist"):
        handler.lambda_handler(event, None, s3=s3)


def test_manifest_schema_version_is_checked(s3: Any) -> None:
    event = setup_run(s3, schema_version=7)
    with pytest.raises(SchemaVersionError, match="schema_version 7"):
        handler.lambda_handler(event, None, s3=s3)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"feature_dim": 20}, "has shape \\(7, 18\\); expected \\(7, 20\\)"),
        ({"counts": {"users": 7}}, "no valid 'counts.items'"),
        ({"files": {"user_rows": "meta/user_rows.npz"}}, "no 'files.item_rows' entry"),
        ({"files": {"user_rows": "meta/user_rows.npz", "item_rows": "meta/missing.npz"}},
         "meta/missing.npz does not exist"),
    ],
)
def test_inconsistent_processing_output_is_refused(s3: Any, changes: dict[str, Any], message: str) -> None:
    event = setup_run(s3, **changes)
    with pytest.raises((InputError, NotFoundError), match=message):
        handler.lambda_handler(event, None, s3=s3)


def test_model_of_another_feature_dim_is_refused(s3: Any) -> None:
    event = setup_run(s3)
    user_rows, item_rows = feature_rows()
    put_npz(s3, PROCESSED + "meta/user_rows.npz", sp.hstack([user_rows, sp.csr_matrix((N_USERS, 2))]).tocsr())
    put_npz(s3, PROCESSED + "meta/item_rows.npz", sp.hstack([item_rows, sp.csr_matrix((N_ITEMS, 2))]).tocsr())
    s3.put_object(Bucket=BUCKET, Key=PROCESSED + "manifest.json", Body=json.dumps({
        "schema_version": 1, "counts": {"users": N_USERS, "items": N_ITEMS}, "feature_dim": 20,
        "files": {"user_rows": "meta/user_rows.npz", "item_rows": "meta/item_rows.npz"},
    }).encode())
    with pytest.raises(InputError, match="model has 18 features but the manifest's feature_dim is 20"):
        handler.lambda_handler(event, None, s3=s3)


def test_artifact_that_is_not_a_model_is_refused(s3: Any) -> None:
    event = setup_run(s3)
    s3.put_object(Bucket=BUCKET, Key="runs/r1/serve/fm/model.tar.gz", Body=b"not a tarball")
    with pytest.raises(InputError, match=r"model\.tar\.gz is not a Factorization Machines model artifact"):
        handler.lambda_handler(event, None, s3=s3)
