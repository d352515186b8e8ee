"""The local k-NN stand-in: training job contract, model files, batch transform output."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pytest

from recpipe.algorithms import knn
from recpipe.algorithms.exceptions import AlgorithmError, ClientError, HyperparameterError
from recpipe.formats.recordio import write_dense

VERBOSE = "application/jsonlines; verbose=true"
RECORDIO = "application/x-recordio-protobuf"


def make_job(root: Path, hyperparameters: dict[str, str], x: np.ndarray, y: np.ndarray | None,
             shards: int = 1) -> Path:
    opt_ml = root / "opt_ml"
    (opt_ml / "input" / "config").mkdir(parents=True)
    (opt_ml / "input" / "config" / "hyperparameters.json").write_text(json.dumps(hyperparameters))
    train = opt_ml / "input" / "data" / "train"
    train.mkdir(parents=True)
    for i, part in enumerate(np.array_split(np.arange(x.shape[0]), shards)):
        with (train / f"part-{i}.rec").open("wb") as fh:
            write_dense(fh, x[part], None if y is None else y[part])
    return opt_ml


def write_queries(path: Path, q: np.ndarray) -> Path:
    with path.open("wb") as fh:
        write_dense(fh, q)
    return path


def hps(**extra: str) -> dict[str, str]:
    base = {"feature_dim": "6", "k": "5", "predictor_type": "classifier", "sample_size": "1000",
            "index_type": "faiss.Flat", "index_metric": "INNER_PRODUCT"}
    base.update(extra)
    return base


def read_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def brute_force(q: np.ndarray, x: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Neighbours best first, in float64: (values in the service's units, indices)."""
    q64, x64 = q.astype(np.float64), x.astype(np.float64)
    if metric == "COSINE":
        q64 = q64 / np.linalg.norm(q64, axis=1, keepdims=True)
        x64 = x64 / np.linalg.norm(x64, axis=1, keepdims=True)
    if metric == "L2":
        values = ((q64[:, None, :] - x64[None, :, :]) ** 2).sum(axis=2)
        order = np.argsort(values, axis=1, kind="stable")[:, :k]
    else:
        values = q64 @ x64.T
        order = np.argsort(-values, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(values, order, axis=1), order


@pytest.fixture
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 6)).astype(np.float32)
    labels = (np.arange(300) * 3 + 7).astype(np.float32)  # label != row: the mapping is exercised
    q = rng.standard_normal((41, 6)).astype(np.float32)
    return x, labels, q


@pytest.mark.parametrize("metric", ["INNER_PRODUCT", "COSINE", "L2"])
def test_train_and_transform_match_brute_force(tmp_path: Path, data: tuple[np.ndarray, ...],
                                               metric: str) -> None:
    x, labels, q = data
    opt_ml = make_job(tmp_path, hps(index_metric=metric, k="7"), x, labels, shards=3)
    assert knn.run_training_job(opt_ml) == []
    in_dir = tmp_path / "in"
    in_dir.mkdir()
    files = [write_queries(in_dir / "users-00000", q[:20]), write_queries(in_dir / "users-00001", q[20:])]
    out = knn.run_transform(opt_ml / "model", files, tmp_path / "out", content_type=RECORDIO, accept=VERBOSE)
    assert [p.name for p in out] == ["users-00000.out", "users-00001.out"]
    records = read_lines(out[0]) + read_lines(out[1])
    assert len(records) == q.shape[0]
    want_values, want_idx = brute_force(q, x, 7, metric)
    for r, rec in enumerate(records):
        distances = np.asarray(rec["distances"])
        got_labels = np.asarray(rec["labels"])
        assert list(rec) == ["predicted_label", "labels", "distances"]
        assert (np.diff(distances) >= 0).all(), "distances must be ascending, as the service writes them"
        best_first = slice(None, None, -1) if metric != "L2" else slice(None)
        np.testing.assert_allclose(distances[best_first], want_values[r], rtol=1e-4, atol=1e-4)
        np.testing.assert_array_equal(got_labels[best_first], labels[want_idx[r]])


def test_model_files(tmp_path: Path, data: tuple[np.ndarray, ...]) -> None:
    x, labels, _ = data
    opt_ml = make_job(tmp_path, hps(), x, labels)
    knn.run_training_job(opt_ml)
    model = opt_ml / "model"
    names = sorted(p.name for p in model.iterdir())
    assert names == ["model_algo-1", "model_algo-1.json", "model_algo-1.labels"]
    index = faiss.read_index(str(model / "model_algo-1"))
    assert isinstance(index, faiss.IndexFlatIP) and index.metric_type == faiss.METRIC_INNER_PRODUCT
    assert index.ntotal == 300
    np.testing.assert_array_equal(index.reconstruct_n(0, 300), x)
    np.testing.assert_array_equal(np.fromfile(model / "model_algo-1.labels", dtype="<f4"), labels)
    meta = json.loads((model / "model_algo-1.json").read_text())
    assert meta["hyperparameters"]["k"] == 5
    assert meta["hyperparameters"]["index_metric"] == "INNER_PRODUCT"
    assert meta["n_vectors"] == 300


