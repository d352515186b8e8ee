"""Evaluate: holdout metrics of the eval sample, shard by shard, ranked as Publish ranks; the gate's bar."""

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

from lambdas.evaluate import handler
from lambdas.evaluate.evaluate import parse_holdout
from recpipe import tables, vectors
from recpipe.formats import recordio
from recpipe.lambda_errors import InputError, NotFoundError
from recpipe.metrics import ranking_metrics

BUCKET, TABLE = "recpipe-test", "results"
N_USERS, N_ITEMS, K_NN, DIM = 30, 50, 25, 4
SAMPLE = np.array([0, 2, 3, 5, 8, 9, 11, 14, 15, 17, 20, 21, 24, 26, 29])  # sorted user indices
BOUNDS = [0, 6, 11, len(SAMPLE)]  # positions in the sample
PROCESSED = "runs/r1/processed/"


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, Any]]:
    monkeypatch.setenv(tables.TABLE_ENV, TABLE)
    with mock_aws():
        s3, ddb = boto3.client("s3"), boto3.client("dynamodb")
        s3.create_bucket(Bucket=BUCKET)
        ddb.create_table(**tables.create_table_kwargs(TABLE))
        yield s3, ddb


def put(s3: Any, key: str, body: bytes) -> None:
    s3.put_object(Bucket=BUCKET, Key=key, Body=body)


def npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def dense(array: np.ndarray, labels: np.ndarray | None = None) -> bytes:
    buf = io.BytesIO()
    recordio.write_dense(buf, array.astype(np.float32), labels)
    return buf.getvalue()


def make_run(s3: Any, *, seed: int = 0) -> tuple[dict[str, Any], dict[str, Any]]:
    """The processing step's eval shards, Repackage's vectors and the eval transform output, written
    by hand; returns the event and the metrics a brute-force ranking of the exact scores gives."""
    rng = np.random.default_rng(seed)
    user_vecs = rng.normal(size=(SAMPLE.size, DIM)).astype(np.float32)
    item_vecs = rng.normal(size=(N_ITEMS, DIM)).astype(np.float32)
    scores = user_vecs.astype(np.float64) @ item_vecs.astype(np.float64).T
    seen = (rng.random((SAMPLE.size, N_ITEMS)) < 0.2).astype(np.float32)
    relevant = (rng.random((SAMPLE.size, N_ITEMS)) < 0.1) & (seen == 0)
    popularity = rng.integers(0, 100, N_ITEMS)
    counts = {"users": N_USERS, "items": N_ITEMS, "eval_users": SAMPLE.size}
    manifest = {"schema_version": 1, "counts": counts,
                "files": {"holdout": "meta/holdout.csv", "popularity_train": "meta/popularity_train.npy"},
                "shards": {"users_per_shard": 6, "serve": "shards/serve.json", "eval": "shards/eval.json"}}
    put(s3, PROCESSED + "manifest.json", json.dumps(manifest).encode())
    put(s3, PROCESSED + "meta/popularity_train.npy", npy(popularity))
    put(s3, "runs/r1/eval/vectors/items/items.pbr", dense(item_vecs, np.arange(N_ITEMS, dtype=np.float32)))
    entries = []
    for shard, (start, stop) in enumerate(itertools.pairwise(BOUNDS)):
        prefix = f"shards/eval/{shard:05d}/"
        entries.append({"kind": "users", "shard": shard, "start": start, "stop": stop, "prefix": prefix})
        buf = io.BytesIO()
        sp.save_npz(buf, sp.csr_matrix(seen[start:stop]))
        put(s3, PROCESSED + prefix + "seen.npz", buf.getvalue())
        put(s3, PROCESSED + prefix + "user_index.npy", npy(SAMPLE[start:stop].astype(np.int64)))
        rows = ["user_index,item_index,rating,relevant"]
        pairs = zip(*np.nonzero(relevant[start:stop]), strict=True)
        rows += [f"{SAMPLE[start + r]},{i},5,1" for r, i in pairs]
        rows.append(f"{SAMPLE[start]},1,2,0")  # held out but not relevant: counts for nothing
        put(s3, PROCESSED + prefix + "holdout.csv", ("\n".join(rows) + "\n").encode())
        name = vectors.user_shard_name(start, stop)
        put(s3, f"runs/r1/eval/vectors/users/{name}", dense(user_vecs[start:stop]))
        lines = []
        for u in range(start, stop):
            nearest = np.argsort(-scores[u])[:K_NN]
            # The service's distances are not trusted (issue 11.5): negated here, they must not matter.
            lines.append(json.dumps({"predicted_label": float(nearest[0]),
                                     "labels": [float(x) for x in nearest],
                                     "distances": [-float(scores[u, x]) for x in nearest]}))
        put(s3, f"runs/r1/eval/transform/{name}.out", ("\n".join(lines) + "\n").encode())
    put(s3, PROCESSED + "shards/eval.json", json.dumps(entries).encode())

    brute = np.argsort(-np.where(seen > 0, -np.inf, scores), axis=1)[:, :10]
    expected = ranking_metrics(brute, sp.csr_matrix(relevant.astype(np.float32)), N_ITEMS).as_dict()
    event = {"run_id": "r1", "transform_output": f"s3://{BUCKET}/runs/r1/eval/transform/",
             "vectors": f"s3://{BUCKET}/runs/r1/eval/vectors/",
             "manifest": f"s3://{BUCKET}/{PROCESSED}manifest.json", "k": 10, "min_ndcg_at_10": 0.05,
             "max_regression": 0.02, "metrics_output": f"s3://{BUCKET}/runs/r1/metrics.json"}
    return event, expected


