"""Local stand-in for the SageMaker built-in Factorization Machines algorithm.

The model and its score are the built-in's, exactly (the repackaging Lambda relies on it)::

    score(x) = b + sum_i w_i x_i + 1/2 sum_f [(sum_i V_if x_i)^2 - sum_i V_if^2 x_i^2]

``regressor`` predicts the score (squared loss); ``binary_classifier`` predicts ``sigmoid(score)``
(log loss). Training is the built-in's: minibatch Adam with one learning rate and one weight decay
per parameter group (bias, linear, factors), sparse updates of the rows a minibatch touches, Adam's
bias correction, optional gradient clipping. Hyperparameters carry the built-in's names and
defaults (:mod:`recpipe.algorithms.fm_hyperparameters`). Rows are shuffled once; every epoch
visits the minibatches in a new random order.

Speed: the numba kernels in :mod:`recpipe.algorithms._fm_kernels` run on every core at once, each
thread on its own minibatches, updating the shared model without locks (Hogwild). ``n_jobs=1``
gives exactly sequential minibatch Adam, reproducible bit for bit for a given ``seed``. ``n_jobs``
may also be a callable asked for the number of threads before every epoch: the local engine passes
one that shares the cores among the training jobs running at the same time.

Two entry points:

- :class:`FactorizationMachines`, scikit-learn style: ``__init__`` stores hyperparameters, ``fit``
  validates them and sets ``V_`` ``(n_features, k)``, ``w_`` ``(n_features,)``, ``b_``, ``history_``.
- :func:`run_training_job`, the SageMaker training-container contract: string hyperparameters and
  recordio-protobuf channels under ``opt_ml``, the model member ``model_algo-1`` out, the failure
  reason in ``output/failure`` on error.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from recpipe.algorithms.container import (
    NJobs,
    OnEpoch,
    available_cores,
    read_hyperparameters,
    training_job,
)
from recpipe.algorithms.exceptions import AlgorithmError, DataError, HyperparameterError
from recpipe.algorithms.fm_hyperparameters import (
    HYPERPARAMETERS,
    check_value,
    parse_hyperparameters,
    unknown_hyperparameter,
)

__all__ = [
    "HYPERPARAMETERS",
    "FactorizationMachines",
    "NJobs",
    "OnEpoch",
    "fm_metrics",
    "parse_hyperparameters",
    "run_training_job",
]


_PREFETCH_ABOVE_BYTES = 16 << 20  # model + moments; measured on the bench's 2.6k- and 225k-feature models
_ADAM_BETA1 = 0.9
_ADAM_BETA2 = 0.999


class FactorizationMachines:
    """Factorization Machines trained as the SageMaker built-in algorithm trains them.

    Hyperparameters carry the built-in's names and defaults (see :data:`HYPERPARAMETERS`);
    ``feature_dim=None`` takes the number of columns of ``X``. ``seed`` fixes the initialisation
    and the shuffling; ``n_jobs`` is the number of training threads (``None``: every available
    core; ``1``: sequential and reproducible; a callable: asked before every epoch, see
    :data:`NJobs`).
    """

    def __init__(
        self,
        *,
        feature_dim: int | None = None,
        num_factors: int = 64,
        predictor_type: str = "regressor",
        epochs: int = 1,
        mini_batch_size: int = 1000,
        clip_gradient: float | None = None,
        eps: float = 1e-8,
        rescale_grad: float | None = None,
        bias_lr: float = 0.1,
        linear_lr: float = 0.001,
        factors_lr: float = 0.0001,
        bias_wd: float = 0.01,
        linear_wd: float = 0.001,
        factors_wd: float = 0.00001,
        bias_init_method: str = "normal",
        bias_init_scale: float | None = None,
        bias_init_sigma: float = 0.01,
        bias_init_value: float | None = None,
        linear_init_method: str = "normal",
        linear_init_scale: float | None = None,
        linear_init_sigma: float = 0.01,
        linear_init_value: float | None = None,
        factors_init_method: str = "normal",
        factors_init_scale: float | None = None,
        factors_init_sigma: float = 0.001,
        factors_init_value: float | None = None,
        use_bias: bool = True,
        use_linear: bool = True,
        seed: int = 0,
        n_jobs: NJobs = None,
    ) -> None:
        self.feature_dim = feature_dim
        self.num_factors = num_factors
        self.predictor_type = predictor_type
        self.epochs = epochs
        self.mini_batch_size = mini_batch_size
        self.clip_gradient = clip_gradient
        self.eps = eps
        self.rescale_grad = rescale_grad
        self.bias_lr = bias_lr
        self.linear_lr = linear_lr
        self.factors_lr = factors_lr
        self.bias_wd = bias_wd
        self.linear_wd = linear_wd
        self.factors_wd = factors_wd
        self.bias_init_method = bias_init_method
        self.bias_init_scale = bias_init_scale
        self.bias_init_sigma = bias_init_sigma
        self.bias_init_value = bias_init_value
        self.linear_init_method = linear_init_method
        self.linear_init_scale = linear_init_scale
        self.linear_init_sigma = linear_init_sigma
        self.linear_init_value = linear_init_value
        self.factors_init_method = factors_init_method
        self.factors_init_scale = factors_init_scale
        self.factors_init_sigma = factors_init_sigma
        self.factors_init_value = factors_init_value
        self.use_bias = use_bias
        self.use_linear = use_linear
        self.seed = seed
        self.n_jobs = n_jobs

    # --- scikit-learn plumbing ---------------------------------------------------------------
    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {name: getattr(self, name) for name in [*HYPERPARAMETERS, "seed", "n_jobs"]}

    def set_params(self, **params: Any) -> FactorizationMachines:
        for name, value in params.items():
            if name not in HYPERPARAMETERS and name not in ("seed", "n_jobs"):
                raise unknown_hyperparameter(name)
            setattr(self, name, value)
        return self

    @classmethod
    def from_hyperparameters(
        cls, raw: Mapping[str, Any], *, seed: int = 0, n_jobs: NJobs = None
    ) -> FactorizationMachines:
        """Build from a SageMaker hyperparameter mapping (string values): :func:`parse_hyperparameters`."""
        return cls(**parse_hyperparameters(raw), seed=seed, n_jobs=n_jobs)

    def _validated(self) -> dict[str, Any]:
        hp = {name: check_value(name, getattr(self, name)) for name in HYPERPARAMETERS}
        for group in ("bias", "linear", "factors"):
            method = hp[f"{group}_init_method"]
            needed = {"uniform": f"{group}_init_scale", "constant": f"{group}_init_value"}.get(method)
            if needed is not None and hp[needed] is None:
                raise HyperparameterError(
                    f"The '{needed}' parameter is required when '{group}_init_method' is '{method}'."
                )
        if isinstance(self.seed, bool) or not isinstance(self.seed, int | np.integer) or self.seed < 0:
            raise HyperparameterError(f"The 'seed' parameter must be an int >= 0, got {self.seed!r}.")
        if self.n_jobs is not None and not callable(self.n_jobs) and (
            isinstance(self.n_jobs, bool) or not isinstance(self.n_jobs, int) or self.n_jobs < 1
        ):
            raise HyperparameterError(
                "The 'n_jobs' parameter must be None, an int >= 1 or a callable returning one, "
                f"got {self.n_jobs!r}."
            )
        return hp

    # --- training ---------------------------------------------------------------------------
    def fit(
        self,
        X: Any,
        y: Any,
        *,
        X_test: Any = None,
        y_test: Any = None,
        on_epoch: OnEpoch | None = None,
    ) -> FactorizationMachines:
        """Train on CSR ``X`` ``(n_rows, feature_dim)`` and labels ``y``; report test metrics per epoch.

        ``X`` may also be a list of CSR blocks, the rows of which follow one another (a channel's
        files): they are shuffled into one training matrix without stacking them first.
        ``history_`` gets one dict per epoch: ``epoch``, ``seconds``, ``samples_per_s`` and the
        metrics (``train:*`` measured on the fly during the epoch, ``test:*`` after it).
        """
        from recpipe.algorithms import _fm_kernels as K

        hp = self._validated()
        binary = hp["predictor_type"] == "binary_classifier"
        blocks = list(X) if isinstance(X, list | tuple) else [X]
        if not blocks:
            raise DataError("The train data has no records.")
        feature_dim = hp["feature_dim"] if hp["feature_dim"] is not None else _n_columns(blocks[0])
        Xs = [
            _as_csr(block, feature_dim, "train" if len(blocks) == 1 else f"train block {i}")
            for i, block in enumerate(blocks)
        ]
        ytr = _check_labels(sum(block.shape[0] for block in Xs), y, binary, "train")
        test = None
        if X_test is not None or y_test is not None:
            if X_test is None or y_test is None:
                raise DataError("Give both X_test and y_test, or neither.")
            test = _check_xy(X_test, y_test, feature_dim, binary, "test")

        rng = np.random.default_rng(self.seed)
        k = hp["num_factors"]
        P = np.zeros((feature_dim, 3, k), dtype=np.float32)
        P[:, 0, :] = _initial(rng, hp, "factors", (feature_dim, k))
        W = np.zeros((feature_dim, 3), dtype=np.float32)
        B = np.zeros(3, dtype=np.float32)
        if hp["use_linear"]:
            W[:, 0] = _initial(rng, hp, "linear", (feature_dim,))
        if hp["use_bias"]:
            B[0] = _initial(rng, hp, "bias", (1,))[0]

        # One physical shuffle keeps each minibatch's rows contiguous in memory; the order in which
        # minibatches are visited changes every epoch.
        indptr, indices, data, ytr = _shuffled(Xs, ytr, rng.permutation(ytr.shape[0]))
        del Xs, blocks
        n_rows = ytr.shape[0]
        batch = hp["mini_batch_size"]
        n_batches = -(-n_rows // batch)
        cores = available_cores()
        n_jobs = self.n_jobs
        if callable(n_jobs):
            ask: Callable[[], int] = n_jobs
            max_threads = min(cores, n_batches)
        else:
            fixed = min(n_jobs if n_jobs is not None else cores, n_batches)

            def ask() -> int:
                return fixed

            max_threads = fixed
        max_nnz = int(np.diff(indptr).max(initial=0))
        touched_cap = max(1, min(feature_dim, batch * max(max_nnz, 1)))

        def new_scratch() -> tuple[np.ndarray, ...]:
            return (
                np.full(feature_dim, -1, dtype=np.int64),  # mark
                np.zeros(feature_dim, dtype=np.int32),  # slot
                np.zeros(touched_cap, dtype=np.int32),  # touched
                np.zeros((touched_cap, k), dtype=np.float32),  # G
                np.zeros(touched_cap, dtype=np.float32),  # gw
                np.zeros(touched_cap, dtype=np.float32),  # gx2
                np.zeros(k, dtype=np.float32),  # q
                np.zeros(k, dtype=np.float32),  # sq
                np.zeros(2, dtype=np.float64),  # stats
            )

        scratch: list[tuple[np.ndarray, ...]] = []  # per thread, made when a thread is first used
        hpv = np.zeros(K.N_HP, dtype=np.float64)
        hpv[K.HP_BIAS_LR] = hp["bias_lr"] if hp["use_bias"] else 0.0
        hpv[K.HP_LINEAR_LR] = hp["linear_lr"] if hp["use_linear"] else 0.0
        hpv[K.HP_FACTORS_LR] = hp["factors_lr"]
        hpv[K.HP_BIAS_WD] = hp["bias_wd"]
        hpv[K.HP_LINEAR_WD] = hp["linear_wd"]
        hpv[K.HP_FACTORS_WD] = hp["factors_wd"]
        hpv[K.HP_BETA1] = _ADAM_BETA1
        hpv[K.HP_BETA2] = _ADAM_BETA2
        hpv[K.HP_EPS] = hp["eps"]
        hpv[K.HP_RESCALE] = hp["rescale_grad"] if hp["rescale_grad"] is not None else 1.0 / batch
        hpv[K.HP_CLIP] = hp["clip_gradient"] if hp["clip_gradient"] is not None else -1.0
        task = K.BINARY_CLASSIFIER if binary else K.REGRESSOR
        # Software prefetching pays once the model and its moments no longer fit in the caches;
        # below that it only costs instructions.
        prefetch = bool(P.nbytes > _PREFETCH_ABOVE_BYTES)

        self.history_: list[dict[str, float]] = []
        epochs = hp["epochs"]
        with ThreadPoolExecutor(max_workers=max_threads, thread_name_prefix="fm") as pool:
            for epoch in range(1, epochs + 1):
                started = time.perf_counter()
                order = rng.permutation(n_batches).astype(np.int64)
                step0 = (epoch - 1) * n_batches
                threads = min(max(1, int(ask())), max_threads)
                while len(scratch) < threads:
                    scratch.append(new_scratch())
                for s in scratch:
                    s[-1][:] = 0.0
                data_args = (indptr, indices, data, ytr, order, batch)
                model_args = (P, W, B, hpv, task, prefetch)
                if threads == 1:  # no hand-over to a pool thread
                    K.train_batches(*data_args, 0, 1, step0, *model_args, *scratch[0])
                else:
                    futures = [
                        pool.submit(K.train_batches, *data_args, t, threads, step0, *model_args, *scratch[t])
                        for t in range(threads)
                    ]
                    for future in futures:
                        future.result()
                trained = time.perf_counter() - started
                loss = sum(float(s[-1][0]) for s in scratch) / max(n_rows, 1)
                if not math.isfinite(loss):
                    raise AlgorithmError(
                        f"Training diverged: the training loss is {loss} after epoch {epoch}; "
                        "lower the learning rates or set clip_gradient."
                    )
                metrics = (
                    {"train:binary_classification_cross_entropy": loss}
                    if binary
                    else {"train:rmse": math.sqrt(loss)}
                )
                self.V_ = np.ascontiguousarray(P[:, 0, :])
                self.w_ = np.ascontiguousarray(W[:, 0])
                self.b_ = float(B[0])
                if test is not None:
                    metrics.update(fm_metrics(test[1], self._scores(test[0]), binary, prefix="test:"))
                record: dict[str, float] = {
                    "epoch": epoch,
                    "seconds": time.perf_counter() - started,
                    "samples_per_s": n_rows / trained if trained > 0 else float("inf"),
                    **metrics,
                }
                self.history_.append(record)
                if on_epoch is not None:
                    on_epoch(epoch, epochs, dict(metrics))
        self.n_features_in_ = feature_dim
        self.binary_ = binary
        return self

    # --- inference --------------------------------------------------------------------------
    def _scores(self, X: sp.csr_matrix) -> np.ndarray:
        from recpipe.algorithms import _fm_kernels as K

        out = np.empty(X.shape[0], dtype=np.float64)
        K.predict_rows(
            X.indptr.astype(np.int64), X.indices.astype(np.int32), X.data.astype(np.float32),
            self.V_, self.w_, self.b_, out,
        )
        return out

    def decision_function(self, X: Any) -> np.ndarray:
        """The raw score ``b + w.x + pairwise(x)`` of every row."""
        if not hasattr(self, "V_"):
            raise AlgorithmError("This FactorizationMachines instance is not fitted yet; call fit first.")
        return self._scores(_as_csr(X, self.V_.shape[0], "X"))

    def predict(self, X: Any) -> np.ndarray:
        """The score (regressor) or the probability of label 1 (binary_classifier) of every row."""
        scores = self.decision_function(X)
        return _sigmoid(scores) if self.binary_ else scores


# --- helpers ------------------------------------------------------------------------------------
def _initial(
    rng: np.random.Generator, hp: Mapping[str, Any], group: str, shape: tuple[int, ...]
) -> np.ndarray:
    method = hp[f"{group}_init_method"]
    if method == "normal":
        values = rng.standard_normal(size=shape, dtype=np.float32)
        values *= np.float32(hp[f"{group}_init_sigma"])
        return values
    if method == "uniform":
        scale = hp[f"{group}_init_scale"]
        return rng.uniform(-scale, scale, size=shape).astype(np.float32)
    return np.full(shape, hp[f"{group}_init_value"], dtype=np.float32)


def _n_columns(X: Any) -> int:
    shape = getattr(X, "shape", None)
    if shape is None or len(shape) != 2:
        raise DataError(f"X must be a 2-D sparse matrix, got {type(X).__name__}.")
    return int(shape[1])


def _as_csr(X: Any, feature_dim: int, what: str) -> sp.csr_matrix:
    if not sp.issparse(X):
        X = np.asarray(X)
        if X.ndim != 2:
            raise DataError(f"The {what} features must be a 2-D matrix, got shape {X.shape}.")
    X = sp.csr_matrix(X, dtype=np.float32)
    if X.shape[1] > feature_dim:
        beyond = X.indices[X.indices >= feature_dim]
        used = f" (feature index {int(beyond.max())} is used)" if beyond.size else ""
        raise DataError(f"The {what} data has {X.shape[1]} features{used}, but feature_dim is {feature_dim}.")
    if X.shape[1] < feature_dim:  # a reader that infers the width from the largest index seen
        X = sp.csr_matrix((X.data, X.indices, X.indptr), shape=(X.shape[0], feature_dim))
    if X.nnz and not np.isfinite(X.data).all():
        row = int(np.searchsorted(X.indptr, int(np.flatnonzero(~np.isfinite(X.data))[0]), side="right")) - 1
        raise DataError(f"The {what} data has a non-finite feature value in row {row}.")
    return X


def _shuffled(
    blocks: list[sp.csr_matrix], y: np.ndarray, perm: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The rows of the stacked ``blocks`` (and ``y``) in the order ``perm``: output row i is input
    row perm[i]. Each block is copied straight to its rows' places (no stacked copy in between)."""
    from recpipe.algorithms import _fm_kernels as K

    n = y.shape[0]
    lengths = np.concatenate([np.diff(block.indptr) for block in blocks]).astype(np.int64, copy=False)
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths[perm], out=indptr[1:])
    dest = np.empty(n, dtype=np.int64)
    dest[perm] = np.arange(n, dtype=np.int64)
    indices = np.empty(int(indptr[-1]), dtype=np.int32)
    data = np.empty(int(indptr[-1]), dtype=np.float32)
    start = 0
    for block in blocks:
        rows = block.shape[0]
        K.scatter_rows(
            block.indptr.astype(np.int64), block.indices.astype(np.int32, copy=False),
            block.data.astype(np.float32, copy=False), dest[start:start + rows], indptr, indices, data,
        )
        start += rows
    return indptr, indices, data, np.ascontiguousarray(y[perm])


