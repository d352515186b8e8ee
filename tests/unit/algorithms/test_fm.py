"""The Factorization Machines stand-in against a literal reference kept here."""

from __future__ import annotations

import io
import json
import math
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp

from recpipe.algorithms.exceptions import AlgorithmError, DataError, HyperparameterError
from recpipe.algorithms.fm import FactorizationMachines, fm_metrics, parse_hyperparameters, run_training_job


# --- literal references ---------------------------------------------------------------------------
def reference_score(x: np.ndarray, V: np.ndarray, w: np.ndarray, b: float) -> float:
    """The FM score written as its definition: every pair once."""
    n = x.shape[0]
    pairs = sum(float(V[i] @ V[j]) * x[i] * x[j] for i in range(n) for j in range(i + 1, n))
    return b + float(w @ x) + pairs


def reference_adam(
    X: np.ndarray,
    y: np.ndarray,
    V: np.ndarray,
    w: np.ndarray,
    b: float,
    steps: int,
    hp: dict[str, Any],
    binary: bool = False,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Full-batch Adam on the mean loss, lazy rows (rows no record touches are never updated)."""
    V, w = V.astype(np.float64), w.astype(np.float64)
    state = {
        name: [np.zeros_like(p), np.zeros_like(p)] for name, p in (("V", V), ("w", w), ("b", np.zeros(1)))
    }
    touched = np.abs(X).sum(0) > 0
    bias = np.array([b], dtype=np.float64)
    clip = hp.get("clip_gradient")
    for t in range(1, steps + 1):
        q = X @ V
        score = bias[0] + X @ w + 0.5 * ((q**2).sum(1) - (X**2) @ (V**2).sum(1))
        dscore = (1 / (1 + np.exp(-score)) if binary else score) - y
        g = dscore / X.shape[0]
        grads = {
            "V": X.T @ (g[:, None] * q) - ((X**2).T @ g)[:, None] * V + hp["factors_wd"] * V,
            "w": X.T @ g + hp["linear_wd"] * w,
            "b": np.array([g.sum() + hp["bias_wd"] * bias[0]]),
        }
        corr = math.sqrt(1 - 0.999**t) / (1 - 0.9**t)
        for name, param, lr in (
            ("V", V, hp["factors_lr"]),
            ("w", w, hp["linear_lr"]),
            ("b", bias, hp["bias_lr"]),
        ):
            grad = grads[name] if clip is None else np.clip(grads[name], -clip, clip)
            m, v = state[name]
            m[:] = 0.9 * m + 0.1 * grad
            v[:] = 0.999 * v + 0.001 * grad**2
            mask = touched if name != "b" else np.ones(1, dtype=bool)
            param[mask] -= (lr * corr * m / (np.sqrt(v) + 1e-8))[mask]
    return V, w, float(bias[0])


def planted(
    n_users: int = 30, n_items: int = 20, k: int = 3, seed: int = 0
) -> tuple[sp.csr_matrix, np.ndarray]:
    """Every (user, item) pair one-hot encoded, labelled by a planted FM's score."""
    rng = np.random.default_rng(seed)
    grid_users, grid_items = np.meshgrid(np.arange(n_users), np.arange(n_items), indexing="ij")
    users, items = grid_users.ravel(), grid_items.ravel()
    n = users.size
    X = sp.csr_matrix(
        (
            np.ones(2 * n, np.float32),
            np.stack([users, n_users + items], 1).ravel(),
            np.arange(0, 2 * n + 1, 2),
        ),
        shape=(n, n_users + n_items),
    )
    V = rng.normal(0, 0.7, (n_users + n_items, k))
    w = rng.normal(0, 0.5, n_users + n_items)
    # One-hot user + item: the only pair is (user, item).
    y = (3.0 + w[users] + w[n_users + items] + np.einsum("ij,ij->i", V[users], V[n_users + items])).astype(
        np.float32
    )
    return X, y


FAST: dict[str, Any] = {
    "num_factors": 8,
    "bias_lr": 0.1,
    "linear_lr": 0.05,
    "factors_lr": 0.05,
    "factors_init_sigma": 0.1,
    "mini_batch_size": 50,
    "n_jobs": 1,
}


# --- the score ------------------------------------------------------------------------------------
def test_score_is_the_fm_formula() -> None:
    rng = np.random.default_rng(1)
    X = rng.normal(size=(7, 6)) * (rng.random((7, 6)) < 0.6)
    model = FactorizationMachines(num_factors=4, epochs=1, n_jobs=1).fit(sp.csr_matrix(X), np.zeros(7))
    model.V_ = rng.normal(size=(6, 4)).astype(np.float32)
    model.w_ = rng.normal(size=6).astype(np.float32)
    model.b_ = 0.7
    expected = [reference_score(x, model.V_.astype(np.float64), model.w_.astype(np.float64), 0.7) for x in X]
    np.testing.assert_allclose(model.decision_function(sp.csr_matrix(X)), expected, rtol=1e-5, atol=1e-5)
    model.binary_ = True
    np.testing.assert_allclose(model.predict(X), 1 / (1 + np.exp(-np.array(expected))), rtol=1e-5)


@pytest.mark.parametrize(
    ("binary", "clip"), [(False, None), (True, None), (False, 0.002)], ids=["regressor", "binary", "clipped"]
)
def test_updates_are_full_batch_adam_of_the_reference(binary: bool, clip: float | None) -> None:
    rng = np.random.default_rng(2)
    X = rng.normal(size=(12, 9)) * (rng.random((12, 9)) < 0.5)
    X[:, 8] = 0.0  # a feature no record has: its row must keep its initial value
    y = (rng.random(12) < 0.5).astype(np.float64) if binary else rng.normal(2.0, 1.0, 12)
    hp: dict[str, Any] = {
        "bias_lr": 0.05,
        "linear_lr": 0.02,
        "factors_lr": 0.01,
        "bias_wd": 0.01,
        "linear_wd": 0.003,
        "factors_wd": 0.002,
        "clip_gradient": clip,
    }
    init: dict[str, Any] = {
        "bias_init_method": "constant",
        "bias_init_value": 0.3,
        "linear_init_method": "constant",
        "linear_init_value": -0.1,
        "factors_init_method": "uniform",
        "factors_init_scale": 0.0,
    }
    model = FactorizationMachines(
        num_factors=3,
        epochs=4,
        mini_batch_size=12,
        predictor_type="binary_classifier" if binary else "regressor",
        n_jobs=1,
        **hp,
        **init,
    )
    V0 = rng.normal(0, 0.3, (9, 3))
    model_start = _fit_from(model, X, y, V0)
    V, w, b = reference_adam(X, y, V0, np.full(9, -0.1), 0.3, 4, hp, binary)
    np.testing.assert_allclose(model_start.V_, V, atol=2e-5)
    np.testing.assert_allclose(model_start.w_, w, atol=2e-5)
    assert model_start.b_ == pytest.approx(b, abs=2e-5)
    np.testing.assert_array_equal(model_start.V_[8], V0[8].astype(np.float32))


def _fit_from(
    model: FactorizationMachines, X: np.ndarray, y: np.ndarray, V0: np.ndarray
) -> FactorizationMachines:
    """Fit with the factors initialised to V0 (no init method gives a known non-symmetric start)."""
    import recpipe.algorithms.fm as fm_module

    original = fm_module._initial

    def initial(
        rng: np.random.Generator, hp: dict[str, Any], group: str, shape: tuple[int, ...]
    ) -> np.ndarray:
        if group == "factors":
            return V0.astype(np.float32)
        return original(rng, hp, group, shape)

    fm_module._initial = initial  # type: ignore[assignment]
    try:
        return model.fit(sp.csr_matrix(X), y)
    finally:
        fm_module._initial = original


# --- learning -------------------------------------------------------------------------------------
def test_learning_recovers_a_planted_model() -> None:
    X, y = planted()
    baseline = float(np.std(y))
    seen: list[tuple[int, int, dict[str, float]]] = []
    model = FactorizationMachines(**FAST, epochs=25, seed=3).fit(
        X, y, X_test=X, y_test=y, on_epoch=lambda e, n, m: seen.append((e, n, m))
    )
    rmses = [h["test:rmse"] for h in model.history_]
    assert rmses[-1] < 0.1 * baseline
    assert rmses[-1] < rmses[0]
    assert [e for e, _, _ in seen] == list(range(1, 26)) and {n for _, n, _ in seen} == {25}
    assert set(seen[-1][2]) == {"train:rmse", "test:rmse"}
    assert model.V_.shape == (50, 8) and model.w_.shape == (50,) and isinstance(model.b_, float)


def test_binary_classifier_learns_and_reports_the_builtin_metrics() -> None:
    X, score = planted(seed=4)
    y = (score > np.median(score)).astype(np.float32)
    model = FactorizationMachines(**{**FAST, "predictor_type": "binary_classifier"}, epochs=40, seed=1)
    model.fit(X, y, X_test=X, y_test=y)
    last = model.history_[-1]
    assert last["test:binary_classification_accuracy"] > 0.9
    assert last["test:binary_f_beta"] > 0.9
    assert (
        last["test:binary_classification_cross_entropy"]
        < model.history_[0]["test:binary_classification_cross_entropy"]
    )
    p = model.predict(X)
    assert np.all((p > 0) & (p < 1))


def test_fm_metrics_on_known_values() -> None:
    assert fm_metrics(np.array([1.0, 3.0]), np.array([2.0, 3.0]), False) == {
        "test:rmse": pytest.approx(math.sqrt(0.5))
    }
    m = fm_metrics(np.array([1, 0, 1, 0]), np.array([2.0, 1.0, -1.0, -3.0]), True)
    assert m["test:binary_classification_accuracy"] == 0.5
    assert m["test:binary_f_beta"] == pytest.approx(0.5)  # precision 1/2, recall 1/2
    expected_ll = np.mean(
        [np.log1p(np.exp(-2.0)), np.log1p(np.exp(1.0)), np.log1p(np.exp(1.0)), np.log1p(np.exp(-3.0))]
    )
    assert m["test:binary_classification_cross_entropy"] == pytest.approx(expected_ll)


def test_fixed_seed_is_deterministic_single_threaded_and_close_with_threads() -> None:
    X, y = planted(seed=5)
    a = FactorizationMachines(**FAST, epochs=5, seed=11).fit(X, y)
    b = FactorizationMachines(**FAST, epochs=5, seed=11).fit(X, y)
    c = FactorizationMachines(**FAST, epochs=5, seed=12).fit(X, y)
    np.testing.assert_array_equal(a.V_, b.V_)
    np.testing.assert_array_equal(a.w_, b.w_)
    assert not np.array_equal(a.V_, c.V_)
    # Two Hogwild threads are not reproducible, but they must learn as well as one thread does.
    threaded = FactorizationMachines(**{**FAST, "n_jobs": 2}, epochs=20, seed=11).fit(
        X, y, X_test=X, y_test=y
    )
    assert threaded.history_[-1]["test:rmse"] < 0.15 * float(np.std(y))


def test_thread_count_callable_is_asked_every_epoch() -> None:
    """The local engine's core share: the answer may change between epochs (clamped to [1, cores]);
    a callable that always answers 1 trains exactly as n_jobs=1 does."""
    X, y = planted(seed=6)
    answers = iter([1, 2, 0, 64, 1, 2])
    asked: list[int] = []

    def threads() -> int:
        asked.append(1)
        return next(answers)

    model = FactorizationMachines(**{**FAST, "n_jobs": threads}, epochs=6, seed=2)
    model.fit(X, y, X_test=X, y_test=y)
    assert len(asked) == 6
    assert model.history_[-1]["test:rmse"] < model.history_[0]["test:rmse"]
    one = FactorizationMachines(**{**FAST, "n_jobs": lambda: 1}, epochs=3, seed=2).fit(X, y)
    sequential = FactorizationMachines(**FAST, epochs=3, seed=2).fit(X, y)
    np.testing.assert_array_equal(one.V_, sequential.V_)
    np.testing.assert_array_equal(one.w_, sequential.w_)


def test_blocks_train_exactly_as_their_stacked_matrix() -> None:
    """A channel's files are passed as blocks and shuffled without stacking them: same model."""
    X, y = planted(seed=7)
    stacked = FactorizationMachines(**FAST, epochs=3, seed=4).fit(X, y)
    blocks = FactorizationMachines(**FAST, epochs=3, seed=4).fit([X[:100], X[100:101], X[101:0], X[101:]], y)
    np.testing.assert_array_equal(stacked.V_, blocks.V_)
    np.testing.assert_array_equal(stacked.w_, blocks.w_)
    assert stacked.b_ == blocks.b_
    with pytest.raises(DataError, match=r"The train data has 600 records but 599 labels\."):
        FactorizationMachines(**FAST).fit([X[:100], X[100:]], y[1:])


# --- errors ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"num_factors": 0}, r"The 'num_factors' parameter must be an int in \[1, 1000\], got 0\."),
        ({"num_factors": 2.5}, r"The 'num_factors' parameter must be an int in \[1, 1000\], got 2\.5\."),
        (
            {"predictor_type": "ranker"},
            r"The 'predictor_type' parameter must be one of 'regressor', "
            r"'binary_classifier', got 'ranker'\.",
        ),
        ({"epochs": 0}, r"The 'epochs' parameter must be an int in \[1, 1e\+06\], got 0\."),
        ({"factors_lr": -0.1}, r"The 'factors_lr' parameter must be a float >= 0, got -0\.1\."),
        ({"bias_wd": float("nan")}, r"The 'bias_wd' parameter must be a float >= 0, got nan\."),
        (
            {"linear_init_method": "uniform"},
            r"The 'linear_init_scale' parameter is required when "
            r"'linear_init_method' is 'uniform'\.",
        ),
        ({"use_bias": "yes"}, r"The 'use_bias' parameter must be 'true' or 'false', got 'yes'\."),
        ({"seed": -1}, r"The 'seed' parameter must be an int >= 0, got -1\."),
        (
            {"n_jobs": 0},
            r"The 'n_jobs' parameter must be None, an int >= 1 or a callable returning one, got 0\.",
        ),
    ],
)
def test_bad_hyperparameters_are_named(params: dict[str, Any], message: str) -> None:
    X, y = planted(4, 3)
    with pytest.raises(HyperparameterError, match=message) as info:
        FactorizationMachines(**params).fit(X, y)
    assert str(info.value).startswith("ClientError: ")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            {"feature_dim": "10", "num_factor": "4", "predictor_type": "regressor"},
            r"Unknown hyperparameter 'num_factor' \(did you mean 'num_factors'\?\)\.",
        ),
        (
            {"num_factors": "4", "predictor_type": "regressor"},
            r"Missing required hyperparameter 'feature_dim'\.",
        ),
        (
            {"feature_dim": "10", "num_factors": "four", "predictor_type": "regressor"},
            r"The 'num_factors' parameter must be an int in \[1, 1000\], got 'four'\.",
        ),
        (
            {"feature_dim": "10", "num_factors": "1001", "predictor_type": "regressor"},
            r"The 'num_factors' parameter must be an int in \[1, 1000\], got 1001\.",
        ),
    ],
)
def test_bad_string_hyperparameters_are_named(raw: dict[str, str], message: str) -> None:
    with pytest.raises(HyperparameterError, match=message):
        parse_hyperparameters(raw)