def test_metrics_over_the_shards_match_a_brute_force_ranking_of_the_sample(aws: tuple[Any, Any]) -> None:
    s3, ddb = aws
    event, expected = make_run(s3)
    result = handler.lambda_handler(event, None, s3=s3, dynamodb=ddb)
    metrics = result["metrics"]
    assert metrics["users_scored"] == SAMPLE.size
    assert 0 < metrics["users_evaluated"] == expected["users_evaluated"] <= SAMPLE.size
    for name, value in expected.items():
        # float32 relevance inside ranking_metrics: sums of shard means agree to ~1e-9, while one
        # item ranked differently would move a metric by >= 1/150.
        assert metrics[name] == pytest.approx(value, abs=1e-6), name
    assert result["active_ndcg_at_10"] is None
    assert result["threshold"] == 0.05  # first run: only the configured floor
    stored = json.loads(s3.get_object(Bucket=BUCKET, Key="runs/r1/metrics.json")["Body"].read())
    assert stored["metrics"] == metrics
    assert stored["passed"] == (expected["ndcg_at_10"] >= 0.05)
    report = json.loads(s3.get_object(Bucket=BUCKET, Key="runs/r1/report/evaluation.json")["Body"].read())
    assert report["users"] == SAMPLE.size and report["run_id"] == "r1"
    assert sum(report["items"]["recommended"]) == 10 * SAMPLE.size
    assert sum(b["users"] for b in report["ndcg_by_activity"]) == metrics["users_evaluated"]


@pytest.mark.parametrize(("active", "threshold"), [(0.5, 0.48), (0.01, 0.05)])
def test_threshold_follows_the_active_version(aws: tuple[Any, Any], active: float, threshold: float) -> None:
    s3, ddb = aws
    ddb.put_item(TableName=TABLE, Item={**{k: {"S": v} for k, v in tables.ACTIVE_KEY.items()},
                                        "run_id": {"S": "r0"}, "ndcg_at_10": {"N": str(active)}})
    event, _ = make_run(s3)
    result = handler.lambda_handler(event, None, s3=s3, dynamodb=ddb)
    assert result["active_ndcg_at_10"] == pytest.approx(active)
    assert result["threshold"] == pytest.approx(threshold)


def test_no_eval_sample_is_a_clear_error(aws: tuple[Any, Any]) -> None:
    s3, ddb = aws
    event, _ = make_run(s3)
    manifest = json.loads(s3.get_object(Bucket=BUCKET, Key=PROCESSED + "manifest.json")["Body"].read())
    manifest["shards"]["eval"] = None
    put(s3, PROCESSED + "manifest.json", json.dumps(manifest).encode())
    with pytest.raises(InputError, match="no evaluation sample"):
        handler.lambda_handler(event, None, s3=s3, dynamodb=ddb)


