"""Plan: hyperparameters from the config and the manifest, all strings."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws

from lambdas.plan import handler
from lambdas.plan.plan import hp_string, plan
from recpipe import config as cfg
from recpipe.lambda_errors import InputError, NotFoundError, SchemaVersionError

BUCKET = "data-bucket"
MANIFEST_URI = f"s3://{BUCKET}/runs/r1/processed/manifest.json"


def manifest(**overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"schema_version": 1, "feature_dim": 2731,
                           "counts": {"users": 943, "items": 1682},
                           "config": {"processing.mode": "implicit"}}
    doc.update(overrides)
    return doc


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    with mock_aws():
        client = boto3.client("s3")
        client.create_bucket(Bucket=BUCKET)
        yield client


def put(s3: Any, doc: dict[str, Any]) -> None:
    s3.put_object(Bucket=BUCKET, Key=MANIFEST_URI.split("/", 3)[3], Body=json.dumps(doc).encode())


def event(config: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"run_id": "r1", "manifest": MANIFEST_URI, "config": cfg.nest(cfg.resolve(config or {}))}


def test_hyperparameters_are_strings_with_the_manifests_feature_dim(s3: Any) -> None:
    put(s3, manifest())
    result = handler.lambda_handler(event(), None, s3=s3)
    fm, knn = result["fm_hyperparameters"], result["knn_hyperparameters"]
    assert all(isinstance(v, str) for v in [*fm.values(), *knn.values()])
    assert fm["feature_dim"] == "2731"
    assert fm["predictor_type"] == "binary_classifier"
    defaults = cfg.defaults()
    assert fm["num_factors"] == str(defaults["fm.num_factors"]) and fm["epochs"] == str(defaults["fm.epochs"])
    assert fm["factors_wd"] == "0.00001"  # no exponent notation
    assert set(fm) == {"feature_dim", "predictor_type", "num_factors", "epochs", "mini_batch_size", "bias_lr",
                       "linear_lr", "factors_lr", "bias_wd", "linear_wd", "factors_wd", "bias_init_sigma",
                       "linear_init_sigma", "factors_init_sigma"}
    assert knn == {"feature_dim": "65", "k": "220", "sample_size": "1682", "predictor_type": "classifier",
                   "index_type": "faiss.Flat", "index_metric": "INNER_PRODUCT"}
    assert (result["n_items"], result["n_users"], result["k"]) == (1682, 943, 220)


def test_explicit_mode_trains_a_regressor() -> None:
    result = plan(cfg.resolve({"processing.mode": "explicit"}),
                  manifest(config={"processing.mode": "explicit"}))
    assert result["fm_hyperparameters"]["predictor_type"] == "regressor"


@pytest.mark.parametrize(("top_n", "margin", "items", "k"), [
    (20, 200, 1682, 220), (1000, 1023, 5000, 1024), (20, 200, 50, 50)])
def test_k_is_capped_by_the_service_limit_and_the_catalogue(top_n: int, margin: int, items: int,
                                                            k: int) -> None:
    result = plan({"publish.top_n": top_n, "knn.k_margin": margin},
                  manifest(counts={"users": 3, "items": items}))
    assert result["knn_hyperparameters"]["k"] == str(k)


@pytest.mark.parametrize(("value", "text"), [(1e-05, "0.00001"), (0.1, "0.1"), (3, "3"), (2.0, "2"),
                                             (True, "true"), ("faiss.Flat", "faiss.Flat")])
def test_hp_string(value: Any, text: str) -> None:
    assert hp_string(value) == text


def test_missing_manifest_names_bucket_and_key(s3: Any) -> None:
    with pytest.raises(NotFoundError, match=f"s3://{BUCKET}/runs/r1/processed/manifest.json"):
        handler.lambda_handler(event(), None, s3=s3)


def test_schema_version_mismatch(s3: Any) -> None:
    put(s3, manifest(schema_version=2))
    with pytest.raises(SchemaVersionError, match="schema_version 2"):
        handler.lambda_handler(event(), None, s3=s3)


@pytest.mark.parametrize(("doc", "match"), [
    (manifest(feature_dim=0), "'feature_dim'"),
    (manifest(counts={"users": 3}), "'counts.items'"),
    (manifest(config={"processing.mode": "explicit"}), "processed in 'explicit' mode"),
])
def test_bad_manifest(doc: dict[str, Any], match: str) -> None:
    with pytest.raises(InputError, match=match):
        plan(cfg.resolve({}), doc)


def test_bad_event(s3: Any) -> None:
    with pytest.raises(InputError, match="'manifest', 'config'"):
        handler.lambda_handler({"run_id": "r1"}, None, s3=s3)
    with pytest.raises(InputError, match=r"unknown key 'fm\.nope'"):
        plan({"fm": {"nope": 1}}, manifest())