def _check_xy(X: Any, y: Any, feature_dim: int, binary: bool, what: str) -> tuple[sp.csr_matrix, np.ndarray]:
    Xc = _as_csr(X, feature_dim, what)
    return Xc, _check_labels(Xc.shape[0], y, binary, what)


def _check_labels(n_rows: int, y: Any, binary: bool, what: str) -> np.ndarray:
    if y is None:
        raise DataError(f"The {what} data has no labels; Factorization Machines needs a label per record.")
    labels = np.asarray(y, dtype=np.float32).reshape(-1)
    if labels.shape[0] != n_rows:
        raise DataError(f"The {what} data has {n_rows} records but {labels.shape[0]} labels.")
    if n_rows == 0:
        raise DataError(f"The {what} data has no records.")
    bad = ~np.isfinite(labels)
    if binary:
        bad |= (labels != 0.0) & (labels != 1.0)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        need = "0 or 1 (predictor_type 'binary_classifier')" if binary else "a finite number"
        got = float(labels[row])
        raise DataError(f"The {what} data's label in record {row} must be {need}, got {got!r}.")
    return labels


def _sigmoid(z: np.ndarray) -> np.ndarray:
    out = np.empty_like(z, dtype=np.float64)
    pos = z >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-z[pos]))
    ez = np.exp(z[~pos])
    out[~pos] = ez / (1.0 + ez)
    return out


