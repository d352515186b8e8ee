"""Repackage: the real FM artifact -> item and user vectors whose inner product ranks as the FM does."""

from __future__ import annotations

import io
import itertools
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


def put_json(s3: Any, key: str, document: Any) -> None:
    s3.put_object(Bucket=BUCKET, Key=key, Body=json.dumps(document).encode())


def write_shards(s3: Any, variant: str, user_rows: sp.csr_matrix, bounds: list[int],
                 n_items: int = N_ITEMS) -> list[dict[str, Any]]:
    """The processing step's layout: ``shards/<variant>.json`` (user shards, then one item shard)
    and each user shard's ``user_rows.npz`` under its prefix."""
    entries: list[dict[str, Any]] = []
    for shard, (start, stop) in enumerate(itertools.pairwise(bounds)):
        prefix = f"shards/{variant}/{shard:05d}/"
        entries.append({"kind": "users", "shard": shard, "start": start, "stop": stop, "prefix": prefix})
        put_npz(s3, PROCESSED + prefix + "user_rows.npz", sp.csr_matrix(user_rows[start:stop]))
    entries.append({"kind": "items", "shard": 0, "start": 0, "stop": n_items})
    put_json(s3, PROCESSED + f"shards/{variant}.json", entries)
    return entries


def setup_run(s3: Any, bounds: tuple[int, ...] = (0, 2, 5, 7), **manifest_changes: Any) -> dict[str, Any]:
    user_rows, item_rows = feature_rows()
    manifest = {
        "schema_version": 1,
        "counts": {"users": N_USERS, "items": N_ITEMS, "eval_users": 3},
        "feature_dim": FEATURES,
        "files": {"item_rows": "meta/item_rows.npz"},
        "shards": {"users_per_shard": 3, "serve": "shards/serve.json", "eval": "shards/eval.json"},
        **manifest_changes,
    }
    put_json(s3, PROCESSED + "manifest.json", manifest)
    write_shards(s3, "serve", user_rows, list(bounds))
    put_npz(s3, PROCESSED + "meta/item_rows.npz", item_rows)
    model = (FIXTURE / "model.tar.gz").read_bytes()
    s3.put_object(Bucket=BUCKET, Key="runs/r1/serve/fm/model.tar.gz", Body=model)
    return {
        "run_id": "r1",
        "variant": "serve",
        "model_artifact": f"s3://{BUCKET}/runs/r1/serve/fm/model.tar.gz",
        "manifest": f"s3://{BUCKET}/{PROCESSED}manifest.json",
        "output_prefix": f"s3://{BUCKET}/runs/r1/serve/vectors/",
    }


def user_files(s3: Any, prefix: str) -> list[str]:
    bucket, key = prefix[len("s3://"):].split("/", 1)
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=key).get("Contents", [])
    return sorted(f"s3://{bucket}/{o['Key']}" for o in listed)


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
    assert result["n_shards"] == 3
    files = user_files(s3, result["users_prefix"])
    assert files == [prefix + "users/" + vectors.user_shard_name(a, b) for a, b in [(0, 2), (2, 5), (5, 7)]]

    items, labels = read(s3, prefix + "items/items.pbr")
    assert items.shape == (N_ITEMS, 5) and items.dtype == np.float32
    assert labels is not None
    np.testing.assert_array_equal(labels.ravel(), np.arange(N_ITEMS))
    users = np.vstack([read(s3, uri)[0] for uri in files])
    assert users.dtype == np.float32
    assert all(read(s3, uri)[1] is None for uri in files)
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
    write_shards(s3, "serve", sp.csr_matrix(users), [0, 3, n_users], n_items)
    put_npz(s3, PROCESSED + "meta/item_rows.npz", sp.csr_matrix(items))
    s3.put_object(Bucket=BUCKET, Key="runs/r1/serve/fm/model.tar.gz", Body=buf.getvalue())

    result = handler.lambda_handler(event, None, s3=s3)
    item_vecs = read(s3, result["items_prefix"] + "items.pbr")[0].astype(np.float64)
    user_vecs = np.vstack([read(s3, uri)[0] for uri in user_files(s3, result["users_prefix"])])
    user_vecs = user_vecs.astype(np.float64)
    V64, w64 = V.astype(np.float64), w.astype(np.float64)
    for u in range(n_users):
        user_only = fm_score(users[u], V64, w64, w0)  # w0, the user's linear and own pairwise terms
        for i in range(n_items):
            expected = fm_score(users[u] + items[i], V64, w64, w0) - user_only
            assert user_vecs[u] @ item_vecs[i] == pytest.approx(expected, rel=1e-5, abs=1e-5), (u, i)


def test_a_retry_with_other_shards_removes_the_old_shards(s3: Any) -> None:
    event = setup_run(s3, bounds=(0, 1, 2, 3, 5, 7))
    repackage(RepackageRequest.from_event(event), s3=s3)
    write_shards(s3, "serve", feature_rows()[0], [0, 4, 7])
    result = repackage(RepackageRequest.from_event(event), s3=s3)
    assert result["n_shards"] == 2
    assert user_files(s3, result["users_prefix"]) == [
        result["users_prefix"] + vectors.user_shard_name(a, b) for a, b in [(0, 4), (4, 7)]]


def test_the_eval_variant_reads_its_sample_shards(s3: Any) -> None:
    """``shards/eval.json`` ranges are positions in the evaluation sample (here users 1, 4, 6)."""
    event = setup_run(s3)
    sample = feature_rows()[0][[1, 4, 6]]
    write_shards(s3, "eval", sample, [0, 2, 3])
    result = handler.lambda_handler({**event, "variant": "eval", "output_prefix": f"s3://{BUCKET}/e/"},
                                    None, s3=s3)
    assert (result["n_users"], result["n_shards"]) == (3, 2)
    files = user_files(s3, result["users_prefix"])
    assert [vectors.parse_user_shard(f) for f in files] == [(0, 2), (2, 3)]
    serve = handler.lambda_handler(event, None, s3=s3)
    serve_users = np.vstack([read(s3, f)[0] for f in user_files(s3, serve["users_prefix"])])
    np.testing.assert_array_equal(np.vstack([read(s3, f)[0] for f in files]), serve_users[[1, 4, 6]])


