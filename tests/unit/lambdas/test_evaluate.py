"""Evaluate: holdout metrics of the eval variant's transform output, and the gate's threshold."""

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

from lambdas.evaluate import handler
from recpipe import tables, vectors
from recpipe.lambda_errors import InputError, NotFoundError
from recpipe.metrics import ranking_metrics

BUCKET, TABLE = "recpipe-test", "results"
N_USERS, N_ITEMS, K_NN = 30, 50, 25


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


def make_run(s3: Any, *, holdout: bool = True, seed: int = 0) -> tuple[dict[str, Any], float]:
    """Processed outputs and an eval transform output written by hand; returns the event and the
    NDCG@10 a brute-force ranking of the same scores gives."""
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=(N_USERS, N_ITEMS))
    seen = sp.csr_matrix((rng.random((N_USERS, N_ITEMS)) < 0.2).astype(np.float32))
    relevant = (rng.random((N_USERS, N_ITEMS)) < 0.1) & (seen.toarray() == 0)
    processed = "runs/r1/processed/"
    manifest = {"schema_version": 1, "counts": {"users": N_USERS, "items": N_ITEMS},
                "files": {"seen_train": "meta/seen_train.npz",
                          "holdout": "meta/holdout.csv" if holdout else None}}
    put(s3, processed + "manifest.json", json.dumps(manifest).encode())
    buf = io.BytesIO()
    sp.save_npz(buf, seen)
    put(s3, processed + "meta/seen_train.npz", buf.getvalue())
    rows = ["user_index,item_index,rating,relevant"]
    for u, i in zip(*np.nonzero(relevant), strict=True):
        rows.append(f"{u},{i},5,1")
    rows.append("0,1,2,0")  # a held-out interaction that is not relevant counts for nothing
    put(s3, processed + "meta/holdout.csv", ("\n".join(rows) + "\n").encode())

    for start, stop in vectors.shard_ranges(N_USERS, 3):
        lines = []
        for u in range(start, stop):
            nearest = np.argsort(-scores[u])[:K_NN]
            ascending = nearest[np.argsort(scores[u, nearest])]  # as the service lists them
            lines.append(json.dumps({"predicted_label": float(nearest[0]),
                                     "labels": [float(x) for x in ascending],
                                     "distances": [float(scores[u, x]) for x in ascending]}))
        put(s3, f"runs/r1/eval/transform/{vectors.user_shard_name(start, stop)}.out",
            ("\n".join(lines) + "\n").encode())

    masked = np.where(seen.toarray() > 0, -np.inf, scores)
    brute = np.argsort(-masked, axis=1)[:, :10]
    expected = ranking_metrics(brute, sp.csr_matrix(relevant.astype(np.float32)), N_ITEMS).ndcg_at_10
    event = {"run_id": "r1", "transform_output": f"s3://{BUCKET}/runs/r1/eval/transform/",
             "manifest": f"s3://{BUCKET}/{processed}manifest.json", "k": 10, "min_ndcg_at_10": 0.05,
             "max_regression": 0.02, "metrics_output": f"s3://{BUCKET}/runs/r1/metrics.json"}
    return event, expected


def test_metrics_match_a_brute_force_ranking(aws: tuple[Any, Any]) -> None:
    s3, ddb = aws
    event, expected = make_run(s3)
    result = handler.lambda_handler(event, None, s3=s3, dynamodb=ddb)
    assert result["metrics"]["ndcg_at_10"] == pytest.approx(expected)
    assert result["metrics"]["users_evaluated"] > 0
    assert result["active_ndcg_at_10"] is None
    assert result["threshold"] == 0.05  # first run: only the configured floor
    stored = json.loads(s3.get_object(Bucket=BUCKET, Key="runs/r1/metrics.json")["Body"].read())
    assert stored["metrics"] == result["metrics"]
    assert stored["passed"] == (expected >= 0.05)


@pytest.mark.parametrize(("active", "threshold"), [(0.5, 0.48), (0.01, 0.05)])
def test_threshold_follows_the_active_version(aws: tuple[Any, Any], active: float, threshold: float) -> None:
    s3, ddb = aws
    ddb.put_item(TableName=TABLE, Item={**{k: {"S": v} for k, v in tables.ACTIVE_KEY.items()},
                                        "run_id": {"S": "r0"}, "ndcg_at_10": {"N": str(active)}})
    event, _ = make_run(s3)
    result = handler.lambda_handler(event, None, s3=s3, dynamodb=ddb)
    assert result["active_ndcg_at_10"] == pytest.approx(active)
    assert result["threshold"] == pytest.approx(threshold)


def test_no_holdout_is_a_clear_error(aws: tuple[Any, Any]) -> None:
    s3, ddb = aws
    event, _ = make_run(s3, holdout=False)
    with pytest.raises(InputError, match="no holdout"):
        handler.lambda_handler(event, None, s3=s3, dynamodb=ddb)


@pytest.mark.parametrize(("change", "error", "message"), [
    ({"run_id": None}, InputError, "'run_id'"),
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