def fm_metrics(y: np.ndarray, scores: np.ndarray, binary: bool, *, prefix: str = "test:") -> dict[str, float]:
    """The built-in's evaluation metrics of raw ``scores`` against labels ``y``.

    Regressor: ``rmse``. Binary classifier: ``binary_classification_accuracy`` (threshold 0.5 on
    the probability), ``binary_classification_cross_entropy`` (mean log loss) and ``binary_f_beta``
    (F1 of label 1).
    """
    y = np.asarray(y, dtype=np.float64)
    if not binary:
        return {f"{prefix}rmse": float(np.sqrt(np.mean((scores - y) ** 2)))}
    predicted = scores >= 0.0  # sigmoid(score) >= 0.5
    truth = y >= 0.5
    log_loss = np.logaddexp(0.0, scores) - y * scores
    tp = float(np.sum(predicted & truth))
    precision = tp / max(float(predicted.sum()), 1.0)
    recall = tp / max(float(truth.sum()), 1.0)
    f1 = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
    return {
        f"{prefix}binary_classification_accuracy": float(np.mean(predicted == truth)),
        f"{prefix}binary_classification_cross_entropy": float(np.mean(log_loss)),
        f"{prefix}binary_f_beta": f1,
    }


# --- the SageMaker training-job contract ---------------------------------------------------------
def _channel_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file() and not p.name.startswith("."))