def test_a_missing_shard_output_is_named(aws: tuple[Any, Any]) -> None:
    s3, ddb = aws
    event, _ = make_run(s3)
    name = vectors.user_shard_name(BOUNDS[1], BOUNDS[2])
    s3.delete_object(Bucket=BUCKET, Key=f"runs/r1/eval/transform/{name}.out")
    with pytest.raises(NotFoundError, match=f"runs/r1/eval/transform/{name}.out does not exist"):
        handler.lambda_handler(event, None, s3=s3, dynamodb=ddb)


def test_a_bad_holdout_names_its_shard_file(aws: tuple[Any, Any]) -> None:
    s3, ddb = aws
    event, _ = make_run(s3)
    put(s3, PROCESSED + "shards/eval/00001/holdout.csv", b"user_index,item_index,rating,relevant\n8,x,5,1\n")
    with pytest.raises(InputError,
                       match=r"shards/eval/00001/holdout\.csv, line 2: 'item_index' is not a number"):
        handler.lambda_handler(event, None, s3=s3, dynamodb=ddb)


HEADER = "user_index,item_index,rating,relevant\n"
SHARD_USERS = np.array([3, 7, 12], dtype=np.int64)


@pytest.mark.parametrize(("text", "message"), [
    ("", "expected the columns user_index, item_index, relevant, got none"),
    ("user_index,rating,relevant\n3,5,1\n", "expected the columns .*, got user_index, rating, relevant"),
    (HEADER + "x,1,5,1\n", "line 2: 'user_index' is not a number: 'x'"),
    (HEADER + "3,1.5,5,1\n", "line 2: 'item_index' is not a number: '1.5'"),
    (HEADER + "3,,5,1\n", "line 2: 'item_index' is not a number: ''"),
    (HEADER + "3,1,5,yes\n", "line 2: 'relevant' is not a number: 'yes'"),
    (HEADER + "3,1,5,1\n7,2,5\n", "line 3: 'relevant' is not a number: None"),
    (HEADER + "3,50,5,1\n", "line 2: item_index 50 is outside the manifest's 50 items"),
    (HEADER + "3,-1,5,1\n", "line 2: item_index -1 is outside the manifest's 50 items"),
    (HEADER + "3,1,5,1\n4,1,5,1\n", "line 3: user_index 4 is not one of this shard's 3 users"),
    (HEADER + "99,1,5,1\n", "line 2: user_index 99 is not one of this shard's 3 users"),
])
def test_holdout_parse_errors_name_the_file_line_and_field(text: str, message: str) -> None:
    with pytest.raises(InputError, match=r"^s3://b/h\.csv[:,] " + message):
        parse_holdout(text, "s3://b/h.csv", SHARD_USERS, N_ITEMS)


def test_holdout_rows_follow_the_shards_order() -> None:
    relevant = parse_holdout(HEADER + "12,4,5,1\n3,0,5,1\n3,0,5,1\n7,9,1,0\n", "h.csv", SHARD_USERS, N_ITEMS)
    assert relevant.shape == (3, N_ITEMS)
    rows, items = relevant.nonzero()
    # user 7's row is not relevant: it counts for nothing
    assert set(zip(rows.tolist(), items.tolist(), strict=True)) == {(0, 0), (2, 4)}


@pytest.mark.parametrize(("change", "error", "message"), [
    ({"run_id": None}, InputError, "'run_id'"),
    ({"vectors": 3}, InputError, "'vectors' must be str"),
    ({"k": 5}, InputError, "'k' must be 10"),
    ({"manifest": f"s3://{BUCKET}/nope/manifest.json"}, NotFoundError, "nope/manifest.json"),
])
def test_bad_events(
    aws: tuple[Any, Any], change: dict[str, Any], error: type[Exception], message: str
) -> None:
    s3, ddb = aws
    event, _ = make_run(s3)
    event.update(change)
    with pytest.raises(error, match=message):
        handler.lambda_handler(event, None, s3=s3, dynamodb=ddb)