def test_sample_size_draws_a_seeded_subset(tmp_path: Path, data: tuple[np.ndarray, ...]) -> None:
    x, labels, _ = data
    runs = []
    for name in ("a", "b"):
        opt_ml = make_job(tmp_path / name, hps(sample_size="50"), x, labels)
        knn.run_training_job(opt_ml)
        runs.append(np.fromfile(opt_ml / "model" / "model_algo-1.labels", dtype="<f4"))
    assert runs[0].shape == (50,)
    np.testing.assert_array_equal(runs[0], runs[1])
    assert set(runs[0]) <= set(labels)
    assert len(set(runs[0])) == 50


def test_ivfflat_is_honoured(tmp_path: Path, data: tuple[np.ndarray, ...]) -> None:
    x, labels, q = data
    opt_ml = make_job(tmp_path, hps(index_type="faiss.IVFFlat", index_metric="L2",
                                    faiss_index_ivf_nlists="4"), x, labels)
    knn.run_training_job(opt_ml)
    index = faiss.read_index(str(opt_ml / "model" / "model_algo-1"))
    ivf: Any = faiss.downcast_index(index)
    assert isinstance(ivf, faiss.IndexIVFFlat)
    assert ivf.nlist == 4
    f = write_queries(tmp_path / "q", q)
    (out,) = knn.run_transform(opt_ml / "model", [f], tmp_path / "out", content_type=RECORDIO, accept=VERBOSE)
    records = read_lines(out)
    assert len(records) == q.shape[0]
    assert all(np.all(np.diff(rec["distances"]) >= 0) for rec in records)


def test_ivfpq_pads_to_a_multiple_of_m(tmp_path: Path, data: tuple[np.ndarray, ...]) -> None:
    x, labels, q = data
    opt_ml = make_job(tmp_path, hps(index_type="faiss.IVFPQ", index_metric="L2", faiss_index_pq_m="4",
                                    faiss_index_ivf_nlists="2"), x, labels)
    knn.run_training_job(opt_ml)
    assert faiss.read_index(str(opt_ml / "model" / "model_algo-1")).d == 8
    f = write_queries(tmp_path / "q", q[:3])
    (out,) = knn.run_transform(opt_ml / "model", [f], tmp_path / "out", content_type=RECORDIO, accept=VERBOSE)
    assert len(read_lines(out)) == 3


def test_predicted_label_majority_and_mean() -> None:
    labels = np.array([[3, 1, 1, 3, 2], [5, 4, 4, 5, 6], [9, -1, -1, -1, -1], [7, 2, 2, 2, 8],
                       [4, 3, 2, 1, 0], [-1, -1, -1, -1, -1]], np.float32)
    valid = labels >= 0
    # row 0: 1 and 3 tie (2 each); 3 comes first (nearest), so 3 wins; row 1: 5 wins likewise;
    # row 3: 2 is the majority; row 4: all distinct, the nearest wins; row 5: no neighbour
    got = knn.predict_labels(labels, valid, "classifier")
    np.testing.assert_array_equal(got[:5], [3, 5, 9, 2, 4])
    assert np.isnan(got[5])
    got = knn.predict_labels(labels, valid, "regressor")
    np.testing.assert_allclose(got[:5], [2.0, 4.8, 9.0, 4.2, 2.0])
    assert np.isnan(got[5])


def test_fewer_vectors_than_k_pads_like_faiss(tmp_path: Path) -> None:
    x = np.eye(6, dtype=np.float32)[:3]
    opt_ml = make_job(tmp_path, hps(k="5"), x, np.array([10, 11, 12], np.float32))
    knn.run_training_job(opt_ml)
    f = write_queries(tmp_path / "q", np.ones((1, 6), np.float32))
    (out,) = knn.run_transform(opt_ml / "model", [f], tmp_path / "out", content_type=RECORDIO, accept=VERBOSE)
    (rec,) = read_lines(out)
    assert rec["labels"][:2] == [-1.0, -1.0]
    assert sorted(rec["labels"][2:]) == [10.0, 11.0, 12.0]
    assert rec["distances"][0] == pytest.approx(-3.4028235e38)


def test_numbers_round_trip_float32_and_labels_print_as_floats(tmp_path: Path) -> None:
    x = np.array([[1, 0, 0, 0, 0, 0], [0, 1, 0, 0, 0, 0]], np.float32)
    opt_ml = make_job(tmp_path, hps(k="2"), x, np.array([4, 9], np.float32))
    knn.run_training_job(opt_ml)
    f = write_queries(tmp_path / "q", np.array([[0.1, 0.3, 0, 0, 0, 0]], np.float32))
    (out,) = knn.run_transform(opt_ml / "model", [f], tmp_path / "out", content_type=RECORDIO, accept=VERBOSE)
    text = out.read_text()
    assert text.startswith('{"predicted_label":9.0,"labels":[4.0,9.0],"distances":[')
    (rec,) = read_lines(out)
    assert np.array_equal(np.asarray(rec["distances"], np.float32), np.array([0.1, 0.3], np.float32))
    from recpipe.formats.knn_output import read_verbose_jsonlines

    labels, distances = read_verbose_jsonlines(out)
    np.testing.assert_array_equal(labels, [[4, 9]])
    np.testing.assert_array_equal(distances, np.array([[0.1, 0.3]], np.float32))