def _read_channel(
    opt_ml: Path, channel: str, feature_dim: int
) -> tuple[list[sp.csr_matrix], np.ndarray] | None:
    """The channel's files as CSR blocks (one per file, in name order) and all their labels."""
    from recpipe.formats.recordio import read_sparse

    directory = opt_ml / "input" / "data" / channel
    if not directory.is_dir():
        return None
    files = _channel_files(directory)
    if not files:
        raise DataError(f"The '{channel}' channel ({directory}) holds no files.")
    parts: list[sp.csr_matrix] = []
    labels: list[np.ndarray] = []
    for path in files:
        try:
            X, y = read_sparse(path)
        except Exception as err:  # the reader's own error names the record; add the file
            raise DataError(
                f"Unable to read the '{channel}' channel file {path.name} as recordio-protobuf: {err}"
            ) from err
        if y is None:
            raise DataError(f"The '{channel}' channel file {path.name} has records without a label.")
        if X.shape[1] > feature_dim:
            raise DataError(
                f"The '{channel}' channel file {path.name} has {X.shape[1]} features, "
                f"but feature_dim is {feature_dim}."
            )
        parts.append(sp.csr_matrix((X.data, X.indices, X.indptr), shape=(X.shape[0], feature_dim)))
        labels.append(np.asarray(y, dtype=np.float32).reshape(-1))
    return parts, np.concatenate(labels)