def test_the_payload_stays_small_whatever_the_shard_count(s3: Any) -> None:
    n_users = 300
    event = setup_run(s3, counts={"users": n_users, "items": N_ITEMS})
    rows = sp.csr_matrix(np.tile(feature_rows()[0].toarray(), (n_users // N_USERS + 1, 1))[:n_users])
    write_shards(s3, "serve", rows, list(range(0, n_users + 1, 2)))
    result = handler.lambda_handler(event, None, s3=s3)
    assert result["n_shards"] == 150 and len(user_files(s3, result["users_prefix"])) == 150
    assert len(json.dumps(result)) < 400


class FailingDeletes:
    """An S3 client whose DeleteObjects reports per-key errors (HTTP 200), as S3 does."""

    def __init__(self, s3: Any) -> None:
        self.s3 = s3

    def __getattr__(self, name: str) -> Any:
        return getattr(self.s3, name)

    def delete_objects(self, **kwargs: Any) -> dict[str, Any]:
        return {"Errors": [{"Key": o["Key"], "Code": "AccessDenied", "Message": "Access Denied"}
                           for o in kwargs["Delete"]["Objects"]]}


def test_objects_that_could_not_be_deleted_fail_the_step(s3: Any) -> None:
    event = setup_run(s3)
    s3.put_object(Bucket=BUCKET, Key="runs/r1/serve/vectors/users/users-0000000000-0000000007.pbr", Body=b"x")
    with pytest.raises(InputError, match=r"Could not delete 1 stale object\(s\).*users-0000000000-0000000007"
                                         r"\.pbr \(AccessDenied: Access Denied\).*s3:DeleteObject"):
        repackage(RepackageRequest.from_event(event), s3=FailingDeletes(s3))


GOOD = {"run_id": "r1", "variant": "serve", "model_artifact": "s3://b/m.tar.gz", "manifest": "s3://b/m.json",
        "output_prefix": "s3://b/v/"}


@pytest.mark.parametrize(
    ("event", "message"),
    [
        (None, "must be a JSON object"),
        ({k: v for k, v in GOOD.items() if k != "model_artifact"}, "lacks 'model_artifact'"),
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
        ({"feature_dim": 20}, "item_rows.npz has shape \\(11, 18\\); expected \\(11, 20\\)"),
        ({"counts": {"users": 7}}, "no valid 'counts.items'"),
        ({"counts": {"users": 8, "items": N_ITEMS}}, "cover users \\[0, 7\\) but there are 8"),
        ({"files": {}}, "no 'files.item_rows' entry"),
        ({"files": {"item_rows": "meta/missing.npz"}}, "meta/missing.npz does not exist"),
        ({"shards": {"serve": None}}, "lists no 'shards.serve' shard list; Repackage needs it"),
    ],
)
def test_inconsistent_processing_output_is_refused(s3: Any, changes: dict[str, Any], message: str) -> None:
    event = setup_run(s3, **changes)
    with pytest.raises((InputError, NotFoundError), match=message):
        handler.lambda_handler(event, None, s3=s3)


@pytest.mark.parametrize(("bounds", "message"), [
    ((0, 2, 2, 7), "the range \\[2, 2\\) is empty"),
    ((0, 2, 7, 9), "cover users \\[0, 9\\) but there are 7"),
])
def test_a_shard_list_that_does_not_tile_the_users_is_refused(s3: Any, bounds: tuple[int, ...],
                                                              message: str) -> None:
    event = setup_run(s3)
    user_rows = sp.vstack([feature_rows()[0], sp.csr_matrix((2, FEATURES))]).tocsr()
    write_shards(s3, "serve", user_rows, list(bounds))
    with pytest.raises(InputError, match=message):
        handler.lambda_handler(event, None, s3=s3)


def test_a_gap_between_shards_is_named(s3: Any) -> None:
    event = setup_run(s3)
    entries = write_shards(s3, "serve", feature_rows()[0], [0, 2, 5, 7])
    put_json(s3, PROCESSED + "shards/serve.json", [entries[0], entries[2], entries[3]])
    with pytest.raises(InputError, match=r"serve\.json: users \[2, 5\) are in no shard"):
        handler.lambda_handler(event, None, s3=s3)


def test_model_of_another_feature_dim_is_refused(s3: Any) -> None:
    event = setup_run(s3, feature_dim=20)
    user_rows, item_rows = feature_rows()
    write_shards(s3, "serve", sp.hstack([user_rows, sp.csr_matrix((N_USERS, 2))]).tocsr(), [0, 2, 5, 7])
    put_npz(s3, PROCESSED + "meta/item_rows.npz", sp.hstack([item_rows, sp.csr_matrix((N_ITEMS, 2))]).tocsr())
    with pytest.raises(InputError, match="model has 18 features but the manifest's feature_dim is 20"):
        handler.lambda_handler(event, None, s3=s3)


def test_artifact_that_is_not_a_model_is_refused(s3: Any) -> None:
    event = setup_run(s3)
    s3.put_object(Bucket=BUCKET, Key="runs/r1/serve/fm/model.tar.gz", Body=b"not a tarball")
    with pytest.raises(InputError, match=r"model\.tar\.gz is not a Factorization Machines model artifact"):
        handler.lambda_handler(event, None, s3=s3)