def test_non_verbose_and_json_accept(tmp_path: Path, data: tuple[np.ndarray, ...]) -> None:
    x, labels, q = data
    opt_ml = make_job(tmp_path, hps(), x, labels)
    knn.run_training_job(opt_ml)
    f = write_queries(tmp_path / "q", q[:4])
    (plain,) = knn.run_transform(opt_ml / "model", [f], tmp_path / "a", content_type=RECORDIO,
                                 accept="application/jsonlines")
    assert [list(r) for r in read_lines(plain)] == [["predicted_label"]] * 4
    (doc,) = knn.run_transform(opt_ml / "model", [f], tmp_path / "b", content_type=RECORDIO,
                               accept="application/json; verbose=true")
    predictions = json.loads(doc.read_text())["predictions"]
    assert len(predictions) == 4 and set(predictions[0]) == {"predicted_label", "distances", "labels"}


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"k": "1025"}, r"The 'k' hyperparameter must be an int \[1, 1024\], got '1025'"),
        ({"k": "zero"}, r"'k' hyperparameter must be an int"),
        ({"index_type": "faiss.IVFPQ", "index_metric": "INNER_PRODUCT"},
         r"'index_metric' hyperparameter INNER_PRODUCT is not supported with index_type faiss.IVFPQ"),
        ({"index_type": "faiss.IVFPQ", "index_metric": "COSINE"}, r"COSINE is not supported"),
        ({"feature_dim": None}, r"required hyperparameter\(s\) 'feature_dim' are missing"),
        ({"predictor_type": "ranker"},
         r"'predictor_type' hyperparameter must be one of classifier, regressor"),
        ({"index_metric": "L1"}, r"'index_metric' hyperparameter must be one of L2, INNER_PRODUCT, COSINE"),
        ({"dimension_reduction_type": "sign"}, r"not supported by the local k-NN stand-in"),
        ({"bogus": "1"}, r"Unknown hyperparameter\(s\) 'bogus'"),
        ({"faiss_index_pq_m": "5", "index_type": "faiss.IVFPQ", "index_metric": "L2"},
         r"'faiss_index_pq_m' hyperparameter must be one of"),
    ],
)
def test_hyperparameter_errors(tmp_path: Path, data: tuple[np.ndarray, ...], bad: dict[str, str | None],
                               message: str) -> None:
    x, labels, _ = data
    params = hps()
    for key, value in bad.items():
        if value is None:
            params.pop(key)
        else:
            params[key] = value
    opt_ml = make_job(tmp_path, params, x, labels)
    with pytest.raises(HyperparameterError, match=message) as info:
        knn.run_training_job(opt_ml)
    failure = (opt_ml / "output" / "failure").read_text()
    assert failure == str(info.value)
    assert failure.startswith("ClientError: ")


@pytest.mark.parametrize(
    ("x_cols", "with_labels", "message"),
    [(5, True, r"part-0.rec has 5 features per record, but feature_dim is 6"),
     (6, False, r"records without a label")],
)
def test_bad_training_data(tmp_path: Path, x_cols: int, with_labels: bool, message: str) -> None:
    x = np.ones((10, x_cols), np.float32)
    opt_ml = make_job(tmp_path, hps(), x, np.arange(10, dtype=np.float32) if with_labels else None)
    with pytest.raises(AlgorithmError, match=message):
        knn.run_training_job(opt_ml)
    assert (opt_ml / "output" / "failure").read_text().startswith("ClientError: ")


def test_transform_rejects_unsupported_types_and_widths(tmp_path: Path, data: tuple[np.ndarray, ...]) -> None:
    x, labels, q = data
    opt_ml = make_job(tmp_path, hps(), x, labels)
    knn.run_training_job(opt_ml)
    f = write_queries(tmp_path / "q", q[:2])
    model = opt_ml / "model"
    with pytest.raises(ClientError, match="content type 'text/csv' is not supported"):
        knn.run_transform(model, [f], tmp_path / "o", content_type="text/csv", accept=VERBOSE)
    with pytest.raises(ClientError, match="accept type 'text/csv' is not supported"):
        knn.run_transform(model, [f], tmp_path / "o", content_type=RECORDIO, accept="text/csv")
    narrow = write_queries(tmp_path / "narrow", q[:2, :4])
    with pytest.raises(ClientError, match="narrow has 4 features per record, but the model's feature_dim"):
        knn.run_transform(model, [narrow], tmp_path / "o", content_type=RECORDIO, accept=VERBOSE)
    (model / "model_algo-1.labels").unlink()
    with pytest.raises(ClientError, match=r"missing model_algo-1\.labels"):
        knn.run_transform(model, [f], tmp_path / "o", content_type=RECORDIO, accept=VERBOSE)