def _final_metrics(history: Iterable[Mapping[str, float]]) -> list[dict[str, Any]]:
    last = list(history)[-1]
    names = [n for n in last if n.startswith("test:")] or [n for n in last if n.startswith("train:")]
    return [{"MetricName": n, "Value": float(last[n])} for n in names]


def run_training_job(
    opt_ml: Path, *, on_epoch: OnEpoch | None = None, seed: int = 0, n_jobs: NJobs = None
) -> list[dict[str, Any]]:
    """Run one training job as the built-in container does, in the directory ``opt_ml``.

    Reads ``input/config/hyperparameters.json`` (string values) and the ``train`` and optional
    ``test`` channels (recordio-protobuf), trains, writes ``model/model_algo-1`` (the built-in's
    artifact member) and returns the final metrics as ``[{"MetricName", "Value"}]`` (the test
    channel's when given, else the training ones). On a bad hyperparameter or bad data it writes
    the reason to ``output/failure`` and raises :class:`AlgorithmError` (``str()`` = that reason).
    ``n_jobs``: the training threads (:data:`NJobs`).
    """
    opt_ml = Path(opt_ml)
    with training_job(opt_ml):
        raw = read_hyperparameters(opt_ml)
        model = FactorizationMachines.from_hyperparameters(raw, seed=seed, n_jobs=n_jobs)
        assert model.feature_dim is not None  # required: parse_hyperparameters checked it
        feature_dim = int(model.feature_dim)
        train = _read_channel(opt_ml, "train", feature_dim)
        if train is None:
            raise DataError("The 'train' channel is required (no input/data/train directory).")
        test = _read_channel(opt_ml, "test", feature_dim)
        model.fit(
            train[0], train[1],
            X_test=None if test is None else sp.vstack(test[0], format="csr"),
            y_test=None if test is None else test[1],
            on_epoch=on_epoch,
        )
        _write_model(opt_ml / "model", model, raw)
    return _final_metrics(model.history_)


def _write_model(model_dir: Path, model: FactorizationMachines, raw: Mapping[str, Any]) -> None:
    from recpipe.formats.fm_model import fm_model_member_bytes

    model_dir.mkdir(parents=True, exist_ok=True)
    meta = {
        "feature_dim": model.n_features_in_,
        "num_factors": int(model.num_factors),
        "predictor_type": str(model.predictor_type),
        "hyperparameters": {str(k): str(v) for k, v in raw.items()},
    }
    member = fm_model_member_bytes(model.V_, model.w_, model.b_, meta=meta)
    tmp = model_dir / "model_algo-1.tmp"
    tmp.write_bytes(member)
    tmp.replace(model_dir / "model_algo-1")