def test_string_hyperparameters_are_typed() -> None:
    parsed = parse_hyperparameters(
        {
            "feature_dim": "2700",
            "num_factors": "64",
            "predictor_type": "binary_classifier",
            "epochs": "20",
            "factors_lr": "1e-4",
            "use_linear": "false",
            "clip_gradient": "1.5",
            "_tuning_objective_metric": "x",
        }
    )
    assert parsed == {
        "feature_dim": 2700,
        "num_factors": 64,
        "predictor_type": "binary_classifier",
        "epochs": 20,
        "factors_lr": 1e-4,
        "use_linear": False,
        "clip_gradient": 1.5,
    }


@pytest.mark.parametrize(
    ("X", "y", "params", "message"),
    [
        (
            sp.eye(3, 4, format="csr"),
            [0, 1, 2],
            {"predictor_type": "binary_classifier"},
            r"The train data's label in record 2 must be 0 or 1 "
            r"\(predictor_type 'binary_classifier'\), got 2\.0\.",
        ),
        (sp.eye(3, 4, format="csr"), [0, 1], {}, r"The train data has 3 records but 2 labels\."),
        (
            sp.eye(3, 6, format="csr"),
            [0, 1, 1],
            {"feature_dim": 4},
            r"The train data has 6 features, but feature_dim is 4\.",
        ),
        (sp.eye(3, 4, format="csr"), [0, np.nan, 1], {}, r"record 1 must be a finite number"),
    ],
)
def test_bad_data_is_named(X: Any, y: Any, params: dict[str, Any], message: str) -> None:
    with pytest.raises(DataError, match=message):
        FactorizationMachines(**params).fit(X, y)


# --- the training-job contract --------------------------------------------------------------------
def _job(
    tmp_path: Path, hyperparameters: dict[str, str], channels: dict[str, tuple[sp.csr_matrix, np.ndarray]]
) -> Path:
    recordio = pytest.importorskip("recpipe.formats.recordio")
    opt_ml = tmp_path / "opt_ml"
    (opt_ml / "input" / "config").mkdir(parents=True)
    (opt_ml / "input" / "config" / "hyperparameters.json").write_text(json.dumps(hyperparameters))
    for name, (X, y) in channels.items():
        directory = opt_ml / "input" / "data" / name
        directory.mkdir(parents=True)
        half = X.shape[0] // 2  # two shards, as the processing job writes them
        for i, rows in enumerate((slice(0, half), slice(half, None))):
            buffer = io.BytesIO()
            recordio.write_sparse(buffer, X[rows], y[rows])
            (directory / f"part-{i}.pbr").write_bytes(buffer.getvalue())
    return opt_ml


def test_training_job_reads_strings_and_channels_and_writes_the_model(tmp_path: Path) -> None:
    from recpipe.formats.fm_model import load_fm_model

    X, y = planted(12, 10)
    hp = {
        "feature_dim": str(X.shape[1]),
        "num_factors": "4",
        "predictor_type": "regressor",
        "epochs": "30",
        "mini_batch_size": "20",
        "linear_lr": "0.05",
        "factors_lr": "0.05",
        "factors_init_sigma": "0.1",
    }
    opt_ml = _job(tmp_path, hp, {"train": (X, y), "test": (X[:30], y[:30])})
    epochs: list[int] = []
    metrics = run_training_job(opt_ml, on_epoch=lambda e, n, m: epochs.append(e), n_jobs=1)
    assert epochs == list(range(1, 31))
    assert [m["MetricName"] for m in metrics] == ["test:rmse"]
    assert metrics[0]["Value"] < 0.5 * float(np.std(y[:30]))
    assert not (opt_ml / "output" / "failure").exists()
    artifact = tmp_path / "model.tar.gz"
    with tarfile.open(artifact, "w:gz") as tar:
        tar.add(opt_ml / "model" / "model_algo-1", arcname="model_algo-1")
    V, w, b = load_fm_model(artifact)
    assert V.shape == (X.shape[1], 4) and w.shape == (X.shape[1],) and math.isfinite(b)


@pytest.mark.parametrize(
    ("hyperparameters", "channels", "reason"),
    [
        (
            {"feature_dim": "22", "num_factors": "0", "predictor_type": "regressor"},
            ("train",),
            "ClientError: The 'num_factors' parameter must be an int in [1, 1000], got 0.",
        ),
        (
            {"feature_dim": "22", "num_factors": "4", "predictor_type": "regressor"},
            (),
            "ClientError: The 'train' channel is required (no input/data/train directory).",
        ),
        (
            {"feature_dim": "5", "num_factors": "4", "predictor_type": "regressor"},
            ("train",),
            "ClientError: The 'train' channel file part-0.pbr has 22 features, but feature_dim is 5.",
        ),
    ],
)
def test_training_job_failure_writes_the_reason(
    tmp_path: Path, hyperparameters: dict[str, str], channels: tuple[str, ...], reason: str
) -> None:
    X, y = planted(12, 10)
    opt_ml = _job(tmp_path, hyperparameters, {name: (X, y) for name in channels})
    with pytest.raises(AlgorithmError) as info:
        run_training_job(opt_ml, n_jobs=1)
    assert str(info.value) == reason
    assert (opt_ml / "output" / "failure").read_text() == reason
